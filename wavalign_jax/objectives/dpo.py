"""Offline DPO baseline: −log σ(β·Δ) over (chosen, rejected) pairs.

Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)), log-probs summed over the
text tokens (text-token DPO) or all response tokens (full-token DPO). Reference log-probs are
precomputed per position and stored in the batch (`DPOBatch.chosen_ref_logp` / `rejected_ref_logp`), so the loss
needs no reference model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from wavalign_jax import tokens
from wavalign_jax.batches import DPOBatch, LogprobFn, Streams
from wavalign_jax.objectives import aggregation


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  beta: float = 0.2
  token_set: str = "text"   # "text": text-token DPO; "all": full-token DPO

  def __post_init__(self):
    if self.token_set not in tokens.TOKEN_SETS:
      raise ValueError(f"DPOConfig.token_set {self.token_set!r}: choose one of {sorted(tokens.TOKEN_SETS)}")
    if self.beta <= 0:
      raise ValueError(f"DPOConfig.beta must be > 0, got {self.beta}")


def sequence_logp(logp: Streams, types: Streams, token_set: str) -> jax.Array:
  """[B] sum of the log-probs of the tokens in `token_set`, over all streams."""
  aggregation.check_streams("types", types, logp)
  mask = {k: tokens.token_set_mask(t, token_set).astype(jnp.float32) for k, t in types.items()}
  return jnp.sum(aggregation.concat_streams(mask) * aggregation.concat_streams(logp).astype(jnp.float32), axis=1)


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, beta: float) -> tuple[aggregation.LossTerm, dict[str, jax.Array]]:
  """Loss term (mean over pairs) and metrics from summed sequence log-probs, all [B]."""
  chosen_reward = beta * (policy_chosen - ref_chosen)
  rejected_reward = beta * (policy_rejected - ref_rejected)
  margin = chosen_reward - rejected_reward
  term = aggregation.LossTerm(jnp.sum(-jax.nn.log_sigmoid(margin)), jnp.float32(margin.shape[0]))
  metrics = {"reward_chosen": jnp.mean(chosen_reward), "reward_rejected": jnp.mean(rejected_reward),
             "reward_margin": jnp.mean(margin), "reward_accuracy": jnp.mean(margin > 0)}
  return term, jax.lax.stop_gradient(metrics)


def dpo_count(batch: DPOBatch) -> jax.Array:
  """The step's pair count, without a forward pass: the denominator `dpo_loss` uses, passed whole to every
  micro-batch's `dpo_loss_fn` (as `hybrid.hybrid_counts`)."""
  return jnp.float32(next(iter(batch.chosen.types.values())).shape[0])


# How a step combines the metrics of `dpo_loss_fn` over micro-batches (`steps.reduce_micro_metrics`): the loss shares
# add up; the dpo/ rewards and accuracy are each micro-batch's pair means, averaged (micro-batches hold as many pairs).
METRIC_REDUCERS = {"loss": "sum"}


def make_dpo_loss(logprob_fn: LogprobFn, cfg: DPOConfig) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
  """`dpo_loss_fn(params, batch: DPOBatch, count=None) -> (loss, metrics)`.

  Both halves must have the same shapes: they go through the model as one batch of 2B. `count` is the step's
  global pair count when the step is split into micro-batches (`steps.make_dpo_step`): each piece's loss is then
  its share of the step's.
  """
  def dpo_loss_fn(params: Any, batch: DPOBatch,
                  count: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    concat = lambda a, b: jnp.concatenate([a, b])
    try:
      both = jax.tree.map(concat, batch.chosen, batch.rejected)
    except ValueError as e:
      raise ValueError(f"DPO batch: 'chosen' and 'rejected' must have the same fields and shapes ({e})") from e
    b = next(iter(batch.chosen.types.values())).shape[0]
    out = logprob_fn(params, both)
    seq = sequence_logp(out.logp, both.types, cfg.token_set)
    ref = sequence_logp(jax.tree.map(concat, batch.chosen_ref_logp, batch.rejected_ref_logp), both.types,
                        cfg.token_set)
    term, metrics = dpo_loss(seq[:b], seq[b:], ref[:b], ref[b:], cfg.beta)
    loss = aggregation.term_value(term, count)
    return loss, {"loss": loss, **{f"dpo/{k}": v for k, v in metrics.items()}}
  return dpo_loss_fn
