"""The paper's claims as comparisons between methods, and the statistics that decide a verdict: Student t
intervals over seeds (a seed's runs are the replicate), differences paired by seed and item, a Bonferroni bound
on refuting a claim that names several rivals, and the positive control that says whether RL learns at the
study's budget at all (docs/testbed.md "The study")."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from wavalign_jax import intervals

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


LEVEL = 0.95


def _seed_means(per_seed: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
  """(per-seed item means, their spread): the sd of the seed means, but no less than the root mean square of the
  seeds' own item-level se. Seed means cannot truly vary less than their items' noise makes them; three that
  happen to agree must not give a near-zero interval."""
  per_seed = [v[np.isfinite(v)] for v in per_seed]
  if not per_seed or any(len(v) == 0 for v in per_seed):
    raise ValueError("every seed needs at least one item value")
  means = np.array([v.mean() for v in per_seed])
  item_var = np.mean([v.var(ddof=1) / len(v) if len(v) > 1 else 0.0 for v in per_seed])
  return means, float(max(means.std(ddof=1), np.sqrt(item_var))) if len(means) > 1 else np.nan


def seed_interval(per_seed: Sequence[np.ndarray], level: float = LEVEL) -> tuple[float, float, float]:
  """(mean, lo, hi) of per-item values given per seed (NaN = not in the stratum). The estimate is the mean over
  seeds of the per-seed item means; the interval is Student's t over those S means (S - 1 degrees of freedom,
  their spread floored by `_seed_means`): a seed's training run is the unit that replicates, and its mean carries
  its items' noise with it. With one seed, t over its items: an interval for that run only, without training
  randomness (docs/testbed.md)."""
  means, spread = _seed_means(per_seed)
  if len(means) == 1:
    return intervals.t_interval(per_seed[0], level)
  mean = float(means.mean())
  half = intervals.t_half_width(spread, len(means), level)
  return mean, mean - half, mean + half


def seed_p_value(per_seed: Sequence[np.ndarray]) -> float:
  """Two-sided p of the mean against 0, from the same t statistic as `seed_interval` (its 95% interval excludes 0
  exactly when p < 0.05)."""
  means, spread = _seed_means(per_seed)
  if len(means) == 1:
    return intervals.t_p_value(*intervals.t_stats(per_seed[0]))
  return intervals.t_p_value(float(means.mean()), spread, len(means))


def seeds_to_decide(per_seed: Sequence[np.ndarray], level: float = LEVEL, most: int = 50) -> int | None:
  """The fewest seeds at which the expected interval just excludes 0 if the seeds' mean and spread stayed as
  measured: about even odds of deciding there, a rough plan for the next study, not a result (a spread from 3
  seeds is itself uncertain). None with one seed (no spread), a mean of 0, or more than `most`."""
  means, spread = _seed_means(per_seed)
  if len(means) < 2 or means.mean() == 0:
    return None
  return next((n for n in range(2, most + 1) if intervals.t_half_width(spread, n, level) < abs(means.mean())), None)


def interval_note(num_seeds: int) -> str:
  """How study.md's intervals were computed (one sentence, with what they cover)."""
  if num_seeds == 1:
    return ("Values in % as mean [95% CI], Student t over the eval items of the one seed: the intervals leave out "
            "training randomness, so a verdict speaks for this seed's runs, not for the method.")
  return (f"Values in % as mean [95% CI], Student t over the {num_seeds} seeds' means ({num_seeds - 1} degrees of "
          "freedom; a seed's runs are the unit, their eval items' noise is in their means); differences are paired "
          "by seed and item. A claim naming k rivals is refuted only by a comparison whose (1 − 0.05/k) interval "
          "lies on the other side of 0 (docs/testbed.md).")


def verdict(lo: float, hi: float, relation: str) -> str:
  """reproduced when the CI of a - b lies on the claimed side of 0, not reproduced when it lies on the other
  side, inconclusive when it holds 0."""
  above, below = lo > 0, hi < 0
  if relation == "less":
    above, below = below, above
  return "reproduced" if above else "not reproduced" if below else "inconclusive"


def paired_items(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int], a: str, b: str,
                 metric: str) -> list[np.ndarray]:
  """a - b on `metric` per item (same item of the same seed), one array per seed. Both runs must have evaluated the
  same items in the same order (each row's subset and id): a difference of other items is no pairing."""
  for s in seeds:
    key = lambda m: [(r.get("subset"), r.get("id")) for r in rows[m][s]]
    if key(a) != key(b):
      raise ValueError(f"seed {s}: {a} and {b} evaluated different items ({len(rows[a][s])} and "
                       f"{len(rows[b][s])} rows, first difference at row "
                       f"{next(i for i, (x, y) in enumerate(zip(key(a) + [None], key(b) + [None])) if x != y)}); "
                       "a study compares runs of one eval set (same train.eval_examples)")
  return [item_values(rows[a][s], metric) - item_values(rows[b][s], metric) for s in seeds]


def paired_difference(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int], a: str, b: str,
                      metric: str, level: float = LEVEL) -> tuple[float, float, float]:
  """(mean, lo, hi) of a - b on `metric`, paired by seed and item."""
  return seed_interval(paired_items(rows, seeds, a, b, metric), level)


def power_check(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int]) -> dict[str, Any] | None:
  """The positive control's IQ gain over `base` [95% CI], its one-sided 95% lower bound (`lower`, the low end of
  the two-sided 90% interval) and each seed's own gain [CI over its items]. "powered" when `lower` > 0: RL
  demonstrably learns at this budget, with a 5% chance of saying so when it does not. None when it did not run."""
  if POSITIVE_CONTROL not in rows or "base" not in rows:
    return None
  gain = lambda ss, level=LEVEL: paired_difference(rows, ss, POSITIVE_CONTROL, "base", "iq", level)
  d, lo, hi = gain(seeds)
  lower = gain(seeds, 2 * LEVEL - 1)[1]
  per_seed = [dict(zip(("seed", "diff", "lo", "hi"), (s, *gain([s])))) for s in seeds]
  return {"a": POSITIVE_CONTROL, "b": "base", "metric": "iq", "diff": d, "lo": lo, "hi": hi, "lower": lower,
          "per_seed": per_seed, "powered": bool(lower > 0)}


def evaluate_claims(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int],
                    same_run: dict[str, str] | None = None,
                    power: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """One entry per claim of CLAIMS whose methods all ran: each comparison's paired difference and CI, and the
  claim's verdict (every comparison reproduced -> reproduced; any not reproduced -> not reproduced, where a claim
  naming k rivals needs the comparison's (1 - 0.05/k) interval on the other side of 0: `refute_lo`, `refute_hi`,
  so that k chances to refute a true claim keep a 5% error between them), `seeds_to_decide` and
  `seeds_to_decide_family_wise` (the same at the Bonferroni level over the study's m claims, 1 - 0.05/m: what Holm
  needs at most). When the positive control failed (`power`), every verdict is "underpowered": RL not learning would
  explain any of them. `same_run` ({alias: method}) keeps a method's second name out of "the best trade-off"
  comparisons."""
  same_run = same_run or {}
  underpowered = power is not None and not power["powered"]
  ran = []
  for claim, metric, a, bs, relation in CLAIMS:
    if bs == "*":
      bs = tuple(m for m in rows if m not in (a, "base", same_run.get(a, a), *NOT_IN_PAPER) and m not in same_run)
    if a in rows and bs and all(b in rows for b in bs):
      ran.append((claim, metric, a, bs, relation))
  out = []
  family = lambda level: 1 - (1 - level) / len(ran)   # Bonferroni over the claims the study compares
  for claim, metric, a, bs, relation in ran:
    comparisons = []
    refute_level = 1 - (1 - LEVEL) / len(bs)   # Bonferroni: any one of the k rivals may refute the claim
    for b in bs:
      diffs = paired_items(rows, seeds, a, b, metric)
      d, lo, hi = seed_interval(diffs)
      _, refute_lo, refute_hi = seed_interval(diffs, refute_level)
      v = verdict(lo, hi, relation)
      if v == "not reproduced" and verdict(refute_lo, refute_hi, relation) != v:
        v = "inconclusive"
      claimed_side = d > 0 if relation == "greater" else d < 0
      comparisons.append({"b": b, "diff": d, "lo": lo, "hi": hi, "refute_lo": refute_lo, "refute_hi": refute_hi,
                          "p": seed_p_value(diffs), "claimed_side": bool(claimed_side),
                          "seeds_to_decide": seeds_to_decide(diffs, LEVEL if claimed_side else refute_level),
                          "seeds_to_decide_family_wise": seeds_to_decide(
                              diffs, family(LEVEL if claimed_side else refute_level)),
                          "verdict": UNDERPOWERED if underpowered else v})
    verdicts = {c["verdict"] for c in comparisons}
    overall = (UNDERPOWERED if underpowered else "not reproduced" if "not reproduced" in verdicts else
               "reproduced" if verdicts == {"reproduced"} else "inconclusive")
    out.append({"claim": claim, "metric": metric, "a": a, "relation": relation, "comparisons": comparisons,
                "verdict": overall, "p": claim_p_value(comparisons)})
  for c, holds in zip(out, intervals.holm([c["p"] for c in out], 1 - LEVEL)):
    c["family_wise"] = holds and c["verdict"] in ("reproduced", "not reproduced")
  return out


def claim_p_value(comparisons: Sequence[dict[str, Any]]) -> float:
  """The p at which a claim's verdict is decided, whichever way: reproduced needs every comparison on the claimed
  side (the largest of their p), refuted needs one on the other side at the Bonferroni level (k times the smallest
  such p). A claim decided at the 95% level has p < 0.05; Holm's procedure over the study's claims
  (`family_wise`) keeps the chance that any of them is decided wrongly at 5%."""
  k = len(comparisons)
  if any(not np.isfinite(c["p"]) for c in comparisons):   # a comparison without an interval decides nothing
    return float("nan")
  reproduce = max(c["p"] for c in comparisons) if all(c["claimed_side"] for c in comparisons) else 1.0
  refute = min([min(1.0, k * c["p"]) for c in comparisons if not c["claimed_side"]], default=1.0)
  return float(min(reproduce, refute))
