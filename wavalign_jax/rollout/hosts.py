"""Sampling on one host or several: the one place that knows how a batch is spread over processes.

Training (each host its own prompts) and evaluation (every host the same prompts, `shared=True`) both
sample through `sample_rows`, so both run on a pod as they run on one machine.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from wavalign_jax import sharding, steps
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rollout import sampler as sampler_lib


def sample_rows(params: Any, model_cfg: ModelConfig, prompts: dict, rng: jax.Array,
                sampling: sampler_lib.SamplingConfig, mesh: Mesh | None = None, *,
                shared: bool = False) -> sampler_lib.Rollouts:
  """Rollouts (numpy) of left-padded numpy `prompts`: this host's rows, or every row when `shared` (the same
  batch on every host).

  On several hosts the sampler runs once on the global batch (the hosts' rows in process order, or the
  shared batch) placed on `mesh` over the data axes, and every host gets all rows back and keeps its own.
  A row's random numbers depend on its global position only, so the rollouts of a state are those of one
  host sampling the same global batch.
  """
  if mesh is not None and mesh.shape["fsdp"] > 1:   # see models.for_decoding: keep FSDP weights scanned
    sampling = dataclasses.replace(sampling, unstack_layers=False)
  if mesh is None:
    if jax.process_count() > 1:
      raise ValueError("sampling on several hosts needs the mesh")
    return jax.device_get(sampler_lib.sample(params, model_cfg, prompts, rng, sampling))
  if jax.process_count() == 1:   # rows over the data axes, activation rules on, as in the train step
    prompts = jax.device_put(prompts, steps.batch_sharding(prompts, mesh))
    with sharding.use_rules(mesh):
      return jax.device_get(sampler_lib.sample(params, model_cfg, prompts, rng, sampling))
  sampler_lib.validate_prompts(model_cfg, prompts, sampling)
  full = prompts if shared else multihost_utils.process_allgather(prompts, tiled=True)
  on_mesh = jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x, x.shape),
                         full, steps.batch_sharding(full, mesh, process_local=False))
  with sharding.use_rules(mesh):
    rollouts = multihost_utils.process_allgather(
        sampler_lib.sample(params, model_cfg, on_mesh, rng, sampling), tiled=True)
  if shared:
    return rollouts
  n = len(prompts["valid"]) * sampling.group_size
  return jax.tree.map(lambda x: x[jax.process_index() * n:(jax.process_index() + 1) * n], rollouts)
