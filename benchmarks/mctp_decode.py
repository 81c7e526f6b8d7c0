r"""MCTP decoding vs main-head decoding: generated tokens/s of the same model, interleaved runs.

  python -m benchmarks.mctp_decode --shape=tiny                 # seconds
  python -m benchmarks.mctp_decode --shape=1b --new_tokens=64   # a Qwen2.5-1.5B-like trunk with 10 MCTP modules
      (32k vocabulary to keep host memory at ~8 GB in float32; several minutes on 2 CPU cores)

Random weights and free decoding (no constraint, no stop), so every row generates exactly --new_tokens
tokens and both decoders do the same amount of output. The MCTP schedule defaults to VITA-Audio Boost's
[1, 10, 4, 10]. Runs alternate main / mctp --repeats times; medians are printed with their ratio.

Then the cost of each piece, timed alone at a cache filled to the prompt plus half the new tokens (each with its
head's logits): a main step on one new token, the main model's catch-up forward over the m + 1 tokens made since
its last step, and one MCTP module call over the period's M + m anchors (each module runs once per period and
catches up on every anchor since its last call). From those, the speed-up one period of the schedule's last pair
[M, m] allows: (M + m) main steps against one catch-up, M - 1 main steps and m module calls. MCTP pays off when the
catch-up costs about one step, i.e. when a decode step is bound by reading the weights (batch 1, accelerators),
not by arithmetic (many rows on a CPU): compare --prompts=1 --group=1 with the default 8 rows.
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import mctp_pieces
from wavalign_jax import models
from wavalign_jax.batches import SamplerPrompts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rollout import decode
from wavalign_jax.rollout import sampler as sampler_lib

flags.DEFINE_enum("shape", "tiny", ["tiny", "1b"], "Model size.")
flags.DEFINE_integer("prompts", 2, "Prompts P per call.")
flags.DEFINE_integer("group", 4, "Rollouts per prompt G (rows = P * G).")
flags.DEFINE_integer("prompt_len", 64, "Prompt length.")
flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
flags.DEFINE_list("schedule", ["1", "10", "4", "10"], "MCTP schedule [M1, m1, M2, m2, ...].")
flags.DEFINE_integer("repeats", 3, "Timed calls of each decoder after the compiling ones.")
FLAGS = flags.FLAGS

SHAPES = {
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4, num_kv_heads=2,
                 head_dim=64, num_mtp_modules=10),
    "1b": dict(vocab_size=32768, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
               num_kv_heads=2, head_dim=128, num_mtp_modules=10),
}


def main(argv):
  del argv
  cfg = ModelConfig(arch="interleaved", dtype="float32", remat="none", **SHAPES[FLAGS.shape])
  params = models.init_params(cfg, jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  rs = np.random.RandomState(0)
  shape = (FLAGS.prompts, FLAGS.prompt_len)
  prompts = SamplerPrompts(inputs={"tokens": rs.randint(0, cfg.vocab_size, shape).astype(np.int32)},
                           valid=np.ones(shape, bool))
  base = dict(max_new_tokens=FLAGS.new_tokens, group_size=FLAGS.group,
              sampling=decode.StreamSampling(0.7, 0.9, 0))
  configs = {"main": decode.SamplingConfig(**base),
             "mctp": decode.SamplingConfig(**base, decode="mctp",
                                            mctp_schedule=tuple(int(x) for x in FLAGS.schedule))}

  def run(name, seed):
    t = time.perf_counter()
    r = jax.block_until_ready(sampler_lib.sample(params, cfg, prompts, jax.random.key(seed), configs[name]))
    return time.perf_counter() - t, int(np.asarray(r.lengths).sum())

  first = {name: run(name, 0)[0] for name in configs}
  times = {name: [] for name in configs}
  tokens = 0
  for i in range(FLAGS.repeats):
    for name in configs:
      dt, tokens = run(name, i + 1)
      times[name].append(dt)
  rate = {name: tokens / statistics.median(t) for name, t in times.items()}
  print(f"shape={FLAGS.shape} ({n_params / 1e9:.2f}B params incl. {cfg.num_mtp_modules} MCTP layers) "
        f"rows={FLAGS.prompts * FLAGS.group} prompt={FLAGS.prompt_len} new={FLAGS.new_tokens} "
        f"schedule={FLAGS.schedule} ({jax.devices()[0].platform})")
  for name in configs:
    print(f"  {name:5s} {rate[name]:8.1f} tokens/s  median {statistics.median(times[name]):.3f}s  "
          f"first call {first[name]:.1f}s (compile + run)")
  print(f"  mctp / main = {rate['mctp'] / rate['main']:.2f}x")
  print_breakdown(params, cfg, FLAGS.prompts * FLAGS.group, FLAGS.prompt_len + FLAGS.new_tokens // 2,
                  FLAGS.prompt_len + FLAGS.new_tokens, tuple(int(x) for x in FLAGS.schedule), FLAGS.repeats)


def _median_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))   # compile
  times = []
  for _ in range(max(repeats, 3)):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def step_costs(params, cfg: ModelConfig, rows: int, filled: int, slots: int, catch_up: int, anchors: int,
               repeats: int) -> dict[str, float]:
  """Median seconds of a main step (1 token), the main catch-up (`catch_up` tokens) and an MCTP module call
  (`anchors` anchors), each with its head's logits, against caches of `slots` slots filled up to `filled`."""
  params, cfg = models.for_decoding(params, cfg)
  slots = max(slots, filled + max(catch_up, anchors))   # room for the longest piece's new slots
  cache, mtp_cache = mctp_pieces.caches(cfg, rows, filled, slots)
  tokens = jnp.ones((rows, max(catch_up, anchors)), jnp.int32)
  positions = filled + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None].repeat(rows, 0)
  main = jax.jit(lambda p, c, t, pos: mctp_pieces.main_step(p, cfg, c, t, pos))
  module = jax.jit(lambda p, c, v, t, pos: mctp_pieces.module_step(p, cfg, c, v, filled, t, pos))
  return {"main": _median_seconds(main, (params, cache, tokens[:, :1], positions[:, :1]), repeats),
          "catch_up": _median_seconds(main, (params, cache, tokens[:, :catch_up], positions[:, :catch_up]), repeats),
          "module": _median_seconds(module, (params, mtp_cache, cache["valid"], tokens[:, :anchors],
                                             positions[:, :anchors]), repeats)}


def print_breakdown(params, cfg: ModelConfig, rows: int, filled: int, slots: int, schedule: tuple[int, ...],
                    repeats: int) -> None:
  M, m = mctp_pieces.last_period(schedule, cfg.num_mtp_modules)
  anchors = mctp_pieces.period_anchors(M, m)
  costs = step_costs(params, cfg, rows, filled, slots, m + 1, anchors, repeats)
  print(f"  per call at {filled} filled slots, {rows} rows: main step {costs['main'] * 1e3:.1f} ms, "
        f"catch-up over {m + 1} tokens {costs['catch_up'] * 1e3:.1f} ms "
        f"({costs['catch_up'] / (m + 1) * 1e3:.1f} ms = {costs['catch_up'] / (m + 1) / costs['main']:.2f} main "
        f"steps per accepted token), MCTP module call over {anchors} anchors {costs['module'] * 1e3:.1f} ms "
        f"({costs['module'] / costs['main']:.2f} main steps)")
  print(f"  bound from these costs for the period [{M}, {m}]: {mctp_pieces.period_speedup(costs, M, m):.2f}x "
        f"(with a catch-up as cheap as one main step, as when the weight reads dominate: "
        f"{mctp_pieces.period_speedup(dict(costs, catch_up=costs['main']), M, m):.2f}x)")


if __name__ == "__main__":
  app.run(main)
