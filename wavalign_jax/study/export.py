"""A study's results without its weights: what its report reads, small enough to commit, and a later machine can
continue the study from it.

  python -m wavalign_jax.study --config=experiments/kimi.py:tiny --workdir=/tmp/study_kimi --export=docs/study/kimi

copies the study's reports and run_times.json and, of every finished run, what the report reads: config.json,
eval_summary.json, eval/after.jsonl (the per-item rows the intervals are computed from), the positive control's
eval/step_<n>.jsonl (its learning curve), launches.jsonl (the code each launch ran) and metrics.jsonl cut to the
columns the report reads (report.REPORT_METRICS), its numbers to 6 significant digits (float32 values and host
timings written with 17; the report shows at most 4). The JSONL files are stored gzip-compressed
(`after.jsonl.gz`, ...: mostly repeated keys, about 1/20 of the size); the report reads either form
(files.existing_jsonl). Left out: checkpoints, base models, testbed data, the compilation cache, logs and unfinished
runs (about 90 kB per 1600-step run instead of about 10 MB plus the weights; the positive control's learning curve
adds about 0.1 MB).

`--report_only --workdir=COPY` reports from the copy; `--workdir=COPY` without it continues the study there: a seed
whose base run finished but whose base model is gone retrains it first (runner.run_all), and refuses to go on
unless the retrained base model evaluates exactly as the exported one did (the finished runs started from it).
"""
from __future__ import annotations

import glob
import os
import shutil
from typing import Any

from wavalign_jax import files, provenance, workdir_lock
from wavalign_jax.evaluation import run_summary
from wavalign_jax.metric_writer import METRICS_FILE
from wavalign_jax.study.claims import POSITIVE_CONTROL
from wavalign_jax.study.report import REPORT_METRICS

# Study-level folders and files an export leaves out (a running study's lock: an export may be made meanwhile)
LEFT_OUT = frozenset({"testbed", "jax_cache", workdir_lock.LOCK_FILE})


def _is_run_dir(path: str, workdir: str) -> bool:
  """DIR/seed_<s>/<method> (or DIR/<sweep value>/seed_<s>/<method>), judged below the study's own directory: a
  study directory named seed_... (or inside one) holds runs like any other."""
  parts = os.path.relpath(path, workdir).split(os.sep)
  return len(parts) >= 2 and parts[-2].startswith("seed_")


def compact(value: Any) -> Any:
  """A metric as an export writes it: a float to 6 significant digits, anything else as it is."""
  return float(f"{value:.6g}") if isinstance(value, float) else value


def _copy_run(src: str, dst: str, with_steps: bool) -> None:
  os.makedirs(os.path.join(dst, run_summary.ROWS_DIR))
  for name in ("config.json", run_summary.SUMMARY_FILE):
    if os.path.exists(os.path.join(src, name)):
      shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
  rows = [os.path.relpath(run_summary.rows_path(src, "after"), src)]
  if with_steps:   # (a run continued from an export holds some of them compressed already)
    rows += sorted({os.path.relpath(p, src).removesuffix(".gz")
                    for p in glob.glob(os.path.join(src, run_summary.ROWS_DIR, "step_*.jsonl*"))})
  for name in [*rows, METRICS_FILE, provenance.FILE]:
    path = files.existing_jsonl(os.path.join(src, name))
    if path is not None:
      kept = files.read_jsonl(path)
      if name == METRICS_FILE:
        kept = [{k: compact(r[k]) for k in REPORT_METRICS if k in r} for r in kept]
      files.write_jsonl(os.path.join(dst, f"{name}.gz"), kept)


def export_results(workdir: str, dest: str) -> list[str]:
  """Copies the results of the study in `workdir` to `dest` (which must not exist yet): the runs' metrics.jsonl
  cut to REPORT_METRICS, eval/step_<n>.jsonl of the positive control only (its learning curve). Returns the
  finished runs copied, relative to `workdir`. Links (a sweep's shared runs) stay relative links. The copy is
  built next to `dest` and renamed into place, so an interrupted export leaves no half copy at `dest`."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir}: no such study directory")
  if os.path.lexists(dest):
    raise FileExistsError(f"--export={dest} exists; export into a new directory (remove the old copy first)")
  tmp = f"{dest.rstrip('/')}.partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  runs = []
  for root, dirs, names in os.walk(workdir):
    out = os.path.normpath(os.path.join(tmp, os.path.relpath(root, workdir)))
    os.makedirs(out, exist_ok=True)
    if _is_run_dir(root, workdir):
      dirs[:] = []
      if run_summary.finished(root):
        _copy_run(root, out, os.path.basename(root) == POSITIVE_CONTROL)
        runs.append(os.path.relpath(root, workdir))
      else:
        os.rmdir(out)
      continue
    for d in list(dirs):   # (the copy itself may be built inside the study directory)
      if d in LEFT_OUT or os.path.islink(os.path.join(root, d)) or os.path.samefile(os.path.join(root, d), tmp):
        dirs.remove(d)
    for name in [*names, *(d for d in os.listdir(root) if os.path.islink(os.path.join(root, d)))]:
      path = os.path.join(root, name)
      if name in LEFT_OUT or name.endswith(".tmp") or os.path.lexists(os.path.join(out, name)):
        continue
      if os.path.islink(path):
        os.symlink(os.readlink(path), os.path.join(out, name))
      else:
        shutil.copy2(path, os.path.join(out, name))
  os.replace(tmp, dest)
  return sorted(runs)
