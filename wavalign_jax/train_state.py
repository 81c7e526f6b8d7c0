"""The train state: one pytree (step, params, optimizer state, gate state, RNG) and its shardings.

Everything a resumed run needs to continue exactly is in here, so an Orbax checkpoint of this
pytree (plus the data iterator state) is a complete snapshot of a run.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wavalign_jax.objectives.gate import GateState


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any
  gate: GateState          # λ and whether it was set
  rng: jax.Array           # uint32[2] raw PRNG key: a step's rollouts use fold_in(rng, 0), the step moves it on
  skipped_steps: jax.Array  # int32 scalar: steps not applied (non-finite loss, gradient, lr or update)
  consecutive_skips: jax.Array  # int32 scalar: skipped steps in a row up to now (the stop counts on after a resume)


def create(params: Any, optimizer: optax.GradientTransformation, gate: GateState, rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    gate=gate, rng=rng, skipped_steps=jnp.zeros((), jnp.int32),
                    consecutive_skips=jnp.zeros((), jnp.int32))


def state_shardings(abstract_state: TrainState, param_sharding: Any, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> TrainState:
  """Shardings for every leaf: optimizer moments follow their parameter, everything else is replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_sharding = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_state.opt_state, param_sharding,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, NamedSharding))
  return TrainState(
      step=replicated, params=param_sharding, opt_state=opt_sharding,
      gate=jax.tree.map(lambda _: replicated, abstract_state.gate), rng=replicated, skipped_steps=replicated,
      consecutive_skips=replicated)


def init_sharded(init_fn: Callable[[], TrainState], param_sharding: Any,
                 optimizer: optax.GradientTransformation, mesh: Mesh) -> tuple[TrainState, TrainState]:
  """Runs `init_fn` under jit so every leaf is created directly in its sharding (no full host copy).

  Returns (state, shardings).
  """
  abstract = jax.eval_shape(init_fn)
  shardings = state_shardings(abstract, param_sharding, optimizer, mesh)
  return jax.jit(init_fn, out_shardings=shardings)(), shardings


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their target sharding: what Orbax restores straight onto a mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
