"""Group rollouts with a static KV cache: one prefill per prompt, then single-token steps in `lax.while_loop`s.

`sample` prefills the cache with the P left-padded prompts once and shares it (`models.share_prefix`):
the G rows of prompt p (rows p*G .. p*G+G-1, its group) read one copy of its keys and values, and each
row writes its completion into its own block. Decoding runs until every row has stopped or
`max_new_tokens` steps ran, in `cache_windows` loops whose completion block grows from one loop to the next,
so a token attends to the prompt and to a block about the size of what has been written, not a whole static
cache from the first token. The cache is allocated inside the compiled program and carried by the loops,
so XLA updates it in place (what donating a cache argument would buy, without a second copy). Token
choice, the loop's carry and the settings are in decode.py (shared with the MCTP decoder, mctp.py).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wavalign_jax import models
from wavalign_jax.batches import SamplerPrompts
from wavalign_jax.data import layouts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rollout import mctp
from wavalign_jax.rollout.decode import Rollouts, SamplingConfig, emit, finish, start, validate_prompts


def windows(n: int, count: int) -> list[int]:
  """The completion-cache sizes of the decode loops: `count` growing ends, the last one n (multiples of 8
  where n allows); tokens i < ends[j] run in loop j with a cache of ends[j] completion slots."""
  ends = [min(n, 8 * math.ceil(n * (j + 1) / count / 8)) for j in range(count)]
  return sorted(set(ends))


def prefill(params: Any, model_cfg: ModelConfig, prompts: SamplerPrompts, cfg: SamplingConfig
            ) -> tuple[dict[str, Any], jax.Array]:
  """The decode loops' first carry (the prompts' logits per row, the shared-prefix cache with the first window's
  completion block) and each row's prompt length. `params`, `model_cfg`: as `models.for_decoding` makes them."""
  valid = prompts.valid.astype(bool)
  P, Lp = valid.shape
  G, N = cfg.group_size, cfg.max_new_tokens
  logits, cache = models.decode(
      params, model_cfg, prompts.inputs, jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32),
      models.init_cache(model_cfg, P, Lp), valid=valid, features=prompts.features, feature_mask=prompts.feature_mask)
  carry = dict(out=start(cfg, model_cfg.streams, P * G),
               logits={s: jnp.repeat(v, G, axis=0) for s, v in logits.items()},
               cache=models.share_prefix(cache, G, windows(N, cfg.cache_windows)[0]))
  return carry, jnp.repeat(valid.sum(axis=1).astype(jnp.int32), G)


def decode_step(params: Any, model_cfg: ModelConfig, cfg: SamplingConfig, rng: jax.Array, prompt_len: jax.Array,
                c: dict[str, Any]) -> dict[str, Any]:
  """One loop iteration: every row emits token i (decode.emit) and the model reads it into the cache."""
  out, toks = emit(c["out"], c["logits"], cfg, rng, model_cfg.streams)
  logits, cache = models.decode(
      params, model_cfg, {s: t[:, None] for s, t in toks.items()}, (prompt_len + c["out"].i)[:, None], c["cache"])
  return dict(out=out, logits=logits, cache=cache)


@functools.partial(jax.jit, static_argnames=("model_cfg", "cfg"))
def _sample(params: Any, model_cfg: ModelConfig, prompts: SamplerPrompts, rng: jax.Array,
            cfg: SamplingConfig) -> Rollouts:
  params, model_cfg = models.for_decoding(params, model_cfg, cfg.unstack_layers)   # once per call, not per token
  carry, prompt_len = prefill(params, model_cfg, prompts, cfg)
  body = functools.partial(decode_step, params, model_cfg, cfg, rng, prompt_len)
  for end in windows(cfg.max_new_tokens, cfg.cache_windows):   # token i writes completion slot i; each loop
    carry = dict(carry, cache=models.extend_cache(carry["cache"], end))   # attends over a cache of `end` slots
    carry = jax.lax.while_loop(lambda c, end=end: c["out"].running(end), body, carry)
  return finish(carry["out"])


def sample(params: Any, model_cfg: ModelConfig, prompts: SamplerPrompts, rng: jax.Array,
           sampling_cfg: SamplingConfig) -> Rollouts:
  """G rollouts per prompt of the left-padded `prompts` (numpy, or global arrays on the mesh: several hosts). Row
  r's random numbers do not depend on the sharding.
  `sampling_cfg.decode == "mctp"` decodes with VITA-Audio's MCTP modules (rollout/mctp.py)."""
  if sampling_cfg.decode == "mctp":
    return mctp.sample_mctp(params, model_cfg, prompts, rng, sampling_cfg)
  validate_prompts(model_cfg, prompts, sampling_cfg)
  return _sample(params, model_cfg, prompts, rng, sampling_cfg)


def left_pad_prompts(examples: Sequence[layouts.Example], pad_id: int, length: int | None = None
                     ) -> SamplerPrompts:
  """The sampler's prompts (numpy) from laid-out prompts (`Example.prompt()`), left-padded to `length`."""
  if not examples:
    raise ValueError("left_pad_prompts needs at least one prompt")
  length = max(len(e) for e in examples) if length is None else length
  streams = examples[0].streams
  inputs = {s: np.full((len(examples), length), pad_id, np.int32) for s in streams}
  valid = np.zeros((len(examples), length), bool)
  for b, e in enumerate(examples):
    if len(e) > length or len(e) == 0 or e.streams != streams:
      raise ValueError(f"prompt {b}: length {len(e)} (must be 1..{length}), streams {e.streams} (want {streams})")
    for s in streams:
      inputs[s][b, length - len(e):] = e.tokens[s]
    valid[b, length - len(e):] = True
  return SamplerPrompts(inputs=inputs, valid=valid)
