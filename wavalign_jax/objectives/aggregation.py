"""Loss sums kept apart from their denominators (Tunix-style).

Every objective returns a `LossTerm(sum, count)` and the division happens once, at the end of
a step (`term_value`). Summing the terms of micro-batches or shards therefore gives the same
loss as one big batch. Counts depend only on masks and weights, never on parameters, so the
global count of a step can be computed before any forward pass (`aggregate_count`) and handed
to every micro-batch.

An objective treats all streams of a sequence as one sequence of positions (streams are
concatenated along the length axis in sorted-name order); only "stream_mean" keeps one term
per stream (Kimi-Audio upstream: a masked mean per stream, weighted 1:1).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from wavalign_jax.batches import Streams


# "seq_mean_token_mean": masked mean per sequence, then mean over sequences (the reference).
# "token_mean": one masked mean over every token of the batch.
# "seq_mean_token_sum_norm": per-sequence token sum divided by a fixed length, mean over sequences.
# "stream_mean": one token mean per stream over the batch; the stream means are added.
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "stream_mean")


class LossTerm(NamedTuple):
  """A loss numerator and its denominator; both scalars, or both [S] (one entry per stream)."""
  sum: jax.Array
  count: jax.Array


def check_aggregation(mode: str, allowed: tuple[str, ...] = AGGREGATIONS) -> None:
  if mode not in allowed:
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {list(allowed)}")


def concat_streams(x: Streams) -> jax.Array:
  """[B, L_1 + L_2 + ...]: all streams of a sequence as one row, streams in sorted-name order."""
  return jnp.concatenate([x[k] for k in sorted(x)], axis=1)


def check_streams(name: str, x: Streams, like: Streams) -> None:
  """Clear error when two per-stream dicts disagree in streams or shapes."""
  if set(x) != set(like):
    raise ValueError(f"{name}: streams {sorted(x)} do not match {sorted(like)}")
  for k in like:
    if x[k].shape != like[k].shape:
      raise ValueError(f"{name}[{k!r}]: shape {x[k].shape} does not match {like[k].shape}")


def _seq_weight(weights: Streams, seq_weight: jax.Array | None) -> jax.Array:
  b = next(iter(weights.values())).shape[0]
  return jnp.ones((b,), jnp.float32) if seq_weight is None else seq_weight.astype(jnp.float32)


def aggregate_count(weights: Streams, mode: str, seq_weight: jax.Array | None = None,
                    counted: jax.Array | None = None) -> jax.Array:
  """The denominator `aggregate` uses, from the token weights alone (no parameters needed).

  `counted` [B]: the sequences the sequence-mean modes divide by (default: those with a weighted token).
  """
  check_aggregation(mode)
  sw = _seq_weight(weights, seq_weight)
  if mode == "stream_mean":
    return jnp.stack([jnp.sum(sw[:, None] * weights[k]) for k in sorted(weights)])
  tok_count = jnp.sum(concat_streams(weights), axis=1)
  if mode == "token_mean":
    return jnp.sum(sw * tok_count)
  return jnp.sum(sw * (tok_count > 0 if counted is None else counted))


def aggregate(values: Streams, weights: Streams, mode: str, *, seq_weight: jax.Array | None = None,
              norm_length: float = 0.0, counted: jax.Array | None = None) -> LossTerm:
  """Weighted per-token `values` {stream: [B, L]} reduced to a LossTerm by `mode`.

  `weights` are per-token (masks times per-type weights); `seq_weight` [B] scales whole
  sequences (0 drops one, e.g. a failed judge call) in the numerator and the denominator;
  `counted` as in `aggregate_count`.
  """
  check_streams("weights", weights, values)
  count = aggregate_count(weights, mode, seq_weight, counted)
  sw = _seq_weight(weights, seq_weight)
  if mode == "stream_mean":
    return LossTerm(jnp.stack([jnp.sum(sw[:, None] * weights[k] * values[k]) for k in sorted(values)]),
                    count)
  w, v = concat_streams(weights), concat_streams(values)
  tok_sum, tok_count = jnp.sum(w * v, axis=1), jnp.sum(w, axis=1)
  if mode == "token_mean":
    return LossTerm(jnp.sum(sw * tok_sum), count)
  if mode == "seq_mean_token_mean":
    has = tok_count > 0
    per_seq = jnp.where(has, tok_sum / jnp.where(has, tok_count, 1.0), 0.0)
  else:
    if norm_length <= 0:
      raise ValueError("aggregation 'seq_mean_token_sum_norm' needs norm_length > 0")
    per_seq = tok_sum / norm_length
  return LossTerm(jnp.sum(sw * per_seq), count)


def term_value(term: LossTerm, count: jax.Array | None = None) -> jax.Array:
  """sum / count (added over stream entries); an empty term is 0.

  Pass the step's global `count` to get a micro-batch's share of the step loss: the shares
  (and their gradients) then add up to the loss of the whole step.
  """
  c = term.count if count is None else count
  return jnp.sum(jnp.where(c > 0, term.sum / jnp.where(c > 0, c, 1.0), 0.0))


def masked_mean(values: Streams, weights: Streams) -> jax.Array:
  """Token mean over all streams (for metrics)."""
  w = concat_streams(weights)
  return jnp.sum(w * concat_streams(values)) / jnp.maximum(jnp.sum(w), 1e-8)
