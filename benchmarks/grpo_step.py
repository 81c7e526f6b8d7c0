r"""One GRPO step at the shape of the TRL peer (../shared/bench in the project's workplace; see README
"Speed against TRL"): generation, reward, advantages, loss forward/backward, AdamW.

  python -m benchmarks.grpo_step [--steps=5] [--warmup=1]
  python -m benchmarks.grpo_step --vocab=32768 --completion_len=192   # the larger shape
      (the peer's: --vocab=32768 --completion-len=192)

Model: Qwen2 hidden 256 x 4 layers, 4 heads / 2 KV heads, MLP 704, vocab 4096, float32, random weights.
Work: 8 prompts x G 4, prompt 64 tokens, every completion exactly 128 tokens (no stop token), temperature
0.7, top-p 0.9, β 0, one on-policy iteration, lr 1e-6, grad-norm clip, reward = fraction of even token ids.
Prints one JSON line with the medians over the measured steps: step_s, gen_s (sampler call), train_s
(step - gen: reward, batch, the jitted update), and the first (compiling) step's time. Compare with the
peer by alternating invocations on the same machine and comparing medians.
"""
from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from wavalign_jax import models, optim, sharding, steps, train_state
from wavalign_jax.batches import HybridBatch, SamplerPrompts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.objectives import gate as gate_lib
from wavalign_jax.objectives.grpo import GRPOConfig
from wavalign_jax.objectives.hybrid import HybridConfig
from wavalign_jax.rollout import batch as rl_batch_lib
from wavalign_jax.rollout import decode
from wavalign_jax.rollout import sampler as sampler_lib
from wavalign_jax.tokens import TokenType

flags.DEFINE_integer("steps", 5, "Measured steps.")
flags.DEFINE_integer("warmup", 1, "Steps excluded from the medians (compilation).")
flags.DEFINE_integer("prompts", 8, "Prompts per step.")
flags.DEFINE_integer("group", 4, "Completions per prompt.")
flags.DEFINE_integer("prompt_len", 64, "Prompt tokens.")
flags.DEFINE_integer("completion_len", 128, "Completion tokens (exact).")
flags.DEFINE_integer("vocab", 4096, "Vocabulary size (the peer's --vocab).")
flags.DEFINE_bool("keep_logits", True, "model.logprob_keep_logits: keep the head's logits for the backward pass "
                  "(as the peer's autograd does) instead of recomputing them.")
FLAGS = flags.FLAGS

CFG = ModelConfig(arch="qwen2", vocab_size=4096, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=64, dtype="float32", remat="none", logprob_chunk=64,
                  scan_layers=False)


def main(argv):
  del argv
  P, G, Lp, N = FLAGS.prompts, FLAGS.group, FLAGS.prompt_len, FLAGS.completion_len
  cfg = CFG.replace(vocab_size=FLAGS.vocab, logprob_keep_logits=FLAGS.keep_logits)
  mesh = sharding.make_mesh((1, -1, 1))
  opt_cfg = optim.OptimConfig(learning_rate=1e-6, warmup_steps=0, total_steps=1000, weight_decay=0.0, clip_norm=1.0)
  optimizer = optim.make_optimizer(opt_cfg)
  step_cfg = steps.StepConfig(hybrid=HybridConfig(rl=GRPOConfig(token_set="all")), gate=gate_lib.GateConfig(mode="rl_only"))
  rng = jax.random.key(0)
  create = lambda: train_state.create(models.init_params(cfg, rng), optimizer, gate_lib.init_gate_state(step_cfg.gate),
                                      jax.random.key(1))
  state, state_sharding = train_state.init_sharded(
      create, models.param_shardings(cfg, mesh), optimizer, mesh)
  step_fn = steps.jit_step(steps.make_hybrid_step(models.logprob_fn(cfg), optimizer, step_cfg,
                                                  optim.learning_rate_schedule(opt_cfg)), state_sharding, mesh)
  sampling = decode.SamplingConfig(max_new_tokens=N, group_size=G, sampling=decode.StreamSampling(0.7, 0.9, 0))
  data = np.random.default_rng(0)
  records = []
  for i in range(FLAGS.warmup + FLAGS.steps):
    prompts = SamplerPrompts(inputs={"tokens": data.integers(3, cfg.vocab_size, (P, Lp)).astype(np.int32)},
                             valid=np.ones((P, Lp), bool))
    t0 = time.perf_counter()
    rollouts = jax.device_get(sampler_lib.sample(state.params, cfg, prompts, jax.random.fold_in(rng, i), sampling))
    t1 = time.perf_counter()
    toks = rollouts.tokens["tokens"]
    rewards = ((toks % 2 == 0) & rollouts.mask).sum(1) / np.maximum(rollouts.mask.sum(1), 1)
    rl = rl_batch_lib.rl_batch(prompts, rollouts, 0)
    batch = sharding.device_put_batch(HybridBatch(rl=rl, rewards=rewards.reshape(P, G).astype(np.float32),
                                                  reward_valid=np.ones((P, G), bool)), mesh)
    state, metrics = step_fn(state, batch, Lp - 1)   # the head scores the completions only
    jax.block_until_ready(metrics["loss"])
    t2 = time.perf_counter()
    assert int(np.sum(np.asarray(rl.types["tokens"]) != TokenType.NONE)) == P * G * N
    records.append((t2 - t0, t1 - t0, t2 - t1))
  measured = records[FLAGS.warmup:]
  med = lambda k: statistics.median(r[k] for r in measured)
  print(json.dumps({"impl": "wavalign_jax", "step_s_median": round(med(0), 4), "gen_s_median": round(med(1), 4),
                    "train_s_median": round(med(2), 4), "first_step_s": round(records[0][0], 2),
                    "steps": FLAGS.steps, "backend": jax.default_backend(), "devices": jax.device_count()}))


if __name__ == "__main__":
  app.run(main)
