"""The optimizer of docs/method.md §1: AdamW (0.9, 0.95), eps 1e-8, wd 0.01, global-norm clip, warmup + cosine."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import optax

from wavalign_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-6
  warmup_steps: int = 20
  total_steps: int = 2000       # length of the cosine decay (usually the run length)
  end_learning_rate: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.01
  clip_norm: float = 1.2        # 0 disables clipping


def optim_config(config: Any) -> OptimConfig:
  """The OptimConfig of an experiment config (a ConfigDict, or its dict as config.json records it): its optim
  section, with the cosine over `train.total_steps`."""
  return OptimConfig(**config["optim"], total_steps=config["train"]["total_steps"])


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
      decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1), end_value=cfg.end_learning_rate)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay)
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) if cfg.clip_norm > 0 else adamw


def validate(cfg: OptimConfig, fields: dict[str, str] | None = None) -> None:
  """Refuses, at start-up, settings whose updates cannot be finite: every number must be finite in float32 (the
  dtype the schedule and the moments are computed in) and in range, and the schedule must be finite at its start,
  peak and end. Refusing is better than letting the step's guard skip every step: e.g. a learning rate of 1e39 is
  inf in float32, so no update could ever be applied; the message names the field at once instead of after
  `train.max_consecutive_skips` wasted steps. Values that are finite but still blow up (1e30) are left to the
  guard, which skips the steps and stops the run. `fields` maps OptimConfig names to the config fields they
  come from when those are not `optim.<name>` (the testbed's base-model SFT)."""
  flag = lambda name: f"--config.{(fields or {}).get(name, f'optim.{name}')}"
  bad = []
  for name in ("learning_rate", "end_learning_rate", "b1", "b2", "eps", "weight_decay", "clip_norm"):
    value = getattr(cfg, name)
    with np.errstate(over="ignore"):
      as_f32 = float(np.float32(value))
    if not math.isfinite(as_f32) or value < 0:
      bad.append(f"{flag(name)}={value}: must be a finite, non-negative float32 (at most 3.4e38)")
  if not bad and not (cfg.b1 < 1 and cfg.b2 < 1):
    bad.append(f"{flag('b1')}={cfg.b1}, {flag('b2')}={cfg.b2}: Adam's decay rates must lie in [0, 1)")
  if not bad:
    schedule = learning_rate_schedule(cfg)
    for step in sorted({0, cfg.warmup_steps, max(cfg.total_steps, cfg.warmup_steps + 1)}):
      if not np.isfinite(schedule(step)):
        bad.append(f"{flag('learning_rate')}={cfg.learning_rate}: the schedule is {schedule(step)} at "
                   f"step {step}")
  if bad:
    raise ConfigError("\n".join(bad))
