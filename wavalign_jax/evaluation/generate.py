"""Benchmark generation: prompt JSONL -> laid-out prompts -> batched sampler -> responses JSONL.

Prompt records follow the WavAlign schema (`messages`, `audios` as inline code lists or code-file
paths relative to the JSONL) plus the benchmark's own fields (`id`, `subset`, `prompt`,
`reference`, ...). The responses JSONL keeps every benchmark field, drops the prompt fields and
adds `text` (decoded text channel) and `audio_codes` (0-based): the schema `evaluation/score.py`
reads, so scoring can be redone without the model.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from wavalign_jax import files
from wavalign_jax.batches import SamplerPrompts
from wavalign_jax.data import build as build_lib
from wavalign_jax.data import layouts
from wavalign_jax.evaluation import common
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rollout import batch as rl_batch_lib
from wavalign_jax.rollout import decode
from wavalign_jax.rollout import hosts
from wavalign_jax.rollout import sampler as sampler_lib

PROMPT_FIELDS = ("messages", "audios")   # consumed by the prompt layout, not copied to the responses
OUTPUT_FIELDS = ("text", "audio_codes")


def load_prompts(path: str, default_subset: str | None = None) -> list[dict[str, Any]]:
  """Records of a prompt JSONL file or of every `*.jsonl` in a directory (sorted by name).

  Each record needs `id` and `subset` (`default_subset` fills a missing one) and must not carry the
  output fields. `_where` (file:line) and `_base_dir` (for relative code-file paths) are added.
  """
  if os.path.isdir(path):
    paths = sorted(glob.glob(os.path.join(path, "*.jsonl")))
    if not paths:
      raise FileNotFoundError(f"--data {path}: directory holds no *.jsonl file")
  elif os.path.isfile(path):
    paths = [path]
  else:
    raise FileNotFoundError(f"--data {path}: no such file or directory")
  records = []
  for file in paths:
    for where, rec in common.iter_jsonl(file):
      if default_subset is not None:
        rec.setdefault("subset", default_subset)
      for name in ("id", "subset", "messages"):
        if name not in rec:
          raise ValueError(f"{where}: missing field {name!r}")
      clash = [k for k in OUTPUT_FIELDS if k in rec]
      if clash:
        raise ValueError(f"{where}: fields {clash} are written by the generator; rename them in the benchmark data")
      rec.update(_where=where, _base_dir=os.path.dirname(os.path.abspath(file)))
      records.append(rec)
  return records


def layout_prompts(records: Sequence[dict[str, Any]], builder: build_lib.Builder) -> list[layouts.Example]:
  """The model-ready prompt of each record (system/user turns + question audio + assistant header),
  laid out by the dataset Builder (data/build.py) exactly as its training records are."""
  out = []
  for rec in records:
    try:
      out.append(builder.prompt(rec, rec["_base_dir"]))
    except ValueError as e:
      raise ValueError(f"{rec['_where']}: {e}") from None
  return out


def eval_sampling(sampling: decode.SamplingConfig, *, temperature: float = 0.0, top_p: float = 1.0,
                  max_new_tokens: int | None = None) -> decode.SamplingConfig:
  """One response per prompt with the same sampling on every stream (greedy by default)."""
  return dataclasses.replace(sampling, group_size=1, sampling=decode.StreamSampling(temperature, top_p, 0),
                             per_stream=(), max_new_tokens=max_new_tokens or sampling.max_new_tokens)


def generate(params: Any, model_cfg: ModelConfig, sampling: decode.SamplingConfig,
             prompts: Sequence[layouts.Example], *, batch_size: int,
             rng: jax.Array, mesh: Mesh | None = None) -> list[tuple[list[int], list[int]]]:
  """(text ids, 0-based audio codes) of one response to each of `prompts`, `batch_size` at a time.

  Every batch has the same shape (prompts left-padded to the longest one, the last batch filled up by
  `sample_batch`), so the sampler compiles once; the batch of prompts start.. samples with
  `fold_in(rng, start)`.
  """
  if not prompts:
    raise ValueError("no prompts to generate from")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be >= 1")
  length = max(len(p) for p in prompts)
  out: list[tuple[list[int], list[int]]] = []
  for start in range(0, len(prompts), batch_size):
    batch = sampler_lib.left_pad_prompts(prompts[start:start + batch_size], sampling.pad, length)
    out += sample_batch(params, model_cfg, sampling, batch, batch_size=batch_size,
                        rng=jax.random.fold_in(rng, start), mesh=mesh)
  return out


def sample_batch(params: Any, model_cfg: ModelConfig, sampling: decode.SamplingConfig,
                 prompts: SamplerPrompts, *, batch_size: int, rng: jax.Array,
                 mesh: Mesh | None = None) -> list[tuple[list[int], list[int]]]:
  """(text ids, 0-based audio codes) of one response to each row of the left-padded numpy `prompts`
  (`PromptBatch.left_padded` / `left_pad_prompts`): the eval sampler of training (`train.evaluate`) and of the
  benchmarks and `python -m wavalign_jax.generate` (`generate`).

  A batch of fewer than `batch_size` rows is filled up with copies of its last row (their responses
  dropped), so every batch has one compiled shape per prompt length. Every host passes the same prompts
  and gets every response (`hosts.sample_rows(shared=True)` on `mesh`).
  """
  n = len(prompts.valid)
  if not 0 < n <= batch_size:
    raise ValueError(f"{n} prompts for a batch of {batch_size}")
  prompts = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)]), prompts)
  rollouts = hosts.sample_rows(params, model_cfg, prompts, rng, sampling, mesh, shared=True)
  return rl_batch_lib.response_contents(rollouts, sampling.constraint)[:n]


def response_records(records: Sequence[dict[str, Any]], texts: Sequence[str],
                     codes: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
  """Benchmark fields of each record (prompt and private fields dropped) plus `text` and `audio_codes`."""
  if not len(records) == len(texts) == len(codes):
    raise ValueError(f"{len(records)} records, {len(texts)} texts, {len(codes)} code lists")
  return [{**{k: v for k, v in r.items() if k not in PROMPT_FIELDS and not k.startswith("_")},
           "text": t, "audio_codes": [int(c) for c in c_]} for r, t, c_ in zip(records, texts, codes)]


def write_responses(path: str, responses: Sequence[dict[str, Any]]) -> None:
  """Writes the responses JSONL atomically (a killed run leaves no half file for --skip_generation)."""
  files.write_jsonl(path, responses, ensure_ascii=False)
