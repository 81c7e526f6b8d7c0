"""Testbed metrics over generated responses: IQ (content) and EQ (the speech says the text, in the style).

Each item is a RewardItem (record, text, audio_codes): the eval record, the decoded text channel, and the
generated audio codes (0-based). Per item:
  iq               1 if the normalised text equals the normalised answer, else 0;
  intelligibility  the audio says the generated text (unit_tts.intelligibility);
  style            the audio realises it in the requested style (unit_tts.style_match);
  eq               their mean: the graded speech quality. Both are measured against the *generated*
                   text, so EQ is independent of correctness (a wrong answer spoken well scores high);
  judge_score      the rule judge's 1-5 semantic score (testbed/answers.py).
`summary` averages them over all items, with a Student t interval over items (intervals.t_interval, as every
interval the project reports), and per subset (id / ood_style / ood_question), task family (arithmetic / lookup)
and task (means and counts).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from wavalign_jax.intervals import t_interval
from wavalign_jax.rewards.base import RewardItem
from wavalign_jax.testbed import answers, tasks, unit_tts

DIMENSIONS = ("iq", "eq", "intelligibility", "style", "judge_score")


def speech_scores(style: str, text: str, codes: Sequence[int]) -> dict[str, float]:
  """The speech dimensions of one response: intelligibility, style and their mean, EQ (module docstring)."""
  words = " ".join(answers.normalize(text))
  intel = unit_tts.intelligibility(codes, words, style)
  match = unit_tts.style_match(codes, words, style)
  return {"eq": 0.5 * (intel + match), "intelligibility": intel, "style": match}


def item_scores(record: dict[str, Any], text: str, codes: Sequence[int]) -> dict[str, float]:
  """Every per-item dimension of one response (module docstring)."""
  return {"iq": float(answers.normalize(text) == answers.normalize(record["answer"])),
          **speech_scores(record["style"], text, codes), "judge_score": answers.score(text, record["answer"])[0]}


def _check(items: Sequence[RewardItem]) -> None:
  if not items:
    raise ValueError("testbed metrics need at least one item")


def family(task: str) -> str:
  return "arithmetic" if task in tasks.ARITHMETIC else "lookup"


def per_item(items: Sequence[RewardItem]) -> list[dict[str, Any]]:
  """item_scores of every item with the keys the strata need (id, subset, task, family) and the style the item asked
  for (`requested_style`; `style` is the style score)."""
  _check(items)
  out = []
  for item in items:
    rec = item.record
    out.append({"id": rec.get("id"), "subset": rec.get("subset") or "id", "task": rec["task"],
                "family": family(rec["task"]), "requested_style": rec["style"],
                **item_scores(rec, item.text, item.audio_codes)})
  return out


def summary(items: Sequence[RewardItem]) -> dict[str, float]:
  """Means of every dimension over all items with their 95% t interval over items (`iq_lo`, `iq_hi`, ...),
  and `<stratum>/<dim>` per subset (id, ood_style, ood_question), task family and task (add, ..., pet)."""
  return summarize_rows(per_item(items))


def evaluate(items: Sequence[RewardItem]) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """(summary, per-item rows): what the training loop's evaluation logs, each item scored once."""
  rows = per_item(items)
  return summarize_rows(rows), rows


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
  """`summary` of rows that `per_item` made."""
  out = {}
  for dim in DIMENSIONS:
    out[dim], out[f"{dim}_lo"], out[f"{dim}_hi"] = t_interval([r[dim] for r in rows])
  for key in ("subset", "family", "task"):
    for value in sorted({r[key] for r in rows}):
      part = [r for r in rows if r[key] == value]
      out.update({f"{value}/{dim}": float(np.mean([r[dim] for r in part])) for dim in DIMENSIONS})
      out[f"{value}/count"] = float(len(part))
  return out
