"""Running a flag-defined CLI (convert, export) from a script or from Python with fresh flags."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import app, flags

from wavalign_jax import log_setup


def main_with_fresh_flags(prog: str, define_flags: Callable[[flags.FlagValues], None],
                          run: Callable[[flags.FlagValues], int], argv: Sequence[str]) -> int:
  """`run` on `argv` (without the program name) parsed into new FlagValues, so that tests and notebooks can
  call several CLIs in one process; returns the exit status (2 for bad flags)."""
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    fv([prog, *argv])
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return run(fv)


def run_as_script(define_flags: Callable[[flags.FlagValues], None], run: Callable[[flags.FlagValues], int]) -> None:
  """`python -m ...`: absl's --help / --helpfull, quiet library logs, `run`'s status as the exit status."""
  define_flags(flags.FLAGS)
  app.run(lambda argv: sys.exit(log_setup.quiet_stderr() or run(flags.FLAGS)))
