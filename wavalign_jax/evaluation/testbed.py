"""The testbed as a benchmark: IQ / EQ / rule-judge score (testbed/metrics.py) over a responses JSONL.

Rows: `iq`, `eq` and its two dimensions `intelligibility` and `style` as % (0-100), `judge_score` (the
semantic rule score) on 1-5 (x20 on the 0-100 scale, like VoiceBench's judged columns). The aggregate is
the mean of IQ and EQ in %: the two axes the paper trades off.
"""
from __future__ import annotations

from typing import Any, Sequence

from wavalign_jax.evaluation import common
from wavalign_jax.rewards.base import RewardItem
from wavalign_jax.testbed import metrics


def score(records: Sequence[dict[str, Any]]) -> common.BenchmarkScore:
  items = [RewardItem(r, r["text"], tuple(r["audio_codes"])) for r in records]
  for r in records:
    for name in ("answer", "style", "task"):
      common.field(r, name)
  m = metrics.summary(items)
  n = len(items)
  subsets = [common.SubsetScore(k, 100 * m[k], 100 * m[k], n) for k in ("iq", "eq", "intelligibility", "style")]
  subsets.append(common.SubsetScore("judge_score", m["judge_score"], 20 * m["judge_score"], n, unit="1-5"))
  return common.BenchmarkScore("testbed", subsets, 50 * (m["iq"] + m["eq"]), "mean(iq, eq)")
