"""Rule-based 1-5 judge of the text channel against the record's answer.

Its scale mirrors the LLM judge the paper uses, so the gate thresholds (score 3 in the direction
gate, variance of a 1-5 score in the information gate) keep their meaning:
  5  exactly the answer
  4  a number off by one
  3  a number off by two; the right words in the wrong order; a multi-word answer plus one
     extra word (no more, and not for one-word answers: listing candidates must not pay)
  2  partly right: word-overlap F1 with the answer > 0.5
  1  wrong or empty
Scoring is a pure function of two strings, so it never fails (every item has failed = False).
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Sequence

from wavalign_jax.rewards.base import RewardItem, RewardResult

_PUNCT = re.compile(r"[^\w\s]")


def normalize(text: str) -> list[str]:
  """Lower-cased words without punctuation: the unit both the judge and IQ compare."""
  return _PUNCT.sub(" ", text.lower()).split()


def _contains_run(words: list[str], run: list[str]) -> bool:
  return any(words[i:i + len(run)] == run for i in range(len(words) - len(run) + 1))


def score(text: str, answer: str) -> tuple[float, str]:
  """(score, reason) of a response text against the reference answer."""
  pred, ref = normalize(text), normalize(answer)
  if not pred:
    return 1.0, "empty"
  if pred == ref:
    return 5.0, "exact"
  if len(pred) == len(ref) == 1 and pred[0].isdigit() and ref[0].isdigit():
    off = abs(int(pred[0]) - int(ref[0]))
    if off <= 2:
      return 5.0 - off, f"off by {off}"
  if sorted(pred) == sorted(ref):
    return 3.0, "wrong order"
  if len(ref) > 1 and len(pred) == len(ref) + 1 and _contains_run(pred, ref):
    return 3.0, "extra word"
  common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  f1 = 2 * common / (len(pred) + len(ref))
  if f1 > 0.5:
    return 2.0, f"partial (f1 {f1:.2f})"
  return 1.0, "wrong"


@dataclasses.dataclass(frozen=True)
class RuleJudge:
  """RewardFn scoring RewardItem.text against prompt["answer"]."""
  name: str = "testbed_judge"

  def __call__(self, items: Sequence[RewardItem]) -> RewardResult:
    results = []
    for i, item in enumerate(items):
      answer = item.prompt.get("answer")
      if not isinstance(answer, str):
        raise ValueError(f"{self.name}: item {i} has no string 'answer' in its prompt "
                         f"(keys {sorted(item.prompt)})")
      results.append(score(item.text, answer))
    return RewardResult(scores=[s for s, _ in results], failed=[False] * len(results),
                        info=[{"reason": r} for _, r in results])
