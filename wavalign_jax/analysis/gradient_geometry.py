"""Observation 3: preference gradients concentrate on semantics; full-token updates are low-SNR on dense
acoustics, with near-zero cross-modal coupling.

The GRPO gradient of a rollout batch split into the part from text tokens and the part from speech tokens
(same denominator, so the two add up to the all-token gradient), their energies (squared norms), the cosine
between them, and the signal-to-noise ratio of each across mini-batches of prompt groups (norm of the mean
mini-batch gradient over the root-mean-square deviation). Everything stays on device: only scalars leave,
so a sharded 7B model is analysed where it lives.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from wavalign_jax.batches import LogprobFn, RLBatch
from wavalign_jax.objectives import aggregation
from wavalign_jax.objectives.grpo import GRPOConfig, grpo_loss, rl_token_weights


def _dot(a: Any, b: Any) -> jax.Array:
  return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)) for x, y in zip(jax.tree.leaves(a),
                                                                                   jax.tree.leaves(b)))


def split_gradients(logprob_fn: LogprobFn, params: Any, rl: RLBatch, cfg: GRPOConfig,
                    token_sets: tuple[str, ...] = ("text", "speech", "all")) -> dict[str, Any]:
  """{token set: gradient} of the on-policy, token-mean GRPO policy-gradient term (no KL, no clipping, no
  fallback: only `advantages` and `seq_weight` of `rl` count) restricted to each token set, all divided by the
  all-token count, so text + speech == all."""
  cfg = dataclasses.replace(cfg, aggregation="token_mean", beta_text=0.0, beta_speech=0.0, clip_eps=0.0,
                            clip_eps_high=0.0, num_iterations=1)
  rl = rl.replace(sampler_logp=None, ref_logp=None, old_logp=None, fallback=None)
  count = aggregation.aggregate_count(rl_token_weights(rl.types, "all"), "token_mean", rl.seq_weight)

  def loss(p, token_set):
    lp = logprob_fn(p, rl).logp
    term, _ = grpo_loss(lp, rl, dataclasses.replace(cfg, token_set=token_set))
    return aggregation.term_value(term, count)
  return {s: jax.grad(loss)(params, s) for s in token_sets}


def _text_speech_all(logprob_fn, params, rl, cfg) -> dict[str, Any]:
  """The text and speech gradients, and their sum as the all-token one (one backward pass fewer)."""
  g = split_gradients(logprob_fn, params, rl, cfg, ("text", "speech"))
  return dict(g, all=jax.tree.map(jnp.add, g["text"], g["speech"]))


def geometry(logprob_fn: LogprobFn, params: Any, rl: RLBatch, cfg: GRPOConfig,
             num_minibatches: int) -> dict[str, jax.Array]:
  """Scalars: energy_{text,speech,all}, cosine_text_speech, snr_{text,speech,all} over `num_minibatches`
  contiguous row blocks (whole prompt groups when the block size is a multiple of G)."""
  grads = _text_speech_all(logprob_fn, params, rl, cfg)
  norm = {s: optax.tree.norm(g) for s, g in grads.items()}
  out = {f"energy_{s}": n ** 2 for s, n in norm.items()}
  out["cosine_text_speech"] = _dot(grads["text"], grads["speech"]) / jnp.maximum(norm["text"] * norm["speech"], 1e-30)
  B, k = rl.advantages.shape[0], num_minibatches
  if B % k:
    raise ValueError(f"{B} rows do not split into {k} mini-batches")
  blocks = jax.tree.map(lambda x: x.reshape((k, B // k) + x.shape[1:]), rl)
  # One compiled body for the k mini-batches (a Python loop would compile k copies of two backward passes).
  per = jax.lax.map(lambda b: _text_speech_all(logprob_fn, params, b, cfg), blocks)   # {set: [k, ...] leaves}
  for s in ("text", "speech", "all"):
    mean = jax.tree.map(lambda g: g.mean(0), per[s])
    var = optax.tree.norm(jax.tree.map(jnp.subtract, per[s], mean)) ** 2 / k   # mean over k of |g_i - mean|^2
    out[f"snr_{s}"] = optax.tree.norm(mean) / jnp.maximum(jnp.sqrt(var), 1e-30)
  return out
