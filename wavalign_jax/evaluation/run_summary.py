"""A run's evaluation files in its work directory (WORKSPACE.md), written by train.py and read by the study:
eval_before.json (the evaluation before training), eval_summary.json (before and after: its existence marks a
finished run) and the per-item rows eval/<name>.jsonl (before, step_<N>, after)."""
from __future__ import annotations

import json
import os

import jax

from wavalign_jax import files

SUMMARY_FILE = "eval_summary.json"
BEFORE_FILE = "eval_before.json"
ROWS_DIR = "eval"


def summary_path(workdir: str) -> str:
  return os.path.join(workdir, SUMMARY_FILE)


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
    files.write_json(os.path.join(workdir, BEFORE_FILE), before, indent=2)


def write_summary(workdir: str, after: dict[str, float]) -> dict[str, float]:
  """WORKDIR/eval_summary.json: the evaluation before training (kept from the run's first launch) and after.
  Returns the one before ({} when the run did not evaluate before)."""
  path = os.path.join(workdir, BEFORE_FILE)
  before = json.load(open(path)) if os.path.exists(path) else {}
  if jax.process_index() == 0:
    files.write_json(summary_path(workdir), {"before": before, "after": after}, indent=2)
  return before
