r"""Command line of the dataset summary (wavalign_jax/data/describe.py): counts, length histograms, decoded examples.

  python -m data_pipeline.inspect data/sft [--examples=1] [--tokenizer=ckpt/tokenizer.json]
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

if __name__ == "__main__" and not __package__:   # `python data_pipeline/<x>.py`: the repository, not this folder
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # (its inspect.py is not stdlib's)

from absl import app, flags

from wavalign_jax import cli
from wavalign_jax.data import describe


def define_flags() -> None:
  flags.DEFINE_integer("examples", 1, "Number of decoded examples to print.")
  flags.DEFINE_string("tokenizer", None, "tokenizer.json (default: the one recorded in dataset_info.json).")


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("expected one dataset directory: python -m data_pipeline.inspect PATH [--examples=N]")
  print(describe.report(argv[1], flags.FLAGS.examples, flags.FLAGS.tokenizer))


if __name__ == "__main__":
  cli.run(main, define_flags)
