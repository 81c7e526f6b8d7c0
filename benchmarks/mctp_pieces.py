"""The pieces MCTP decoding is made of, as programs of one decode call each, and the speed-up of a schedule
period from their costs. benchmarks/mctp_decode.py times them on this machine; benchmarks/roofline.py predicts
them on accelerators from their compiled FLOPs and bytes.

One period [M, m] of the schedule (rollout/mctp.py) makes M + m tokens with one catch-up forward of the main
model over the m + 1 tokens made since its last step, M - 1 main steps and m module calls, each over the M + m
anchors made since that module's previous call (a module runs once per period and its KV cache must hold every
anchor: `mctp.plan`); main-head decoding makes them with M + m main steps. Sampling costs the same per token
either way and is left out.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from wavalign_jax import models
from wavalign_jax.models.config import ModelConfig


def caches(cfg: ModelConfig, rows: int, filled: int, slots: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """The main model's KV cache of `slots` slots, its first `filled` written, and module 0's cache."""
  cache = dict(models.init_cache(cfg, rows, slots), index=jnp.asarray(filled, jnp.int32))
  cache["valid"] = jnp.arange(slots)[None].repeat(rows, 0) < filled
  return cache, models.init_mtp_cache(cfg, rows, slots)


def main_step(params: Any, cfg: ModelConfig, cache: Mapping[str, Any], tokens: jax.Array,
              positions: jax.Array) -> jax.Array:
  """The main model on T new tokens [B, T] (a main step: T = 1; the catch-up: T = m + 1) and the text head's
  logits of the last; `params` as for_decoding leaves them."""
  hidden, _ = models.decode_hidden(params, cfg, {"tokens": tokens}, positions, dict(cache))
  return models.head_logits(params, cfg, "tokens", hidden["tokens"][:, -1])


def module_step(params: Any, cfg: ModelConfig, mtp_cache: Mapping[str, Any], slot_valid: jax.Array, filled: int,
                tokens: jax.Array, positions: jax.Array) -> jax.Array:
  """MCTP module 0 on T anchors per row [B, T] (a period's: `period_anchors`), after `filled` anchors, and the
  text head's logits of the last (every module has the same shape: one decoder layer, then the shared head)."""
  hidden = jnp.zeros(tokens.shape + (cfg.hidden_size,), cfg.dtype)
  h, _ = models.mtp_decode(params, cfg, 0, tokens, hidden, positions, dict(mtp_cache), slot_valid, filled)
  return models.head_logits(params, cfg, "tokens", h[:, -1])


def period_anchors(main_steps: int, module_steps: int) -> int:
  """Anchors a module call covers once the schedule is periodic: those of the whole period [M, m]."""
  return main_steps + module_steps


def period_speedup(costs: Mapping[str, float], main_steps: int, module_steps: int) -> float:
  """Main-head time over MCTP time for one period [M, m], from the seconds of a main step, the catch-up over
  m + 1 tokens and a module call over the period's M + m anchors."""
  mctp = costs["catch_up"] + (main_steps - 1) * costs["main"] + module_steps * costs["module"]
  return (main_steps + module_steps) * costs["main"] / mctp


def last_period(schedule: tuple[int, ...], num_modules: int) -> tuple[int, int]:
  """The schedule's repeating pair [M, m], m cut to the modules there are (past the last one the main model
  runs: rollout/mctp.py)."""
  M, m = schedule[-2:]
  return M, min(m, num_modules)
