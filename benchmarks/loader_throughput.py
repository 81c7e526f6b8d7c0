r"""Loader throughput on synthetic VITA-Audio-shaped SFT data (prompt ~300, response ~1000 tokens).

  python -m benchmarks.loader_throughput [--records=512] [--batch=8] [--batches=40] [--workers=0]

Prints examples/s, tokens/s (non-padding tokens) and the share of batch positions that are not padding.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags
from array_record.python.array_record_module import ArrayRecordWriter

from wavalign_jax.data import layouts, loader
from wavalign_jax.data.records import encode_record
from wavalign_jax.tokens import InterleavedVocab

flags.DEFINE_integer("records", 512, "Synthetic records to write.")
flags.DEFINE_integer("batch", 8, "Global batch size (one host).")
flags.DEFINE_integer("batches", 40, "Batches to time per configuration.")
flags.DEFINE_integer("workers", 0, "Grain worker processes.")

VITA = InterleavedVocab(vocab_size=168072, tokenizer_size=151643, special_ids=(), first_audio_code=151685,
                        num_audio_codes=16384,
                        begin_of_audio=151674, end_of_audio=151675, eos=151645, pad=151643, bos=151643,
                        newline=198, im_start=151644)
ROLES = {"system": [8948], "user": [872], "assistant": [77091]}


def write_synthetic(path: str, n: int, seed: int = 0) -> None:
  """Records with a ~300-token prompt (question audio ~280 codes) and a ~1000-token response."""
  rng = np.random.default_rng(seed)
  writer = ArrayRecordWriter(path, "group_size:1")
  for i in range(n):
    prompt = layouts.interleaved_prompt(
        [layouts.Turn.make("system", rng.integers(0, 150000, 10)),
         layouts.Turn.make("user", audio=rng.integers(0, 16384, int(rng.integers(230, 330))))], VITA, ROLES)
    n_text = int(rng.integers(60, 140))
    response = layouts.interleaved_response(rng.integers(0, 150000, n_text),
                                            rng.integers(0, 16384, int(rng.integers(700, 1000))), VITA)
    writer.write(encode_record("sft", {"example": layouts.join(prompt, response)}, {"line": i}))
  writer.close()


def measure(path: str) -> tuple[float, float]:
  it = loader.make_loader(path, global_batch_size=flags.FLAGS.batch, buckets=[1024, 1536, 2048, 4096], seed=0,
                          process_index=0, process_count=1, worker_count=flags.FLAGS.workers,
                          pad_id=VITA.pad)
  next(it)  # start-up (threads, workers, first reads) is not throughput
  examples = tokens = 0
  start = time.perf_counter()
  for _ in range(flags.FLAGS.batches):
    batch = next(it)
    seg = batch.segment_ids
    examples += int(sum(np.unique(row[row > 0]).size for row in seg))
    tokens += int(np.sum(seg > 0))
  dt = time.perf_counter() - start
  shape = batch.segment_ids.shape
  print(f"batch {shape}  {examples / dt:9.1f} examples/s  {tokens / dt:11.0f} tokens/s  "
        f"fill {tokens / (flags.FLAGS.batches * shape[0] * shape[1]):.2f}")
  return examples / dt, tokens / dt


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "synthetic.array_record")
    start = time.perf_counter()
    write_synthetic(path, flags.FLAGS.records)
    print(f"wrote {flags.FLAGS.records} synthetic records in {time.perf_counter() - start:.1f}s")
    measure(path)


if __name__ == "__main__":
  app.run(main)
