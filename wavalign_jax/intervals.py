"""Student t intervals, the one interval the project reports for a mean: over a run's eval items
(evaluation/reward_eval.py, a one-seed study) and over a study's seeds (study/claims.py)."""
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


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
  """(mean, lo, hi) of the finite `values`; NaN bounds below 2 of them (NaN mean for none)."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if not len(v):
    return float("nan"), float("nan"), float("nan")
  mean = float(v.mean())
  half = t_half_width(float(v.std(ddof=1)), len(v), level) if len(v) > 1 else float("nan")
  return mean, mean - half, mean + half
