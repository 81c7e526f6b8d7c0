"""The testbed's judge: a holistic 1-5 score from a reliable semantic part and a noisy acoustic part.

The paper's LLM judge agrees well with humans on content and poorly on acoustics (its Observation 2).
The testbed models exactly that: the semantic part `answers.score(text, answer)` is exact, the acoustic part
is the response's true speech quality (testbed/metrics.py EQ, in [0, 1]) seen through Gaussian noise:
  judge = clip((1 - w) * semantic + w * (1 + 4 * (acoustic + noise)), 1, 5),  noise ~ N(0, sigma^2)
with w = `acoustic_weight` and sigma = `acoustic_noise` (config.testbed.judge_*; docs/testbed.md).
The noise is a fixed function of (seed, prompt id, response): like an LLM judge at temperature 0,
the same response always gets the same score, so runs are reproducible and resumable. Every item's
info holds the true `semantic` and `acoustic` scores beside the judge's, so agreement is measurable.

The semantic scale mirrors the LLM judge the paper uses, so the gate thresholds (score 3 in the
direction gate, variance of a 1-5 score in the information gate) keep their meaning:
  5  exactly the answer
  4  a number off by one
  3  a number off by two; the right words in the wrong order; a multi-word answer plus one
     extra word (no more, and not for one-word answers: listing candidates must not pay)
  2  partly right: word-overlap F1 with the answer > 0.5
  1  wrong or empty
Scoring is a pure function of its inputs, so it never fails (every item has failed = False).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from wavalign_jax.rewards.base import RewardItem, RewardResult
from wavalign_jax.testbed import answers, metrics


def observation_noise(seed: int, key: str, text: str, codes: Sequence[int]) -> float:
  """A standard normal draw that is a fixed function of its arguments (stable across processes)."""
  digest = hashlib.blake2b(repr((seed, key, text, tuple(int(c) for c in codes))).encode(), digest_size=8).digest()
  return float(np.random.default_rng(int.from_bytes(digest, "little")).standard_normal())


@dataclasses.dataclass(frozen=True)
class TestbedJudge:
  """RewardFn: the holistic judge of the module docstring (acoustic_weight 0 = the semantic score alone)."""
  acoustic_weight: float = 0.3
  acoustic_noise: float = 0.5
  seed: int = 0
  name: str = "testbed_judge"

  def __post_init__(self):
    if not 0.0 <= self.acoustic_weight <= 1.0 or self.acoustic_noise < 0:
      raise ValueError(f"{self.name}: need 0 <= acoustic_weight <= 1 and acoustic_noise >= 0, got "
                       f"{self.acoustic_weight} and {self.acoustic_noise} (config.testbed.judge_*)")

  def __call__(self, items: Sequence[RewardItem]) -> RewardResult:
    scores, info = [], []
    for i, item in enumerate(items):
      record = item.record
      if not isinstance(record.get("answer"), str) or not isinstance(record.get("style"), str):
        raise ValueError(f"{self.name}: item {i} needs string 'answer' and 'style' in its prompt "
                         f"(keys {sorted(record)})")
      semantic, reason = answers.score(item.text, record["answer"])
      acoustic = metrics.speech_scores(record["style"], item.text, item.audio_codes)["eq"]
      observed = acoustic + self.acoustic_noise * observation_noise(
          self.seed, str(record.get("id")), item.text, item.audio_codes)
      w = self.acoustic_weight
      scores.append(float(np.clip((1 - w) * semantic + w * (1 + 4 * observed), 1.0, 5.0)))
      info.append({"reason": reason, "semantic": semantic, "acoustic": acoustic, "acoustic_observed": observed})
    return RewardResult(scores=scores, failed=[False] * len(scores), info=info)
