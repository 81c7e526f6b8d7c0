"""OpenAudioBench scoring (docs/method.md §4): every column is on 0-100 and the aggregate is their mean.

alpaca_eval: judge rates 1-10 as `[[rating]]`, x10. llama_questions: judge ends with
"the score is [Correct]" / "[Incorrect]", accuracy. reasoning_qa: judge rates 1-5 as `[[rating]]`
against the reference, x20. trivia_qa / web_questions: judge answers JSON {"result": "correct" |
"incorrect"}, accuracy.
"""
from __future__ import annotations

import json
import re
from typing import Sequence

from wavalign_jax.evaluation import common
from wavalign_jax.rewards import llm_judge

SUBSETS = ("alpaca_eval", "llama_questions", "reasoning_qa", "trivia_qa", "web_questions")

ALPACA_PROMPT = """Please act as an impartial judge and evaluate the quality of the response provided by \
an AI assistant to the user question below. Consider helpfulness, relevance, accuracy, depth and level of \
detail. Begin with a short explanation, then rate the response on a scale of 1 to 10 in exactly this \
format: "[[rating]]", for example "Rating: [[5]]".

[Question]
{prompt}

[The Start of Assistant's Answer]
{response}
[The End of Assistant's Answer]"""

CORRECT_PROMPT = """Decide whether the model's answer to the question is correct, using the reference answer.

Question: {prompt}
Reference answer: {reference}
Model answer: {response}

Explain briefly, then end with exactly "the score is [Correct]" or "the score is [Incorrect]"."""

REASONING_PROMPT = """Grade the model's answer to a reasoning question against the reference answer, on a \
scale of 1 (wrong reasoning and answer) to 5 (correct answer with sound reasoning).

Question: {prompt}
Reference answer: {reference}
Model answer: {response}

Explain briefly, then give the score as "[[score]]", for example "[[3]]"."""

JSON_PROMPT = """Is the model's answer to the question correct, given the reference answer(s)?

Question: {prompt}
Reference answer: {reference}
Model answer: {response}

Reply with a JSON object only: {{"result": "correct"}} or {{"result": "incorrect"}}."""


def _correct_tag(reply: str) -> float:
  found = re.findall(r"the score is \[(correct|incorrect)\]", reply, re.IGNORECASE)
  if not found:
    raise ValueError(f"no 'the score is [Correct]/[Incorrect]' in {reply[:100]!r}")
  return float(found[-1].lower() == "correct")


def _json_result(reply: str) -> float:
  m = re.search(r"\{.*?\}", reply, re.DOTALL)
  try:
    result = json.loads(m.group(0))["result"].strip().lower() if m else None
  except (ValueError, KeyError, AttributeError, TypeError):
    result = None
  if result not in ("correct", "incorrect"):
    raise ValueError(f"no JSON {{'result': 'correct'|'incorrect'}} in {reply[:100]!r}")
  return float(result == "correct")


# subset -> (prompt, parser, factor to 0-100, unit)
PROTOCOL = {
    "alpaca_eval": (ALPACA_PROMPT, common.bracket_rating(1, 10), 10.0, "1-10"),
    "llama_questions": (CORRECT_PROMPT, _correct_tag, 100.0, "%"),
    "reasoning_qa": (REASONING_PROMPT, common.bracket_rating(1, 5), 20.0, "1-5"),
    "trivia_qa": (JSON_PROMPT, _json_result, 100.0, "%"),
    "web_questions": (JSON_PROMPT, _json_result, 100.0, "%"),
}


def score_subset(subset: str, records: Sequence[dict], client) -> common.SubsetScore:
  prompt, parse, factor, unit = PROTOCOL[subset]
  needs_reference = "{reference}" in prompt
  convs = [common.user_turn(prompt.format(
      prompt=common.field(r, "prompt"), response=r["text"],
      reference=common.field(r, "reference") if needs_reference else ""), system="You are a careful grader.")
      for r in records]
  judged = common.judge(client, convs, parse, subset)
  per_record = [common.mean(vs) for vs in judged if vs]
  value = common.mean(per_record)
  shown = value * 100 if unit == "%" else value
  return common.SubsetScore(subset, shown, value * factor, len(per_record), judged.count(None), unit)


def score(records: Sequence[dict], client: llm_judge.ChatClient | None) -> common.BenchmarkScore:
  groups = common.by_subset(records, SUBSETS, "OpenAudioBench")
  out = [score_subset(s, groups[s], client) for s in SUBSETS if groups.get(s)]
  name = "average" if len(out) == len(SUBSETS) else f"average ({len(out)}/{len(SUBSETS)} subsets)"
  return common.BenchmarkScore("OpenAudioBench", out, common.mean([s.normalized for s in out]), name)
