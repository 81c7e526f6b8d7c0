"""Writes the testbed dataset: train.jsonl, eval.jsonl, dpo.jsonl, tokenizer.json, testbed.json.

  python -m wavalign_jax.testbed.generate --out=/tmp/testbed [--seed=0] [--noise_rate=0.1]

testbed.json records the generation arguments, record counts, the vocabulary layout and the fact
table, so a run's data can be traced back and regenerated bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import app, flags

from wavalign_jax.testbed import tasks, unit_tts, vocab


def write_jsonl(path: str, records: list[dict[str, Any]]) -> None:
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r, separators=(",", ":")) + "\n")


def read_records(path: str) -> list[dict[str, Any]]:
  """Reads and validates a testbed JSONL file; errors name the file and line."""
  records = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid JSON ({e})") from e
      tasks.check_record(record, f"{path}:{n}")
      records.append(record)
  return records


def generate(out_dir: str, seed: int = 0, noise_rate: float = 0.1, eval_style_prob: float = 0.3,
             heldout_question_prob: float = 0.1) -> dict[str, str]:
  """Generates the dataset into `out_dir`; returns {name: path} of the files written."""
  os.makedirs(out_dir, exist_ok=True)
  splits = tasks.build_splits(seed, noise_rate, eval_style_prob, heldout_question_prob)
  paths = {name: os.path.join(out_dir, f"{name}.jsonl") for name in splits}
  for name, records in splits.items():
    write_jsonl(paths[name], records)
  paths["tokenizer"] = vocab.write_tokenizer(out_dir)
  meta = {
      "seed": seed, "noise_rate": noise_rate, "eval_style_prob": eval_style_prob,
      "heldout_question_prob": heldout_question_prob,
      "counts": {name: len(records) for name, records in splits.items()},
      "styles": list(unit_tts.STYLES), "num_audio_codes": unit_tts.NUM_AUDIO_CODES,
      "hf_config": vocab.hf_config_fields(),
      "interleaved_vocab": dataclasses.asdict(vocab.interleaved_vocab()),
      "parallel_vocab": dataclasses.asdict(vocab.parallel_vocab()),
      "facts": tasks.fact_table(seed),
  }
  paths["meta"] = os.path.join(out_dir, "testbed.json")
  with open(paths["meta"], "w") as f:
    json.dump(meta, f, indent=2)
  return paths


def define_flags() -> None:
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed of the fact table, splits and noise.")
  flags.DEFINE_float("noise_rate", 0.1, "Fraction of question-audio codes replaced.")
  flags.DEFINE_float("eval_style_prob", 0.3, "Probability that one style of a question goes to eval.")
  flags.DEFINE_float("heldout_question_prob", 0.1, "Probability that an arithmetic question is held out entirely.")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  paths = generate(f.out, f.seed, f.noise_rate, f.eval_style_prob, f.heldout_question_prob)
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
