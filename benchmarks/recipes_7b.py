"""The 7B recipes as the benchmarks compile and run them (memory_7b.py, roofline.py, measure_7b.py): the released
models' shapes with an experiment's runtime settings, abstract batches on a mesh, and random ones to run."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from experiments import kimi, vita
from wavalign_jax import models, optim, steps, train_state
from wavalign_jax.batches import HybridBatch, RLBatch, SamplerPrompts, SeqBatch
from wavalign_jax.objectives import gate as gate_lib
from wavalign_jax.models.config import RUNTIME_FIELDS, ModelConfig, kimi_audio_7b, vita_audio_7b
from wavalign_jax.tokens import TokenType

# "tiny": VITA's experiment on the unit-test model, a quick check of this script (tests/test_benchmarks.py).
EXPERIMENTS = {"vita": (vita, vita_audio_7b), "kimi": (kimi, kimi_audio_7b),
               "tiny": (vita, lambda **kw: models.tiny_config("interleaved", **kw))}


def experiment(name: str) -> tuple[models.ModelConfig, mlc.ConfigDict]:
  """The released model's shapes with the runtime settings (dtypes, remat, chunks) of experiments/<name>.py, as
  run_setup applies them to a converted checkpoint, and that experiment's config."""
  module, shapes = EXPERIMENTS[name]
  config = module.get_config()
  return shapes(**{k: config.model[k] for k in RUNTIME_FIELDS if k in config.model}), config


def shape_struct(shape, dtype, sharding_):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding_)


def seq_batch(cfg, rows, length, mesh, cls=SeqBatch):
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  ints = lambda: shape_struct((rows, length), np.int32, data)
  return cls(inputs={s: ints() for s in cfg.streams}, targets={s: ints() for s in cfg.streams},
             types={s: ints() for s in cfg.streams}, positions=ints(), segment_ids=ints())


def random_seq_batch(rng: np.random.Generator, cfg: ModelConfig, rows: int, length: int, prompt: int,
                     cls: type[SeqBatch] = SeqBatch) -> SeqBatch:
  inputs = {s: rng.integers(0, cfg.vocab_size, (rows, length)).astype(np.int32) for s in cfg.streams}
  types = {s: np.where(np.arange(length) >= prompt, int(TokenType.TEXT), 0)[None].repeat(rows, 0).astype(np.int32)
           for s in cfg.streams}
  return cls(inputs=inputs, targets={s: np.roll(v, -1, 1) for s, v in inputs.items()}, types=types,
             positions=np.arange(length, dtype=np.int32)[None].repeat(rows, 0),
             segment_ids=np.ones((rows, length), np.int32))


def sampler_params(cfg: models.ModelConfig, mesh: Any, gathered: bool = False) -> Any:
  """`cfg`'s parameters as abstract values placed as train.py places them on `mesh` (what the sampler reads);
  `gathered`: as `models.gather_for_decoding` hands them to it (`rollout.gather_weights`)."""
  abstract = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
  if gathered:
    abstract = jax.eval_shape(lambda p: models.in_compute_dtype(p, cfg), abstract)
  return train_state.abstract_with_shardings(abstract, models.param_shardings(cfg, mesh, gathered))


def sampler_prompts(cfg: models.ModelConfig, mesh: Any, P: int, Lp: int) -> SamplerPrompts:
  """Abstract prompts for the sampler as rollout/hosts.py passes them: P rows of Lp positions over the data
  shards, with Kimi's continuous audio features where the model has the adaptor."""
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  prompts = SamplerPrompts(inputs={s: shape_struct((P, Lp), np.int32, data) for s in cfg.streams},
                           valid=shape_struct((P, Lp), bool, data))
  if cfg.arch == "parallel" and cfg.adaptor_input_dim:
    prompts = prompts.replace(features=shape_struct((P, Lp, cfg.adaptor_input_dim), np.float32, data),
                              feature_mask=shape_struct((P, Lp), bool, data))
  return prompts


def jitted_hybrid_step(cfg: models.ModelConfig, config: mlc.ConfigDict, mesh: Any) -> tuple[Any, Any, Any]:
  """The hybrid step as train.py jits it for `cfg` on `mesh` (state donated; call it with `rl_start` Lp - 1, the
  RL rows scored from their completions on, as train.py builds them), the fresh train state's initialiser and the
  state's shardings."""
  optimizer = optim.make_optimizer(optim.optim_config(config))
  step_cfg = steps.step_config(config)
  create = lambda: train_state.create(models.init_params(cfg, jax.random.key(0)), optimizer,
                                      gate_lib.init_gate_state(step_cfg.gate), jax.random.key(0))
  state_sharding = train_state.state_shardings(jax.eval_shape(create), models.param_shardings(cfg, mesh),
                                               optimizer, mesh)
  step = steps.jit_step(steps.make_hybrid_step(models.logprob_fn(cfg), optimizer, step_cfg,
                                               microbatches=config.train.microbatches), state_sharding, mesh)
  return step, create, state_sharding


def hybrid_step(cfg: models.ModelConfig, config: mlc.ConfigDict, mesh: Any, P: int, G: int, Lp: int,
                N: int) -> tuple[Any, Any, HybridBatch]:
  """`jitted_hybrid_step`'s step, its abstract state (with the state's shardings) and an abstract batch of P
  prompts x G rollouts of Lp + N positions, to lower with `rl_start` Lp - 1."""
  step, create, state_sharding = jitted_hybrid_step(cfg, config, mesh)
  abstract = jax.eval_shape(create)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = HybridBatch(sft=seq_batch(cfg, P, Lp + N, mesh), rl=seq_batch(cfg, P * G, Lp + N, mesh, RLBatch),
                      rewards=shape_struct((P, G), np.float32, replicated),
                      reward_valid=shape_struct((P, G), bool, replicated))
  return step, train_state.abstract_with_shardings(abstract, state_sharding), batch
