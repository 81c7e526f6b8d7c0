"""The WavAlign objective: (1 − λ)·SFT + λ·GRPO, one pure function of (params, batch, λ).

The model enters only through `logprob_fn(params, seq_batch, start=0) -> {stream: {"logp", "entropy"}}`
(the model's `target_logprobs` with its config bound; log-probs of the targets from position `start` on, 0
before), so both architectures share this code.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from wavalign_jax.objectives import aggregation
from wavalign_jax.objectives.grpo import GRPOConfig, grpo_count, grpo_loss
from wavalign_jax.objectives.sft import SFTConfig, sft_count, sft_loss

LogprobFn = Callable[..., dict]   # (params, seq_batch, start: int = 0) -> {stream: {"logp", "entropy"}}


@dataclasses.dataclass(frozen=True)
class HybridConfig:
  """`HybridConfig(sft=SFTConfig(**config.sft), rl=GRPOConfig(**config.rl))`."""
  sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
  rl: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)


def _check_batch(batch: dict) -> None:
  if not ({"sft", "rl"} & set(batch)):
    raise ValueError(f"hybrid batch needs an 'sft' and/or an 'rl' part, got keys {sorted(batch)}")


def hybrid_counts(batch: dict, cfg: HybridConfig) -> dict[str, jax.Array]:
  """Denominators of each part of `batch`, without a forward pass.

  For gradient accumulation: add the counts of all micro-batches of a step and pass the total
  to every `hybrid_loss` call; the micro-batch losses and gradients then add up exactly to those
  of the whole step.
  """
  _check_batch(batch)
  counts = {}
  if "sft" in batch:
    counts["sft"] = sft_count(batch["sft"]["types"], cfg.sft)
  if "rl" in batch:
    counts["rl"] = grpo_count(batch["rl"]["types"], cfg.rl, batch["rl"].get("seq_weight"), batch["rl"].get("fallback"))
  return counts


def make_hybrid_loss(logprob_fn: LogprobFn, cfg: HybridConfig):
  """`hybrid_loss(params, batch, lambda_t, counts=None, rl_start=0) -> (loss, metrics)`.

  batch = {"sft": seq_batch, "rl": rl_batch} (WORKSPACE.md contracts; rl_batch also carries
  `advantages` [B], and optionally `old_logp`, `ref_logp`, `sampler_logp`, `seq_weight` [B], `fallback` [B]). A part may be left
  out when its weight is 0 (SFT-only or RL-only runs): it then contributes nothing. `rl_start` (static): the
  first RL target position that may carry a loss (the prompt length - 1 of a `rollout.batch.rl_batch`).
  """
  def hybrid_loss(params, batch: dict, lambda_t: jax.Array, counts: dict | None = None, rl_start: int = 0):
    _check_batch(batch)
    lam = jnp.asarray(lambda_t, jnp.float32)
    counts = counts or {}
    parts, metrics = [], {"lambda": lam}
    if "sft" in batch:
      out = logprob_fn(params, batch["sft"])
      term = sft_loss({k: v["logp"] for k, v in out.items()}, batch["sft"]["types"], cfg.sft)
      value = aggregation.term_value(term, counts.get("sft"))
      parts.append((1.0 - lam) * value)
      metrics.update(sft_loss=value, sft_count=jnp.sum(term.count))
    if "rl" in batch:
      rl = batch["rl"]
      out = logprob_fn(params, rl, rl_start)
      entropy = {k: v["entropy"] for k, v in out.items()} if all("entropy" in v for v in out.values()) else None
      term, rl_metrics = grpo_loss({k: v["logp"] for k, v in out.items()}, rl["types"], rl["advantages"], cfg.rl,
                                   old_logp=rl.get("old_logp"), ref_logp=rl.get("ref_logp"),
                                   seq_weight=rl.get("seq_weight"), entropy=entropy, fallback=rl.get("fallback"),
                                   sampler_logp=rl.get("sampler_logp"))
      value = aggregation.term_value(term, counts.get("rl"))
      parts.append(lam * value)
      metrics.update(rl_loss=value, rl_count=term.count, **{f"rl/{k}": v for k, v in rl_metrics.items()})
    loss = sum(parts[1:], parts[0])
    metrics["loss"] = loss
    return loss, metrics
  return hybrid_loss
