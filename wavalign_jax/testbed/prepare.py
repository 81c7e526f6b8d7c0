"""Materialises the testbed for a run: JSONL + tokenizer, then ArrayRecord datasets for one architecture.

The testbed goes through the same data pipeline as real data (data/build.py -> ArrayRecord ->
Grain), so the main job on the testbed exercises every stage a real run uses. Outputs are cached in
WORKDIR/testbed and rebuilt when missing or generated with other `tasks.Spec` knobs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from wavalign_jax.data import build as build_lib
from wavalign_jax.data import layouts
from wavalign_jax.testbed import make_data, tasks, unit_tts
from wavalign_jax.testbed import vocab as testbed_vocab

# dataset name -> (record kind, JSONL split); testbed/tasks.py describes the splits.
DATASETS = {"base_sft": ("sft", "base"), "rl_train": ("rl", "train"), "dpo_train": ("dpo", "dpo"),
            "eval_id": ("rl", "eval_id"), "eval_ood": ("rl", "eval_ood")}
EVAL_DATASETS = ("eval_id", "eval_ood")


# The testbed's folders, named here only: ROOT/jsonl (the generated JSONL splits and tokenizer.json) and
# ROOT/<arch>/<dataset> (the built ArrayRecord datasets).
def root_dir(config: Any, run_dir: str) -> str:
  """A run's testbed: `testbed.dir` when set (a study shares one per seed), else RUN/testbed."""
  return config.testbed.get("dir") or os.path.join(run_dir, "testbed")


def jsonl_dir(root: str) -> str:
  return os.path.join(root, "jsonl")


def dataset_dir(root: str, arch: str, name: str) -> str:
  return os.path.join(root, arch, name)


@dataclasses.dataclass(frozen=True)
class TestbedData:
  root: str
  tokenizer: str
  datasets: dict[str, str]          # name -> dataset directory (with dataset_info.json)
  vocab: Any                        # InterleavedVocab | ParallelVocab


def prepare(root: str, arch: str, *, spec: tasks.Spec = tasks.Spec(), ratios=layouts.BOOST_RATIOS,
            audio_delay: int = layouts.AUDIO_DELAY) -> TestbedData:
  """Generates (once per spec) the testbed under `root` and builds its datasets for `arch`."""
  jsonl = jsonl_dir(root)
  marker = os.path.join(jsonl, "testbed.json")
  regenerated = not (os.path.exists(marker) and _matches(marker, {"spec": dataclasses.asdict(spec)}))
  if regenerated:
    make_data.write_splits(jsonl, spec)
  tokenizer = os.path.join(jsonl, "tokenizer.json")
  vocab = (testbed_vocab.interleaved_vocab() if arch == "interleaved" else testbed_vocab.parallel_vocab())
  builder_kw = dict(arch=arch, ratios=tuple(ratios), audio_delay=audio_delay)
  if arch == "parallel":
    builder_kw.update(audio_offset=vocab.audio_offset, num_audio_codes=unit_tts.NUM_AUDIO_CODES)
  datasets = {}
  for name, (kind, split) in DATASETS.items():
    out = dataset_dir(root, arch, name)
    info_path = os.path.join(out, build_lib.INFO_FILE)
    wanted = {"kind": kind, "ratios": list(ratios), "audio_delay": audio_delay}
    if regenerated or not (os.path.exists(info_path) and _matches(info_path, wanted)):
      builder = build_lib.Builder(tokenizer, kind=kind, **builder_kw)
      build_lib.build(builder, [make_data.split_path(jsonl, split)], out, name=name, overwrite=True)
    datasets[name] = out
  return TestbedData(root=root, tokenizer=tokenizer, datasets=datasets, vocab=vocab)


def _matches(info_path: str, wanted: dict[str, Any]) -> bool:
  with open(info_path) as f:
    info = json.load(f)
  return all(info.get(k) == v for k, v in wanted.items())
