"""Metrics sinks: a progress line on stdout, WORKDIR/metrics.jsonl, and TensorBoard event files.

Only process 0 writes files; every value is converted to a Python float once, here. A resumed run
passes the step it restored: rows logged after that step by the interrupted run are dropped from
metrics.jsonl and purged from TensorBoard, so every step appears once.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from wavalign_jax import files

METRICS_FILE = "metrics.jsonl"   # WORKDIR/metrics.jsonl: one JSON row per logged step and evaluation

# Keys shown on the one-line progress report, in this order (others go to the files only).
PROGRESS_KEYS = ("loss", "lambda", "lambda_raw", "gate_direction", "gate_info", "reward_mean", "reward_max",
                 "reward_var", "sft_loss", "rl_loss", "reward/failed", "grad_norm", "lr")


class MetricWriter:

  def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
    """`resume_step`: the step the run (re)starts from; rows of later steps already on disk are dropped
    (0 for a new run: an earlier attempt that never checkpointed leaves only what step 0 rewrites)."""
    self._is_main = jax.process_index() == 0
    self._start = time.time()
    self._jsonl = None
    self._tb = None
    self.resumed_rows: list[dict[str, Any]] = []   # the rows kept from earlier launches (process 0)
    if self._is_main:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, METRICS_FILE)
      self.resumed_rows = _truncate_jsonl(path, resume_step)
      self._jsonl = open(path, "a")
      if tensorboard:
        from tensorboardX import SummaryWriter  # imported lazily: optional at inference time
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1 if resume_step
                                 else 0)

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "train", total_steps: int | None = None,
            echo: bool = True) -> dict[str, float]:
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
    if not self._is_main:
      return scalars
    self._jsonl.write(files.dumps({"step": int(step), "split": prefix, **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{prefix}/{k}", v, int(step))
      self._tb.flush()
    if echo:
      # train: the progress keys; evaluations: the overall metrics (strata such as "id/iq" go to the files only)
      keys = [k for k in PROGRESS_KEYS if k in scalars] if prefix == "train" else sorted(
          k for k in scalars if "/" not in k and not k.endswith(("_lo", "_hi")))
      shown = " ".join(f"{k}={scalars[k]:.4g}" for k in keys)
      total = f"/{total_steps}" if total_steps else ""
      print(f"[{prefix} {int(step)}{total} {time.time() - self._start:6.0f}s] {shown}", flush=True)
    return scalars

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _truncate_jsonl(path: str, resume_step: int) -> list[dict[str, Any]]:
  """Keeps the rows of steps 1..resume_step (step-0 rows only if the run resumes past step 0); atomic. Returns them.

  A torn last line (the job was killed in the middle of writing it) is dropped with a warning; an unreadable
  line before it was not written by this writer and stops the run, naming the file and line (files.jsonl_rows)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    text = f.read()
  rows = files.jsonl_rows(path, text)
  kept = [(row, line) for row, line in rows if 0 < resume_step and row["step"] <= resume_step]
  keep = "".join(line + "\n" for _, line in kept)
  if keep != text:
    files.write_text(path, keep)
  return [row for row, _ in kept]
