"""Rule-based rewards: exact / normalized match (`reward.kind="exact_match"`, the positive control's reward);
the choice extraction of the benchmarks.

Each class implements `base.RewardFn` and never fails an item (rules are deterministic). The text helpers
(`normalize_answer`, `extract_choice`) are shared with the benchmark scorers.
"""
from __future__ import annotations

import re
import string
from typing import Any, Callable, Sequence

import numpy as np

from wavalign_jax.rewards import base

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "“”‘’，。！？：；")


def normalize_answer(text: str) -> str:
  """SQuAD-style normalization: lowercase, no punctuation, no articles, single spaces."""
  text = text.lower().translate(_PUNCT)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _choice_patterns(letters: str) -> list[re.Pattern]:
  """Ordered patterns for a choice letter; the letter must be uppercase or parenthesised."""
  up, low = re.escape(letters.upper()), re.escape(letters.lower())
  letter = rf"(?:\(([{up}{low}])\)|(?<![A-Za-z])([{up}])(?![A-Za-z0-9'’]))"
  lead = r"[\s:：]*(?:(?i:option|choice)\s*)?[\*\"'“‘\[]*"
  phrases = [
      r"(?i:the (?:correct |right |best |final )?(?:answer|option|choice) (?:is|would be|should be))",
      r"(?i:(?:correct |final )?answer\s*[:：])",
      r"(?i:(?:i would|i'd|i will|i'll|i) (?:select|choose|pick|go with|say))",
      r"答案(?:是|应该是|就是|为|选)?(?:选项)?",
  ]
  pats = [re.compile(p + lead + letter) for p in phrases]
  pats.append(re.compile(rf"{letter}[\*\"'”’\]]*\s+(?i:is (?:the )?(?:correct|right|best))"))
  pats.append(re.compile(rf"^[\s\*\"'“‘\[]*(?:(?i:option|choice)\s*)?"
                         rf"(?:\(([{up}{low}])\)|([{up}])(?:[\)\.:：,\*\]]|\s*$))"))
  return pats


_PATTERN_CACHE: dict[str, list[re.Pattern]] = {}


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
  """The chosen option letter (uppercase) in a free-form answer, or None when none is stated."""
  pats = _PATTERN_CACHE.setdefault(letters, _choice_patterns(letters))
  for pat in pats:
    m = pat.search(text.strip())
    if m:
      return next(g for g in m.groups() if g).upper()
  return None


def _field(item: base.RewardItem, field: str, index: int, reward: str) -> Any:
  if field not in item.record:
    raise ValueError(f"{reward}: item {index} has no field {field!r} (fields: {sorted(item.record)})")
  return item.record[field]


def _ok(scores: Sequence[float]) -> base.RewardResult:
  return base.RewardResult(np.asarray(scores, np.float32), np.zeros(len(scores), bool),
                           [{} for _ in scores])


class ExactMatch:
  """1 if the response equals the reference (`prompt[field]`, a string or a list of accepted strings).

  Both are compared in their `normalize` form (SQuAD's `normalize_answer` by default; the testbed passes the
  form its IQ compares; None: only surrounding white space is stripped); contains=True accepts a response that
  contains a (normalized) reference as a whole-word span, the usual rule for short factual answers.
  """

  def __init__(self, field: str = "answer", *, normalize: Callable[[str], str] | None = normalize_answer,
               contains: bool = False, name: str = "exact_match"):
    self.field, self.normalize, self.contains, self.name = field, normalize or str.strip, contains, name

  def _match(self, text: str, ref: str) -> bool:
    text, ref = self.normalize(text), self.normalize(ref)
    if self.contains:
      return bool(ref) and f" {ref} " in f" {text} "
    return text == ref

  def __call__(self, items: Sequence[base.RewardItem]) -> base.RewardResult:
    scores = []
    for i, item in enumerate(items):
      refs = _field(item, self.field, i, self.name)
      refs = [refs] if isinstance(refs, str) else list(refs)
      scores.append(float(any(self._match(item.text, r) for r in refs)))
    return _ok(scores)

