"""Serialised examples: one msgpack record per dialogue, stored in ArrayRecord shards.

A record holds one or more laid-out `Example`s under names (sft: "example"; rl: "example" =
prompt + reference response for the SFT anchor; dpo: "chosen", "rejected") and the metadata a
reward needs (question_text, answer, style, source file and line). Ids are int32 bytes and
types uint8 bytes, so a 1.3k-token example is ~7 kB. Beside its shards a built dataset holds `INFO_FILE` (what it
holds and how it was built) and `tokenizer.TOKENIZER_FILE`, its own copy of the tokenizer it was built with
(named relative to the dataset, so a dataset copied to another machine or bucket decodes with exactly that one).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import msgpack
import numpy as np

from wavalign_jax.data.layouts import Example

INFO_FILE = "dataset_info.json"

KINDS = {"sft": ("example",), "rl": ("example",), "dpo": ("chosen", "rejected")}
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Record:
  kind: str
  examples: dict[str, Example]
  meta: dict[str, Any]


def encode_record(kind: str, examples: Mapping[str, Example], meta: Mapping[str, Any]) -> bytes:
  if kind not in KINDS:
    raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(KINDS)}")
  if set(examples) != set(KINDS[kind]):
    raise ValueError(f"{kind} record needs examples {KINDS[kind]}, got {sorted(examples)}")
  payload = {
      "version": FORMAT_VERSION,
      "kind": kind,
      "examples": {
          name: {"prompt_len": ex.prompt_len,
                 "tokens": {s: np.asarray(v, "<i4").tobytes() for s, v in ex.tokens.items()},
                 "types": {s: np.asarray(v, np.uint8).tobytes() for s, v in ex.types.items()}}
          for name, ex in examples.items()},
      "meta": dict(meta),
  }
  return msgpack.packb(payload, use_bin_type=True)


def decode_record(data: bytes, where: str = "record") -> Record:
  """Inverse of `encode_record`; `where` (e.g. "shard-00000.array_record[17]") names the record in errors."""
  try:
    payload = msgpack.unpackb(data, raw=False)
    if payload.get("version") != FORMAT_VERSION:
      raise ValueError(f"format version {payload.get('version')!r}, expected {FORMAT_VERSION}")
    examples = {
        name: Example({s: np.frombuffer(v, "<i4").astype(np.int32) for s, v in e["tokens"].items()},
                      {s: np.frombuffer(v, np.uint8).astype(np.int32) for s, v in e["types"].items()},
                      int(e["prompt_len"]))
        for name, e in payload["examples"].items()}
    kind = payload["kind"]
    if kind not in KINDS or set(examples) != set(KINDS[kind]):
      raise ValueError(f"kind {kind!r} with examples {sorted(examples)}")
    return Record(kind, examples, payload["meta"])
  except Exception as e:  # any corruption: name the record
    raise ValueError(f"{where}: not a valid wavalign record ({type(e).__name__}: {e})") from e
