"""Writes the testbed dataset: {base,train,dpo}.jsonl, eval/{eval_id,eval_ood}.jsonl, tokenizer.json, testbed.json.

  python -m wavalign_jax.testbed.make_data --out=/tmp/testbed [--seed=0] [--noise_rate=0.1] ...

testbed.json records the generation arguments, record counts, the vocabulary layout and the fact
table, so a run's data can be traced back and regenerated bit for bit. Every file is written atomically
(wavalign_jax/files.py) and testbed.json, the marker that the files are complete (testbed/prepare.py),
is removed first and written last: a concurrent reader or a killed generation never leaves half a file.
"""
from __future__ import annotations

import dataclasses
import os

from absl import flags

from wavalign_jax import cli, files
from wavalign_jax.testbed import tasks, unit_tts, vocab


EVAL_DIR = "eval"   # the eval splits, alone in a folder: `evaluate --data=<it>` reads every JSONL in it


def split_path(out_dir: str, split: str) -> str:
  """Where `write_splits` writes a split: eval splits under out_dir/eval/, the others in out_dir."""
  return os.path.join(out_dir, EVAL_DIR if split.startswith("eval") else "", f"{split}.jsonl")


def write_splits(out_dir: str, spec: tasks.Spec = tasks.Spec()) -> dict[str, str]:
  """Generates the dataset into `out_dir`; returns {name: path} of the files written."""
  os.makedirs(os.path.join(out_dir, EVAL_DIR), exist_ok=True)
  meta_path = os.path.join(out_dir, "testbed.json")
  if os.path.exists(meta_path):   # the files stop matching it from the first one rewritten
    os.remove(meta_path)
  splits = tasks.build_splits(spec)
  paths = {name: split_path(out_dir, name) for name in splits}
  for name, records in splits.items():
    files.write_jsonl(paths[name], records, separators=(",", ":"))
  paths["tokenizer"] = vocab.write_tokenizer(out_dir)
  meta = {
      "spec": dataclasses.asdict(spec),
      "counts": {name: len(records) for name, records in splits.items()},
      "styles": list(unit_tts.STYLES), "num_audio_codes": unit_tts.NUM_AUDIO_CODES,
      "hf_config": vocab.hf_config_fields(),
      "interleaved_vocab": dataclasses.asdict(vocab.interleaved_vocab()),
      "parallel_vocab": dataclasses.asdict(vocab.parallel_vocab()),
      "facts": tasks.fact_table(spec.seed),
  }
  paths["meta"] = meta_path
  files.write_json(meta_path, meta, indent=2)
  return paths


def define_flags() -> None:
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  for field in dataclasses.fields(tasks.Spec):
    define = flags.DEFINE_integer if field.type == "int" else flags.DEFINE_float
    define(field.name, field.default, f"tasks.Spec.{field.name} (docs/testbed.md).")


def main(argv: list[str]) -> None:
  del argv
  spec = tasks.Spec(**{f.name: getattr(flags.FLAGS, f.name) for f in dataclasses.fields(tasks.Spec)})
  for name, path in write_splits(flags.FLAGS.out, spec).items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  cli.run(main, define_flags)
