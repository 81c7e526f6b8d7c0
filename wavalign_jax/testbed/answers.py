"""Scoring a response text against the reference answer: the unit both the testbed judge and its metrics use.

`normalize` is what IQ compares (exact match of normalised words); `score` is the judge's 1-5 semantic part
(testbed/judge.py's docstring gives the scale). Both are pure functions of their inputs.
"""
from __future__ import annotations

import collections
import re

_PUNCT = re.compile(r"[^\w\s]")


def normalize(text: str) -> list[str]:
  """Lower-cased words without punctuation: the unit both the judge and IQ compare."""
  return _PUNCT.sub(" ", text.lower()).split()


def normalized(text: str) -> str:
  """`normalize` as one string: the form the testbed's exact-match reward compares, so that it rewards exactly
  what IQ counts (SQuAD's normalisation would also accept an answer without its article, "red dog" for "a red
  dog")."""
  return " ".join(normalize(text))


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
