"""Synthetic spoken-QA tasks with verifiable answers, as WavAlign-style JSONL records.

Two families: arithmetic (add, sub, count) whose answers follow from the question, and lookups
(color, home, pet) in a seeded fact table that can only be learnt from the training data. The
split unit is (question, requested style): every lookup fact stays in training under most styles
and is asked in eval under another one, while a fraction of arithmetic questions is held out
entirely, so eval accuracy mixes memorisation with generalisation and a tiny model reaches it
only partly.

A record (one JSON line):
  id, task, style, question_text, answer,
  messages: [{"role": "system", "content": "answer in a <style> voice"},
             {"role": "user", "content": "<|audio|>"}]     one <|audio|> per entry of `audios`
  audios: [[code, ...]]       question audio: neutral unit-TTS of question_text plus code noise
  sft_target_text, sft_target_audio: the answer and its unit-TTS in the requested style
  DPO records add rejected_text / rejected_audio: a wrong answer spoken in the same style.
Audio codes are 0-based code indices (< unit_tts.NUM_AUDIO_CODES), not token ids.
"""
from __future__ import annotations

from typing import Any, Callable

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
  words.add("a")  # pet answers
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


def make_record(task: str, question: str, answer: str, style: str, noise_rate: float,
                rng: np.random.Generator) -> dict[str, Any]:
  """One SFT/eval record; the question audio is noisy neutral speech, the target clean styled speech."""
  question_audio = unit_tts.add_noise(unit_tts.synthesize(question, "neutral"), noise_rate, rng)
  return {
      "id": f"{task}/{question.replace(' ', '_')}/{style}",
      "task": task,
      "style": style,
      "question_text": question,
      "answer": answer,
      "messages": [{"role": "system", "content": SYSTEM_TEMPLATE.format(style=style)},
                   {"role": "user", "content": AUDIO_PLACEHOLDER}],
      "audios": [question_audio],
      "sft_target_text": answer,
      "sft_target_audio": unit_tts.synthesize(answer, style),
  }


def with_rejected(record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
  """The DPO pair of a record: its reference is chosen, a wrong answer in the same style rejected."""
  rejected = wrong_answer(record["task"], record["answer"], rng)
  return dict(record, rejected_text=rejected,
              rejected_audio=unit_tts.synthesize(rejected, record["style"]))


def build_splits(seed: int = 0, noise_rate: float = 0.1, eval_style_prob: float = 0.3,
                 heldout_question_prob: float = 0.1) -> dict[str, list[dict[str, Any]]]:
  """{"train", "eval", "dpo"} record lists, deterministic in all arguments.

  Per question: with `heldout_question_prob` (arithmetic only) all its styles go to eval; else
  with `eval_style_prob` one random style goes to eval and the others to train. "dpo" pairs
  every train record with a wrong answer. Train and DPO are shuffled, eval keeps question order.
  """
  rng = np.random.default_rng([seed, 2])
  facts = fact_table(seed)
  train, evals = [], []
  for task, question, answer in questions(facts):
    if task in ARITHMETIC and rng.random() < heldout_question_prob:
      eval_styles = set(unit_tts.STYLES)
    elif rng.random() < eval_style_prob:
      eval_styles = {str(rng.choice(unit_tts.STYLES))}
    else:
      eval_styles = set()
    for style in unit_tts.STYLES:
      record = make_record(task, question, answer, style, noise_rate, rng)
      (evals if style in eval_styles else train).append(record)
  train = [train[i] for i in rng.permutation(len(train))]
  dpo = [with_rejected(r, rng) for r in train]
  return {"train": train, "eval": evals, "dpo": dpo}


_FIELDS = {"id": str, "task": str, "style": str, "question_text": str, "answer": str,
           "messages": list, "audios": list, "sft_target_text": str, "sft_target_audio": list}


def _check_codes(codes: Any, where: str) -> None:
  if not isinstance(codes, list) or not all(
      isinstance(c, int) and not isinstance(c, bool) and 0 <= c < unit_tts.NUM_AUDIO_CODES
      for c in codes):
    raise ValueError(f"{where}: expected a list of audio codes in [0, {unit_tts.NUM_AUDIO_CODES})")


def check_record(record: Any, where: str = "record") -> None:
  """Raises ValueError naming `where` and the field when `record` is not a valid testbed record."""
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  for field, kind in _FIELDS.items():
    if not isinstance(record.get(field), kind):
      raise ValueError(f"{where}: field {field!r} missing or not a {kind.__name__}")
  if record["task"] not in TEMPLATES:
    raise ValueError(f"{where}: field 'task' is {record['task']!r}, not one of {list(TEMPLATES)}")
  unit_tts.check_style(record["style"])
  roles = [m.get("role") if isinstance(m, dict) else None for m in record["messages"]]
  if roles != ["system", "user"]:
    raise ValueError(f"{where}: field 'messages' must hold a system and a user turn, got roles {roles}")
  placeholders = record["messages"][1].get("content", "").count(AUDIO_PLACEHOLDER)
  if placeholders != len(record["audios"]):
    raise ValueError(f"{where}: field 'messages' has {placeholders} {AUDIO_PLACEHOLDER} for "
                     f"{len(record['audios'])} entries of 'audios'")
  for i, codes in enumerate(record["audios"]):
    _check_codes(codes, f"{where}: field 'audios[{i}]'")
  _check_codes(record["sft_target_audio"], f"{where}: field 'sft_target_audio'")
  if ("rejected_text" in record) != ("rejected_audio" in record):
    raise ValueError(f"{where}: fields 'rejected_text' and 'rejected_audio' must come together")
  if "rejected_audio" in record:
    if not isinstance(record["rejected_text"], str):
      raise ValueError(f"{where}: field 'rejected_text' is not a str")
    _check_codes(record["rejected_audio"], f"{where}: field 'rejected_audio'")
