"""Observation 1: SFT shifts the whole sequence coherently; RL updates are small and local.

Per-token change of the reference response's log-probability between two checkpoints (e.g. base -> SFT,
base -> hybrid), split by token type and by relative position in the response.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wavalign_jax.batches import LogprobFn, SeqBatch
from wavalign_jax.tokens import TokenType

TYPE_NAMES = {TokenType.TEXT: "text", TokenType.SPEECH: "speech", TokenType.BOUNDARY: "boundary"}


def logprob_shift(logprob_fn: LogprobFn, params_a: Any, params_b: Any,
                  batch: SeqBatch) -> dict[str, jax.Array]:
  """{stream: Δ log p [B, L]} = log p_b − log p_a of the batch's targets (0 where the type is NONE)."""
  a, b = logprob_fn(params_a, batch).logp, logprob_fn(params_b, batch).logp
  return {s: jnp.where(batch.types[s] != TokenType.NONE, b[s] - a[s], 0.0) for s in a}


def relative_positions(types: np.ndarray) -> np.ndarray:
  """[B, L] in [0, 1): index of each response position among its row's response positions / their count."""
  resp = types != TokenType.NONE
  rank = np.cumsum(resp, axis=1) - 1
  return np.where(resp, rank / np.maximum(resp.sum(axis=1, keepdims=True), 1), -1.0)


def summarize(delta: Mapping[str, np.ndarray], types: Mapping[str, np.ndarray], *, threshold: float = 0.1,
              bins: int = 10) -> dict[str, Any]:
  """Per token type: mean |Δ|, fraction of tokens with |Δ| > threshold, mean |Δ| in `bins` relative-position
  bins and its spread (std over bins: small = the shift is spread evenly along the sequence)."""
  out: dict[str, Any] = {}
  for t, name in TYPE_NAMES.items():
    values, where = [], []
    for s in delta:
      m = np.asarray(types[s]) == int(t)
      values.append(np.abs(np.asarray(delta[s]))[m])
      where.append(relative_positions(np.asarray(types[s]))[m])
    v, pos = np.concatenate(values), np.concatenate(where)
    if not v.size:
      continue
    idx = np.minimum((pos * bins).astype(int), bins - 1)
    profile = [float(v[idx == i].mean()) if np.any(idx == i) else float("nan") for i in range(bins)]
    out[name] = {"count": int(v.size), "mean_abs": float(v.mean()), "frac_above": float(np.mean(v > threshold)),
                 "position_profile": profile, "position_spread": float(np.nanstd(profile))}
  return out
