"""What every benchmark scorer shares: the responses JSONL, score containers, judged-reply helpers.

Responses JSONL: one object per line with `id`, `subset`, the benchmark's own fields (`prompt`,
`reference`, ...), `text` (the model's text channel) and `audio_codes` (0-based code ids).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import re
from typing import Any, Callable, Iterator, Sequence

from wavalign_jax.rewards import llm_judge

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a helpful assistant who tries to help answer the user's question."


@dataclasses.dataclass(frozen=True)
class SubsetScore:
  subset: str
  value: float        # as the benchmark reports it (1-5 mean, %, ...)
  normalized: float   # on 0-100, what the aggregate averages
  n: int              # records scored
  failed: int = 0     # records the judge failed on (left out, or counted wrong where the benchmark says so)
  unit: str = "%"


@dataclasses.dataclass(frozen=True)
class BenchmarkScore:
  benchmark: str
  subsets: list[SubsetScore]
  aggregate: float
  aggregate_name: str = "overall"


def iter_jsonl(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
  """(where, record) of every non-empty line of a JSONL file; errors name the file and line."""
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
      yield where, rec


def load_responses(path: str) -> list[dict[str, Any]]:
  """Parse and validate a responses JSONL; errors name the file, line and field. An (id, subset) given twice is
  refused: it would count twice in the scores."""
  records, first = [], {}
  for where, rec in iter_jsonl(path):
    for field, kind in (("id", (str, int)), ("subset", str), ("text", str), ("audio_codes", list)):
      if field not in rec:
        raise ValueError(f"{where}: missing field {field!r}")
      if not isinstance(rec[field], kind):
        raise ValueError(f"{where}: field {field!r} has type {type(rec[field]).__name__}")
    if not all(isinstance(c, int) and c >= 0 for c in rec["audio_codes"]):
      raise ValueError(f"{where}: field 'audio_codes' must hold non-negative integers")
    key = (rec["subset"], rec["id"])
    if key in first:
      raise ValueError(f"{where}: id {rec['id']!r} of subset {rec['subset']!r} again (first at {first[key]})")
    first[key] = where
    rec["_where"] = where
    records.append(rec)
  return records


def by_subset(records: Sequence[dict[str, Any]], known: Sequence[str], benchmark: str) -> dict[str, list]:
  groups: dict[str, list] = collections.defaultdict(list)
  for r in records:
    if r["subset"] not in known:
      raise ValueError(f"{r.get('_where', r['id'])}: unknown {benchmark} subset {r['subset']!r}; "
                       f"expected one of {list(known)}")
    groups[r["subset"]].append(r)
  return dict(groups)


def field(rec: dict[str, Any], name: str) -> Any:
  if name not in rec:
    raise ValueError(f"{rec.get('_where', rec.get('id'))}: subset {rec.get('subset')!r} needs field {name!r}")
  return rec[name]


def user_turn(prompt: str, system: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
  return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def judge(client: llm_judge.ChatClient | None, conversations: Sequence[list[dict[str, Any]]],
          parse: Callable[[str], float], subset: str) -> list[list[float] | None]:
  """Per record: the parsed value of each reply choice (unparsable choices dropped), or None when
  the request failed or no choice parsed; such records are logged and left out of the score."""
  if client is None:
    raise ValueError(f"subset {subset!r} is scored by an LLM judge: configure one (--judge_base_url, ...)")
  out: list[list[float] | None] = []
  for i, judged in enumerate(llm_judge.judge_all(client, conversations, parse)):
    for error in judged.parse_errors:
      log.warning("%s record %d: unparsable judge reply: %s", subset, i, error)
    if judged.failure:
      log.warning("%s record %d: no judge value, left out: %s", subset, i, judged.failure)
    out.append(judged.values or None)
  return out


def mean(values: Sequence[float]) -> float:
  return sum(values) / len(values) if values else math.nan


def bracket_rating(low: float, high: float) -> Callable[[str], float]:
  """Parser for the last `[[x]]` in a reply, checked against [low, high]."""
  def parse(reply: str) -> float:
    found = re.findall(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", reply)
    if not found:
      raise ValueError(f"no [[rating]] in {reply[:100]!r}")
    value = float(found[-1])
    if not low <= value <= high:
      raise ValueError(f"rating {value} outside [{low}, {high}]")
    return value
  return parse
