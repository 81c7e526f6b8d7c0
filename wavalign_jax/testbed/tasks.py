"""Synthetic spoken-QA tasks with verifiable answers, as WavAlign-style JSONL records.

Two families: arithmetic (add, sub, count) whose answers follow from the question, and lookups
(color, home, pet) in a seeded fact table that can only be learnt from the training data. The
split unit is (question, requested style): a lookup fact stays in training under most styles, one of which is held
out for eval with probability `eval_style_prob`, while a fraction of arithmetic questions is held out entirely.

The splits model the premises of the paper (docs/testbed.md explains each knob of `Spec`):
  base       the corpus the testbed's base model is SFT-trained on (the "released model"): correct
             answers, spoken with little expressiveness (`base_expressiveness`);
  train      the post-training corpus (RL prompts and SFT anchor references): the references are
             spoken expressively in the requested style, but a fraction `sft_wrong_fraction` of
             them answers wrongly or hedges ("maybe 7"): speech-good, content-imperfect SFT data;
  dpo        train records as preference pairs: the correct answer chosen, a wrong one rejected,
             both spoken expressively;
  eval_id    every train (question, style) again with fresh question-audio noise (subset "id");
  eval_ood   held-out styles of a question ("ood_style") and held-out questions ("ood_question").

A record (one JSON line):
  id, task, style, subset, question_text, answer,
  messages: [{"role": "system", "content": "answer in a <style> voice"},
             {"role": "user", "content": "<|audio|>"}]     one <|audio|> per entry of `audios`
  audios: [[code, ...]]       question audio: neutral unit-TTS of question_text plus code noise
  sft_target_text, sft_target_audio: the reference response and one realisation of it in the style
  reference_kind: "correct" | "wrong" | "hedged" (what sft_target_text is relative to `answer`)
  DPO records add rejected_text / rejected_audio: a wrong answer spoken in the same style.
Audio codes are 0-based code indices (< unit_tts.NUM_AUDIO_CODES), not token ids.
"""
from __future__ import annotations

from typing import Any, Callable

import dataclasses

import numpy as np

from wavalign_jax.testbed import unit_tts

NAMES = ("ana", "bo", "cal", "dov", "eli", "fay", "gus", "hal", "ida", "jon", "kai", "lu", "max",
         "ned", "ola", "pia")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "pink", "gray")
ADJECTIVES = ("big", "small", "old", "new", "dark", "quiet")
PLACES = ("forest", "castle", "river", "tower", "valley", "village")
ANIMALS = ("cat", "dog", "fish", "bird", "horse", "frog", "mouse", "goat")
MAX_OPERAND = 9
MAX_COUNT = 19
NUMBERS = tuple(str(i) for i in range(max(2 * MAX_OPERAND, MAX_COUNT) + 1))

HEDGE = "maybe"
AUDIO_PLACEHOLDER = "<|audio|>"
SYSTEM_TEMPLATE = "answer in a {style} voice"
TEMPLATES = {
    "add": "what is {a} plus {b}",
    "sub": "what is {a} minus {b}",
    "count": "count from {a} to {b}",
    "color": "what color is {name}",
    "home": "where does {name} live",
    "pet": "what pet does {name} have",
}
ARITHMETIC = ("add", "sub", "count")
LOOKUPS = ("color", "home", "pet")

# One sampler per lookup attribute: used for the fact table and for wrong (DPO) answers alike.
_VALUE_SAMPLERS: dict[str, Callable[[np.random.Generator], str]] = {
    "color": lambda rng: str(rng.choice(COLORS)),
    "home": lambda rng: f"{rng.choice(ADJECTIVES)} {rng.choice(PLACES)}",
    "pet": lambda rng: f"a {rng.choice(COLORS)} {rng.choice(ANIMALS)}",
}


def lexicon() -> tuple[str, ...]:
  """Every word a question, system prompt or answer can contain (sorted, no duplicates)."""
  words = set(NAMES + COLORS + ADJECTIVES + PLACES + ANIMALS + NUMBERS + unit_tts.STYLES)
  for template in (SYSTEM_TEMPLATE, *TEMPLATES.values()):
    words.update(w for w in template.split() if not w.startswith("{"))
  words.update(("a", HEDGE))  # pet answers, hedged references
  return tuple(sorted(words))


def fact_table(seed: int) -> dict[str, dict[str, str]]:
  """{name: {attribute: value}} for every name and lookup attribute, deterministic in `seed`."""
  rng = np.random.default_rng([seed, 1])
  return {name: {attr: _VALUE_SAMPLERS[attr](rng) for attr in LOOKUPS} for name in NAMES}


def questions(facts: dict[str, dict[str, str]]) -> list[tuple[str, str, str]]:
  """All (task, question_text, answer) triples, in a fixed order."""
  out = []
  for a in range(MAX_OPERAND + 1):
    for b in range(MAX_OPERAND + 1):
      out.append(("add", TEMPLATES["add"].format(a=a, b=b), str(a + b)))
  for a in range(MAX_OPERAND + 1):
    for b in range(a + 1):
      out.append(("sub", TEMPLATES["sub"].format(a=a, b=b), str(a - b)))
  for a in range(MAX_COUNT):
    for b in range(a + 1, min(a + 3, MAX_COUNT) + 1):  # answers of 2-4 numbers
      out.append(("count", TEMPLATES["count"].format(a=a, b=b), " ".join(map(str, range(a, b + 1)))))
  for name in NAMES:
    for attr in LOOKUPS:
      out.append((attr, TEMPLATES[attr].format(name=name), facts[name][attr]))
  return out


def wrong_answer(task: str, answer: str, rng: np.random.Generator) -> str:
  """A plausible wrong answer: a nearby number, a shifted count, another value of the attribute."""
  if task in ("add", "sub"):
    deltas = [d for d in (-3, -2, -1, 1, 2, 3) if 0 <= int(answer) + d < len(NUMBERS)]
    return str(int(answer) + int(rng.choice(deltas)))
  if task == "count":
    nums = [int(w) for w in answer.split()]
    shift = 1 if nums[-1] < MAX_COUNT and (nums[0] == 0 or rng.random() < 0.5) else -1
    return " ".join(str(n + shift) for n in nums)
  while True:
    value = _VALUE_SAMPLERS[task](rng)
    if value != answer:
      return value


@dataclasses.dataclass(frozen=True)
class Spec:
  """The testbed's generation knobs (config.testbed.*; defaults and their premises in docs/testbed.md)."""
  seed: int = 0
  noise_rate: float = 0.1               # fraction of question-audio codes replaced
  eval_style_prob: float = 0.3          # a question has one held-out style with this probability
  heldout_question_prob: float = 0.1    # an arithmetic question is held out in every style
  base_expressiveness: float = 0.25     # prosody of the base model's corpus: 0 neutral, 1 the style's own
  sft_wrong_fraction: float = 0.3       # post-training references that answer wrongly or hedge


def make_record(task: str, question: str, answer: str, style: str, subset: str, spec: Spec,
                rng: np.random.Generator, *, reference: str | None = None, reference_kind: str = "correct",
                expressiveness: float = 1.0) -> dict[str, Any]:
  """One record; the question audio is noisy neutral speech, the reference one realisation in the style."""
  question_audio = unit_tts.add_noise(unit_tts.synthesize(question, "neutral"), spec.noise_rate, rng)
  reference = answer if reference is None else reference
  return {
      "id": f"{task}/{question.replace(' ', '_')}/{style}",
      "task": task,
      "style": style,
      "subset": subset,
      "question_text": question,
      "answer": answer,
      "messages": [{"role": "system", "content": SYSTEM_TEMPLATE.format(style=style)},
                   {"role": "user", "content": AUDIO_PLACEHOLDER}],
      "audios": [question_audio],
      "sft_target_text": reference,
      "sft_target_audio": unit_tts.synthesize(reference, style, rng, expressiveness),
      "reference_kind": reference_kind,
  }


def imperfect_reference(task: str, answer: str, rng: np.random.Generator) -> tuple[str, str]:
  """(text, kind) of a content-imperfect reference: a wrong answer or a hedged right one, equally often."""
  if rng.random() < 0.5:
    return wrong_answer(task, answer, rng), "wrong"
  return f"{HEDGE} {answer}", "hedged"


def build_splits(spec: Spec = Spec()) -> dict[str, list[dict[str, Any]]]:
  """{"base", "train", "dpo", "eval_id", "eval_ood"} record lists (module docstring), deterministic in `spec`.

  Per question: with `heldout_question_prob` (arithmetic only) all its styles go to eval_ood; else
  with `eval_style_prob` one random style goes to eval_ood and the others to train. Training splits are
  shuffled, eval splits keep question order.
  """
  rng = np.random.default_rng([spec.seed, 2])
  facts = fact_table(spec.seed)
  out: dict[str, list[dict[str, Any]]] = {name: [] for name in ("base", "train", "dpo", "eval_id", "eval_ood")}
  for task, question, answer in questions(facts):
    if task in ARITHMETIC and rng.random() < spec.heldout_question_prob:
      eval_styles, subset = set(unit_tts.STYLES), "ood_question"
    elif rng.random() < spec.eval_style_prob:
      eval_styles, subset = {str(rng.choice(unit_tts.STYLES))}, "ood_style"
    else:
      eval_styles, subset = set(), ""
    for style in unit_tts.STYLES:
      if style in eval_styles:
        out["eval_ood"].append(make_record(task, question, answer, style, subset, spec, rng))
        continue
      out["base"].append(make_record(task, question, answer, style, "id", spec, rng,
                                     expressiveness=spec.base_expressiveness))
      reference, kind = (imperfect_reference(task, answer, rng) if rng.random() < spec.sft_wrong_fraction
                         else (answer, "correct"))
      out["train"].append(make_record(task, question, answer, style, "id", spec, rng, reference=reference,
                                      reference_kind=kind))
      chosen = make_record(task, question, answer, style, "id", spec, rng)
      rejected = wrong_answer(task, answer, rng)
      out["dpo"].append(dict(chosen, rejected_text=rejected,
                             rejected_audio=unit_tts.synthesize(rejected, style, rng)))
      out["eval_id"].append(make_record(task, question, answer, style, "id", spec, rng))
  for name in ("base", "train", "dpo"):
    out[name] = [out[name][i] for i in rng.permutation(len(out[name]))]
  return out


