"""Supervised next-token NLL on a reference response, with per-type weights.

The SFT term anchors the speech distribution in the hybrid objective (docs/method.md §1): it covers
text tokens, speech codes and audio boundary markers (BOUNDARY counts as speech).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from wavalign_jax import tokens
from wavalign_jax.batches import SeqBatch, Streams
from wavalign_jax.objectives import aggregation

# Config names -> aggregation modes. "sample_mean" (reference): per-sample weighted masked mean,
# then batch mean; "token_mean": one mean over all tokens; "stream_mean" (Kimi-Audio upstream).
SFT_AGGREGATIONS = {"sample_mean": "seq_mean_token_mean", "token_mean": "token_mean",
                    "stream_mean": "stream_mean"}


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  text_weight: float = 1.0
  speech_weight: float = 1.0     # speech codes and begin/end-of-audio markers
  aggregation: str = "sample_mean"
  token_set: str = "all"         # tokens that get any SFT loss at all

  def __post_init__(self):
    aggregation.check_aggregation(self.aggregation, tuple(SFT_AGGREGATIONS))
    if self.token_set not in tokens.TOKEN_SETS:
      raise ValueError(f"SFTConfig.token_set {self.token_set!r}: choose one of {sorted(tokens.TOKEN_SETS)}")


def type_weights(types: jax.Array, text_weight: float, speech_weight: float) -> jax.Array:
  """Per-position weight from the token type: text_weight, speech_weight, or 0 (NONE)."""
  return (text_weight * tokens.token_set_mask(types, "text")
          + speech_weight * tokens.token_set_mask(types, "speech")).astype(jnp.float32)


def sft_token_weights(types: Streams, cfg: SFTConfig) -> dict[str, jax.Array]:
  return {k: type_weights(t, cfg.text_weight, cfg.speech_weight) * tokens.token_set_mask(t, cfg.token_set)
          for k, t in types.items()}


def sft_count(batch: SeqBatch, cfg: SFTConfig) -> jax.Array:
  """The SFT denominator of a batch, without a forward pass."""
  return aggregation.aggregate_count(sft_token_weights(batch.types, cfg), SFT_AGGREGATIONS[cfg.aggregation])


def sft_loss(logp: Streams, batch: SeqBatch, cfg: SFTConfig) -> aggregation.LossTerm:
  """Weighted NLL of the batch's targets; `logp` {stream: [B, L]} log-probs of each target."""
  aggregation.check_streams("types", batch.types, logp)
  nll = {k: -v.astype(jnp.float32) for k, v in logp.items()}
  return aggregation.aggregate(nll, sft_token_weights(batch.types, cfg), SFT_AGGREGATIONS[cfg.aggregation])
