"""VStyle scoring (docs/method.md §4): an audio-capable judge listens to the response audio.

Each record (`subset` its category, `subcategory`, `instruction`, `audio_codes`) is decoded to a 24 kHz WAV by the
external decoder and scored 1-5 (the last `[[x]]` of the reply, as VStyle's lalm_eval/gemini_eval.py reads it) with
the progressive rubric. As VStyle aggregates: the mean of each subcategory, weighted so that each of the four
categories weighs 0.25 (acoustic's composite_properties half of its category's, its six other subcategories the
rest equally; the other categories' subcategories equally); a category's score and the overall score are weighted
means over the subcategories that have scores (renormalised over their weights).
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

from wavalign_jax.evaluation import common
from wavalign_jax.rewards import llm_judge

log = logging.getLogger(__name__)

CATEGORIES = ("acoustic", "instruction", "role_play", "empathy")
SUBCATEGORIES = {
    "acoustic": ("age", "speed", "gender", "emotion", "pitch", "volume", "composite_properties"),
    "instruction": ("emotion", "variation", "style"),
    "role_play": ("character", "scenario"),
    "empathy": ("anger", "sadness_disappointment", "anxiety_fear", "joy_excitement"),
}


def _weight(category: str, subcategory: str) -> float:
  """A subcategory's weight in the overall score (the four categories weigh 0.25 each)."""
  if category == "acoustic":
    return 0.125 if subcategory == "composite_properties" else 0.125 / (len(SUBCATEGORIES["acoustic"]) - 1)
  return 0.25 / len(SUBCATEGORIES[category])


def _weighted(means: dict[tuple[str, str], float]) -> float:
  """The weighted mean of subcategory means {(category, subcategory): mean}, renormalised over those present."""
  weights = {k: _weight(*k) for k in means}
  return sum(means[k] * w for k, w in weights.items()) / sum(weights.values())
JUDGE = dict(model="gpt-4o-audio-preview")

PROMPT = """You are judging a spoken response to a voice-style instruction. Listen to the attached \
response audio and grade it with this progressive rubric, stopping at the first level that applies:
1: the content is wrong or does not answer the instruction;
2: the content is right but the requested speaking style is missed;
3: the style is partly realised;
4: the style is fully realised but sounds unnatural;
5: the style is fully and naturally realised.

Category: {category}
Instruction: {instruction}

Explain briefly, then end with "Final score: [[x]]" where x is 1 to 5."""


def _final_score(reply: str) -> float:
  """The last [[x]] that is a number (else the whole reply as one), in 1-5."""
  for candidate in [*reversed(re.findall(r"\[\[(.*?)]]", reply, flags=re.S)), reply]:
    try:
      value = float(candidate.strip())
    except ValueError:
      continue
    if 1 <= value <= 5:
      return value
    break
  raise ValueError(f"no score [[1-5]] in {reply[:100]!r}")


def score(records: Sequence[dict], client: llm_judge.ChatClient | None,
          decoder: llm_judge.AudioDecoder | None) -> common.BenchmarkScore:
  if decoder is None or client is None:
    raise ValueError("VStyle judges the response audio: configure an audio decoder (--decoder_command or "
                     "--decoder_url, codes -> 24 kHz WAV) and an audio-capable judge (--judge_base_url; "
                     f"default model {JUDGE['model']})")
  groups = common.by_subset(records, CATEGORIES, "VStyle")
  out, sub_means = [], {}
  for category in CATEGORIES:
    recs = groups.get(category)
    if not recs:
      continue
    convs, decoded = [], []
    for r in recs:
      if common.field(r, "subcategory") not in SUBCATEGORIES[category]:
        raise ValueError(f"{r.get('_where', r['id'])}: VStyle {category} subcategory {r['subcategory']!r}: expected "
                         f"one of {list(SUBCATEGORIES[category])}")
      if not r["audio_codes"]:
        raise ValueError(f"{r.get('_where', r['id'])}: VStyle record has no audio_codes to judge")
      text = PROMPT.format(category=category, instruction=common.field(r, "instruction"))
      try:   # a failed decode is that record's failure, counted like a failed judge call
        wav = decoder(r["audio_codes"])
      except llm_judge.DECODER_ERRORS as e:
        log.warning("%s: %s: audio decoder failed: %s", category, r.get("_where", r["id"]), e)
        decoded.append(False)
        continue
      decoded.append(True)
      convs.append([{"role": "user", "content": [{"type": "text", "text": text}, llm_judge.audio_part(wav)]}])
    replies = iter(common.judge(client, convs, _final_score, category) if convs else [])
    judged = [next(replies) if ok else None for ok in decoded]
    scored: dict[tuple[str, str], list[float]] = {}
    for r, vs in zip(recs, judged):
      if vs:
        scored.setdefault((category, r["subcategory"]), []).append(common.mean(vs))
    if not scored:   # every record failed: the category is left out of the overall score, as VStyle does
      log.warning("%s: no record was scored", category)
      continue
    means = {k: common.mean(v) for k, v in scored.items()}
    sub_means.update(means)
    value = _weighted(means)
    n = sum(len(v) for v in scored.values())
    out.append(common.SubsetScore(category, value, value * 20, n, judged.count(None), "1-5"))
  name = "overall" if len(out) == len(CATEGORIES) else f"overall ({len(out)}/{len(CATEGORIES)} categories)"
  return common.BenchmarkScore("VStyle", out, _weighted(sub_means) if sub_means else float("nan"), name)
