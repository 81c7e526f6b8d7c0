"""Keeps library logging (absl, Orbax, Grain, JAX) out of the progress output of the entry points.

Everything at INFO and above goes to a log file in the work directory; only WARNING and above from this
project, and ERROR from libraries, still reach stderr. The progress lines are plain prints on stdout.
"""
from __future__ import annotations

import logging as py_logging
import os

from absl import logging

# Libraries whose warnings are routine on CPU / in tests (e.g. Orbax on synchronous saves).
NOISY = ("orbax", "absl", "jax", "grain", "etils", "tensorstore")


def quiet_stderr() -> None:
  """Only errors of absl / library logging reach stderr (CLIs without a work directory: convert, export)."""
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().setLevel(py_logging.ERROR)


def quiet_logs(workdir: str, name: str) -> str:
  """Routes absl / Python logging to WORKDIR/logs/<name>.log; returns its path."""
  log_dir = os.path.join(workdir, "logs")
  os.makedirs(log_dir, exist_ok=True)
  path = os.path.join(log_dir, f"{name}.log")
  handler = py_logging.FileHandler(path)
  handler.setFormatter(py_logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  handler.setLevel(py_logging.INFO)
  root = py_logging.getLogger()
  root.addHandler(handler)
  root.setLevel(py_logging.INFO)
  logging.get_absl_handler().setLevel(py_logging.ERROR)   # absl's stderr handler: errors only
  for lib in NOISY:
    py_logging.getLogger(lib).setLevel(py_logging.INFO)
  return path
