"""Observation 2: the judge agrees with humans on semantics more than on acoustics.

Agreement between judge scores and reference scores (human ratings, or the testbed's true scores) for one
dimension: Spearman and Pearson correlation and Cohen's kappa on score bins, each with a percentile
bootstrap confidence interval over items.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xc, yc = x - x.mean(), y - y.mean()
  denom = np.sqrt((xc ** 2).sum() * (yc ** 2).sum())
  return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
  """Average ranks (ties share the mean of their positions), 1-based."""
  x = np.asarray(x)
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), np.float64)
  sorted_x = x[order]
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  return pearson(_ranks(x), _ranks(y))


def cohen_kappa(x: np.ndarray, y: np.ndarray, bins: Sequence[float] = (1.5, 2.5, 3.5, 4.5)) -> float:
  """Cohen's kappa of the two raters after binning scores at `bins` (default: rounding a 1-5 scale)."""
  a, b = np.digitize(x, bins), np.digitize(y, bins)
  k = len(bins) + 1
  table = np.zeros((k, k))
  np.add.at(table, (a, b), 1)
  n = table.sum()
  observed = np.trace(table) / n
  expected = (table.sum(0) * table.sum(1)).sum() / n ** 2
  return float((observed - expected) / (1 - expected)) if expected < 1 else float("nan")


MEASURES = {"spearman": spearman, "pearson": pearson, "kappa": cohen_kappa}


def agreement(judge: np.ndarray, reference: np.ndarray, *, num_bootstrap: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, dict[str, float]]:
  """{measure: {"value", "lo", "hi"}} for paired scores of one dimension; CIs by resampling items."""
  judge, reference = np.asarray(judge, np.float64), np.asarray(reference, np.float64)
  if judge.shape != reference.shape or judge.ndim != 1 or len(judge) < 2:
    raise ValueError(f"need two equal 1-D score arrays of >= 2 items, got {judge.shape} and {reference.shape}")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(judge), (num_bootstrap, len(judge)))
  out = {}
  for name, fn in MEASURES.items():
    boots = np.array([fn(judge[i], reference[i]) for i in idx])
    boots = boots[np.isfinite(boots)]
    lo, hi = (np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if len(boots) else (np.nan, np.nan))
    out[name] = {"value": fn(judge, reference), "lo": float(lo), "hi": float(hi)}
  return out


def has_true_scores(info: Sequence[dict]) -> bool:
  """Whether a reward's per-item info carries true scores (the testbed judge's `semantic` / `acoustic`)."""
  return bool(info) and all(isinstance(i, dict) and "semantic" in i and "acoustic" in i for i in info)


def true_score_summary(scores: np.ndarray, info: Sequence[dict]) -> dict[str, float]:
  """Per-step metrics of a reward that reports true scores (`has_true_scores`): their means and the judge's
  Pearson correlation with each. {} for rewards without them (real judges)."""
  if not has_true_scores(info):
    return {}
  out = {}
  for dim in ("semantic", "acoustic"):
    true = np.array([i[dim] for i in info], np.float64)
    out[f"judge/true_{dim}"] = float(true.mean())
    out[f"judge/pearson_{dim}"] = pearson(scores, true)
  return out
