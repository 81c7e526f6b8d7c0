r"""Rollout sampler speed on the tiny model configs (random weights, constrained decoding).

  python -m benchmarks.rollout_throughput [--arch=interleaved,parallel] [--prompts=2] [--group=4]
      [--prompt_len=32] [--new_tokens=64] [--repeats=3]

Prints compile time (first call minus a steady call) and generated tokens/s (completion tokens up
to each row's stop, all streams counted once per position) and decode steps/s.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from wavalign_jax import models, rollout
from wavalign_jax.batches import SamplerPrompts
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab

flags.DEFINE_list("arch", ["interleaved", "parallel"], "Architectures to time.")
flags.DEFINE_integer("prompts", 2, "Prompts P per call.")
flags.DEFINE_integer("group", 4, "Rollouts per prompt G (rows = P * G).")
flags.DEFINE_integer("prompt_len", 32, "Prompt length (all rows valid).")
flags.DEFINE_integer("new_tokens", 64, "max_new_tokens.")
flags.DEFINE_integer("repeats", 3, "Timed calls after the compiling one.")
FLAGS = flags.FLAGS

# Constraint vocabularies inside tiny_config's 96 ids.
VOCABS = {
    "interleaved": InterleavedVocab(vocab_size=96, tokenizer_size=40, special_ids=(), first_audio_code=48,
                                    num_audio_codes=40,
                                    begin_of_audio=40, end_of_audio=41, eos=42, pad=43, bos=44, newline=45),
    "parallel": ParallelVocab(vocab_size=96, tokenizer_size=40, special_ids=(), audio_offset=48, num_audio_codes=40,
                              text_blank=40,
                              text_eos=41, media_begin=42, media_end=43, msg_end=44, pad=45, user_msg_start=46,
                              assistant_msg_start=47),
}


def bench(arch: str) -> None:
  cfg = models.tiny_config(arch)
  params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))
  rs = np.random.RandomState(0)
  shape = (FLAGS.prompts, FLAGS.prompt_len)
  prompts = SamplerPrompts(inputs={s: rs.randint(0, 40, shape).astype(np.int32) for s in cfg.streams},
                           valid=np.ones(shape, bool))
  vocab = VOCABS[arch]
  con = (rollout.InterleavedConstraint(vocab, (1, 4, 3, 8, 4, 10)) if arch == "interleaved"
         else rollout.ParallelConstraint(vocab, 6))
  sc = rollout.SamplingConfig(max_new_tokens=FLAGS.new_tokens, group_size=FLAGS.group, constraint=con)

  def run(seed):
    t = time.perf_counter()
    r = jax.block_until_ready(rollout.sample(params, cfg, prompts, jax.random.key(seed), sc))
    return time.perf_counter() - t, r

  first, _ = run(0)
  times, tokens, steps = [], 0, 0
  for i in range(FLAGS.repeats):
    dt, r = run(i + 1)
    times.append(dt)
    tokens += int(np.asarray(r.lengths).sum())
    steps += int(np.asarray(r.lengths).max())
  total = sum(times)
  print(f"{arch:12s} rows={FLAGS.prompts * FLAGS.group} prompt={FLAGS.prompt_len} max_new={FLAGS.new_tokens} "
        f"compile~{first - total / len(times):.2f}s  {tokens / total:.0f} tokens/s  {steps / total:.0f} steps/s  "
        f"mean length {tokens / (len(times) * FLAGS.prompts * FLAGS.group):.1f}  ({jax.devices()[0].platform})")


def main(argv):
  del argv
  for arch in FLAGS.arch:
    bench(arch)


if __name__ == "__main__":
  app.run(main)
