"""Metrics sinks: a progress line on stdout, WORKDIR/metrics.jsonl, and TensorBoard event files.

Only process 0 writes files; every value is converted to a Python float once, here.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

# Keys shown on the one-line progress report, in this order (others go to the files only).
PROGRESS_KEYS = ("loss", "lambda", "lambda_raw", "gate_direction", "gate_info", "reward_mean", "reward_max",
                 "reward_var", "sft_loss", "rl_loss", "reward/failed", "grad_norm", "lr")


class MetricWriter:

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self._is_main = jax.process_index() == 0
    self._start = time.time()
    self._jsonl = None
    self._tb = None
    if self._is_main:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      if tensorboard:
        from tensorboardX import SummaryWriter  # imported lazily: optional at inference time
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "train", total_steps: int | None = None,
            echo: bool = True) -> dict[str, float]:
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
    if not self._is_main:
      return scalars
    self._jsonl.write(json.dumps({"step": int(step), "split": prefix, **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{prefix}/{k}", v, int(step))
      self._tb.flush()
    if echo:
      keys = [k for k in PROGRESS_KEYS if k in scalars] if prefix == "train" else sorted(scalars)
      shown = " ".join(f"{k}={scalars[k]:.4g}" for k in keys)
      total = f"/{total_steps}" if total_steps else ""
      print(f"[{prefix} {int(step)}{total} {time.time() - self._start:6.0f}s] {shown}", flush=True)
    return scalars

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
