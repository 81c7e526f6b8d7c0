"""The in-training evaluation of a run on built datasets: greedy responses to `data.eval` scored by the run's reward.

A run with `data.source=arrayrecord` and `data.eval` (an RL dataset from data_pipeline.build) evaluates before
training, every `train.eval_every` steps and at the end: the mean reward of the greedy responses with a 95%
interval over items (Student t), and how many items the reward failed on. A failed item (a judge call that
timed out, a reply without a score) is counted and left out of the mean, not averaged in as its fallback score.
On several hosts each scores its share of the items and the scores are all-gathered: a judge sees every item once.
The paper's benchmarks are `python -m wavalign_jax.evaluate`'s; the testbed has its own IQ / EQ evaluator.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from wavalign_jax import intervals
from wavalign_jax.rewards.base import RewardFn, RewardItem, RewardResult

def reward_evaluator(reward_fn: RewardFn
                     ) -> Callable[[Sequence[RewardItem]], tuple[dict[str, float], list[dict]]]:
  """items -> (summary, per-item rows): `reward` [reward_lo, reward_hi] over the items scored, `reward/failed`,
  `count`; a row per item with its record's id, source file and line, its score and whether it failed."""
  def evaluate(items: Sequence[RewardItem]) -> tuple[dict[str, float], list[dict]]:
    result = _score_across_hosts(reward_fn, items)
    rows = [{"id": item.record.get("id"), "source": item.record.get("source"), "line": item.record.get("line"),
             "reward": float(score), "failed": bool(failed)}
            for item, score, failed in zip(items, result.scores, result.failed)]
    summary = {"count": float(len(items)), "reward/failed": float(result.failed.sum())}
    mean, lo, hi = intervals.t_interval(result.scores[~result.failed])
    summary.update({k: v for k, v in (("reward", mean), ("reward_lo", lo), ("reward_hi", hi)) if np.isfinite(v)})
    return summary, rows
  return evaluate


def _score_across_hosts(reward_fn: RewardFn, items: Sequence[RewardItem]) -> RewardResult:
  """Every host holds every eval response (train.evaluate); on several hosts each scores items h, h + n, ... and
  the scores are all-gathered, so a judge sees each item once, not once per host, and every host gets the same
  result."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return reward_fn(items)
  mine = reward_fn(items[index::count])
  per_host = -(-len(items) // count)   # hosts score ceil or floor of len / count items: pad to the ceiling
  pad = per_host - len(mine.scores)
  gathered = multihost_utils.process_allgather(np.stack([np.pad(mine.scores, (0, pad)),
                                                         np.pad(mine.failed.astype(np.float32), (0, pad))]))
  # gathered[h, k, j]: host h's j-th item, which is item h + count * j; transposed, row j holds items count * j ...
  scores, failed = (gathered[:, k].T.reshape(-1)[:len(items)] for k in range(2))
  return RewardResult(scores=scores, failed=failed.astype(bool))
