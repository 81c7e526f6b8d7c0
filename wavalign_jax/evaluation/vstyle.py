"""VStyle scoring (docs/method.md §4): an audio-capable judge listens to the response audio.

Each record (`category`, `instruction`, `audio_codes`) is decoded to a 24 kHz WAV by the external
decoder and scored 1-5 (`Final score: [[x]]`) with the progressive rubric; the overall score is the
0.25-weighted sum of the four category means (a mean over the categories present otherwise).
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

from wavalign_jax.evaluation import common
from wavalign_jax.rewards import llm_judge

log = logging.getLogger(__name__)

CATEGORIES = ("acoustic", "instruction", "role_play", "empathy")
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
  found = re.findall(r"final score\s*[:：]?\s*\[\[\s*(\d(?:\.\d+)?)\s*\]\]", reply, re.IGNORECASE)
  if not found or not 1 <= float(found[-1]) <= 5:
    raise ValueError(f"no 'Final score: [[1-5]]' in {reply[:100]!r}")
  return float(found[-1])


def score(records: Sequence[dict], client: llm_judge.ChatClient | None,
          decoder: llm_judge.AudioDecoder | None) -> common.BenchmarkScore:
  if decoder is None or client is None:
    raise ValueError("VStyle judges the response audio: configure an audio decoder (--decoder_command or "
                     "--decoder_url, codes -> 24 kHz WAV) and an audio-capable judge (--judge_base_url; "
                     f"default model {JUDGE['model']})")
  groups = common.by_subset(records, CATEGORIES, "VStyle")
  out = []
  for category in CATEGORIES:
    recs = groups.get(category)
    if not recs:
      continue
    convs, decoded = [], []
    for r in recs:
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
    per_record = [common.mean(vs) for vs in judged if vs]
    value = common.mean(per_record)
    out.append(common.SubsetScore(category, value, value * 20, len(per_record), judged.count(None), "1-5"))
  name = "overall" if len(out) == len(CATEGORIES) else f"overall ({len(out)}/{len(CATEGORIES)} categories)"
  return common.BenchmarkScore("VStyle", out, common.mean([s.value for s in out]), name)
