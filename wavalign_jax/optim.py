"""The optimizer of docs/method.md §1: AdamW (0.9, 0.95), eps 1e-8, wd 0.01, global-norm clip, warmup + cosine."""
from __future__ import annotations

import dataclasses

import optax


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


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
      decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1), end_value=cfg.end_learning_rate)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay)
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) if cfg.clip_norm > 0 else adamw
