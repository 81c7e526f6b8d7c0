"""Failures the user can act on: the entry point prints the message and exits with the error's status.

The rule across the project: a user error (a config mistake, a locked work directory, a changed config, a damaged
run, a run that diverged) prints a short message and exits non-zero; a traceback means a bug in the project. Exit
statuses (README "Reliability"): 0 finished or preempted with a checkpoint, 1 a RunError, 3 stopped after
`train.max_consecutive_skips` non-finite steps in a row.
"""
from __future__ import annotations


class RunError(Exception):
  """A run cannot start or go on; `str(e)` says why and what to do."""
  exit_code = 1


class ConfigError(RunError, ValueError):
  """A config or command-line mistake, found before anything is written (config_check, config_lib)."""


class NonFiniteStop(RunError):
  """Too many consecutive steps with a non-finite loss, gradient, learning rate or update (none was applied)."""
  exit_code = 3
