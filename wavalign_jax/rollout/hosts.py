"""Sampling on one host or several: the one place that knows how a batch is spread over processes.

Training (each host its own prompts) and evaluation (every host the same prompts, `shared=True`) both
sample through `sample_rows`, so both run on a pod as they run on one machine.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from wavalign_jax import models, sharding
from wavalign_jax.batches import SamplerPrompts, SeqBatch
from wavalign_jax.data import layouts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rollout import decode
from wavalign_jax.rollout import sampler as sampler_lib


def sample_rows(params: Any, model_cfg: ModelConfig, prompts: SamplerPrompts, rng: jax.Array,
                sampling: decode.SamplingConfig, mesh: Mesh | None = None, *,
                shared: bool = False) -> decode.Rollouts:
  """Rollouts (numpy) of left-padded numpy `prompts`: this host's rows, or every row when `shared` (the same
  batch on every host).

  On several hosts the sampler runs once on the global batch placed on `mesh` over the data axes: the hosts'
  own rows (in process order), each host keeping the rollouts of its rows, which its own devices computed
  (nothing is gathered across hosts); or the shared batch, whose rollouts every host receives. A row's random
  numbers depend on its global position only, so the rollouts of a state are those of one host sampling the
  same global batch.
  """
  if mesh is None:
    if jax.process_count() > 1:
      raise ValueError("sampling on several hosts needs the mesh")
    return jax.device_get(sampler_lib.sample(params, model_cfg, prompts, rng, sampling))
  fsdp = sharding.mesh_shards(mesh, "embed") > 1
  if fsdp:   # models.for_decoding: keep FSDP weights scanned
    sampling = dataclasses.replace(sampling, unstack_layers=False)
  gathered = fsdp and sampling.gather_weights
  if gathered:   # once per call: the decode loop then reads local weights (models.gather_for_decoding)
    params = models.gather_for_decoding(params, model_cfg, mesh)
  if jax.process_count() == 1:   # rows over the data axes, activation rules on, as in the train step
    prompts = jax.device_put(prompts, sharding.batch_sharding(prompts, mesh))
    with sharding.use_rules(mesh, gathered):
      return jax.device_get(sampler_lib.sample(params, model_cfg, prompts, rng, sampling))
  decode.validate_prompts(model_cfg, prompts, sampling)
  if not shared:
    prompts = same_prompt_length(prompts)
  rows = sharding.batch_sharding(prompts, mesh, process_local=not shared)
  on_mesh = jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x, x.shape if shared else None),
                         prompts, rows)
  with sharding.use_rules(mesh, gathered):
    rollouts = sampler_lib.sample(params, model_cfg, on_mesh, rng, sampling)
  if shared:
    return multihost_utils.process_allgather(rollouts, tiled=True)
  G = sampling.group_size
  first = _process_rows(on_mesh.valid)
  return jax.tree.map(lambda x: _rows(x, first.start * G, first.stop * G), rollouts)


def common_length(n: int) -> int:
  """The largest `n` over all processes. Every host pads its rows to it before they form a global array: a
  host-dependent shape would compile different programs on different hosts, whose collectives then do not
  match (gloo aborts: "Received data size doesn't match expected size"; tests/test_multihost.py)."""
  if jax.process_count() == 1:
    return n
  return int(np.max(multihost_utils.process_allgather(np.int32(n))))


def same_length(batch: SeqBatch, pad_id: int) -> SeqBatch:
  """A sequence batch (or `RLBatch`) right-padded to the longest length any host holds (`common_length`)."""
  return layouts.pad_sequence_batch(batch, common_length(batch.segment_ids.shape[1]), pad_id)


def same_prompt_length(prompts: SamplerPrompts) -> SamplerPrompts:
  """Left-padded numpy prompts padded further on the left to the longest prompt length any host holds
  (`common_length`)."""
  length = common_length(prompts.valid.shape[1])
  def pad(x):
    x = np.asarray(x)
    return np.pad(x, [(0, 0), (length - x.shape[1], 0)] + [(0, 0)] * (x.ndim - 2))
  return jax.tree.map(pad, prompts)


def _process_rows(x: jax.Array) -> slice:
  """The block of global rows of `x` (split over its first axis) that this process's devices hold."""
  bounds = sorted({(s.index[0].start or 0, s.index[0].stop or x.shape[0]) for s in x.addressable_shards})
  if any(a[1] != b[0] for a, b in zip(bounds, bounds[1:])):
    raise ValueError(f"this process's rows {bounds} are not one block: build the mesh with sharding.make_mesh")
  return slice(bounds[0][0], bounds[-1][1])


def _rows(x: jax.Array, lo: int, hi: int) -> np.ndarray:
  """Rows [lo, hi) of a global array, read from this process's own shards (whatever their layout)."""
  out = np.empty((hi - lo,) + x.shape[1:], x.dtype)
  filled = np.zeros(out.shape, bool)
  for shard in x.addressable_shards:
    a, b = shard.index[0].start or 0, shard.index[0].stop or x.shape[0]
    a2, b2 = max(a, lo), min(b, hi)
    if a2 < b2:
      where = (slice(a2 - lo, b2 - lo),) + tuple(shard.index[1:])
      out[where] = np.asarray(shard.data)[a2 - a:b2 - a]
      filled[where] = True
  if not filled.all():
    raise RuntimeError(f"rows [{lo}, {hi}) of a rollout array are not all on this process's devices "
                       f"(sharding {x.sharding})")
  return out
