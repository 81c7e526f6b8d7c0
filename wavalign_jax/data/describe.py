r"""Summary of a built dataset: counts, length histograms per stream and token type, decoded examples.

  (the command line: `python -m data_pipeline.inspect data/sft`)
"""
from __future__ import annotations

import collections
import os
from typing import Sequence

import numpy as np
import tokenizers

from wavalign_jax.data import build
from wavalign_jax.data.layouts import Example
from wavalign_jax.data.loader import RecordSource, resolve_paths
from wavalign_jax.data.records import Record
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab, TokenType, text_id_mask

EDGES = (0, 64, 128, 256, 512, 1024, 2048, 4096)


def _histogram(values: Sequence[int]) -> str:
  bins = np.searchsorted(EDGES, values, side="right") - 1
  counts = np.bincount(bins, minlength=len(EDGES))
  labels = [f"<{EDGES[i + 1]}" if i + 1 < len(EDGES) else f">={EDGES[-1]}" for i in range(len(EDGES))]
  cells = " ".join(f"{lab}:{c}" for lab, c in zip(labels, counts) if c)
  return f"min {min(values)} mean {np.mean(values):.1f} max {max(values)} | {cells}"


def _decode(ids: np.ndarray, tok: tokenizers.Tokenizer | None, is_text: np.ndarray) -> str:
  """Text runs decoded with the tokenizer; specials and audio ids shown as tokens / `<code ids>`."""
  if tok is None:
    return " ".join(map(str, ids.tolist()))
  parts, run = [], []
  for i in ids.tolist():
    if 0 <= i < len(is_text) and is_text[i]:
      run.append(i)
      continue
    if run:
      parts.append(repr(tok.decode(run, skip_special_tokens=False)))
      run = []
    parts.append(tok.id_to_token(i) or f"<id {i}>")
  if run:
    parts.append(repr(tok.decode(run, skip_special_tokens=False)))
  return " ".join(parts)


def _describe(name: str, ex: Example, tok, is_text: np.ndarray) -> list[str]:
  lines = [f"  [{name}] {len(ex)} positions, prompt {ex.prompt_len}"]
  for s in ex.streams:
    lines.append(f"    {s} prompt  : {_decode(ex.tokens[s][:ex.prompt_len], tok, is_text)}")
    lines.append(f"    {s} response: {_decode(ex.tokens[s][ex.prompt_len:], tok, is_text)}")
  return lines


def report(path: str, decode_examples: int = 1, tokenizer: str | None = None) -> str:
  paths, info = resolve_paths(path)
  source = RecordSource(paths)
  tok_path = tokenizer or info.get("tokenizer")
  if tok_path and not os.path.isfile(tok_path):
    raise FileNotFoundError(f"{path}: tokenizer {tok_path} does not exist; pass --tokenizer=PATH")
  tok = tokenizers.Tokenizer.from_file(tok_path) if tok_path else None
  is_text = np.zeros((0,), bool)
  if info.get("vocab"):
    vocab_cls = InterleavedVocab if info["arch"] == "interleaved" else ParallelVocab
    is_text = text_id_mask(vocab_cls(**info["vocab"]))
  kinds = collections.Counter()
  lengths = collections.defaultdict(list)

  def count(rec: Record) -> None:
    kinds[rec.kind] += 1
    for name, ex in rec.examples.items():
      lengths[(name, "all positions", "")].append(len(ex))
      lengths[(name, "prompt", "")].append(ex.prompt_len)
      for s in ex.streams:
        for t in TokenType:
          if t != TokenType.NONE:
            lengths[(name, s, t.name)].append(int(np.sum(ex.types[s] == int(t))))
  if info:   # one read of the dataset: the checksum and the counts
    recorded, found = build.verify_content(path, visit=count)
  else:
    for i in range(len(source)):
      count(source[i])
  lines = [f"dataset {path}: records: {len(source)} in {len(paths)} shard(s); kinds {dict(kinds)}"]
  if info:
    lines.append(f"arch {info['arch']}, skipped as too long: {info['skipped_too_long']}")
    lines.append(f"content: the records match dataset_info.json's content_sha256 {found[:16]}" if recorded == found
                 else f"content: DIFFERS from dataset_info.json's content_sha256 ({found[:16]} != "
                      f"{(recorded or 'none recorded')[:16]}): a shard was replaced or altered since the build")
  lines.append("lengths (tokens per example):")
  for (name, what, t), values in sorted(lengths.items()):
    if any(values) or not t:
      lines.append(f"  {name:>8} {what:>13} {t:>8}: {_histogram(values)}")
  for i in range(min(decode_examples, len(source))):
    rec = source[i]
    lines.append(f"example {i} ({source.where(i)}), meta {rec.meta}")
    for name, ex in rec.examples.items():
      lines.extend(_describe(name, ex, tok, is_text))
  return "\n".join(lines)
