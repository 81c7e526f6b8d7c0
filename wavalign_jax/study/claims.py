"""The paper's claims as comparisons between methods, and the statistics that decide a verdict: a hierarchical
bootstrap over seeds and eval items, paired differences, and the positive control that says whether RL learns
at the study's budget at all (docs/testbed.md "The study")."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CLAIMS = (
    # (claim, metric, method a, methods b, relation): a - b on the metric; "greater" / "less" than 0.
    ("text-token RL >= full-token RL on IQ", "iq", "rl_text", ("rl_full",), "greater"),
    ("text-token RL >= full-token RL on EQ", "eq", "rl_text", ("rl_full",), "greater"),
    ("full-token DPO degrades EQ", "eq", "dpo_full", ("base",), "less"),
    ("SFT keeps or raises EQ", "eq", "sft", ("base",), "greater"),
    ("SFT lowers IQ", "iq", "sft", ("base",), "less"),
    ("the dynamic hybrid has the best IQ-EQ trade-off", "tradeoff", "hybrid", "*", "greater"),
    ("dynamic > fixed mixes", "tradeoff", "hybrid", ("fixed_balance", "fixed_boost", "fixed_plus_vanilla"),
     "greater"),
    ("EMA > no EMA", "tradeoff", "hybrid", ("ablate_text_dynamic_no_ema",), "greater"),
    ("text-token > all-token, fixed 0.5", "tradeoff", "ablate_text_fixed_0.5", ("ablate_all_fixed_0.5",), "greater"),
    ("text-token > all-token, dynamic", "tradeoff", "hybrid", ("ablate_all_dynamic",), "greater"),
    ("two-stage below the hybrid", "tradeoff", "two_stage", ("hybrid",), "less"),
)
# Text-token RL with the exact-match reward: when it does not beat `base` on IQ, RL learns nothing at this budget
# and no verdict can be told apart from "RL did not train" (docs/testbed.md).
POSITIVE_CONTROL = "rl_text_exact"
UNDERPOWERED = "underpowered"
# Methods that are not the paper's: never a competitor in "the best trade-off".
NOT_IN_PAPER = (POSITIVE_CONTROL, "ablate_text_dynamic_batch_std")


def in_stratum(row: dict[str, Any], stratum: str) -> bool:
  """"" every item; "id" / "ood" by the item's subset; else its task family (arithmetic / lookup)."""
  if stratum in ("id", "ood"):
    return (row["subset"] == "id") == (stratum == "id")
  return not stratum or row["family"] == stratum


def item_values(rows: Sequence[dict[str, Any]], metric: str) -> np.ndarray:
  """Per-item values of `metric` ("iq", "tradeoff", "id/iq", "arithmetic/eq", ...); NaN outside its stratum. The
  trade-off is the mean of IQ and EQ (the testbed benchmark's aggregate, evaluation/testbed.py)."""
  stratum, _, dim = metric.rpartition("/")
  value = lambda r: 0.5 * (r["iq"] + r["eq"]) if dim == "tradeoff" else r[dim]
  return np.array([value(r) if in_stratum(r, stratum) else np.nan for r in rows], np.float64)


def hierarchical_bootstrap(per_seed: Sequence[np.ndarray], *, num_bootstrap: int = 2000, level: float = 0.95,
                           seed: int = 0) -> tuple[float, float, float]:
  """(mean, lo, hi) of per-item values given per seed (NaN = not in the stratum): the estimate is the mean over
  seeds of the per-seed item means; each bootstrap draw resamples seeds, then items within each drawn seed."""
  per_seed = [v[np.isfinite(v)] for v in per_seed]
  if not per_seed or any(len(v) == 0 for v in per_seed):
    raise ValueError("every seed needs at least one item value")
  rng = np.random.default_rng(seed)
  estimate = float(np.mean([v.mean() for v in per_seed]))
  drawn = rng.integers(0, len(per_seed), (num_bootstrap, len(per_seed)))   # draw b's seeds
  item_means = np.empty(drawn.shape)   # each drawn seed's items resampled independently (vectorised per seed)
  for s, v in enumerate(per_seed):
    where = drawn == s
    item_means[where] = v[rng.integers(0, len(v), (int(where.sum()), len(v)))].mean(axis=1)
  boots = item_means.mean(axis=1)
  lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
  return estimate, float(lo), float(hi)


def verdict(lo: float, hi: float, relation: str) -> str:
  """reproduced when the CI of a - b lies on the claimed side of 0, not reproduced when it lies on the other
  side, inconclusive when it holds 0."""
  above, below = lo > 0, hi < 0
  if relation == "less":
    above, below = below, above
  return "reproduced" if above else "not reproduced" if below else "inconclusive"


def paired_difference(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int], a: str, b: str,
                      metric: str) -> tuple[float, float, float]:
  """(mean, lo, hi) of a - b on `metric`, paired by seed and item."""
  return hierarchical_bootstrap([item_values(rows[a][s], metric) - item_values(rows[b][s], metric) for s in seeds])


def power_check(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int]) -> dict[str, Any] | None:
  """The positive control's IQ gain over `base` [CI]; "powered" when the CI lies above 0. None when it did not run."""
  if POSITIVE_CONTROL not in rows or "base" not in rows:
    return None
  d, lo, hi = paired_difference(rows, seeds, POSITIVE_CONTROL, "base", "iq")
  return {"a": POSITIVE_CONTROL, "b": "base", "metric": "iq", "diff": d, "lo": lo, "hi": hi, "powered": lo > 0}


def evaluate_claims(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int],
                    same_run: dict[str, str] | None = None,
                    power: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """One entry per claim of CLAIMS whose methods all ran: each comparison's paired difference and CI, and the
  claim's verdict (every comparison reproduced -> reproduced; any not reproduced -> not reproduced). When the
  positive control failed (`power`), every verdict is "underpowered": RL not learning would explain any of them.
  `same_run` ({alias: method}) keeps a method's second name out of "the best trade-off" comparisons."""
  same_run = same_run or {}
  underpowered = power is not None and not power["powered"]
  out = []
  for claim, metric, a, bs, relation in CLAIMS:
    if bs == "*":
      bs = tuple(m for m in rows if m not in (a, "base", same_run.get(a, a), *NOT_IN_PAPER) and m not in same_run)
    if a not in rows or not bs or any(b not in rows for b in bs):
      continue
    comparisons = []
    for b in bs:
      d, lo, hi = paired_difference(rows, seeds, a, b, metric)
      comparisons.append({"b": b, "diff": d, "lo": lo, "hi": hi,
                          "verdict": UNDERPOWERED if underpowered else verdict(lo, hi, relation)})
    verdicts = {c["verdict"] for c in comparisons}
    overall = (UNDERPOWERED if underpowered else "not reproduced" if "not reproduced" in verdicts else
               "reproduced" if verdicts == {"reproduced"} else "inconclusive")
    out.append({"claim": claim, "metric": metric, "a": a, "relation": relation, "comparisons": comparisons,
                "verdict": overall})
  return out
