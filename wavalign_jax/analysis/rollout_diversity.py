"""Observation 4: discriminability is uneven and stage-dependent, weakest along acoustics.

Per prompt group: the variance of the rewards (and of each reward part), whether the group carries
information (a non-zero variance gives non-zero advantages), and distinct-n of the text tokens and of the
audio codes across the group's rollouts.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
  """Distinct n-grams over all n-grams of the group's sequences (1 = all different, 1/G = all identical)."""
  grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def informative(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
  """Per group of values [P, G]: 1.0 where its valid values differ (non-zero advantages under group scaling,
  objectives/grpo.group_stats), else 0.0. Of rewards: the groups that train (a failed judge call left out of the
  advantages, `reward.exclude_failed`, is left out here); of true semantic scores: those whose difference is real,
  not judge noise. The spread is compared exactly (a variance of equal values can round above 0)."""
  values = np.asarray(values, np.float64)
  ok = np.ones(values.shape, bool) if valid is None else np.asarray(valid, bool)
  return (np.where(ok, values, -np.inf).max(axis=1) > np.where(ok, values, np.inf).min(axis=1)).astype(np.float64)


def group_stats(rewards: np.ndarray, parts: Mapping[str, np.ndarray] | None = None,
                text: Sequence[Sequence[Sequence[int]]] | None = None,
                audio: Sequence[Sequence[Sequence[int]]] | None = None, n: int = 2,
                valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Per-group statistics: rewards [P, G] (of which `valid` count: all by default), optional reward parts
  {name: [P, G]}, optional per-group lists of G text-id / audio-code sequences. Returns {name: [P]}."""
  rewards = np.asarray(rewards, np.float64)
  counted = np.ma.masked_array(rewards, mask=None if valid is None else ~np.asarray(valid, bool))
  out = {"reward_var": np.ma.filled(counted.var(axis=1), 0.0), "informative": informative(rewards, valid)}
  for name, values in (parts or {}).items():
    out[f"{name}_var"] = np.asarray(values, np.float64).var(axis=1)
  if text is not None:
    out[f"text_distinct_{n}"] = np.array([distinct_n(g, n) for g in text])
  if audio is not None:
    out[f"audio_distinct_{n}"] = np.array([distinct_n(g, n) for g in audio])
  return out


def content_stats(rewards: np.ndarray, contents: Sequence[tuple[Sequence[int], Sequence[int]]],
                  n: int = 2, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """`group_stats` of rollouts given as (text ids, audio codes) per row; rows p*G .. p*G+G-1 are prompt p's."""
  P, G = np.shape(rewards)
  grouped = lambda part: [[contents[p * G + g][part] for g in range(G)] for p in range(P)]
  return group_stats(rewards, text=grouped(0), audio=grouped(1), n=n, valid=valid)


def summary(stats: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Means over groups (the logged per-step metrics), e.g. `informative` = fraction of informative groups."""
  return {f"diversity/{k}": float(np.mean(v)) for k, v in stats.items()}


def pass_stats(correct: np.ndarray) -> dict[str, float]:
  """Headroom of a rollout batch from per-rollout correctness [P, G] (e.g. the testbed judge's exact answers):
  pass@1, pass@G, and the fractions of hopeless (no rollout right) and saturated (all right) prompt groups."""
  correct = np.asarray(correct, bool)
  return {"pass/at_1": float(correct.mean()), "pass/at_G": float(correct.any(axis=1).mean()),
          "pass/hopeless_groups": float((~correct.any(axis=1)).mean()),
          "pass/saturated_groups": float(correct.all(axis=1).mean())}
