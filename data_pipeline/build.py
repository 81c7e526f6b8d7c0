r"""Command line of the dataset builder (wavalign_jax/data/build.py): dialogue JSONL -> ArrayRecord shards.

  python -m data_pipeline.build --input=train.jsonl --output_dir=data/sft --tokenizer=ckpt/tokenizer.json \
      --arch=interleaved --kind=sft --ratios=1,10,4,10 --num_shards=8
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

if __name__ == "__main__" and not __package__:   # `python data_pipeline/<x>.py`: the repository, not this folder
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # (its inspect.py is not stdlib's)

from absl import app, flags

from wavalign_jax import cli
from wavalign_jax.data import build as build_lib
from wavalign_jax.data import layouts
from wavalign_jax.data.records import KINDS


def define_flags() -> None:
  flags.DEFINE_list("input", None, "JSONL files (WavAlign schema).", required=True)
  flags.DEFINE_string("output_dir", None, "Directory for the shards and dataset_info.json.", required=True)
  flags.DEFINE_string("tokenizer", None, "The checkpoint's tokenizer.json.", required=True)
  flags.DEFINE_enum("arch", "interleaved", ["interleaved", "parallel"], "Layout (VITA-Audio / Kimi-Audio).")
  flags.DEFINE_enum("kind", "sft", sorted(KINDS), "Dataset kind.")
  flags.DEFINE_list("ratios", [str(r) for r in layouts.BOOST_RATIOS], "Interleaved ratio list T1,A1,T2,A2,...")
  flags.DEFINE_integer("audio_delay", build_lib.Builder.audio_delay, "Parallel: blanks before the response audio.")
  flags.DEFINE_integer("audio_offset", build_lib.Builder.audio_offset,
                       "Parallel: id of audio code 0 (kimia_token_offset; the released Kimi-Audio's by default).")
  flags.DEFINE_integer("num_audio_codes", build_lib.Builder.num_audio_codes, "Parallel: number of audio codes.")
  flags.DEFINE_integer("num_shards", 1, "Number of ArrayRecord shards.")
  flags.DEFINE_integer("max_length", build_lib.DEFAULT_MAX_LENGTH, "Skip (and count) records whose longest example "
                       "has more tokens than this; the default is the configs' largest length bucket "
                       "(data.max_prompt_len + data.max_response_len); 0 = keep all.")
  flags.DEFINE_string("name", "data", "Shard file name prefix.")
  flags.DEFINE_bool("strict", False, "Refuse (naming file:line) records that the build would otherwise skip "
                    "(longer than --max_length) or alter (words outside the tokenizer's vocabulary).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing dataset in --output_dir (only once the new one is "
                    "complete).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  # bad input raises ValueError / OSError naming the file and line: cli.run prints it as `error: ...`
  builder = build_lib.Builder(f.tokenizer, arch=f.arch, kind=f.kind, ratios=[int(r) for r in f.ratios],
                              audio_delay=f.audio_delay, audio_offset=f.audio_offset, num_audio_codes=f.num_audio_codes)
  info = build_lib.build(builder, f.input, f.output_dir, f.num_shards, f.max_length, f.name, overwrite=f.overwrite,
                         strict=f.strict)
  print(build_lib.summary(info, f.output_dir), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
