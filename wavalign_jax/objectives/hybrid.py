"""The WavAlign objective: (1 − λ)·SFT + λ·GRPO, one pure function of (params, batch, λ).

The model enters only through `logprob_fn(params, batch: SeqBatch, start=0) -> batches.TargetLogprobs`
(the model's `target_logprobs` with its config bound; log-probs of the targets from position `start` on, 0
before), so both architectures share this code.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from wavalign_jax.batches import HybridBatch, LogprobFn
from wavalign_jax.objectives import aggregation, grpo
from wavalign_jax.objectives.grpo import GRPOConfig, grpo_count, grpo_loss
from wavalign_jax.objectives.sft import SFTConfig, sft_count, sft_loss

# How a step combines the hybrid loss's metrics over micro-batches (`steps.reduce_micro_metrics`): the loss shares
# (computed with the step's global counts) and the counts add up; a metric not named here is averaged.
METRIC_REDUCERS = {"loss": "sum", "sft_loss": "sum", "rl_loss": "sum", "sft_count": "sum", "rl_count": "sum",
                   **{f"rl/{k}": (r[0], f"rl/{r[1]}") if isinstance(r, tuple) else r
                      for k, r in grpo.METRIC_REDUCERS.items()}}


@dataclasses.dataclass(frozen=True)
class HybridConfig:
  """`HybridConfig(sft=SFTConfig(**config.sft), rl=GRPOConfig(**config.rl))`."""
  sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
  rl: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)


def _check_batch(batch: HybridBatch) -> None:
  if batch.sft is None and batch.rl is None:
    raise ValueError("hybrid batch needs an 'sft' and/or an 'rl' part, got neither")


def hybrid_counts(batch: HybridBatch, cfg: HybridConfig) -> dict[str, jax.Array]:
  """Denominators of each part of `batch`, without a forward pass.

  For gradient accumulation: the step computes them once on the whole batch and passes them to every
  micro-batch's `hybrid_loss` call; the micro-batch losses and gradients then add up exactly to those of the
  whole step.
  """
  _check_batch(batch)
  counts = {}
  if batch.sft is not None:
    counts["sft"] = sft_count(batch.sft, cfg.sft)
  if batch.rl is not None:
    counts["rl"] = grpo_count(batch.rl, cfg.rl)
  return counts


def make_hybrid_loss(logprob_fn: LogprobFn, cfg: HybridConfig) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
  """`hybrid_loss(params, batch, lambda_t, counts=None, rl_start=0) -> (loss, metrics)`.

  `batch`: a `HybridBatch` whose `rl` part carries `advantages` (and optionally `old_logp`, `ref_logp`,
  `sampler_logp`, `seq_weight`, `fallback`; `rewards` are not read). A part may be None when its weight is 0
  (SFT-only or RL-only runs): it then contributes nothing. `rl_start` (static): the first RL target position that
  may carry a loss (the prompt length - 1 of a `rollout.batch.rl_batch`). The metrics' micro-batch reductions
  are `METRIC_REDUCERS`.
  """
  def hybrid_loss(params: Any, batch: HybridBatch, lambda_t: jax.Array, counts: dict[str, jax.Array] | None = None,
                  rl_start: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
    _check_batch(batch)
    lam = jnp.asarray(lambda_t, jnp.float32)
    counts = counts or {}
    parts, metrics = [], {}
    if batch.sft is not None:
      out = logprob_fn(params, batch.sft)
      term = sft_loss(out.logp, batch.sft, cfg.sft)
      value = aggregation.term_value(term, counts.get("sft"))
      parts.append((1.0 - lam) * value)
      metrics.update(sft_loss=value, sft_count=jnp.sum(term.count))
    if batch.rl is not None:
      out = logprob_fn(params, batch.rl, rl_start)
      term, rl_metrics = grpo_loss(out.logp, batch.rl, cfg.rl, entropy=out.entropy)
      value = aggregation.term_value(term, counts.get("rl"))
      parts.append(lam * value)
      metrics.update(rl_loss=value, rl_count=term.count, **{f"rl/{k}": v for k, v in rl_metrics.items()})
    loss = sum(parts[1:], parts[0])
    metrics["loss"] = loss
    return loss, metrics
  return hybrid_loss
