"""`python -m wavalign_jax.study`: the command line of the study (flags below; the package docstring explains)."""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from wavalign_jax import cli, config_check, config_lib
from wavalign_jax.study import export, run_study, runner
from wavalign_jax.study.sweep import override_fields, parse_sweep

def define_flags() -> None:
  """Defined when run as a program only (train.py defines --config too; tests import both modules)."""
  config_flags.DEFINE_config_file("config", None, "Testbed experiment, e.g. experiments/vita.py:tiny (without a "
                                  "method); --config.x=y overrides go to every run.")
  flags.DEFINE_string("workdir", None, "Study directory (resumable).")
  flags.DEFINE_string("seeds", "3", "Number of seeds (0..N-1), or a comma-separated list: 3,4,5 (one seed: 7,).")
  flags.DEFINE_string("methods", "", "Comma-separated methods (default: every method of METHODS).")
  flags.DEFINE_string("sweep", "", "FIELD=V1,V2,...: one study per value of a config field, in DIR/FIELD=V, "
                      "e.g. testbed.judge_acoustic_noise=0,0.25,0.5.")
  flags.DEFINE_integer("jobs", 1, "Runs in parallel processes.")
  flags.DEFINE_integer("eval_every", 100, "Evaluate every N steps (the curves over training and the positive "
                       "control's learning curve).")
  flags.DEFINE_bool("report_only", False, "Only rewrite study.md / study.json / plots.")
  flags.DEFINE_string("export", "", "Then copy the results without checkpoints, models or data to this new "
                      "directory (small enough to commit; a study continues from it: study/export.py).")


def parse_seeds(arg: str) -> list[int]:
  return [int(s) for s in arg.split(",") if s] if "," in arg else list(range(int(arg)))


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  if f.config is None or not f.workdir:
    raise app.UsageError("--config and --workdir are required")
  if f.config.get("data", {}).get("source") != "testbed":
    raise app.UsageError("the study runs on the built-in testbed: use a ':tiny' config")
  spec = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--config="))
  if "method=" in spec or any(m in spec.partition(":")[2].split(",") for m in config_lib.METHODS):
    raise app.UsageError(f"--config={spec}: give the config without a method; the study runs each method")
  methods = [m for m in f.methods.split(",") if m] or [m for m in config_lib.METHODS if m != "base"]
  unknown = [m for m in methods if m not in config_lib.METHODS]
  if unknown:
    raise app.UsageError(f"--methods: unknown {unknown}; choose from {sorted(config_lib.METHODS)}")
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  for warning in config_check.check(f.config, f.workdir):   # the overrides go to every run: check them once, first
    print(f"warning: {warning}", file=sys.stderr, flush=True)
  try:
    sweep = parse_sweep(f.sweep, f.config, override_fields(overrides)) if f.sweep else None
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if f.export and os.path.lexists(f.export):   # before hours of runs, not after
    raise app.UsageError(f"--export={f.export} exists; export into a new directory")
  try:
    run_study(spec, f.config, f.workdir, methods, parse_seeds(f.seeds), overrides, sweep, f.eval_every, f.jobs,
              f.report_only)
  except runner.StudyStopped as e:
    print(e, flush=True)
    return
  if f.export:
    runs = export.export_results(f.workdir, f.export)
    print(f"exported {len(runs)} finished runs to {f.export}", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
