"""Rollout sampling: jitted KV-cache sampler and per-architecture constrained decoding."""
from wavalign_jax.rollout.constraints import (Constraint, InterleavedConstraint, InterleavedState,
                                              ParallelConstraint, ParallelState)
from wavalign_jax.rollout.sampler import (Rollouts, SamplingConfig, StreamSampling, kimi_upstream_sampling,
                                          left_pad_prompts, nucleus_mask, response_contents, rl_batch, sample,
                                          sample_token, sampling_config, well_formed)

__all__ = ["Constraint", "InterleavedConstraint", "InterleavedState", "ParallelConstraint", "ParallelState",
           "Rollouts", "SamplingConfig", "StreamSampling", "kimi_upstream_sampling", "left_pad_prompts",
           "nucleus_mask", "response_contents", "rl_batch", "sample", "sample_token", "sampling_config",
           "well_formed"]
