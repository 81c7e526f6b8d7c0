"""Group-relative policy gradient (GRPO) over a chosen token set.

Reference (docs/method.md §1): group-normalised advantages, per-token loss
−(exp(logp − stop_grad(logp))·A − β_type·KL), text tokens only (a group none of whose completions has a
text token falls back to the whole completions), masked mean per sequence then mean over sequences, no
clipping, β = 0. Options: PPO clipping against π_old (the policy's log-probs when the rollout batch was
made, computed by the training forward; several iterations per rollout batch), KL estimators k1/k2/k3
with separate β for text and speech tokens, other token sets and aggregations, advantage scaling,
dropping equal-reward groups.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from wavalign_jax import tokens
from wavalign_jax.batches import RLBatch, Streams
from wavalign_jax.objectives import aggregation
from wavalign_jax.objectives.sft import type_weights

GRPO_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
ADVANTAGE_SCALES = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")

# How a step combines these metrics of `grpo_loss` over micro-batches (`steps.reduce_micro_metrics`): counts add
# up, maxima take the max, token means are weighted by their piece's token count ("weighted", count); a metric not
# named here is a per-micro-batch mean and is averaged.
METRIC_REDUCERS = {"num_text_tokens": "sum", "num_speech_tokens": "sum", "num_rl_tokens": "sum",
                   "num_fallback_seqs": "sum", "sampler_logp_gap_max": "max",
                   **{k: ("weighted", "num_rl_tokens") for k in ("ratio_mean", "clip_frac_low", "clip_frac_high",
                                                                  "clip_frac", "kl", "sampler_logp_gap_mean")},
                   "entropy_text": ("weighted", "num_text_tokens"), "entropy_speech": ("weighted", "num_speech_tokens")}


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  token_set: str = "text"            # tokens that get the policy gradient ("text" | "speech" | "all")
  aggregation: str = "seq_mean_token_mean"
  norm_length: int = 1024            # divisor of "seq_mean_token_sum_norm" (max completion length)
  advantage_scale: str = "group"     # std used to scale advantages: group | batch | none
  advantage_eps: float = 1e-4
  drop_equal_groups: bool = False    # zero the weight of groups whose valid rewards are all equal
  kl_estimator: str = "k3"
  beta_text: float = 0.0             # KL weight on text tokens (0: no reference model needed)
  beta_speech: float = 0.0           # KL weight on speech tokens and audio boundaries
  clip_eps: float = 0.0              # > 0: PPO clipping against π_old (old_logp; on-policy at iteration 1)
  clip_eps_high: float = 0.0         # upper clip range; 0 means clip_eps
  num_iterations: int = 1            # optimiser steps per rollout batch (> 1 needs clipping)

  def __post_init__(self):
    aggregation.check_aggregation(self.aggregation, GRPO_AGGREGATIONS)
    for name, value, allowed in (("token_set", self.token_set, tuple(tokens.TOKEN_SETS)),
                                 ("advantage_scale", self.advantage_scale, ADVANTAGE_SCALES),
                                 ("kl_estimator", self.kl_estimator, KL_ESTIMATORS)):
      if value not in allowed:
        raise ValueError(f"GRPOConfig.{name} {value!r}: choose one of {list(allowed)}")
    if self.clip_eps < 0 or self.clip_eps_high < 0 or self.beta_text < 0 or self.beta_speech < 0:
      raise ValueError("GRPOConfig: clip_eps, clip_eps_high, beta_text, beta_speech must be >= 0")
    if self.num_iterations > 1 and self.clip_eps <= 0:
      raise ValueError("GRPOConfig.num_iterations > 1 needs clip_eps > 0: without clipping the ratio "
                       "is taken against the current policy and nothing bounds the update")

  @property
  def clipping(self) -> bool:
    return self.clip_eps > 0

  @property
  def clip_range(self) -> tuple[float, float]:
    """(low, high) bounds of the clipped ratio."""
    return 1.0 - self.clip_eps, 1.0 + (self.clip_eps_high or self.clip_eps)

  @property
  def uses_kl(self) -> bool:
    return self.beta_text > 0 or self.beta_speech > 0


class GroupStats(NamedTuple):
  """Each prompt group's valid rewards (`group_stats`): the one definition the advantages, the λ gate and the
  signal-less groups share."""
  valid: jax.Array       # bool [P, G]
  count: jax.Array       # [P] valid items
  mean: jax.Array        # [P]
  centred: jax.Array     # [P, G] r − mean on valid items, else 0; exactly 0 in a group without spread
  spread: jax.Array      # bool [P]: the valid rewards differ (the group carries signal)

  @property
  def var(self) -> jax.Array:
    """[P] population variance of the valid rewards (exactly 0 without spread)."""
    return jnp.sum(self.centred**2, axis=1) / jnp.maximum(self.count, 1)


def group_stats(rewards: jax.Array, valid: jax.Array | None = None) -> GroupStats:
  """Statistics of rewards [P, G] over each group's valid items. Equal rewards (8/3, the mean of three judge
  choices, G times) have a float32 mean a rounding off their value: their deviations are set to exactly 0, or group
  scaling would turn them into a same-signed advantage on every row and a hard information gate would open."""
  if rewards.ndim != 2:
    raise ValueError(f"rewards must be [prompts, group], got shape {rewards.shape}")
  r = rewards.astype(jnp.float32)
  v = jnp.ones(r.shape, bool) if valid is None else valid.astype(bool)
  count = jnp.sum(v, axis=1)
  mean = jnp.sum(jnp.where(v, r, 0.0), axis=1) / jnp.maximum(count, 1)
  spread = jnp.max(jnp.where(v, r, -jnp.inf), axis=1) > jnp.min(jnp.where(v, r, jnp.inf), axis=1)
  centred = jnp.where(v & spread[:, None], r - mean[:, None], 0.0)
  return GroupStats(v, count, mean, centred, spread)


def group_advantages(rewards: jax.Array, valid: jax.Array | None = None, scale: str = "group",
                     eps: float = 1e-4) -> jax.Array:
  """Advantages [P, G] from rewards [P, G] (P prompts, G rollouts each); invalid items, and every item of a group
  whose valid rewards are equal, get 0.

  A = (r − mean_group) / (std + eps), population std over the valid items of the group
  ("group"), over all valid rewards of the batch ("batch"), or no scaling ("none").
  """
  if scale not in ADVANTAGE_SCALES:
    raise ValueError(f"advantage scale {scale!r}: choose one of {list(ADVANTAGE_SCALES)}")
  g = group_stats(rewards, valid)
  if scale == "group":
    return g.centred / (jnp.sqrt(g.var)[:, None] + eps)
  if scale == "batch":
    r, n_all = rewards.astype(jnp.float32), jnp.maximum(jnp.sum(g.valid), 1)
    batch_mean = jnp.sum(jnp.where(g.valid, r, 0.0)) / n_all
    return g.centred / (jnp.sqrt(jnp.sum(jnp.where(g.valid, (r - batch_mean)**2, 0.0)) / n_all) + eps)
  return g.centred


def group_weights(rewards: jax.Array, valid: jax.Array | None = None,
                  drop_equal_groups: bool = False) -> jax.Array:
  """Per-rollout weight [P, G]: 0 for invalid items and, optionally, for groups with no signal."""
  g = group_stats(rewards, valid)
  keep = g.valid & g.spread[:, None] if drop_equal_groups else g.valid
  return keep.astype(jnp.float32)


def group_fallback(types: Streams, token_set: str, group_size: int) -> jax.Array:
  """bool [B]: rows whose prompt group (rows p*G .. p*G+G-1) has no token of `token_set` in any completion.

  Such a group trains on its whole completions instead (the reference's fallback, decided per group): a
  completion without the token set in a group where others have some contributes 0 and still counts."""
  chosen = jnp.any(aggregation.concat_streams({k: tokens.token_set_mask(t, token_set) for k, t in types.items()}),
                   axis=1)
  B = chosen.shape[0]
  if B % group_size:
    raise ValueError(f"{B} rows do not form groups of {group_size}")
  return jnp.repeat(~jnp.any(chosen.reshape(B // group_size, group_size), axis=1), group_size)


def with_group_fields(rl: RLBatch, rewards: jax.Array, valid: jax.Array | None, cfg: GRPOConfig) -> RLBatch:
  """`rl` with what its rewards [P, G] decide: `advantages`, `seq_weight` (failed or signal-less rows 0) and
  `fallback`, all per row. The training step and the gradient diagnostics (train's `analysis_every`, `analyze`)
  call this one function, so they weigh the same rows. Decided on the whole batch, before any micro-batch split
  separates a group's rows."""
  advantages = group_advantages(rewards, valid, cfg.advantage_scale, cfg.advantage_eps)
  weights = group_weights(rewards, valid, cfg.drop_equal_groups)
  return rl.replace(advantages=advantages.reshape(-1), seq_weight=weights.reshape(-1),
                    fallback=group_fallback(rl.types, cfg.token_set, rewards.shape[1]))


def rl_token_weights(types: Streams, token_set: str,
                     fallback: jax.Array | None = None) -> dict[str, jax.Array]:
  """Mask of the token set; rows with `fallback` (see `group_fallback`) use their whole completion."""
  out = {}
  for k, t in types.items():
    chosen = tokens.token_set_mask(t, token_set)
    if fallback is not None:
      chosen = jnp.where(fallback[:, None], t != tokens.TokenType.NONE, chosen)
    out[k] = chosen.astype(jnp.float32)
  return out


def _completions(types: Streams) -> jax.Array:
  """bool [B]: rows that hold a completion (a position with a loss type); they count in sequence means."""
  return jnp.any(aggregation.concat_streams(types) != tokens.TokenType.NONE, axis=1)


def grpo_count(batch: RLBatch, cfg: GRPOConfig) -> jax.Array:
  """The GRPO denominator of a batch (its types, `seq_weight` and `fallback`), without a forward pass."""
  return aggregation.aggregate_count(rl_token_weights(batch.types, cfg.token_set, batch.fallback), cfg.aggregation,
                                     batch.seq_weight, counted=_completions(batch.types))


def kl_divergence(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimate of KL(π‖π_ref) from samples of π: k1 = log π/π_ref, k2 = ½(log π/π_ref)²,
  k3 = π_ref/π − log(π_ref/π) − 1."""
  d = ref_logp - logp
  if estimator == "k1":
    return -d
  if estimator == "k2":
    return 0.5 * d**2
  if estimator == "k3":
    return jnp.exp(d) - d - 1.0
  raise ValueError(f"KL estimator {estimator!r}: choose one of {list(KL_ESTIMATORS)}")


def grpo_loss(logp: Streams, batch: RLBatch, cfg: GRPOConfig, *,
              entropy: Streams | None = None) -> tuple[aggregation.LossTerm, dict[str, jax.Array]]:
  """GRPO loss term and metrics for the completions of `batch` whose log-probs are `logp` {stream: [B, L]}.

  The batch's `advantages` [B] are required. `old_logp`: π_old of a later PPO iteration (the training forward's
  log-probs when the rollout batch was made); without it the step is on-policy (ratio exactly 1, stop-gradient of
  `logp`), which is also the first iteration with clipping. `ref_logp` is required with β > 0; `seq_weight` [B]
  scales sequences (0 drops one); `fallback` [B] rows use their whole completion (`group_fallback`); `entropy`
  (of the forward) and `sampler_logp` (the sampler's log-probs of the same tokens) feed metrics only.
  """
  types, advantages, fallback = batch.types, batch.advantages, batch.fallback
  old_logp, ref_logp, sampler_logp = batch.old_logp, batch.ref_logp, batch.sampler_logp
  aggregation.check_streams("types", types, logp)
  if advantages is None:
    raise ValueError("GRPO needs the rl batch's advantages (the step adds them from the rewards)")
  if advantages.shape != (next(iter(logp.values())).shape[0],):
    raise ValueError(f"advantages shape {advantages.shape} does not match batch size")
  if cfg.uses_kl and ref_logp is None:
    raise ValueError("GRPO with beta_text/beta_speech > 0 needs reference log-probs: rl batch field 'ref_logp'")
  for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp), ("entropy", entropy),
                  ("sampler_logp", sampler_logp)):
    if x is not None:
      aggregation.check_streams(name, x, logp)

  weights = rl_token_weights(types, cfg.token_set, fallback)
  adv = advantages.astype(jnp.float32)[:, None]
  per_token, ratios, kls = {}, {}, {}
  for k in logp:
    lp = logp[k].astype(jnp.float32)
    old = jax.lax.stop_gradient(lp) if old_logp is None else old_logp[k].astype(jnp.float32)
    ratio = jnp.exp(lp - old)
    objective = ratio * adv
    if cfg.clipping:
      objective = jnp.minimum(objective, jnp.clip(ratio, *cfg.clip_range) * adv)
    if ref_logp is not None:
      kls[k] = kl_divergence(lp, ref_logp[k].astype(jnp.float32), cfg.kl_estimator)
    if cfg.uses_kl:
      objective = objective - type_weights(types[k], cfg.beta_text, cfg.beta_speech) * kls[k]
    per_token[k], ratios[k] = -objective, ratio

  term = aggregation.aggregate(per_token, weights, cfg.aggregation, seq_weight=batch.seq_weight,
                               norm_length=cfg.norm_length, counted=_completions(types))
  metrics = _metrics(types, weights, adv, ratios, kls, entropy, cfg, fallback)
  if sampler_logp is not None:   # sampler (bf16 KV cache) vs training forward on the same tokens, as verl logs it
    gap = {k: jnp.abs(logp[k].astype(jnp.float32) - sampler_logp[k].astype(jnp.float32)) for k in logp}
    metrics["sampler_logp_gap_mean"] = aggregation.masked_mean(gap, weights)
    metrics["sampler_logp_gap_max"] = jnp.max(aggregation.concat_streams(
        {k: jnp.where(weights[k] > 0, gap[k], 0.0) for k in gap}))
  return term, jax.lax.stop_gradient(metrics)


def _metrics(types, weights, adv, ratios, kls, entropy, cfg: GRPOConfig, fallback) -> dict[str, jax.Array]:
  """Token counts, mean ratio, clip fractions, KL and entropy by type (means over the RL tokens)."""
  mean = aggregation.masked_mean
  text = {k: tokens.token_set_mask(t, "text").astype(jnp.float32) for k, t in types.items()}
  speech = {k: tokens.token_set_mask(t, "speech").astype(jnp.float32) for k, t in types.items()}
  out = {
      "num_text_tokens": jnp.sum(aggregation.concat_streams(text)),
      "num_speech_tokens": jnp.sum(aggregation.concat_streams(speech)),
      "num_rl_tokens": jnp.sum(aggregation.concat_streams(weights)),
      "num_fallback_seqs": jnp.zeros((), jnp.int32) if fallback is None else jnp.sum(fallback & _completions(types)),
      "ratio_mean": mean(ratios, weights),
  }
  if cfg.clipping:
    lo, hi = cfg.clip_range
    low = {k: ((ratios[k] < lo) & (adv < 0)).astype(jnp.float32) for k in ratios}
    high = {k: ((ratios[k] > hi) & (adv > 0)).astype(jnp.float32) for k in ratios}
    out["clip_frac_low"], out["clip_frac_high"] = mean(low, weights), mean(high, weights)
    out["clip_frac"] = out["clip_frac_low"] + out["clip_frac_high"]
  if kls:
    out["kl"] = mean(kls, weights)
  if entropy is not None:
    out["entropy_text"], out["entropy_speech"] = mean(entropy, text), mean(entropy, speech)
  return out
