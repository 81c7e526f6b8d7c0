"""Running a study: one `python -m wavalign_jax.train` process per (seed, method) in DIR/seed_<s>/<method>, the
base runs first, N at a time, resumable (a run is finished when its eval_summary.json exists), and per-run times."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from wavalign_jax import config_lib, errors, files, preemption, provenance
from wavalign_jax.evaluation import run_summary
from wavalign_jax.testbed import base_model


@dataclasses.dataclass(frozen=True)
class Study:
  """One study directory: a plain study's DIR, or one value's DIR/FIELD=V of a sweep."""
  workdir: str
  overrides: tuple[str, ...] = ()                   # --config.x=y arguments of every run
  same_run: dict[str, str] = dataclasses.field(default_factory=dict)   # alias -> the method whose run it is
  label: str = ""                                   # the sweep value, in progress lines
  shared_base: str = ""                             # a study directory whose testbeds and base runs this one links
  shared_methods: tuple[str, ...] = ()              # ... and the runs of these methods (they ignore the value)

  def base_dir(self, seed: int) -> str:
    return run_dir(self.shared_base or self.workdir, seed, "base")

  def runs_here(self, method: str) -> bool:
    """Whether this study runs `method` itself (not another method's run, nor a linked one)."""
    return method not in self.same_run and not (self.shared_base and method in ("base", *self.shared_methods))


def run_dir(workdir: str, seed: int, method: str) -> str:
  return os.path.join(workdir, f"seed_{seed}", method)


COMMAND_FILE = "study_command.json"


def check_command(workdir: str, command: dict[str, Any], write: bool) -> None:
  """DIR/study_command.json: what every run of the study is started with (the config spec, the --config overrides,
  --eval_every, the swept field). A rerun with other values would keep the finished runs of the old command beside
  new runs of the new one under one report (finished runs are never rerun), so it is refused, naming the
  differences; methods, seeds and sweep values may be added. Written by the first command that runs (`write`)."""
  path = os.path.join(workdir, COMMAND_FILE)
  if not os.path.exists(path):
    if write:
      files.write_json(path, command, indent=1)
    return
  saved = json.load(open(path))
  differ = [f"{k}: {json.dumps(saved.get(k))} -> {json.dumps(v)}" for k, v in command.items() if saved.get(k) != v]
  if differ:
    raise errors.ConfigError(
        f"{workdir} holds a study started with other settings ({path}):\n  " + "\n  ".join(differ) +
        "\nIts finished runs would be reported beside runs of these settings. Rerun with the saved settings, or "
        "use a new --workdir")


EXPORTED_SUMMARY = "eval_summary.exported.json"   # a retrained base run's summary before it was retrained
EXPORTED_LAUNCHES = "launches.exported.jsonl"      # ... and its launches (provenance.py), [.gz] as exported


def bases_to_retrain(studies: Sequence[Study], todo: Sequence[tuple[Study, int, str]]) -> list[tuple[Study, int]]:
  """(study, seed) of each finished base run whose base model is gone (a study continued from an export,
  study/export.py) while a run of its seed is still to do."""
  out = {}
  for st, s, m in todo:
    base = st.base_dir(s)
    if m != "base" and run_summary.finished(base) and not os.path.exists(base_model.path(base)):
      owner = next(o for o in studies if o.runs_here("base") and o.base_dir(s) == base)
      out[base] = (owner, s)
  return list(out.values())


def check_retrained_base(path: str) -> None:
  """After a base run retrained from an export: its evaluation must equal the exported one, which the seed's
  finished runs started from; otherwise the run stays unfinished and the study stops, saying why."""
  old = os.path.join(path, EXPORTED_SUMMARY)
  if not os.path.exists(old):
    return
  before, now = json.load(open(old))["after"], run_summary.read_after(path)
  if before != now:
    os.replace(run_summary.summary_path(path), os.path.join(path, "eval_summary.retrained.json"))
    differ = [f"{k} {before.get(k)} -> {now.get(k)}" for k in sorted(before.keys() | now.keys())
              if before.get(k) != now.get(k)]
    launches = provenance.read(path)
    unrecorded = "a commit it did not record"
    made = ", ".join(provenance.commits(provenance.read(path, EXPORTED_LAUNCHES))) or unrecorded
    raise errors.RunError(
        f"{path}: the retrained base model does not evaluate as the exported one did ({'; '.join(differ[:3])}); "
        "the seed's finished runs started from the exported one, so runs from this one would not be comparable. "
        f"The exported base model was made at {made}, this one at "
        f"{provenance.code_name(launches[-1]) if launches else unrecorded}: the "
        "testbed's training is deterministic for one commit on one machine type, and a change in the code's "
        f"numerics gives another base model. Continue at the exported commit, or rerun the whole seed (delete "
        f"{os.path.dirname(path)})")
  os.remove(old)


def train_command(config_spec: str, method: str, seed: int, workdir: str, overrides: Sequence[str],
                  eval_every: int) -> list[str]:
  """The train.py command line of one run (the base run trains the seed's base model into its workdir)."""
  seed_dir = os.path.join(workdir, f"seed_{seed}")
  cmd = [sys.executable, "-m", "wavalign_jax.train", f"--config={config_lib.with_variant(config_spec, method)}",
         f"--workdir={run_dir(workdir, seed, method)}", f"--config.seed={seed}", f"--config.testbed.seed={seed}",
         f"--config.data.shuffle_seed={seed}", f"--config.testbed.dir={os.path.join(seed_dir, 'testbed')}",
         "--config.train.eval_before=False", f"--config.train.eval_every={eval_every}"]
  if method != "base":
    cmd.append(f"--config.init_checkpoint={base_model.path(run_dir(workdir, seed, 'base'))}")
    return cmd + list(overrides)
  # The base run evaluates the untrained base model whatever budget the overrides give the methods (the last
  # occurrence of a --config field wins).
  return cmd + list(overrides) + ["--config.train.total_steps=0"]


_RUNNING: set[subprocess.Popen] = set()   # the train processes of run_train, for run_all to pass a signal on
_PASSED_ON: list[int] = []                # the signals passed on so far (a process started after gets them too)
_RUNNING_LOCK = threading.Lock()


def run_train(cmd: list[str], log_path: str, env: dict[str, str]) -> int:
  """One train process, its output appended to `log_path`; returns its exit status. It runs in a session of its
  own, so a Ctrl-C at the terminal reaches the study alone, which passes it on once (run_all): a train process
  that received it twice would stop at once instead of saving a checkpoint."""
  with open(log_path, "a") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    with _RUNNING_LOCK:
      _RUNNING.add(proc)
      for signum in _PASSED_ON:
        proc.send_signal(signum)
    try:
      return proc.wait()
    finally:
      with _RUNNING_LOCK:
        _RUNNING.discard(proc)


def _pass_on(signum: int) -> None:
  with _RUNNING_LOCK:
    _PASSED_ON.append(signum)
    for proc in _RUNNING:
      if proc.poll() is None:
        proc.send_signal(signum)


class StudyStopped(Exception):
  """SIGTERM / SIGINT stopped the study after its running runs saved their checkpoints (the command line prints the
  message and exits 0, as train does when preempted)."""


def link_shared_base(study: Study, seeds: Sequence[int]) -> None:
  """seed_<s>/testbed, seed_<s>/base and the shared methods' runs of `study` as relative links to those of
  study.shared_base (a link may point at a run still to come)."""
  for s in seeds:
    for name in ("testbed", "base", *study.shared_methods):
      link = os.path.join(study.workdir, f"seed_{s}", name)
      if not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(os.path.join(study.shared_base, f"seed_{s}", name), os.path.dirname(link)), link)


def read_times(workdir: str) -> dict[str, dict[str, float]]:
  """run_times.json: {"seed_<s>/<method>": {"seconds", "start", "end", "launches"}}: the seconds summed over the
  run's launches (a stopped launch and the one that resumed it), the first start and last end (epoch seconds).
  Older files: seconds only, or the last launch's seconds without "launches"."""
  path = os.path.join(workdir, "run_times.json")
  times = json.load(open(path)) if os.path.exists(path) else {}
  return {k: v if isinstance(v, dict) else {"seconds": v} for k, v in times.items()}


def time_totals(workdirs: Sequence[str]) -> dict[str, float | None]:
  """Summed run minutes and wall-clock minutes (first start to last finish, idle gaps of a resumed study
  included) over the runs of `workdirs`; None where nothing was recorded."""
  times = [t for w in workdirs for t in read_times(w).values()]
  starts = [t["start"] for t in times if "start" in t]
  return {"summed_minutes": sum(t["seconds"] for t in times) / 60 if times else None,
          "wall_minutes": (max(t["end"] for t in times if "end" in t) - min(starts)) / 60 if starts else None}


def run_all(config_spec: str, studies: Sequence[Study], methods: Sequence[str], seeds: Sequence[int],
            eval_every: int, jobs: int, cache_dir: str,
            runner: Callable[[list[str], str, dict[str, str]], int] = run_train) -> None:
  """Runs every (study, seed, method) not finished yet: the base runs first (the others start from their base
  model), then `methods` in their order (run_study puts the positive control first); a method with another's
  config (`same_run`) or linked from another study (`shared_base`) does not run."""
  order = ["base", *(m for m in methods if m != "base")]
  todo = [(st, s, m) for m in order for st in studies for s in seeds
          if st.runs_here(m) and not run_summary.finished(run_dir(st.workdir, s, m))]
  retrain = bases_to_retrain(studies, todo)
  for st, s in retrain:
    base = st.base_dir(s)
    print(f"seed {s}: {base} has no base model (an exported study): retraining it", flush=True)
    os.replace(run_summary.summary_path(base), os.path.join(base, EXPORTED_SUMMARY))
    launches = files.existing_jsonl(os.path.join(base, provenance.FILE))
    if launches is not None:
      os.replace(launches, os.path.join(base, EXPORTED_LAUNCHES + (".gz" if launches.endswith(".gz") else "")))
  todo = [(st, s, "base") for st, s in retrain] + todo
  for st in studies:
    if st.shared_base:
      link_shared_base(st, seeds)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  start, lock, done = time.time(), threading.Lock(), []
  base_ready = {st.base_dir(s): threading.Event() for st in studies for s in seeds}
  for path, event in base_ready.items():
    if run_summary.finished(path):
      event.set()

  def one(st: Study, seed: int, method: str) -> None:
    base = st.base_dir(seed)
    if method != "base":
      base_ready[base].wait()
      if guard.signum is None and not run_summary.finished(base):
        raise errors.RunError(f"seed {seed}: the base run failed; see {base}/run.log")
    if guard.signum is not None:   # stopping: no new run starts (a base run's waiters are let go)
      if method == "base":
        base_ready[base].set()
      return
    path = run_dir(st.workdir, seed, method)
    os.makedirs(path, exist_ok=True)
    t0 = time.time()
    try:
      rc = runner(train_command(config_spec, method, seed, st.workdir, st.overrides, eval_every),
                  os.path.join(path, "run.log"), env)
      if method == "base" and rc == 0 and run_summary.finished(path):
        check_retrained_base(path)
    finally:
      if method == "base":
        base_ready[base].set()
    t1 = time.time()
    with lock:   # every launch's time counts, a stopped or failed one too
      times = read_times(st.workdir)
      before = times.get(f"seed_{seed}/{method}", {})
      times[f"seed_{seed}/{method}"] = {"seconds": before.get("seconds", 0.0) + t1 - t0,
                                        "start": before.get("start", t0), "end": t1,
                                        "launches": before.get("launches", 0) + 1}
      files.write_json(os.path.join(st.workdir, "run_times.json"), times, indent=1)
    # Preempted: saved a checkpoint and exited 0, or was still starting (no guard yet) and died of the signal.
    if guard.signum is not None and rc in (0, -guard.signum) and not run_summary.finished(path):
      return
    if rc != 0 or not run_summary.finished(path):
      raise errors.RunError(f"{st.label + ' ' if st.label else ''}seed {seed} {method}: train exited with {rc}; "
                         f"see {path}/run.log")
    with lock:
      done.append(t1 - t0)
      after = run_summary.read_after(path)
      elapsed = t1 - start
      eta = elapsed / len(done) * (len(todo) - len(done))
      print(f"[study {len(done)}/{len(todo)}] {st.label + ' ' if st.label else ''}seed {seed} {method}: "
            f"{t1 - t0:.0f}s wall, IQ {after['iq']:.3f} EQ {after['eq']:.3f} | elapsed {elapsed / 60:.1f} min, "
            f"ETA {eta / 60:.1f} min", flush=True)

  print(f"study: {len(todo)} runs to do in {', '.join(st.workdir for st in studies)} ({jobs} at a time)", flush=True)
  # SIGTERM / SIGINT: the train processes get the signal once (they save a checkpoint and exit), no new run starts,
  # and the study ends saying so. A second Ctrl-C stops the study and, passed on, its train processes at once.
  _PASSED_ON.clear()
  with preemption.PreemptionGuard() as guard, concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    futures = [pool.submit(one, st, s, m) for st, s, m in todo]
    try:
      while concurrent.futures.wait(futures, timeout=0.2).not_done:
        if guard.signum is not None and not _PASSED_ON:
          _pass_on(guard.signum)
    except KeyboardInterrupt:
      for _ in range(2 - len(_PASSED_ON)):
        _pass_on(signal.SIGINT)
      raise
    failures = [f.exception() for f in futures if f.exception() is not None]
  bug = next((e for e in failures if not isinstance(e, errors.RunError)), None)
  if bug is not None:   # a bug keeps its traceback (cli.run prints a RunError as one line); the other failures first
    for e in failures:
      if e is not bug:
        print(f"error: {e}", file=sys.stderr, flush=True)
    raise bug
  if failures:
    raise errors.RunError("; ".join(str(e) for e in failures))
  if guard.signum is not None and len(done) < len(todo):
    raise StudyStopped(f"{signal.Signals(guard.signum).name} received: the study stopped after its running runs "
                       f"saved their checkpoints ({len(done)} of {len(todo)} runs finished); rerun the same command "
                       "to continue")
