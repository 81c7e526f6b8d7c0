"""WORKDIR/launches.jsonl: which code, libraries and machines made a run, one line per launch.

A run on a cluster is launched, preempted and resumed, sometimes by another checkout or another JAX; a figure
quoted from it should name the code that computed it. Every launch appends (process 0, before its first step)
the step it starts from, the git commit of the checkout the package was imported from (and whether it had
uncommitted changes), the library versions, the backend and device kind and count, the process count and host.
The study reports the commits its runs were made at (study.md), and refuses to mix base models of different
numerics with the commits named (study/runner.py).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import socket
import subprocess
from typing import Any

import jax

from wavalign_jax import files

FILE = "launches.jsonl"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", _REPO, *args], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, Any]:
  """{"commit": sha or None, "dirty": tracked files changed (None without git)}: of the git checkout this package
  was imported from; None when it was installed from a wheel (no checkout around it) or git is missing."""
  top = _git("rev-parse", "--show-toplevel")
  if top is None or os.path.realpath(top) != os.path.realpath(_REPO):
    return {"commit": None, "dirty": None}
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def launch_record(start_step: int) -> dict[str, Any]:
  devices = jax.devices()
  return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "start_step": int(start_step), **code_version(),
          "libraries": {name: _version(name) for name in _LIBRARIES},
          "backend": jax.default_backend(), "device_kind": devices[0].device_kind, "devices": len(devices),
          "processes": jax.process_count(), "host": socket.gethostname()}


def record_launch(workdir: str, start_step: int, new_run: bool) -> None:
  """Appends this launch's record to WORKDIR/launches.jsonl (process 0; the file is rewritten atomically); a new
  run starts the file afresh (what an abandoned earlier attempt recorded is not this run's)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, FILE)
  files.write_jsonl(path, [*([] if new_run else read(workdir)), launch_record(start_step)])


def read(workdir: str, name: str = FILE) -> list[dict[str, Any]]:
  """The launches recorded in WORKDIR/`name` (or in its exported copy, `name`.gz), oldest first."""
  path = files.existing_jsonl(os.path.join(workdir, name))
  return files.read_jsonl(path) if path else []


def code_name(launch: dict[str, Any]) -> str:
  """A launch's code: its commit, `<sha>+dirty` from a checkout with uncommitted changes, `unknown` from an
  installed package."""
  return (launch.get("commit") or "unknown") + ("+dirty" if launch.get("dirty") else "")


def commits(launches: list[dict[str, Any]]) -> list[str]:
  """The code (`code_name`) of `launches`, in order, each once."""
  return list(dict.fromkeys(code_name(launch) for launch in launches))
