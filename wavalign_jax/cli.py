"""The command lines' common frame: absl flags, `error: ...` for user errors, and the console scripts.

Every command is a module run as `python -m <module>` (or its console script, see COMMANDS): `define_flags()`
plus `main(argv)`, started with `run`. A user error (bad flags, a file that is not there, a config or run
that cannot go on) prints `error: ...` on stderr and exits non-zero; a traceback means a bug in the project.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import Callable, Sequence

from absl import app, flags

from wavalign_jax import config_lib, errors, log_setup

# Console script (pyproject.toml [project.scripts]) -> the module it runs, exactly as `python -m` runs it.
COMMANDS = {
    "wavalign-train": "wavalign_jax.train",
    "wavalign-evaluate": "wavalign_jax.evaluate",
    "wavalign-generate": "wavalign_jax.generate",
    "wavalign-analyze": "wavalign_jax.analyze",
    "wavalign-study": "wavalign_jax.study",
    "wavalign-convert": "wavalign_jax.convert",
    "wavalign-export": "wavalign_jax.export",
    "wavalign-score": "wavalign_jax.evaluation.score",
    "wavalign-testbed": "wavalign_jax.testbed.make_data",
    "wavalign-build-data": "data_pipeline.build",
    "wavalign-inspect-data": "data_pipeline.inspect",
}
# Exceptions that mean bad input (a path, a record, a flag value); the library raises them with a message that
# names the file, record or flag.
USER_ERRORS = (ValueError, OSError)


def console_script() -> None:
  """The target of every console script: runs the module of the program's name (same flags, same exit status)."""
  name = os.path.basename(sys.argv[0])
  if name not in COMMANDS:
    sys.exit(f"error: {name} is not one of the commands {sorted(COMMANDS)}")
  runpy.run_module(COMMANDS[name], run_name="__main__", alter_sys=True)


def run(main: Callable[[list[str]], int | None], define_flags: Callable[[], None] | None = None) -> None:
  """`python -m ...`: defines the flags, parses them (config overrides checked by `config_lib.flags_parser`) and
  runs `main`, whose return value is the exit status; a user error is one `error: ...` line."""
  if define_flags is not None:
    define_flags()
  app.run(lambda argv: sys.exit(user_errors(main, argv)), flags_parser=config_lib.flags_parser)


def user_errors(main: Callable[[list[str]], int | None], argv: list[str]) -> int | None:
  """`main(argv)`, with a user error printed as `error: ...` and turned into its exit status."""
  try:
    return main(argv)
  except app.UsageError as e:
    print(f"error: {e}\nPass --help to see the flags.", file=sys.stderr, flush=True)
    return 2
  except errors.RunError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return e.exit_code
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1


def main_with_fresh_flags(prog: str, define_flags: Callable[[flags.FlagValues], None],
                          run_flags: Callable[[flags.FlagValues], int], argv: Sequence[str]) -> int:
  """`run_flags` on `argv` (without the program name) parsed into new FlagValues, so that tests and notebooks
  can call several CLIs in one process; returns the exit status (2 for bad flags)."""
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    fv([prog, *argv])
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return run_flags(fv)


def run_as_script(define_flags: Callable[[flags.FlagValues], None],
                  run_flags: Callable[[flags.FlagValues], int]) -> None:
  """`python -m ...` of a CLI written for fresh flags (convert, export): `run` with quiet library logs."""
  run(lambda argv: log_setup.quiet_stderr() or run_flags(flags.FLAGS), lambda: define_flags(flags.FLAGS))
