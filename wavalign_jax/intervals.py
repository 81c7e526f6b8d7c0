"""Student t intervals, the one interval the project reports for a mean: over a run's eval items
(testbed/metrics.py, evaluation/reward_eval.py, a one-seed study) and over a study's seeds (study/claims.py)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats


def t_half_width(spread: float, n: int, level: float = 0.95) -> float:
  """Half the width of the two-sided `level` interval of a mean of `n` values whose sd is `spread` (n - 1 degrees
  of freedom); NaN below 2 values."""
  if n < 2:
    return float("nan")
  return float(stats.t.ppf((1 + level) / 2, n - 1) * spread / np.sqrt(n))


def t_p_value(mean: float, spread: float, n: int) -> float:
  """Two-sided p of a mean of `n` values with sd `spread` against 0: below 1 - level exactly when the `level`
  interval of `t_half_width` excludes 0. NaN below 2 values."""
  if n < 2 or not np.isfinite(spread):
    return float("nan")
  if spread == 0:
    return 0.0 if mean != 0 else 1.0
  return float(2 * stats.t.sf(abs(mean) / (spread / np.sqrt(n)), n - 1))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
  """Which of m hypotheses Holm's step-down procedure rejects at family-wise level `alpha`: the smallest p against
  alpha / m, the next against alpha / (m - 1), ..., stopping at the first that fails (NaN never rejects)."""
  order = sorted(range(len(p_values)), key=lambda i: (not np.isfinite(p_values[i]), p_values[i]))
  rejected = [False] * len(p_values)
  for rank, i in enumerate(order):
    if not p_values[i] <= alpha / (len(p_values) - rank):
      break
    rejected[i] = True
  return rejected


def t_stats(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
  """(mean, sd, n) of the finite `values`: what an interval and a p value of their mean are made of (NaN sd below 2
  of them, NaN mean for none)."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  mean = float(v.mean()) if len(v) else float("nan")
  return mean, float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
  """(mean, lo, hi) of the finite `values`; NaN bounds below 2 of them (NaN mean for none)."""
  mean, sd, n = t_stats(values)
  half = t_half_width(sd, n, level)
  return mean, mean - half, mean + half
