r"""The testbed study: every method of the paper, several seeds, confidence intervals, a verdict per claim.

  python -m wavalign_jax.study --config=experiments/vita.py:tiny --seeds=3 --workdir=/tmp/study_vita
  python -m wavalign_jax.study --config=experiments/kimi.py:tiny --seeds=3 --workdir=/tmp/study_kimi
  python -m wavalign_jax.study --config=experiments/vita.py:tiny --seeds=3 --workdir=/tmp/sweep \
      --methods=rl_text_exact,sft,rl_text,rl_full,hybrid,two_stage --sweep=testbed.judge_acoustic_noise=0,0.25,0.5

Per seed s (testbed data, base model, initialisation and rollouts all seeded by s) the study trains the base
model once (the `base` run, which also evaluates it) and runs every method of config_lib.METHODS from it, each
as its own `python -m wavalign_jax.train` process in DIR/seed_<s>/<method>; the positive control
`rl_text_exact` goes first. Methods whose resolved configs are identical run once and are reported under every
name. It is resumable: a finished run (its eval_summary.json exists) is not redone and an interrupted one
resumes from its checkpoint, so rerunning the command continues a killed study. `--export=DEST` copies the
results without the weights (small enough to commit); a study continues from such a copy too (study/export.py).
`--methods=` / `--seeds=` pick a subset; `--config.x=y` overrides are passed to every run; `--jobs=N` runs N
processes at once.

`--sweep=FIELD=V1,V2,...` repeats the study for each value of one config field: DIR/FIELD=V is a study of its own
(its runs get --config.FIELD=V); DIR/study.md puts the verdicts side by side and sweep.png plots each claim's
effect against the value. A judge or reward field cannot change the base model or the testbed data, so its
values share each seed's base run (links to the first value's), and so do the methods that never read it (no
rollouts, e.g. `sft`, or another reward, e.g. `rl_text_exact` for a judge field): each runs once.

Outputs in DIR: study.md (the positive control, the paper's three tables as mean [95% CI] per method, a verdict
per claim), study.json (every number), iq_eq.png, gates.png, eq_curve.png. Confidence intervals are Student t
over the seeds' means (a seed's runs are the replicate; with one seed, over its eval items); method differences
are paired (same seed, same item). docs/testbed.md describes the testbed, the claims and how verdicts are decided.

Modules: claims.py (the claims and the statistics of a verdict), sweep.py (resolved configs, duplicates, --sweep),
runner.py (the train processes), report.py (study.md / study.json), figures.py, export.py (--export), and
__main__.py (the command line). `run_study` below ties them together.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Sequence

import ml_collections as mlc

from wavalign_jax import config_lib, workdir_lock
from wavalign_jax.study import report as report_lib
from wavalign_jax.study import runner as runner_lib
from wavalign_jax.study.claims import POSITIVE_CONTROL
from wavalign_jax.study.sweep import (REWARD_ONLY_FIELDS, duplicate_runs, format_value, override_fields,
                                      reads_reward_field)


def run_study(config_spec: str, config: mlc.ConfigDict, workdir: str, methods: Sequence[str], seeds: Sequence[int],
              overrides: Sequence[str] = (), sweep: tuple[str, list[Any]] | None = None, eval_every: int = 100,
              jobs: int = 1, report_only: bool = False,
              runner: Callable[[list[str], str, dict[str, str]], int] = runner_lib.run_train) -> None:
  """Runs what is not finished yet (unless `report_only`) and reports: one study in `workdir`, or with `sweep`
  (field, values) one study per value in workdir/FIELD=V and the sweep's report in `workdir`. `config` is the
  spec's config with `overrides` applied (the --config.x=y arguments passed on to every run)."""
  methods = sorted([m for m in methods if m != "base"], key=lambda m: m != POSITIVE_CONTROL)   # it runs first
  workdir = os.path.abspath(workdir)   # the runs' locked paths (testbed.dir, init_checkpoint) spelled one way
  os.makedirs(workdir, exist_ok=True)
  fixed = {f: config_lib.get_field(config, f) for f in override_fields(overrides)}   # typed as the runs parse them
  studies = _studies(config_spec, workdir, methods, overrides, fixed, sweep)
  what = " ".join([config_spec, *overrides])
  # One study per directory (WORKDIR/job.lock, as a run's): a second launch would start the runs the first is
  # training, and both would write run_times.json. Reporting alone reads, so it takes no lock.
  with contextlib.nullcontext() if report_only else workdir_lock.hold(workdir):
    runner_lib.check_command(workdir, {"config": config_spec, "overrides": sorted(overrides), "eval_every": eval_every,
                                       "sweep": sweep[0] if sweep else None}, write=not report_only)
    if not report_only:
      runner_lib.run_all(config_spec, list(studies.values()), methods, seeds, eval_every, jobs,
                         os.path.join(workdir, "jax_cache"), runner)
    if sweep is None:
      report_lib.report(studies[""], f"Study: {what}", methods, seeds)
    else:
      report_lib.sweep_report(workdir, what, sweep[0], studies, methods, seeds)
  print(f"wrote {os.path.join(workdir, 'study.md')}", flush=True)


def _studies(config_spec: str, workdir: str, methods: Sequence[str], overrides: Sequence[str], fixed: dict[str, Any],
             sweep: tuple[str, list[Any]] | None) -> dict[str, runner_lib.Study]:
  """{"": the study} or, with a sweep, {value: its study in workdir/FIELD=V}; a reward-only field's values share
  the first value's base runs and the runs of methods that never read it."""
  if sweep is None:
    return {"": runner_lib.Study(workdir, tuple(overrides), duplicate_runs(config_spec, methods, fixed))}
  field, values = sweep
  studies: dict[str, runner_lib.Study] = {}
  reward_only = field.startswith(REWARD_ONLY_FIELDS)
  for v in values:
    label = f"{field}={format_value(v)}"
    first = next(iter(studies.values()), None)
    same_run = duplicate_runs(config_spec, methods, {**fixed, field: v})
    shared = (m for m in methods if m not in same_run and not reads_reward_field(config_spec, m, fixed, field))
    studies[format_value(v)] = runner_lib.Study(
        os.path.join(workdir, label), (*overrides, f"--config.{label}"), same_run, label,
        shared_base=first.workdir if first and reward_only else "",
        shared_methods=tuple(shared) if first and reward_only else ())
  return studies
