"""Testbed metrics over generated responses: IQ (content) and EQ (speech agrees with text and style).

Each item is (record, text, codes): the eval record, the decoded text channel, and the generated
audio codes (0-based). IQ asks whether the text answers the question; EQ whether the audio says
that same text in the requested style, measured against the unit-TTS of the generated text, so
EQ is independent of correctness (a wrong answer spoken well still has high EQ).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from wavalign_jax.testbed import judge, unit_tts

Item = tuple[dict[str, Any], str, Sequence[int]]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
  """Levenshtein distance (unit costs for insertion, deletion, substitution)."""
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    cur = [i]
    for j, y in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
    prev = cur
  return prev[-1]


def speech_agreement(text: str, codes: Sequence[int], style: str) -> float:
  """1 - edit distance / max length between `codes` and unit_tts(text, style), in [0, 1].

  A response without text scores 0: there is nothing the speech could agree with.
  """
  ref = unit_tts.synthesize(" ".join(judge.normalize(text)), style)
  if not ref:
    return 0.0
  codes = [int(c) for c in codes]
  return 1.0 - edit_distance(codes, ref) / max(len(codes), len(ref))


def _check(items: Sequence[Item]) -> None:
  if not items:
    raise ValueError("testbed metrics need at least one (record, text, codes) item")


def iq(items: Sequence[Item]) -> float:
  """Answer accuracy: fraction of items whose normalized text equals the normalized answer."""
  _check(items)
  return float(np.mean([judge.normalize(text) == judge.normalize(rec["answer"])
                        for rec, text, _ in items]))


def eq(items: Sequence[Item]) -> float:
  """Mean speech_agreement of the generated codes with the generated text in the requested style."""
  _check(items)
  return float(np.mean([speech_agreement(text, codes, rec["style"]) for rec, text, codes in items]))


def summary(items: Sequence[Item]) -> dict[str, float]:
  """IQ, EQ and the mean rule-judge score (the reward the RL step would see)."""
  _check(items)
  scores = [judge.score(text, rec["answer"])[0] for rec, text, _ in items]
  return {"iq": iq(items), "eq": eq(items), "judge_score": float(np.mean(scores))}
