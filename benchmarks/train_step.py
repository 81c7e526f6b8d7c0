r"""Speed of the tiny testbed configs: compile time and time of the hybrid train step, rollout tokens/s.

  python -m benchmarks.train_step [--configs=vita,kimi] [--repeats=5]

Shapes are those of `experiments/{vita,kimi}.py:tiny` (P prompts x G rollouts, the testbed
vocabulary, the configured prompt / response lengths); weights are random, so the rollouts run to
their length limit more often than a trained model's would. For larger shapes use
`benchmarks/rollout_throughput.py` and `--config.*` overrides of a real run.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.recipes_7b import random_seq_batch
from wavalign_jax import config_lib, models, optim, sharding, steps, train_state
from wavalign_jax.batches import HybridBatch, RLBatch, SamplerPrompts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.objectives import gate as gate_lib
from wavalign_jax.rollout import decode
from wavalign_jax.rollout import sampler as sampler_lib
from wavalign_jax.testbed import vocab as testbed_vocab
from wavalign_jax.tokens import text_id_mask

_CONFIGS = flags.DEFINE_list("configs", ["vita", "kimi"], "Experiment files (experiments/<name>.py:tiny).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after the compiling one.")


def timed(fn, repeats: int) -> tuple[float, float]:
  """(first call, mean of the next `repeats` calls) in seconds; fn returns something to block on."""
  t = time.perf_counter()
  jax.block_until_ready(fn(0))
  first = time.perf_counter() - t
  t = time.perf_counter()
  for i in range(repeats):
    jax.block_until_ready(fn(i + 1))
  return first, (time.perf_counter() - t) / repeats


def bench(name: str, repeats: int) -> None:
  config = config_lib.load_config_file(f"experiments/{name}.py:tiny")
  arch = config.model.arch
  vocab = testbed_vocab.interleaved_vocab() if arch == "interleaved" else testbed_vocab.parallel_vocab()
  cfg = ModelConfig(**{**config.model.to_dict(), "vocab_size": vocab.vocab_size})
  P, G = config.data.prompts_per_step, config.rollout.group_size
  Lp, N = config.data.max_prompt_len, config.rollout.max_new_tokens
  rng = np.random.default_rng(0)
  mesh = sharding.make_mesh((-1, 1, 1))
  optimizer = optim.make_optimizer(optim.OptimConfig(total_steps=100))
  params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
  create = lambda: train_state.create(params, optimizer, gate_lib.init_gate_state(gate_lib.GateConfig()),
                                      jax.random.PRNGKey(0))
  state, state_sharding = train_state.init_sharded(create, models.param_shardings(cfg, mesh), optimizer, mesh)
  step = steps.jit_step(steps.make_hybrid_step(models.logprob_fn(cfg), optimizer,
                                               steps.StepConfig()), state_sharding, mesh)
  batch = sharding.device_put_batch(HybridBatch(
      sft=random_seq_batch(rng, cfg, P, Lp + config.data.max_response_len, Lp),
      rl=random_seq_batch(rng, cfg, P * G, Lp + N, Lp, RLBatch),
      rewards=rng.integers(1, 6, (P, G)).astype(np.float32), reward_valid=np.ones((P, G), bool)), mesh)
  holder = [state]

  def train_call(_):
    holder[0], metrics = step(holder[0], batch)
    return metrics["loss"]
  step_first, step_time = timed(train_call, repeats)

  sampling = decode.sampling_config(config.rollout, config.layout, vocab)
  text_ids = np.flatnonzero(text_id_mask(vocab))
  prompt_ids = {s: rng.choice(text_ids, (P, Lp)).astype(np.int32) for s in cfg.streams}
  prompts = SamplerPrompts(inputs=prompt_ids, valid=np.ones((P, Lp), bool))
  lengths = []

  def rollout_call(seed):
    r = sampler_lib.sample(holder[0].params, cfg, prompts, jax.random.PRNGKey(seed), sampling)
    lengths.append(r.lengths)
    return r.lengths
  roll_first, roll_time = timed(rollout_call, repeats)
  tokens = float(np.mean([np.asarray(l).sum() for l in lengths[1:]]))
  tokens_per_step = P * G * (Lp + N) + P * (Lp + config.data.max_response_len)
  print(f"{name}:tiny ({arch}, {jax.devices()[0].platform}) P={P} G={G} prompt={Lp} new={N}\n"
        f"  train step : compile {step_first - step_time:6.2f}s  step {step_time * 1e3:7.1f} ms  "
        f"({tokens_per_step / step_time:,.0f} tokens/s through the loss)\n"
        f"  rollouts   : compile {roll_first - roll_time:6.2f}s  call {roll_time * 1e3:7.1f} ms  "
        f"{tokens / roll_time:,.0f} generated tokens/s  (mean {tokens / (P * G):.1f} tokens per rollout)", flush=True)


def main(argv: list[str]) -> None:
  del argv
  for name in _CONFIGS.value:
    bench(name, _REPEATS.value)


if __name__ == "__main__":
  app.run(main)
