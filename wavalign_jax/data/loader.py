"""Grain loaders over ArrayRecord shards written by data/build.py (`python -m data_pipeline.build`).

source -> this host's slice -> seeded shuffle (reshuffled every epoch) -> repeat -> decode
-> batch (global batch / host count) padded to the smallest length bucket that fits -> optional worker
processes.

The iterator is a Grain `DatasetIterator`: its state (saved with the train state, one per host, by
checkpointing.Checkpointer) resumes with exactly the next example, across epochs too. Host h of n reads records h,
h+n, ... of the file order (after dropping the last len % n records so every host sees as many).
Hosts may pick different buckets in the same step; the train loop pads every host's batch to the longest
(`rollout.hosts.same_length` / `same_prompt_length`) before the batches form one global array.
"""
from __future__ import annotations

import bisect
import json
import os
from typing import Any, Sequence

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from wavalign_jax.batches import PairBatch, PromptBatch, SeqBatch
from wavalign_jax.data import layouts
from wavalign_jax.data.records import INFO_FILE, Record, decode_record


class RecordSource:
  """Random access to decoded `Record`s across shards; errors name shard file and index."""

  def __init__(self, paths: Sequence[str]):
    if not paths:
      raise ValueError("RecordSource needs at least one ArrayRecord file")
    self._paths = list(paths)
    sizes = []
    for p in self._paths:
      if not os.path.exists(p):
        raise ValueError(f"ArrayRecord shard {p} does not exist")
      try:
        reader = ArrayRecordReader(p)
        try:
          sizes.append(reader.num_records())
        finally:
          reader.close()   # (where a truncated shard's damage shows)
      except (RuntimeError, OSError, ValueError) as e:
        raise ValueError(f"ArrayRecord shard {p} cannot be read ({type(e).__name__}: {e or 'no message'}): damaged "
                         "or partly copied; copy the dataset again or rebuild it") from None
    self._starts = np.cumsum([0] + sizes).tolist()
    self._source = grain.sources.ArrayRecordDataSource(self._paths)

  def __len__(self) -> int:
    return self._starts[-1]

  def where(self, index: int) -> str:
    shard = bisect.bisect_right(self._starts, index) - 1
    return f"{self._paths[shard]}[{index - self._starts[shard]}]"

  def __getitem__(self, index: int) -> Record:
    return decode_record(self._source[index], self.where(index))

  def shard_record(self, shard: int, index: int) -> bytes:
    """The stored bytes of record `index` of shard `shard` (undecoded)."""
    if not 0 <= index < self._starts[shard + 1] - self._starts[shard]:
      raise IndexError(f"{self._paths[shard]} has {self._starts[shard + 1] - self._starts[shard]} records, not "
                       f"record {index}")
    return self._source[self._starts[shard] + index]


def resolve_paths(path: str | Sequence[str]) -> tuple[list[str], dict[str, Any]]:
  """Shard paths and dataset info from a dataset directory (with dataset_info.json) or explicit files. The
  info's `tokenizer` is resolved against the directory (datasets built before they carried their tokenizer name
  an absolute path, kept as it is)."""
  if isinstance(path, str) and os.path.isdir(path):
    info_path = os.path.join(path, INFO_FILE)
    if not os.path.exists(info_path):
      raise ValueError(f"{path} has no {INFO_FILE}; build it with `python -m data_pipeline.build`")
    with open(info_path) as f:
      info = json.load(f)
    if info.get("tokenizer"):
      info["tokenizer"] = os.path.join(path, info["tokenizer"])
    return [os.path.join(path, s) for s in info["shards"]], info
  return ([path] if isinstance(path, str) else list(path)), {}


def check_lengths(info: dict[str, Any], buckets: Sequence[int]) -> None:
  """Refuses a dataset whose longest example (`dataset_info.json`) exceeds every bucket: a run checks it at start
  (config_check), before the loader would meet the record in a batch."""
  longest = info.get("longest", 0)
  if longest > max(buckets):
    raise ValueError(f"examples of up to {longest} tokens exceed the largest length bucket {max(buckets)} "
                     "(data.max_prompt_len + data.max_response_len); rebuild it with `python -m data_pipeline.build "
                     f"--max_length={max(buckets)}` (longer records are then skipped) or raise the lengths")


def _bucket(n: int, buckets: Sequence[int], where: str) -> int:
  i = bisect.bisect_left(buckets, n)
  if i == len(buckets):
    raise ValueError(f"{where}: {n} tokens exceed the largest length bucket {buckets[-1]}")
  return buckets[i]


def _where(record: Record) -> str:
  return f"record from {record.meta.get('source')}:{record.meta.get('line')}"


class _Collate:
  """Batch of records -> the padded batch of the record kind (picklable for worker processes): a `SeqBatch` of sft
  records, a `PromptBatch` of rl records, a `PairBatch` of dpo records."""

  def __init__(self, buckets: Sequence[int], pad_id: int):
    self.buckets, self.pad_id = tuple(buckets), pad_id

  def _length(self, records: Sequence[Record], examples: Sequence[layouts.Example]) -> int:
    longest = max(range(len(examples)), key=lambda i: len(examples[i]))
    return _bucket(len(examples[longest]), self.buckets, _where(records[longest % len(records)]))

  def __call__(self, records: Sequence[Record]) -> SeqBatch | PromptBatch | PairBatch:
    kind = records[0].kind
    if any(r.kind != kind for r in records):
      raise ValueError(f"mixed record kinds in one batch: {sorted({r.kind for r in records})}")
    meta = [r.meta for r in records]
    if kind == "sft":
      examples = [r.examples["example"] for r in records]
      return layouts.to_sequence_batch(examples, self._length(records, examples), self.pad_id)
    if kind == "rl":
      full = [r.examples["example"] for r in records]
      prompts = [ex.prompt() for ex in full]
      return PromptBatch(prompt=layouts.to_sequence_batch(prompts, self._length(records, prompts), self.pad_id),
                         prompt_lengths=np.asarray([len(p) for p in prompts], np.int32),
                         reference=layouts.to_sequence_batch(full, self._length(records, full), self.pad_id),
                         meta=meta)
    pairs = [r.examples["chosen"] for r in records] + [r.examples["rejected"] for r in records]
    length = self._length(records, pairs)
    return PairBatch(chosen=layouts.to_sequence_batch(pairs[:len(records)], length, self.pad_id),
                     rejected=layouts.to_sequence_batch(pairs[len(records):], length, self.pad_id), meta=meta)


def make_dataset(path: str | Sequence[str], *, global_batch_size: int, buckets: Sequence[int],
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 worker_count: int = 0, pad_id: int | None = None,
                 read_threads: int = 16, read_prefetch: int = 256,
                 drop_remainder: bool = True) -> grain.IterDataset:
  """The per-host Grain dataset of batches; see the module docstring for the stages.

  process_index / process_count default to jax.process_index() / jax.process_count(); pass them
  to simulate hosts. `num_epochs=None` repeats forever. With a finite number of epochs the last
  incomplete batch is dropped unless `drop_remainder=False` (evaluation reads every record).
  read_threads / read_prefetch: records read and decoded ahead per process (also what a restored
  iterator re-reads before its first batch).
  """
  if process_index is None or process_count is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} hosts")
  buckets = sorted(int(b) for b in buckets)
  if not buckets:
    raise ValueError("need at least one length bucket")
  paths, info = resolve_paths(path)
  pad_id = info.get("pad_id", 0) if pad_id is None else pad_id
  per_host = global_batch_size // process_count
  source = RecordSource(paths)
  if info and len(source) != info["num_records"]:
    raise ValueError(f"{path}: its shards hold {len(source)} records but {INFO_FILE} says {info['num_records']}; "
                     "the dataset is damaged or was only partly replaced: rebuild it with "
                     "`python -m data_pipeline.build ... --overwrite`")
  usable = len(source) - len(source) % process_count
  if drop_remainder and usable < per_host * process_count:
    raise ValueError(f"{paths}: {len(source)} records cannot fill one global batch of {global_batch_size}")

  ds = grain.MapDataset.source(source)[:usable][process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed)
  ds = ds.repeat(num_epochs).to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_prefetch))
  ds = ds.batch(per_host, drop_remainder=drop_remainder, batch_fn=_Collate(buckets, pad_id))
  if worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ds


def make_loader(path: str | Sequence[str], **kwargs: Any) -> grain.DatasetIterator:
  """Iterator over this host's batches (kwargs of `make_dataset`)."""
  return iter(make_dataset(path, **kwargs))

