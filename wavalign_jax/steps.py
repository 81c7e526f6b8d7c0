"""The jitted training steps: gate update, advantages, hybrid (or DPO) loss, AdamW update.

One step is one pure function `(state, batch, rl_start) -> (state, metrics)` (`rl_start` static), jitted over the
mesh with the state donated. The gate update and the advantages happen inside the step, from the rewards in the
batch, so the whole training signal of a step is one XLA program.

Batches (`wavalign_jax.batches`, on the mesh): a `HybridBatch` (sft [P, L], rl [P*G, L'], rewards and
reward_valid [P, G]; either part None when its weight is structurally 0) or a `DPOBatch`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from wavalign_jax import sharding as sharding_lib
from wavalign_jax.batches import DPOBatch, HybridBatch, LogprobFn
from wavalign_jax.objectives import gate as gate_lib
from wavalign_jax.objectives import grpo
from wavalign_jax.objectives.grpo import GRPOConfig
from wavalign_jax.objectives.dpo import METRIC_REDUCERS as DPO_METRIC_REDUCERS
from wavalign_jax.objectives.dpo import DPOConfig, dpo_count, make_dpo_loss
from wavalign_jax.objectives.hybrid import METRIC_REDUCERS, HybridConfig, hybrid_counts, make_hybrid_loss
from wavalign_jax.objectives.sft import SFTConfig
from wavalign_jax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  objective: str = "hybrid"          # "hybrid" | "dpo"
  hybrid: HybridConfig = dataclasses.field(default_factory=HybridConfig)
  gate: gate_lib.GateConfig = dataclasses.field(default_factory=gate_lib.GateConfig)
  dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)


# step(state, batch, rl_start=0) -> (state, metrics): the train step of either objective (`make_hybrid_step`,
# `make_dpo_step`), jitted by `jit_step`.
StepFn = Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def step_config(config: Any) -> StepConfig:
  """The StepConfig of an experiment ConfigDict (its objective, sft, rl, gate and dpo sections)."""
  return StepConfig(objective=config.objective,
                    hybrid=HybridConfig(sft=SFTConfig(**config.sft), rl=GRPOConfig(**config.rl)),
                    gate=gate_lib.GateConfig(**config.gate), dpo=DPOConfig(**config.dpo))


def all_finite(*trees: Any) -> jax.Array:
  """One boolean: every floating-point leaf of `trees` is finite (a single fused reduction on device)."""
  leaves = [x for x in jax.tree.leaves(trees) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def _apply_gradients(state: TrainState, grads: Any, optimizer: optax.GradientTransformation,
                     schedule: optax.Schedule | None, metrics: dict, gate: gate_lib.GateState | None = None,
                     gate_metrics: dict | None = None) -> tuple[TrainState, dict]:
  """AdamW update and the new gate, unless anything about the step is not finite.

  The check covers the loss, the gradient norm, the learning rate and the results themselves (new params,
  optimizer moments, gate and the reward statistics behind it, `gate_metrics`): a finite loss and gradient with a
  huge or NaN learning rate still give NaN parameters, and those must never reach a checkpoint. A skipped step
  changes nothing but the step counter, the RNG and the skip counters (params, moments and gate stay as they were;
  the schedule's count is the optimizer's, so the learning rate of later steps runs
  `skipped_steps` behind `step`);
  the loop stops after `train.max_consecutive_skips` in a row (`step_end.finish_step`).
  """
  gate = state.gate if gate is None else gate
  grad_norm = optax.tree.norm(grads)
  # The learning rate this update applies: the schedule at the optimizer's own count, which a skipped step does not
  # advance (its state is kept), so the count is the steps applied so far, not `state.step`.
  applied = state.step - state.skipped_steps
  lr = schedule(applied) if schedule is not None else jnp.zeros((), jnp.float32)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = all_finite(metrics["loss"], grad_norm, lr, params, opt_state, gate, gate_metrics or {})
  params, opt_state, gate = jax.lax.cond(finite, lambda: (params, opt_state, gate),
                                         lambda: (state.params, state.opt_state, state.gate))
  metrics = dict(metrics, grad_norm=grad_norm, param_norm=optax.tree.norm(params), skipped=~finite)
  if schedule is not None:
    metrics["lr"] = lr
  skipped = (~finite).astype(jnp.int32)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, gate=gate,
                       rng=jax.random.fold_in(state.rng, state.step), skipped_steps=state.skipped_steps + skipped,
                       consecutive_skips=(state.consecutive_skips + 1) * skipped), metrics


_REDUCE = {"sum": jnp.sum, "max": jnp.max, "mean": jnp.mean}


def reduce_micro_metrics(per_micro: dict[str, jax.Array], reducers: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Metrics stacked over micro-batches [k, ...] -> the step's: each by its declared reducer ("sum" | "max" |
  "mean", e.g. `hybrid.METRIC_REDUCERS`). ("weighted", count): each micro-batch's mean weighted by its `count`
  metric, the whole step's token mean (micro-batches hold different numbers of tokens). A metric not declared is a
  per-micro-batch mean and is averaged."""
  def reduce(k: str, v: jax.Array) -> jax.Array:
    r = reducers.get(k, "mean")
    if isinstance(r, tuple):
      w = per_micro[r[1]].astype(jnp.float32)
      return jnp.sum(v * w, 0) / jnp.maximum(jnp.sum(w, 0), 1e-8)
    return _REDUCE[r](v, 0)
  return {k: reduce(k, v) for k, v in per_micro.items()}


def _micro_split(tree: Any, k: int) -> Any:
  """[N, ...] -> [k, N/k, ...] with micro-batch i taking rows i, i+k, ... (every data shard contributes)."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into {k} micro-batches")
    return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, tree)


def accumulate_gradients(loss_fn: Callable, params: Any, batch: HybridBatch | DPOBatch, lam: jax.Array | None,
                         counts: Any, microbatches: int, reducers: Mapping[str, Any] = METRIC_REDUCERS
                         ) -> tuple[Any, dict]:
  """Gradients and metrics of `loss_fn(params, batch, lam, counts)` over the whole batch, computed in
  `microbatches` sequential pieces.

  Each piece's loss is its share of the step loss (global `counts`), so the summed gradients equal
  those of one big batch while activations only ever exist for one piece; the pieces' metrics are combined by
  `reducers` (`reduce_micro_metrics`).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (_, metrics), grads = grad_fn(params, batch, lam, counts)
    return grads, metrics

  def body(acc, micro):
    (_, m), g = grad_fn(params, micro, lam, counts)
    return jax.tree.map(jnp.add, acc, g), m

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, per_micro = jax.lax.scan(body, zeros, _micro_split(batch, microbatches))
  return grads, reduce_micro_metrics(per_micro, reducers)


def make_hybrid_step(logprob_fn: LogprobFn, optimizer: optax.GradientTransformation, cfg: StepConfig,
                     schedule: optax.Schedule | None = None, *, update_gate: bool = True,
                     microbatches: int = 1) -> StepFn:
  """`step(state, batch, rl_start=0) -> (state, metrics)` for the hybrid objective.

  `rl_start` (static in `jit_step`): the RL rows' prompt length - 1 (`rollout.batch.rl_batch`);
  the output head runs on their completions only. `update_gate=False` reuses the state's λ (later PPO iterations
  on the same rollout batch). `microbatches > 1` accumulates gradients over that many pieces of the batch (same
  result, less memory).
  """
  loss_fn = make_hybrid_loss(logprob_fn, cfg.hybrid)

  def step(state: TrainState, batch: HybridBatch, rl_start: int = 0) -> tuple[TrainState, dict]:
    gate, metrics = state.gate, {}
    loss_batch = HybridBatch(sft=batch.sft)
    if batch.rl is not None:
      rewards, valid = batch.rewards, batch.reward_valid
      if update_gate:
        gate, metrics = gate_lib.update_gate(state.gate, rewards, valid, cfg.gate)
      loss_batch = loss_batch.replace(rl=grpo.with_group_fields(batch.rl, rewards, valid, cfg.hybrid.rl))
    lam = gate.lam if batch.rl is not None else jnp.zeros((), jnp.float32)
    counts = hybrid_counts(loss_batch, cfg.hybrid)
    grads, loss_metrics = accumulate_gradients(functools.partial(loss_fn, rl_start=rl_start), state.params,
                                               loss_batch, lam, counts, microbatches)
    state, metrics = _apply_gradients(state, grads, optimizer, schedule, {**metrics, **loss_metrics}, gate, metrics)
    # The λ of this step's loss: 0 without RL rows (whatever the gate holds, e.g. the SFT stage of two_stage); the
    # state's after the step, so a skipped step logs the kept λ, not the rejected gate update's.
    return state, {**metrics, "lambda": state.gate.lam if batch.rl is not None else lam}

  return step


def make_dpo_step(logprob_fn: LogprobFn, optimizer: optax.GradientTransformation, cfg: StepConfig,
                  schedule: optax.Schedule | None = None, *, microbatches: int = 1) -> StepFn:
  """`step(state, batch, rl_start=0) -> (state, metrics)` for DPO pairs. `rl_start` is unused (DPO has no RL
  rows): both steps take the same arguments, so the loop and `jit_step` treat them alike. `microbatches > 1`
  accumulates over pieces of the pairs with the step's global pair count (same gradients, less memory)."""
  loss_fn = make_dpo_loss(logprob_fn, cfg.dpo)

  def step(state: TrainState, batch: DPOBatch, rl_start: int = 0) -> tuple[TrainState, dict]:
    del rl_start
    grads, metrics = accumulate_gradients(lambda p, b, _, c: loss_fn(p, b, c), state.params, batch, None,
                                          dpo_count(batch), microbatches, DPO_METRIC_REDUCERS)
    return _apply_gradients(state, grads, optimizer, schedule, metrics)

  return step


def jit_step(step: StepFn, state_sharding: Any, mesh: Mesh) -> StepFn:
  """`step(state, batch, rl_start)` jitted with the state donated and kept in its sharding, activation sharding
  rules on, `rl_start` static; batch shardings follow the inputs."""
  return sharding_lib.jit_with_rules(step, mesh, in_shardings=(state_sharding, None),
                                     out_shardings=(state_sharding, None), donate_argnums=(0,), static_argnums=(2,))
