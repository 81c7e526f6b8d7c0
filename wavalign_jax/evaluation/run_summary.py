"""A run's evaluation files in its work directory (WORKSPACE.md), written by train.py and read by the study:
eval_before.json (the evaluation before training), eval_summary.json (before and after: its existence marks a
finished run; `reopen` moves it aside when the run is continued past its end) and the per-item rows
eval/<name>.jsonl (before, step_<N>, after)."""
from __future__ import annotations

import glob
import json
import os
import shutil

import jax

from wavalign_jax import files

SUMMARY_FILE = "eval_summary.json"
BEFORE_FILE = "eval_before.json"
ROWS_DIR = "eval"


def summary_path(workdir: str) -> str:
  return os.path.join(workdir, SUMMARY_FILE)


def before_path(workdir: str) -> str:
  return os.path.join(workdir, BEFORE_FILE)


def step_summary_path(workdir: str, step: int | str) -> str:
  """WORKDIR/eval_summary.step_<N>.json: the summary of a run that finished at step N, then was continued (`reopen`;
  `step="*"` is the glob pattern of them all)."""
  return os.path.join(workdir, f"eval_summary.step_{step}.json")


def rows_path(workdir: str, name: str) -> str:
  """WORKDIR/eval/<name>.jsonl: one evaluation's per-item rows."""
  return os.path.join(workdir, ROWS_DIR, f"{name}.jsonl")


def finished(workdir: str) -> bool:
  """Whether the run finished (its evaluation after training is written)."""
  return os.path.exists(summary_path(workdir))


def read_after(workdir: str) -> dict[str, float]:
  """The metrics of the evaluation after training of a finished run."""
  with open(summary_path(workdir)) as f:
    return json.load(f)["after"]


def write_before(workdir: str, before: dict[str, float]) -> None:
  if jax.process_index() == 0:
    files.write_json(before_path(workdir), before, indent=2)


def write_summary(workdir: str, after: dict[str, float], step: int) -> dict[str, float]:
  """WORKDIR/eval_summary.json: the evaluation before training (kept from the run's first launch) and after
  (at `step`, the run's last). Returns the one before ({} when the run did not evaluate before)."""
  path = before_path(workdir)
  before = json.load(open(path)) if os.path.exists(path) else {}
  if jax.process_index() == 0:
    files.write_json(summary_path(workdir), {"before": before, "after": after, "step": step}, indent=2)
  return before


def clear(workdir: str) -> None:
  """A new run (no training state): the evaluation files of an earlier attempt in its directory go (a summary
  would mark the new run finished while it trains; an evaluation before training, of other initial parameters,
  would become its "before"). Process 0 removes them."""
  if jax.process_index() != 0:
    return
  for path in [summary_path(workdir), before_path(workdir),
               *glob.glob(step_summary_path(workdir, "*"))]:
    if os.path.exists(path):
      os.remove(path)
  shutil.rmtree(os.path.join(workdir, ROWS_DIR), ignore_errors=True)


def reopen(workdir: str, resumed_step: int) -> None:
  """A finished run continued past its end (a larger `train.total_steps`) is not finished any more: its summary
  moves to eval_summary.step_<N>.json and its final rows become the step-N evaluation's (eval/step_<N>.jsonl), N
  the old end (`resumed_step` for a summary written before it recorded its step). Process 0 moves them."""
  if not finished(workdir) or jax.process_index() != 0:
    return
  with open(summary_path(workdir)) as f:
    step = json.load(f).get("step", resumed_step)
  after, at_step = rows_path(workdir, "after"), rows_path(workdir, f"step_{step}")
  if os.path.exists(after) and not os.path.exists(at_step):
    os.replace(after, at_step)
  kept = step_summary_path(workdir, step)
  os.replace(summary_path(workdir), kept)
  print(f"{workdir}: continuing a run that finished at step {step}; its evaluation there is kept as "
        f"{os.path.basename(kept)}", flush=True)
