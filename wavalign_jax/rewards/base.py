"""The reward interface: a batch of (prompt, response) items in, scores plus per-item status out.

Every reward (LLM judge, rule-based, testbed judge) implements `RewardFn`; `combine` sums several
with weights. A failed item keeps a fallback score but is marked failed, so the training loop can
count it, log it, and (by config) keep it out of the gate statistics and the advantages.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RewardItem:
  """One response to score. `prompt` carries the record's fields (question_text, answer, style, ...)."""
  prompt: dict[str, Any]
  text: str                       # decoded text channel of the response
  audio_codes: tuple[int, ...] = ()   # audio codes of the response (0-based code ids)


def rollout_items(metas: Sequence[dict[str, Any]], contents: Sequence[tuple[Sequence[int], Sequence[int]]],
                  decode_text: Callable[[Sequence[int]], str]) -> list[RewardItem]:
  """RewardItems of rollouts given as (text ids, audio codes) per row; rows p*G .. p*G+G-1 answer prompt p."""
  G = len(contents) // len(metas)
  return [RewardItem(prompt=metas[i // G], text=decode_text(text_ids), audio_codes=tuple(int(c) for c in codes))
          for i, (text_ids, codes) in enumerate(contents)]


@dataclasses.dataclass
class RewardResult:
  """A non-finite score (a reward bug, a NaN knob) is a failed item: it is marked failed, counted by the
  FailureMonitor (`reward/failed`), and holds the mean of the batch's finite scores (0 if none) as its fallback,
  so one bad item neither reaches the gate and the advantages as NaN nor turns the whole step non-finite."""
  scores: np.ndarray              # float32 [N]
  failed: np.ndarray              # bool [N]; a failed item holds the reward's fallback score
  info: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per item: reason, raw reply, ...

  def __post_init__(self):
    self.scores = np.asarray(self.scores, np.float32)
    self.failed = np.asarray(self.failed, bool)
    if self.scores.shape != self.failed.shape or self.scores.ndim != 1:
      raise ValueError(f"scores {self.scores.shape} and failed {self.failed.shape} must be equal 1-D shapes")
    bad = ~np.isfinite(self.scores)
    if bad.any():
      self.scores = np.where(bad, self.scores[~bad].mean() if (~bad).any() else 0.0, self.scores).astype(np.float32)
      self.failed = self.failed | bad
      if len(self.info) == len(self.scores):
        self.info = [dict(d, reason="non-finite score") if b else d for d, b in zip(self.info, bad)]


class RewardFn(Protocol):
  name: str

  def __call__(self, items: Sequence[RewardItem]) -> RewardResult:
    ...


def combine(rewards: Sequence[tuple[float, RewardFn]], items: Sequence[RewardItem]) -> RewardResult:
  """Weighted sum of several rewards; an item failed in any reward is failed in the sum."""
  if not rewards:
    raise ValueError("combine() needs at least one (weight, reward) pair")
  scores = np.zeros(len(items), np.float32)
  failed = np.zeros(len(items), bool)
  info: list[dict[str, Any]] = [dict() for _ in items]
  for weight, fn in rewards:
    r = fn(items)
    if r.scores.shape != (len(items),):
      raise ValueError(f"reward {fn.name!r} returned {r.scores.shape[0]} scores for {len(items)} items")
    scores += np.float32(weight) * r.scores
    failed |= r.failed
    for i, d in enumerate(r.info or [{}] * len(items)):
      info[i][fn.name] = d
  return RewardResult(scores, failed, info)
