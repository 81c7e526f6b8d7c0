"""Rollout sampling: jitted KV-cache sampler, per-architecture constrained decoding and the RL batch."""
from wavalign_jax.rollout.batch import response_contents, rl_batch, well_formed
from wavalign_jax.rollout.constraints import (Constraint, InterleavedConstraint, InterleavedState,
                                              ParallelConstraint, ParallelState)
from wavalign_jax.rollout.decode import (Rollouts, SamplingConfig, StreamSampling, nucleus,
                                         sample_token, sampling_config)
from wavalign_jax.rollout.sampler import left_pad_prompts, sample

__all__ = ["Constraint", "InterleavedConstraint", "InterleavedState", "ParallelConstraint", "ParallelState",
           "Rollouts", "SamplingConfig", "StreamSampling", "left_pad_prompts",
           "nucleus", "response_contents", "rl_batch", "sample", "sample_token", "sampling_config",
           "well_formed"]
