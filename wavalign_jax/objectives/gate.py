"""The λ gate: how much of a step is GRPO, from the statistics of its rollout rewards.

Reference (docs/method.md §1), per prompt p with valid rewards r_p:
  info gate       g_V = clip(var_pop(r_p) / info_norm, 0, 1)      (no spread -> no signal)
  direction gate  g_R = sigmoid(slope · (max r_p − threshold))     (no good rollout -> no target)
  λ_raw,p = λ_max · g_R · g_V;  λ_p = clip(α·λ_prev + (1 − α)·λ_raw,p, 0, λ_max)  (first step: λ_raw,p)
and the new λ is the mean of λ_p over prompts. The state (λ and whether rewards ever set it) lives in the train
state so a resumed run continues with the same λ; the step that computed it uses the new value. The statistics
behind it are the step's metrics, not state.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from wavalign_jax.objectives import grpo

# "dynamic": gates + EMA (reference); "dynamic_no_ema": gates only (α = 0);
# "fixed": λ = fixed_lambda; "sft_only": λ = 0; "rl_only": λ = 1.
GATE_MODES = ("dynamic", "dynamic_no_ema", "fixed", "sft_only", "rl_only")


@dataclasses.dataclass(frozen=True)
class GateConfig:
  mode: str = "dynamic"
  lambda_max: float = 0.8
  alpha: float = 0.9                  # EMA weight of the previous λ
  direction_slope: float = 5.0
  direction_threshold: float = 3.0
  info_norm: float = 4.0              # largest variance of a 1-5 score: ((5 - 1) / 2)^2
  hard_gates: bool = False            # g_R = 1[max r > threshold], g_V = 1[var_pop(r) > 0]
  fixed_lambda: float = 0.5           # RL weight in "fixed" mode

  def __post_init__(self):
    if self.mode not in GATE_MODES:
      raise ValueError(f"GateConfig.mode {self.mode!r}: choose one of {list(GATE_MODES)}")
    if not 0 <= self.lambda_max <= 1 or not 0 <= self.alpha <= 1 or not 0 <= self.fixed_lambda <= 1:
      raise ValueError("GateConfig: lambda_max, alpha and fixed_lambda must lie in [0, 1]")
    if self.info_norm <= 0:
      raise ValueError(f"GateConfig.info_norm must be > 0, got {self.info_norm}")


class GateState(NamedTuple):
  """What the next step reads back; scalars."""
  lam: jax.Array
  initialized: jax.Array       # bool: λ has been set from rewards at least once (the EMA starts from it)


def _static_lambda(cfg: GateConfig) -> float | None:
  return {"fixed": cfg.fixed_lambda, "sft_only": 0.0, "rl_only": 1.0}.get(cfg.mode)


def init_gate_state(cfg: GateConfig) -> GateState:
  lam = _static_lambda(cfg)
  return GateState(lam=jnp.asarray(0.0 if lam is None else lam, jnp.float32), initialized=jnp.asarray(lam is not None))


def update_gate(state: GateState, rewards: jax.Array, valid: jax.Array | None,
                cfg: GateConfig) -> tuple[GateState, dict[str, jax.Array]]:
  """New gate state and the step's gate metrics (λ, its raw value, the two gates and the reward statistics
  behind them, means over prompts) from rewards [P, G] (invalid items excluded); jittable.

  Prompts without any valid reward do not count; a batch without any keeps the previous λ.
  """
  g = grpo.group_stats(rewards, valid)
  r, v, var = rewards.astype(jnp.float32), g.valid, g.var
  prompt_ok = g.count > 0
  rmax = jnp.where(prompt_ok, jnp.max(jnp.where(v, r, -jnp.inf), axis=1), 0.0)
  if cfg.hard_gates:
    g_info = g.spread.astype(jnp.float32)
    g_dir = (rmax > cfg.direction_threshold).astype(jnp.float32)
  else:
    g_info = jnp.clip(var / cfg.info_norm, 0.0, 1.0)
    g_dir = jax.nn.sigmoid(cfg.direction_slope * (rmax - cfg.direction_threshold))
  raw = cfg.lambda_max * g_dir * g_info

  n_ok = jnp.sum(prompt_ok)
  any_ok = n_ok > 0
  over_prompts = lambda x: jnp.sum(jnp.where(prompt_ok, x, 0.0)) / jnp.maximum(n_ok, 1)

  if _static_lambda(cfg) is not None:
    # λ was set by init_gate_state and never changes. Reading it from the state (not a constant) keeps the
    # fixed value out of the compiled step: fixed mixes of different λ share one program.
    lam, initialized = state.lam, state.initialized
  else:
    per_prompt = raw
    if cfg.mode == "dynamic":
      per_prompt = jnp.where(state.initialized, cfg.alpha * state.lam + (1.0 - cfg.alpha) * raw, raw)
    lam = jnp.where(any_ok, over_prompts(jnp.clip(per_prompt, 0.0, cfg.lambda_max)), state.lam)
    initialized = state.initialized | any_ok

  metrics = {"lambda": lam, "lambda_raw": over_prompts(raw), "gate_direction": over_prompts(g_dir),
             "gate_info": over_prompts(g_info),
             "reward_mean": jnp.sum(jnp.where(v, r, 0.0)) / jnp.maximum(jnp.sum(v), 1),
             "reward_max": over_prompts(rmax), "reward_var": over_prompts(var),
             "gate_valid_prompts": n_ok.astype(jnp.float32)}
  return GateState(lam=lam, initialized=initialized), metrics
