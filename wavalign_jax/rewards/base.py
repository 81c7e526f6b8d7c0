"""The reward interface: a batch of (prompt, response) items in, scores plus per-item status out.

Every reward (LLM judge, rule-based, testbed judge) implements `RewardFn`. A failed item keeps a fallback
score but is marked failed, so the training loop can count it (`FailureMonitor`, which stops a run whose
batches are mostly fallbacks), log it, and (by config) keep it out of the gate statistics and the advantages.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from wavalign_jax.errors import RunError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RewardItem:
  """One response to score, with the fields of the record it answers (question_text, answer, style, id, ...)."""
  record: dict[str, Any]
  text: str                       # decoded text channel of the response
  audio_codes: tuple[int, ...] = ()   # audio codes of the response (0-based code ids)


def rollout_items(metas: Sequence[dict[str, Any]], contents: Sequence[tuple[Sequence[int], Sequence[int]]],
                  decode_text: Callable[[Sequence[int]], str]) -> list[RewardItem]:
  """RewardItems of rollouts given as (text ids, audio codes) per row; rows p*G .. p*G+G-1 answer prompt p."""
  G = len(contents) // len(metas)
  return [RewardItem(record=metas[i // G], text=decode_text(text_ids), audio_codes=tuple(int(c) for c in codes))
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


class RewardFailureError(RunError):
  """Too many reward calls failed in one batch to trust its advantages (the entry point prints it, exits 1)."""


class FailureMonitor:
  """Counts failed reward items, logs them, and stops training when a batch is mostly fallbacks."""

  name = "reward"   # of its metrics: reward/failed, reward/failed_fraction, reward/failed_total

  def __init__(self, max_failed_fraction: float):
    """`max_failed_fraction`: `reward.max_failed_fraction`."""
    if not 0.0 <= max_failed_fraction <= 1.0:
      raise ValueError(f"max_failed_fraction must lie in [0, 1], got {max_failed_fraction}")
    self.max_failed_fraction = max_failed_fraction
    self.total_items = 0
    self.total_failed = 0

  def update(self, result: RewardResult, step: int | None = None) -> dict[str, float]:
    """Record one batch; returns metrics; raises RewardFailureError above the allowed fraction."""
    n, k = int(result.failed.size), int(result.failed.sum())
    self.total_items += n
    self.total_failed += k
    reasons = collections.Counter(str(result.info[i].get("reason", "unknown")) if i < len(result.info) else "unknown"
                                  for i in np.flatnonzero(result.failed))
    where = f" at step {step}" if step is not None else ""
    if k:
      log.warning("%s: %d/%d items failed%s; reasons: %s", self.name, k, n, where, dict(reasons.most_common(5)))
    fraction = k / n if n else 0.0
    if fraction > self.max_failed_fraction:
      raise RewardFailureError(
          f"{self.name}: {k}/{n} items failed{where} ({fraction:.0%} > max_failed_fraction "
          f"{self.max_failed_fraction:.0%}); most common reasons: {reasons.most_common(3)}")
    return {f"{self.name}/failed": float(k), f"{self.name}/failed_fraction": fraction,
            f"{self.name}/failed_total": float(self.total_failed)}
