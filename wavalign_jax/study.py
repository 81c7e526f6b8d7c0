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
results without the weights (small enough to commit); a study continues from such a copy too (study_export.py).
`--methods=` / `--seeds=` pick a subset; `--config.x=y` overrides are passed to every run; `--jobs=N` runs N
processes at once.

`--sweep=FIELD=V1,V2,...` repeats the study for each value of one config field: DIR/FIELD=V is a study of its own
(its runs get --config.FIELD=V); DIR/study.md puts the verdicts side by side and sweep.png plots each claim's
effect against the value. A judge or reward field cannot change the base model or the testbed data, so its
values share each seed's base run (links to the first value's), and so do the methods that never read it (no
rollouts, e.g. `sft`, or another reward, e.g. `rl_text_exact` for a judge field): each runs once.

Outputs in DIR: study.md (the positive control, the paper's three tables as mean [95% CI] per method, a verdict
per claim), study.json (every number), iq_eq.png, gates.png, eq_curve.png. Confidence intervals are a
hierarchical bootstrap: seeds resampled, then eval items within each seed; method differences are paired (same
seed, same item). docs/testbed.md describes the testbed, the claims and how verdicts are decided.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable, Sequence

import ml_collections as mlc
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from wavalign_jax import cli, config_check, config_lib, files, study_export

CLAIMS = (
    # (claim, metric, method a, methods b, relation): a - b on the metric; "greater" / "less" than 0.
    ("text-token RL >= full-token RL on IQ", "iq", "rl_text", ("rl_full",), "greater"),
    ("text-token RL >= full-token RL on EQ", "eq", "rl_text", ("rl_full",), "greater"),
    ("full-token DPO degrades EQ", "eq", "dpo_full", ("base",), "less"),
    ("SFT keeps or raises EQ", "eq", "sft", ("base",), "greater"),
    ("SFT lowers IQ", "iq", "sft", ("base",), "less"),
    ("the dynamic hybrid has the best IQ-EQ trade-off", "tradeoff", "hybrid", "*", "greater"),
    ("dynamic > fixed mixes", "tradeoff", "hybrid", ("fixed_balance", "fixed_boost", "fixed_plus_vanilla"),
     "greater"),
    ("EMA > no EMA", "tradeoff", "hybrid", ("ablate_text_dynamic_no_ema",), "greater"),
    ("text-token > all-token, fixed 0.5", "tradeoff", "ablate_text_fixed_0.5", ("ablate_all_fixed_0.5",), "greater"),
    ("text-token > all-token, dynamic", "tradeoff", "hybrid", ("ablate_all_dynamic",), "greater"),
    ("two-stage below the hybrid", "tradeoff", "two_stage", ("hybrid",), "less"),
)
# Text-token RL with the exact-match reward: when it does not beat `base` on IQ, RL learns nothing at this budget
# and no verdict can be told apart from "RL did not train" (docs/testbed.md).
POSITIVE_CONTROL = "rl_text_exact"
UNDERPOWERED = "underpowered"
# Methods that are not the paper's: never a competitor in "the best trade-off".
NOT_IN_PAPER = (POSITIVE_CONTROL, "ablate_text_dynamic_batch_std")
# Per-item dimensions of testbed/metrics.py; the trade-off is the mean of IQ and EQ (the testbed benchmark's
# aggregate, evaluation/testbed.py).
DIMENSIONS = ("iq", "eq", "intelligibility", "style")
TABLE_IQ = (("iq", "IQ (all)"), ("id/iq", "IQ in-dist."), ("ood/iq", "IQ out-of-dist."),
            ("arithmetic/iq", "IQ arithmetic"), ("lookup/iq", "IQ lookup"))
TABLE_EQ = (("eq", "EQ"), ("intelligibility", "intelligibility"), ("style", "style"), ("ood/eq", "EQ out-of-dist."))
ABLATIONS = ("hybrid", "ablate_all_fixed_0.5", "ablate_text_fixed_0.5", "ablate_text_fixed_0.3",
             "ablate_all_dynamic", "ablate_text_dynamic_no_ema", "ablate_text_dynamic_batch_std")
# Fields every run gets from the study itself (train_command): not sweepable.
STUDY_FIELDS = ("method", "seed", "init_checkpoint", "testbed.seed", "testbed.dir", "data.shuffle_seed",
                "train.eval_before", "train.eval_every")
# Fields that only make the RL reward (run_setup.make_reward_fn): a sweep over one shares the base runs, and
# the runs of methods that never call the reward (reads_reward_field).
JUDGE_FIELDS = ("testbed.judge_acoustic_weight", "testbed.judge_acoustic_noise")
REWARD_ONLY_FIELDS = (*JUDGE_FIELDS, "reward.")


# ----------------------------------------------------------------------------- statistics


def in_stratum(row: dict[str, Any], stratum: str) -> bool:
  """"" every item; "id" / "ood" by the item's subset; else its task family (arithmetic / lookup)."""
  if stratum in ("id", "ood"):
    return (row["subset"] == "id") == (stratum == "id")
  return not stratum or row["family"] == stratum


def item_values(rows: Sequence[dict[str, Any]], metric: str) -> np.ndarray:
  """Per-item values of `metric` ("iq", "tradeoff", "id/iq", "arithmetic/eq", ...); NaN outside its stratum."""
  stratum, _, dim = metric.rpartition("/")
  value = lambda r: 0.5 * (r["iq"] + r["eq"]) if dim == "tradeoff" else r[dim]
  return np.array([value(r) if in_stratum(r, stratum) else np.nan for r in rows], np.float64)


def hierarchical_bootstrap(per_seed: Sequence[np.ndarray], *, num_bootstrap: int = 2000, level: float = 0.95,
                           seed: int = 0) -> tuple[float, float, float]:
  """(mean, lo, hi) of per-item values given per seed (NaN = not in the stratum): the estimate is the mean over
  seeds of the per-seed item means; each bootstrap draw resamples seeds, then items within each drawn seed."""
  per_seed = [v[np.isfinite(v)] for v in per_seed]
  if not per_seed or any(len(v) == 0 for v in per_seed):
    raise ValueError("every seed needs at least one item value")
  rng = np.random.default_rng(seed)
  estimate = float(np.mean([v.mean() for v in per_seed]))
  drawn = rng.integers(0, len(per_seed), (num_bootstrap, len(per_seed)))   # draw b's seeds
  item_means = np.empty(drawn.shape)   # each drawn seed's items resampled independently (vectorised per seed)
  for s, v in enumerate(per_seed):
    where = drawn == s
    item_means[where] = v[rng.integers(0, len(v), (int(where.sum()), len(v)))].mean(axis=1)
  boots = item_means.mean(axis=1)
  lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
  return estimate, float(lo), float(hi)


def verdict(lo: float, hi: float, relation: str) -> str:
  """reproduced when the CI of a - b lies on the claimed side of 0, not reproduced when it lies on the other
  side, inconclusive when it holds 0."""
  above, below = lo > 0, hi < 0
  if relation == "less":
    above, below = below, above
  return "reproduced" if above else "not reproduced" if below else "inconclusive"


def paired_difference(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int], a: str, b: str,
                      metric: str) -> tuple[float, float, float]:
  """(mean, lo, hi) of a - b on `metric`, paired by seed and item."""
  return hierarchical_bootstrap([item_values(rows[a][s], metric) - item_values(rows[b][s], metric) for s in seeds])


def power_check(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int]) -> dict[str, Any] | None:
  """The positive control's IQ gain over `base` [CI]; "powered" when the CI lies above 0. None when it did not run."""
  if POSITIVE_CONTROL not in rows or "base" not in rows:
    return None
  d, lo, hi = paired_difference(rows, seeds, POSITIVE_CONTROL, "base", "iq")
  return {"a": POSITIVE_CONTROL, "b": "base", "metric": "iq", "diff": d, "lo": lo, "hi": hi, "powered": lo > 0}


def learning_curve(workdir: str, seeds: Sequence[int], base_rows: dict[int, list[dict]],
                   method: str = POSITIVE_CONTROL) -> list[dict[str, Any]]:
  """`method`'s IQ gain over `base` [CI] at every step that every seed evaluated (WORKDIR/eval/step_<n>.jsonl,
  then after.jsonl at the end), paired by seed and item like the claims: the evidence for a study's budget."""
  evals: dict[int, dict[int, list[dict]]] = {}
  for s in seeds:
    folder = os.path.join(run_dir(workdir, s, method), "eval")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for name in names:
      if name.startswith("step_") and name.endswith(".jsonl"):
        evals.setdefault(int(name[5:-6]), {})[s] = [json.loads(line) for line in open(os.path.join(folder, name))]
  out = []
  for step in sorted(evals):
    if len(evals[step]) == len(seeds):
      d, lo, hi = paired_difference({"a": evals[step], "b": base_rows}, seeds, "a", "b", "iq")
      out.append({"step": step, "diff": d, "lo": lo, "hi": hi})
  return out


def evaluate_claims(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int],
                    same_run: dict[str, str] | None = None,
                    power: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """One entry per claim of CLAIMS whose methods all ran: each comparison's paired difference and CI, and the
  claim's verdict (every comparison reproduced -> reproduced; any not reproduced -> not reproduced). When the
  positive control failed (`power`), every verdict is "underpowered": RL not learning would explain any of them.
  `same_run` ({alias: method}) keeps a method's second name out of "the best trade-off" comparisons."""
  same_run = same_run or {}
  underpowered = power is not None and not power["powered"]
  out = []
  for claim, metric, a, bs, relation in CLAIMS:
    if bs == "*":
      bs = tuple(m for m in rows if m not in (a, "base", same_run.get(a, a), *NOT_IN_PAPER) and m not in same_run)
    if a not in rows or not bs or any(b not in rows for b in bs):
      continue
    comparisons = []
    for b in bs:
      d, lo, hi = paired_difference(rows, seeds, a, b, metric)
      comparisons.append({"b": b, "diff": d, "lo": lo, "hi": hi,
                          "verdict": UNDERPOWERED if underpowered else verdict(lo, hi, relation)})
    verdicts = {c["verdict"] for c in comparisons}
    overall = (UNDERPOWERED if underpowered else "not reproduced" if "not reproduced" in verdicts else
               "reproduced" if verdicts == {"reproduced"} else "inconclusive")
    out.append({"claim": claim, "metric": metric, "a": a, "relation": relation, "comparisons": comparisons,
                "verdict": overall})
  return out


# ----------------------------------------------------------------------------- configs, sweeps, duplicates


def get_field(config: mlc.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def set_field(config: mlc.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  (get_field(config, ".".join(parents)) if parents else config)[leaf] = value


def override_fields(overrides: Sequence[str]) -> list[str]:
  """The dotted fields of --config.x=y arguments."""
  return [o[len("--config."):].split("=", 1)[0] for o in overrides]


def format_value(value: Any) -> str:
  """The one spelling of a sweep value: its directory name and its --config override (absl parses it back)."""
  return str(value)


def parse_sweep(arg: str, config: mlc.ConfigDict, overridden: Sequence[str] = ()) -> tuple[str, list[Any]]:
  """'FIELD=V1,V2,...' -> (FIELD, values typed like the field in `config`, as absl parses a --config override).
  ValueError with a short message for anything else; `overridden` are fields the command also sets."""
  field, sep, raw = arg.partition("=")
  if not sep or not field or not raw:
    raise ValueError(f"--sweep={arg}: give FIELD=V1,V2,... e.g. --sweep=testbed.judge_acoustic_noise=0,0.25,0.5")
  if not config_lib._has_field(config, field):
    near = config_lib.nearest_fields(config, field)
    raise ValueError(f"--sweep: the config has no field {field!r}" +
                     (f"; did you mean {', '.join(near)}?" if near else ""))
  if field in STUDY_FIELDS or field in overridden:
    raise ValueError(f"--sweep: {field} is set by " + ("the study for every run" if field in STUDY_FIELDS else
                                                       f"--config.{field}") + "; sweep another field")
  current = get_field(config, field)
  parser = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
            str: flags.ArgumentParser()}.get(type(current))
  if parser is None:
    raise ValueError(f"--sweep: {field} holds a {type(current).__name__}; only bool, int, float and str fields "
                     "can be swept")
  values = []
  for text in raw.split(","):
    try:
      value = parser.parse(text.strip())
    except ValueError as e:
      raise ValueError(f"--sweep: {field}={text!r} is not a {type(current).__name__} ({e})") from None
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"--sweep: {field}={text!r} is not finite")
    if not format_value(value) or os.sep in format_value(value):
      raise ValueError(f"--sweep: {field}={text!r} cannot name a directory")
    values.append(value)
  if len({format_value(v) for v in values}) != len(values):
    raise ValueError(f"--sweep: {field} has a value twice: {raw}")
  return field, values


def method_config(config_spec: str, method: str, overrides: dict[str, Any]) -> mlc.ConfigDict:
  """The resolved config of one run: the spec's variant, the method, then `overrides` {dotted field: value}."""
  path, _, variant = config_spec.partition(":")
  config = config_lib.load_config_file(f"{path}:{','.join(filter(None, [variant, method]))}")
  for dotted, value in overrides.items():
    set_field(config, dotted, value)
  return config


def duplicate_runs(config_spec: str, methods: Sequence[str], overrides: dict[str, Any]) -> dict[str, str]:
  """{method: the earlier method of `methods` whose run it reuses}, for methods whose resolved configs (the
  spec's variant + the method + `overrides`) are identical in everything but `method`."""
  seen: dict[str, str] = {}
  out = {}
  for m in methods:
    config = method_config(config_spec, m, overrides)
    del config["method"]
    key = json.dumps(config.to_dict(), sort_keys=True, default=repr)
    if key in seen:
      out[m] = seen[key]
    else:
      seen[key] = m
  return out


def reads_reward_field(config_spec: str, method: str, overrides: dict[str, Any], field: str) -> bool:
  """Whether `method`'s run can depend on the reward-only `field`: it draws rollouts, and for a testbed judge
  field its reward is that judge."""
  config = method_config(config_spec, method, overrides)
  return config_check.samples(config) and (not field.startswith(JUDGE_FIELDS) or config.reward.kind == "testbed")


# ----------------------------------------------------------------------------- running


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


def finished(path: str) -> bool:
  return os.path.exists(os.path.join(path, "eval_summary.json"))


EXPORTED_SUMMARY = "eval_summary.exported.json"   # a retrained base run's summary before it was retrained


def bases_to_retrain(studies: Sequence[Study], todo: Sequence[tuple[Study, int, str]]) -> list[tuple[Study, int]]:
  """(study, seed) of each finished base run whose base model is gone (a study continued from an export,
  study_export.py) while a run of its seed is still to do."""
  out = {}
  for st, s, m in todo:
    base = st.base_dir(s)
    if m != "base" and finished(base) and not os.path.exists(os.path.join(base, "base_model")):
      owner = next(o for o in studies if o.runs_here("base") and o.base_dir(s) == base)
      out[base] = (owner, s)
  return list(out.values())


def check_retrained_base(path: str) -> None:
  """After a base run retrained from an export: its evaluation must equal the exported one, which the seed's
  finished runs started from; otherwise the run stays unfinished and the study stops, saying why."""
  old = os.path.join(path, EXPORTED_SUMMARY)
  if not os.path.exists(old):
    return
  before, now = (json.load(open(p))["after"] for p in (old, os.path.join(path, "eval_summary.json")))
  if before != now:
    os.replace(os.path.join(path, "eval_summary.json"), os.path.join(path, "eval_summary.retrained.json"))
    differ = [f"{k} {before.get(k)} -> {now.get(k)}" for k in sorted(before.keys() | now.keys())
              if before.get(k) != now.get(k)]
    raise RuntimeError(
        f"{path}: the retrained base model does not evaluate as the exported one did ({'; '.join(differ[:3])}); "
        "the seed's finished runs started from the exported one, so runs from this one would not be comparable. "
        f"Rerun the whole seed (delete {os.path.dirname(path)}) or continue where the study was exported from")
  os.remove(old)


def train_command(config_spec: str, method: str, seed: int, workdir: str, overrides: Sequence[str],
                  eval_every: int) -> list[str]:
  """The train.py command line of one run (the base run trains the seed's base model into its workdir)."""
  seed_dir = os.path.join(workdir, f"seed_{seed}")
  path, _, variant = config_spec.partition(":")
  cmd = [sys.executable, "-m", "wavalign_jax.train", f"--config={path}:{','.join(filter(None, [variant, method]))}",
         f"--workdir={run_dir(workdir, seed, method)}", f"--config.seed={seed}", f"--config.testbed.seed={seed}",
         f"--config.data.shuffle_seed={seed}", f"--config.testbed.dir={os.path.join(seed_dir, 'testbed')}",
         "--config.train.eval_before=False", f"--config.train.eval_every={eval_every}"]
  if method != "base":
    cmd.append(f"--config.init_checkpoint={os.path.join(run_dir(workdir, seed, 'base'), 'base_model')}")
    return cmd + list(overrides)
  # The base run evaluates the untrained base model whatever budget the overrides give the methods (the last
  # occurrence of a --config field wins).
  return cmd + list(overrides) + ["--config.train.total_steps=0"]


def run_train(cmd: list[str], log_path: str, env: dict[str, str]) -> int:
  """One train process, its output appended to `log_path`; returns its exit status."""
  with open(log_path, "a") as log:
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


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
  """run_times.json: {"seed_<s>/<method>": {"seconds", "start", "end"}} (epoch seconds; older files: seconds)."""
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
  model), then the positive control, then the other methods in `methods` order; a method with another's
  config (`same_run`) or linked from another study (`shared_base`) does not run."""
  order = sorted(["base", *methods], key=lambda m: (m != "base", m != POSITIVE_CONTROL))   # stable otherwise
  todo = [(st, s, m) for m in order for st in studies for s in seeds
          if st.runs_here(m) and not finished(run_dir(st.workdir, s, m))]
  retrain = bases_to_retrain(studies, todo)
  for st, s in retrain:
    base = st.base_dir(s)
    print(f"seed {s}: {base} has no base model (an exported study): retraining it", flush=True)
    os.replace(os.path.join(base, "eval_summary.json"), os.path.join(base, EXPORTED_SUMMARY))
  todo = [(st, s, "base") for st, s in retrain] + todo
  for st in studies:
    if st.shared_base:
      link_shared_base(st, seeds)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  start, lock, done = time.time(), threading.Lock(), []
  base_ready = {st.base_dir(s): threading.Event() for st in studies for s in seeds}
  for path, event in base_ready.items():
    if finished(path):
      event.set()

  def one(st: Study, seed: int, method: str) -> None:
    base = st.base_dir(seed)
    if method != "base":
      base_ready[base].wait()
      if not finished(base):
        raise RuntimeError(f"seed {seed}: the base run failed; see {base}/run.log")
    path = run_dir(st.workdir, seed, method)
    os.makedirs(path, exist_ok=True)
    t0 = time.time()
    try:
      rc = runner(train_command(config_spec, method, seed, st.workdir, st.overrides, eval_every),
                  os.path.join(path, "run.log"), env)
      if method == "base" and rc == 0 and finished(path):
        check_retrained_base(path)
    finally:
      if method == "base":
        base_ready[base].set()
    if rc != 0 or not finished(path):
      raise RuntimeError(f"{st.label + ' ' if st.label else ''}seed {seed} {method}: train exited with {rc}; "
                         f"see {path}/run.log")
    t1 = time.time()
    with lock:
      done.append(t1 - t0)
      times = read_times(st.workdir)
      times[f"seed_{seed}/{method}"] = {"seconds": t1 - t0, "start": t0, "end": t1}
      files.write_json(os.path.join(st.workdir, "run_times.json"), times, indent=1)
      after = json.load(open(os.path.join(path, "eval_summary.json")))["after"]
      elapsed = t1 - start
      eta = elapsed / len(done) * (len(todo) - len(done))
      print(f"[study {len(done)}/{len(todo)}] {st.label + ' ' if st.label else ''}seed {seed} {method}: "
            f"{t1 - t0:.0f}s wall, IQ {after['iq']:.3f} EQ {after['eq']:.3f} | elapsed {elapsed / 60:.1f} min, "
            f"ETA {eta / 60:.1f} min", flush=True)

  print(f"study: {len(todo)} runs to do in {', '.join(st.workdir for st in studies)} ({jobs} at a time)", flush=True)
  with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    futures = [pool.submit(one, st, s, m) for st, s, m in todo]
    errors = [f.exception() for f in futures if f.exception() is not None]
  if errors:
    raise RuntimeError("; ".join(str(e) for e in errors))


# ----------------------------------------------------------------------------- report


def load_rows(workdir: str, methods: Sequence[str], seeds: Sequence[int],
              same_run: dict[str, str] | None = None) -> dict[str, dict[int, list[dict]]]:
  """{method: {seed: per-item eval rows of its final evaluation}} for every finished run (an alias of
  `same_run` reads its method's run)."""
  out: dict[str, dict[int, list[dict]]] = {}
  for m in ["base", *methods]:
    per_seed = {}
    for s in seeds:
      path = os.path.join(run_dir(workdir, s, (same_run or {}).get(m, m)), "eval", "after.jsonl")
      if os.path.exists(path):
        per_seed[s] = [json.loads(line) for line in open(path) if line.strip()]
    if len(per_seed) == len(seeds):
      out[m] = per_seed
  return out


# The metrics.jsonl columns the report reads: the curves (load_curves) and the time breakdown (time_breakdown).
CURVE_KEYS = {"train": ("lambda", "gate_direction", "gate_info", "diversity/informative",
                        "diversity/informative_semantic", "pass/at_1", "pass/at_G", "judge/pearson_acoustic",
                        "judge/pearson_semantic"), "eval": ("iq", "eq")}
REPORT_METRICS = ("step", "split", "step_time", "rollout_time", "eval_time", *CURVE_KEYS["train"],
                  *CURVE_KEYS["eval"])


def load_curves(workdir: str, methods: Sequence[str], seeds: Sequence[int],
                same_run: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
  """{method: {"train": {key: [steps, mean over seeds]}, "eval": {key: ...}}} from the runs' metrics.jsonl."""
  keys = CURVE_KEYS
  out = {}
  for m in methods:
    series: dict[str, dict[str, dict[int, list[float]]]] = {g: {k: {} for k in ks} for g, ks in keys.items()}
    for s in seeds:
      path = os.path.join(run_dir(workdir, s, (same_run or {}).get(m, m)), "metrics.jsonl")
      if not os.path.exists(path):
        continue
      base = os.path.join(run_dir(workdir, s, "base"), "eval_summary.json")
      if os.path.exists(base):   # the curve starts at the base model
        for k, v in json.load(open(base))["after"].items():
          if k in keys["eval"]:
            series["eval"][k].setdefault(0, []).append(v)
      for line in open(path):
        row = json.loads(line)
        group = "train" if row["split"] == "train" else "eval" if row["split"] in ("eval", "eval_after") else None
        for k in keys.get(group, ()):
          if row.get(k) is not None:
            series[group][k].setdefault(row["step"], []).append(row[k])
    out[m] = {g: {k: [sorted(v), [float(np.mean(v[t])) for t in sorted(v)]] for k, v in ks.items() if v}
              for g, ks in series.items()}
  return out


def summarize(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int]) -> dict[str, dict[str, list[float]]]:
  """{method: {metric: [mean, lo, hi]}} for every table metric."""
  metrics = [k for k, _ in TABLE_IQ + TABLE_EQ] + ["tradeoff"]

  def stat(values: list[np.ndarray]) -> list[float]:   # NaN where a seed has no item in the stratum
    return list(hierarchical_bootstrap(values)) if all(np.isfinite(v).any() for v in values) else [np.nan] * 3

  return {m: {k: stat([item_values(per_seed[s], k) for s in seeds]) for k in metrics} for m, per_seed in rows.items()}


def _cell(v: Sequence[float]) -> str:
  return f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]" if v[0] is not None and np.isfinite(v[0]) else "–"


def _diff(d: dict[str, Any]) -> str:
  return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def power_line(power: dict[str, Any] | None) -> str:
  """The sentence study.md opens with: the positive control's IQ gain and what it means for the verdicts."""
  if power is None:
    return (f"**Verdicts unchecked by a positive control**: `{POSITIVE_CONTROL}` did not run, so an "
            "\"inconclusive\" or \"not reproduced\" verdict may only mean that RL learns nothing at this budget.")
  gain = f"`{POSITIVE_CONTROL}` − `base` on IQ: {_diff(power)}"
  if power["powered"]:
    return f"**Positive control** ({gain}): its CI lies above 0, so RL demonstrably learns at this budget."
  return (f"**Underpowered**: the positive control ({gain}) has a CI that does not lie above 0, so RL does not "
          "demonstrably learn at this budget and every verdict below is \"underpowered\" (differences and CIs "
          "are still shown).")


def same_run_note(same_run: dict[str, str]) -> str:
  groups: dict[str, list[str]] = {}
  for alias, m in same_run.items():
    groups.setdefault(m, [m]).append(alias)
  return " ".join(f"{' and '.join(f'`{n}`' for n in names)} resolve to the same configuration: run once, reported "
                  "under each name." for names in groups.values())


def time_breakdown(workdir: str, methods: Sequence[str], seeds: Sequence[int],
                   same_run: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
  """Where each method's run time went, in seconds summed over seeds, from run_times.json and the runs'
  metrics.jsonl: `first_step` (mostly compiling the step and the sampler), `rollouts` (sampling + scoring, later
  steps), `updates` (the rest of later steps: data, reference log-probs, the jitted step), `evals` and `other`
  (start-up, the base model's SFT in `base`, checkpoints: the wall time not in any step or evaluation)."""
  times = read_times(workdir)
  out = {}
  for m in ["base", *methods]:
    if m in (same_run or {}):
      continue
    parts = dict(wall=0.0, first_step=0.0, rollouts=0.0, updates=0.0, evals=0.0)
    for s in seeds:
      path = os.path.join(run_dir(workdir, s, m), "metrics.jsonl")
      if f"seed_{s}/{m}" not in times or not os.path.exists(path):
        continue
      parts["wall"] += times[f"seed_{s}/{m}"]["seconds"]
      for line in open(path):
        row = json.loads(line)
        if row["split"] != "train":
          parts["evals"] += row.get("eval_time") or 0.0
        elif "step_time" not in row:   # a row without timings counts as `other`
          continue
        elif row["step"] == 1:
          parts["first_step"] += row["step_time"]
        else:
          parts["rollouts"] += row.get("rollout_time") or 0.0
          parts["updates"] += row["step_time"] - (row.get("rollout_time") or 0.0)
    if parts["wall"]:
      parts["other"] = parts["wall"] - sum(v for k, v in parts.items() if k != "wall")
      out[m] = parts
  return out


def breakdown_rows(breakdown: dict[str, dict[str, float]]) -> list[str]:
  keys = ("wall", "first_step", "rollouts", "updates", "evals", "other")
  rows = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
  rows += [f"| {m} | " + " | ".join(f"{v[k] / 60:.1f}" for k in keys) + " |" for m, v in breakdown.items()]
  total = {k: sum(v[k] for v in breakdown.values()) for k in keys}
  return rows + ["| all | " + " | ".join(f"{total[k] / 60:.1f} ({100 * total[k] / max(total['wall'], 1e-9):.0f}%)"
                                        for k in keys) + " |"]


def times_line(times: dict[str, float | None]) -> str:
  parts = [f"{label}: {times[k]:.0f} min" for k, label in (("summed_minutes", "summed run time"),
                                                         ("wall_minutes", "wall clock, first start to last finish"))
           if times.get(k) is not None]
  return ("Time: " + "; ".join(parts) + ".") if parts else ""


def training_rows(curves: dict[str, dict[str, Any]], window: int = 20) -> list[str]:
  """Markdown rows of the runs' training statistics (means over seeds): mean lambda, pass@1 over the first and the
  last `window` steps, informative groups (rewards differ; semantic: the true semantic scores differ), and the
  judge's correlation with the true semantic / acoustic scores."""
  lines = ["| method | mean λ | pass@1 first → last | informative groups | semantically informative | "
           "judge ρ semantic | judge ρ acoustic |", "|---|---|---|---|---|---|---|"]
  fmt = lambda v: f"{v:.2f}" if np.isfinite(v) else "–"
  for m, c in curves.items():
    train = c.get("train", {})
    if "lambda" not in train:
      continue
    mean = lambda k, sl=slice(None): float(np.nanmean(train[k][1][sl])) if k in train else float("nan")
    lines.append(f"| {m} | {fmt(mean('lambda'))} | {fmt(mean('pass/at_1', slice(0, window)))} → "
                 f"{fmt(mean('pass/at_1', slice(-window, None)))} | {fmt(mean('diversity/informative'))} | "
                 f"{fmt(mean('diversity/informative_semantic'))} | {fmt(mean('judge/pearson_semantic'))} | "
                 f"{fmt(mean('judge/pearson_acoustic'))} |")
  return lines


SUMMARY_COLUMNS = (("iq", "IQ"), ("id/iq", "IQ in-dist."), ("ood/iq", "IQ OOD"), ("eq", "EQ"),
                   ("intelligibility", "intellig."), ("style", "style"), ("tradeoff", "trade-off"))


def claims_markdown(claims: list[dict[str, Any]]) -> list[str]:
  """One line per claim: its verdict and the (at most 3) comparisons that decide it."""
  lines = ["| claim of the paper | verdict | a − b [95% CI] |", "|---|---|---|"]
  order = {"not reproduced": 0, UNDERPOWERED: 1, "inconclusive": 1, "reproduced": 2}
  for c in claims:
    shown = sorted(c["comparisons"], key=lambda d: order[d["verdict"]])[:3]   # the comparisons that decide it first
    diffs = "; ".join(f"{c['a']} − {d['b']}: {_diff(d)}" for d in shown)
    more = f"; … ({len(c['comparisons'])} comparisons in study.md)" if len(c["comparisons"]) > 3 else ""
    lines.append(f"| {c['claim']} ({c['metric']}) | **{c['verdict']}** | {diffs}{more} |")
  return lines


def summary_markdown(table: dict[str, dict[str, list[float]]], claims: list[dict[str, Any]]) -> list[str]:
  """The compact version (every method in one table, one line per claim) that the README quotes."""
  lines = ["| method | " + " | ".join(c for _, c in SUMMARY_COLUMNS) + " |", "|---|" + "---|" * len(SUMMARY_COLUMNS)]
  lines += [f"| {m} | " + " | ".join(_cell(v[k]) for k, _ in SUMMARY_COLUMNS) + " |" for m, v in table.items()]
  return lines + ["", *claims_markdown(claims)]


def markdown(out: dict[str, Any]) -> str:
  """study.md of one study from its report dict (`report`)."""
  table, claims = out["table"], out["claims"]
  intro = (f"Seeds: {out['seeds']}. Values in % as mean [95% CI]: hierarchical bootstrap over seeds and eval items "
           "(docs/testbed.md). Trade-off = mean of IQ and EQ.")
  lines = [f"# {out['title']}", "", power_line(out["positive_control"]), ""]
  if out.get("unfinished"):
    lines += [f"**Incomplete**: {', '.join(f'`{m}`' for m in out['unfinished'])} "
              f"{'has' if len(out['unfinished']) == 1 else 'have'} not finished on every seed yet and "
              f"{'is' if len(out['unfinished']) == 1 else 'are'} left out (rerun the study's command to continue).", ""]
  lines += [" ".join(filter(None, [intro, same_run_note(out["same_run"]), times_line(out["times"])])), ""]

  def table_of(title: str, methods: Sequence[str], columns: Sequence[tuple[str, str]]) -> None:
    lines.extend([f"## {title}", "", "| method | " + " | ".join(c for _, c in columns) + " |",
                  "|---|" + "---|" * len(columns)])
    lines.extend(f"| {m} | " + " | ".join(_cell(table[m][k]) for k, _ in columns) + " |"
                 for m in methods if m in table)
    lines.append("")

  lines += ["## Summary", "", *summary_markdown(table, claims), ""]
  if out.get("learning_curve"):
    lines += [f"## Learning curve of the positive control (`{POSITIVE_CONTROL}` − `base` on IQ)", "",
              "| step | " + " | ".join(str(p["step"]) for p in out["learning_curve"]) + " | end |",
              "|---|" + "---|" * (len(out["learning_curve"]) + 1),
              "| IQ gain | " + " | ".join(_diff(p) for p in out["learning_curve"]) + " | " +
              (_diff(out["positive_control"]) if out["positive_control"] else "–") + " |", ""]
  main = [m for m in table if m not in ABLATIONS[1:]]
  table_of("Table 1: IQ (content)", main, TABLE_IQ + (("tradeoff", "trade-off"),))
  table_of("Table 2: EQ (speech) per dimension", main, TABLE_EQ)
  table_of("Table 3: ablations", ABLATIONS, (("iq", "IQ"), ("eq", "EQ"), ("tradeoff", "trade-off")))
  lines += ["## The paper's claims", "", "| claim | comparison (a − b) | difference [95% CI] | verdict |",
            "|---|---|---|---|"]
  for c in claims:
    for i, cmp in enumerate(c["comparisons"]):
      lines.append(f"| {c['claim'] if i == 0 else ''} | {c['a']} − {cmp['b']} ({c['metric']}) | {_diff(cmp)} | "
                   f"{cmp['verdict'] if len(c['comparisons']) > 1 else ''} |")
    lines.append(f"| | **verdict** | | **{c['verdict']}** |")
  lines += ["", "## Training statistics (rollout methods; means over steps and seeds)", "",
            *training_rows(out["curves"]), "",
            "## Where the time went (minutes, summed over seeds; `study.time_breakdown`)", "",
            *breakdown_rows(out.get("time_breakdown", {})), "", "![IQ vs EQ](iq_eq.png)", "", "![lambda and gates](gates.png)", "",
            "![EQ over training](eq_curve.png)", ""]
  return "\n".join(lines)


def shared_note(field: str, methods: Sequence[str] | None) -> str:
  if not methods:
    return ""
  return (f"{', '.join(f'`{m}`' for m in methods)} never read `{field}` (no rollouts, or another reward): each ran "
          "once per seed, in the first value's directory, and the other values link to that run.")


def sweep_markdown(sweep: dict[str, Any]) -> str:
  """DIR/study.md of a sweep: the positive control per value, claim x value, then each value's verdicts."""
  field, studies = sweep["field"], sweep["studies"]
  values = list(studies)
  lines = [f"# {sweep['title']}", "", f"| {field} | positive control: `{POSITIVE_CONTROL}` − `base` on IQ | power |",
           "|---|---|---|"]
  for v, st in studies.items():
    p = st["positive_control"]
    lines.append(f"| {v} | {_diff(p) if p else 'not run'} | "
                 f"{'unchecked' if p is None else 'powered' if p['powered'] else '**underpowered**'} |")
  lines += ["", " ".join(filter(None, [
      f"Seeds: {sweep['seeds']}. Each value is a study of its own in `{field}=<value>/` (its study.md has every "
      "table); values in % as mean [95% CI], paired hierarchical bootstrap (docs/testbed.md). A value whose "
      "positive control fails has every verdict \"underpowered\".", shared_note(field, sweep.get("shared_methods")),
      times_line(sweep["times"])])), "",
      f"## Claims × {field}", "", "| claim | " + " | ".join(values) + " |", "|---|" + "---|" * len(values)]
  claims = list(dict.fromkeys((c["claim"], c["metric"]) for st in studies.values() for c in st["claims"]))
  for claim, metric in claims:
    cells = []
    for st in studies.values():
      c = next((c for c in st["claims"] if c["claim"] == claim), None)
      cells.append("–" if c is None else f"**{c['verdict']}**" +
                   (f" {_diff(c['comparisons'][0])}" if len(c["comparisons"]) == 1 else ""))
    lines.append(f"| {claim} ({metric}) | " + " | ".join(cells) + " |")
  lines += ["", "![each claim's effect against the swept value](sweep.png)", ""]
  for v, st in studies.items():
    lines += [f"## {field} = {v}", "", power_line(st["positive_control"]), "",
              f"Every table: [{field}={v}/study.md]({field}={v}/study.md).", "", *claims_markdown(st["claims"]), ""]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- figures

METRIC_NAMES = {"iq": "IQ", "eq": "EQ", "tradeoff": "trade-off"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")   # 7 markers x tab20's 20 colours: 140 distinct (colour, marker)


def method_style(method: str) -> dict[str, str]:
  """The colour and marker of `method` in every figure, fixed by its place in config_lib.METHODS (not by the
  methods a figure happens to show, so a panel without some curves cannot shift the others' colours)."""
  import matplotlib
  i = list(config_lib.METHODS).index(method)
  return {"color": matplotlib.colors.to_hex(matplotlib.colormaps["tab20"](i % 20)), "marker": MARKERS[i % len(MARKERS)]}


def _label(method: str, same_run: dict[str, str]) -> str:
  return " = ".join([method, *(a for a, m in same_run.items() if m == method)])


def _legend(fig: Any, methods: Sequence[str], same_run: dict[str, str], title: str = "",
            extra: Sequence[Any] = ()) -> None:
  """One legend for the whole figure, entries drawn from method_style (so they match every panel)."""
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], lw=1, **method_style(m), label=_label(m, same_run)) for m in methods]
  fig.legend(handles=handles + list(extra), loc="outside right center", fontsize=7,
             title=title or None, title_fontsize=7)


def iq_eq_figure(table: dict[str, dict[str, list[float]]], same_run: dict[str, str]) -> Any:
  from matplotlib.figure import Figure
  fig = Figure(figsize=(7, 5.5), layout="constrained")
  ax = fig.subplots()
  shown = [m for m in table if m not in same_run]
  for m in shown:
    iq, eq = 100 * np.asarray(table[m]["iq"]), 100 * np.asarray(table[m]["eq"])
    ax.errorbar(iq[0], eq[0], xerr=[[iq[0] - iq[1]], [iq[2] - iq[0]]], yerr=[[eq[0] - eq[1]], [eq[2] - eq[0]]],
                capsize=3, ms=6, **method_style(m), label=_label(m, same_run))
  ax.set_xlabel("IQ (%)")
  ax.set_ylabel("EQ (%)")
  ax.set_title("IQ vs EQ per method (mean, 95% CI)")
  _legend(fig, shown, same_run)
  return fig


CURVE_PANELS = {"gates.png": ("train", (("lambda", "λ (RL weight)"), ("gate_direction", "direction gate"),
                                         ("gate_info", "information gate"))),
                "eq_curve.png": ("eval", (("eq", "EQ (%)"), ("iq", "IQ (%)")))}


def curves_figure(curves: dict[str, dict[str, Any]], name: str, same_run: dict[str, str]) -> Any:
  """The panels of CURVE_PANELS[name] over training steps (means over seeds); eval values in %."""
  from matplotlib.figure import Figure
  group, keys = CURVE_PANELS[name]
  fig = Figure(figsize=(4.5 * len(keys), 4), layout="constrained")
  shown = []
  for ax, (key, ylabel) in zip(fig.subplots(1, len(keys)), keys):
    for m, c in curves.items():
      if m in same_run or key not in c.get(group, {}):
        continue
      steps, values = c[group][key]
      scale = 100 if group == "eval" else 1
      ax.plot(steps, scale * np.asarray(values), lw=1, ms=4, markevery=max(1, len(steps) // 8), **method_style(m),
              label=_label(m, same_run))
      shown.append(m)
    ax.set_title(f"{ylabel} (mean over seeds)", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
  _legend(fig, list(dict.fromkeys(shown)), same_run)
  return fig


def sweep_figure(sweep: dict[str, Any]) -> Any:
  """Per claim, each comparison's a − b [CI] against the swept value (values evenly spaced; a value whose positive
  control failed is shaded)."""
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch
  field, studies = sweep["field"], sweep["studies"]
  values = list(studies)
  claims = list(dict.fromkeys(c["claim"] for st in studies.values() for c in st["claims"]))
  cols = min(3, max(1, len(claims)))
  rows = max(1, math.ceil(len(claims) / cols))
  fig = Figure(figsize=(4.8 * cols, 3.6 * rows), layout="constrained")
  axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
  shown = []
  for ax, claim in zip(axes, claims):
    found = [(x, c) for x, st in enumerate(studies.values()) for c in st["claims"] if c["claim"] == claim]
    bs = list(dict.fromkeys(d["b"] for _, c in found for d in c["comparisons"]))
    for j, b in enumerate(bs):   # the comparisons side by side around each value
      pts = [(x + 0.6 * (j - (len(bs) - 1) / 2) / len(bs), d) for x, c in found for d in c["comparisons"]
             if d["b"] == b]
      diff = np.array([[d["diff"], d["lo"], d["hi"]] for _, d in pts]) * 100
      ax.errorbar([x for x, _ in pts], diff[:, 0], yerr=[diff[:, 0] - diff[:, 1], diff[:, 2] - diff[:, 0]], capsize=2,
                  lw=1, ms=4, label=b, **method_style(b))
    shown += bs
    for x, st in enumerate(studies.values()):
      if st["positive_control"] is not None and not st["positive_control"]["powered"]:
        ax.axvspan(x - 0.45, x + 0.45, color="0.9", zorder=0)
    a, metric = found[0][1]["a"], METRIC_NAMES[found[0][1]["metric"]]
    ax.axhline(0, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(range(len(values)), values)
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel(field)
    ax.set_ylabel(f"{a} − {bs[0] if len(bs) == 1 else 'b'}, {metric} (%)")
    ax.set_title(textwrap.fill(claim, 45), fontsize=9)
  for ax in axes[len(claims):]:
    ax.set_axis_off()
  _legend(fig, list(dict.fromkeys(shown)), {}, title="b in a − b",
          extra=[Patch(color="0.9", label="underpowered value")])
  return fig


def save(fig: Any, path: str) -> None:
  fig.savefig(path, dpi=100)


def report(study: Study, title: str, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
  """Writes study.md, study.json and the figures of one study from its finished runs; returns the JSON dict."""
  rows = load_rows(study.workdir, methods, seeds, study.same_run)
  if not rows:
    raise FileNotFoundError(f"{study.workdir}: no finished run to report on")
  power = power_check(rows, seeds)
  same_run = {a: m for a, m in study.same_run.items() if a in rows}
  table = summarize(rows, seeds)
  curves = load_curves(study.workdir, [m for m in methods if m in rows], seeds, same_run)
  curve = learning_curve(study.workdir, seeds, rows["base"]) if power is not None else []
  out = {"title": title, "seeds": list(seeds), "times": time_totals([study.workdir]), "positive_control": power,
         "learning_curve": curve, "time_breakdown": time_breakdown(study.workdir, methods, seeds, same_run),
         "same_run": same_run, "table": table, "claims": evaluate_claims(rows, seeds, same_run, power),
         "curves": curves, "unfinished": [m for m in methods if m not in rows]}
  files.write_json(os.path.join(study.workdir, "study.json"), out, indent=1)
  files.write_text(os.path.join(study.workdir, "study.md"), markdown(out))
  save(iq_eq_figure(table, same_run), os.path.join(study.workdir, "iq_eq.png"))
  for name in CURVE_PANELS:
    save(curves_figure(curves, name, same_run), os.path.join(study.workdir, name))
  return out


def sweep_report(workdir: str, what: str, field: str, studies: dict[str, Study], methods: Sequence[str],
                 seeds: Sequence[int]) -> dict[str, Any]:
  """Each value's report in its own directory, then DIR/study.md, study.json and sweep.png side by side; `what`
  is the config spec and overrides of every run."""
  outs = {v: report(st, f"Study: {what} --config.{field}={v}", methods, seeds) for v, st in studies.items()}
  sweep = {"title": f"Sweep of {field}: {what}", "field": field, "values": list(studies), "seeds": list(seeds),
           "times": time_totals([st.workdir for st in studies.values()]),
           "shared_methods": list(list(studies.values())[-1].shared_methods),
           "studies": {v: {k: o[k] for k in ("positive_control", "same_run", "claims", "table")}
                       for v, o in outs.items()}}
  files.write_json(os.path.join(workdir, "study.json"), sweep, indent=1)
  files.write_text(os.path.join(workdir, "study.md"), sweep_markdown(sweep))
  save(sweep_figure(sweep), os.path.join(workdir, "sweep.png"))
  return sweep


def run_study(config_spec: str, config: mlc.ConfigDict, workdir: str, methods: Sequence[str], seeds: Sequence[int],
              overrides: Sequence[str] = (), sweep: tuple[str, list[Any]] | None = None, eval_every: int = 50,
              jobs: int = 1, report_only: bool = False,
              runner: Callable[[list[str], str, dict[str, str]], int] = run_train) -> None:
  """Runs what is not finished yet (unless `report_only`) and reports: one study in `workdir`, or with `sweep`
  (field, values) one study per value in workdir/FIELD=V and the sweep's report in `workdir`. `config` is the
  spec's config with `overrides` applied (the --config.x=y arguments passed on to every run)."""
  methods = sorted([m for m in methods if m != "base"], key=lambda m: m != POSITIVE_CONTROL)   # it runs first
  fixed = {f: get_field(config, f) for f in override_fields(overrides)}   # typed as the runs parse them
  what = " ".join([config_spec, *overrides])
  if sweep is None:
    studies = {"": Study(workdir, tuple(overrides), duplicate_runs(config_spec, methods, fixed))}
  else:
    field, values = sweep
    studies = {}
    reward_only = field.startswith(REWARD_ONLY_FIELDS)
    for v in values:
      label = f"{field}={format_value(v)}"
      first = next(iter(studies.values()), None)
      same_run = duplicate_runs(config_spec, methods, {**fixed, field: v})
      shared = (m for m in methods if m not in same_run and not reads_reward_field(config_spec, m, fixed, field))
      studies[format_value(v)] = Study(
          os.path.join(workdir, label), (*overrides, f"--config.{label}"), same_run, label,
          shared_base=first.workdir if first and reward_only else "",
          shared_methods=tuple(shared) if first and reward_only else ())
  os.makedirs(workdir, exist_ok=True)
  if not report_only:
    run_all(config_spec, list(studies.values()), methods, seeds, eval_every, jobs, os.path.join(workdir, "jax_cache"),
            runner)
  if sweep is None:
    report(studies[""], f"Study: {what}", methods, seeds)
  else:
    sweep_report(workdir, what, sweep[0], studies, methods, seeds)
  print(f"wrote {os.path.join(workdir, 'study.md')}", flush=True)


# ----------------------------------------------------------------------------- command line

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
                      "directory (small enough to commit; a study continues from it: study_export.py).")


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
  run_study(spec, f.config, f.workdir, methods, parse_seeds(f.seeds), overrides, sweep, f.eval_every, f.jobs,
            f.report_only)
  if f.export:
    runs = study_export.export_results(f.workdir, f.export, REPORT_METRICS, (POSITIVE_CONTROL,))
    print(f"exported {len(runs)} finished runs to {f.export}", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
