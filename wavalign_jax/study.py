r"""The testbed study: every method of the paper, several seeds, confidence intervals, a verdict per claim.

  python -m wavalign_jax.study --config=experiments/vita.py:tiny --seeds=3 --workdir=/tmp/study_vita
  python -m wavalign_jax.study --config=experiments/kimi.py:tiny --seeds=3 --workdir=/tmp/study_kimi

Per seed s (testbed data, base model, initialisation and rollouts all seeded by s) the study trains the base
model once (the `base` run, which also evaluates it) and runs every method of config_lib.METHODS from it, each
as its own `python -m wavalign_jax.train` process in DIR/seed_<s>/<method>. It is resumable: a finished run
(its eval_summary.json exists) is not redone and an interrupted one resumes from its checkpoint, so rerunning
the command continues a killed study. `--methods=` / `--seeds=` pick a subset; `--config.x=y` overrides are
passed to every run; `--jobs=N` runs N processes at once.

Outputs in DIR: study.md (the paper's three tables as mean [95% CI] per method, and a verdict per claim),
study.json (every number), iq_eq.png, gates.png, eq_curve.png. Confidence intervals are a hierarchical
bootstrap: seeds resampled, then eval items within each seed; method differences are paired (same seed, same
item). docs/testbed.md describes the testbed, the claims and how verdicts are decided.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from wavalign_jax import config_check, config_lib

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
# Per-item dimensions of testbed/metrics.py; the trade-off is the mean of IQ and EQ (the testbed benchmark's
# aggregate, evaluation/testbed.py).
DIMENSIONS = ("iq", "eq", "intelligibility", "style")
TABLE_IQ = (("iq", "IQ (all)"), ("id/iq", "IQ in-dist."), ("ood/iq", "IQ out-of-dist."),
            ("arithmetic/iq", "IQ arithmetic"), ("lookup/iq", "IQ lookup"))
TABLE_EQ = (("eq", "EQ"), ("intelligibility", "intelligibility"), ("style", "style"), ("ood/eq", "EQ out-of-dist."))
ABLATIONS = ("hybrid", "ablate_all_fixed_0.5", "ablate_text_fixed_0.5", "ablate_text_fixed_0.3",
             "ablate_all_dynamic", "ablate_text_dynamic_no_ema")


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
  boots = np.empty(num_bootstrap)
  for b in range(num_bootstrap):
    seeds = rng.integers(0, len(per_seed), len(per_seed))
    boots[b] = np.mean([per_seed[s][rng.integers(0, len(per_seed[s]), len(per_seed[s]))].mean() for s in seeds])
  lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
  return estimate, float(lo), float(hi)


def verdict(lo: float, hi: float, relation: str) -> str:
  """reproduced when the CI of a - b lies on the claimed side of 0, not reproduced when it lies on the other
  side, inconclusive when it holds 0."""
  above, below = lo > 0, hi < 0
  if relation == "less":
    above, below = below, above
  return "reproduced" if above else "not reproduced" if below else "inconclusive"


def evaluate_claims(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int]) -> list[dict[str, Any]]:
  """One entry per claim of CLAIMS whose methods all ran: each comparison's paired difference and CI, and the
  claim's verdict (every comparison reproduced -> reproduced; any not reproduced -> not reproduced)."""
  out = []
  for claim, metric, a, bs, relation in CLAIMS:
    bs = tuple(m for m in rows if m != a and m != "base") if bs == "*" else bs
    if a not in rows or not bs or any(b not in rows for b in bs):
      continue
    comparisons = []
    for b in bs:
      diffs = [item_values(rows[a][s], metric) - item_values(rows[b][s], metric) for s in seeds]
      d, lo, hi = hierarchical_bootstrap(diffs)
      comparisons.append({"b": b, "diff": d, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, relation)})
    verdicts = {c["verdict"] for c in comparisons}
    overall = ("not reproduced" if "not reproduced" in verdicts else
               "reproduced" if verdicts == {"reproduced"} else "inconclusive")
    out.append({"claim": claim, "metric": metric, "a": a, "relation": relation, "comparisons": comparisons,
                "verdict": overall})
  return out


# ----------------------------------------------------------------------------- running


def run_dir(workdir: str, seed: int, method: str) -> str:
  return os.path.join(workdir, f"seed_{seed}", method)


def finished(path: str) -> bool:
  return os.path.exists(os.path.join(path, "eval_summary.json"))


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


def run_all(config_spec: str, methods: Sequence[str], seeds: Sequence[int], workdir: str, overrides: Sequence[str],
            eval_every: int, jobs: int) -> None:
  """Runs every (seed, method) not finished yet; base runs first (the others start from their base model)."""
  # every base run first: a method run blocks its worker until its seed's base model exists
  todo = [(s, m) for m in ["base", *methods] for s in seeds if not finished(run_dir(workdir, s, m))]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  start, lock, done = time.time(), threading.Lock(), []
  times_path = os.path.join(workdir, "run_times.json")   # seconds per finished run (the report's wall time)
  base_ready = {s: threading.Event() for s in seeds}
  for s in seeds:
    if finished(run_dir(workdir, s, "base")):
      base_ready[s].set()

  def one(seed: int, method: str) -> None:
    if method != "base":
      base_ready[seed].wait()
      if not finished(run_dir(workdir, seed, "base")):
        raise RuntimeError(f"seed {seed}: the base run failed; see {run_dir(workdir, seed, 'base')}/run.log")
    path = run_dir(workdir, seed, method)
    os.makedirs(path, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(path, "run.log"), "a") as log:
      rc = subprocess.run(train_command(config_spec, method, seed, workdir, overrides, eval_every), stdout=log,
                          stderr=subprocess.STDOUT, env=env).returncode
    if method == "base":
      base_ready[seed].set()
    if rc != 0 or not finished(path):
      raise RuntimeError(f"seed {seed} {method}: train exited with {rc}; see {path}/run.log")
    with lock:
      done.append(time.time() - t0)
      times = json.load(open(times_path)) if os.path.exists(times_path) else {}
      times[f"seed_{seed}/{method}"] = done[-1]
      with open(times_path, "w") as f:
        json.dump(times, f, indent=1)
      after = json.load(open(os.path.join(path, "eval_summary.json")))["after"]
      elapsed = time.time() - start
      eta = elapsed / len(done) * (len(todo) - len(done))
      print(f"[study {len(done)}/{len(todo)}] seed {seed} {method}: {done[-1]:.0f}s, IQ {after['iq']:.3f} "
            f"EQ {after['eq']:.3f} | elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min", flush=True)

  print(f"study: {len(todo)} runs to do in {workdir} ({jobs} at a time)", flush=True)
  with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    futures = [pool.submit(one, s, m) for s, m in todo]
    errors = [f.exception() for f in futures if f.exception() is not None]
  if errors:
    raise RuntimeError("; ".join(str(e) for e in errors))


# ----------------------------------------------------------------------------- report


def load_rows(workdir: str, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, list[dict]]]:
  """{method: {seed: per-item eval rows of its final evaluation}} for every finished run."""
  out: dict[str, dict[int, list[dict]]] = {}
  for m in ["base", *methods]:
    per_seed = {}
    for s in seeds:
      path = os.path.join(run_dir(workdir, s, m), "eval", "after.jsonl")
      if os.path.exists(path):
        per_seed[s] = [json.loads(line) for line in open(path) if line.strip()]
    if len(per_seed) == len(seeds):
      out[m] = per_seed
  return out


def load_curves(workdir: str, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
  """{method: {"train": {key: [steps, mean over seeds]}, "eval": {key: ...}}} from the runs' metrics.jsonl."""
  keys = {"train": ("lambda", "gate_direction", "gate_info", "diversity/informative", "pass/at_1", "pass/at_G",
                    "judge/pearson_acoustic", "judge/pearson_semantic"), "eval": ("iq", "eq")}
  out = {}
  for m in methods:
    series: dict[str, dict[str, dict[int, list[float]]]] = {g: {k: {} for k in ks} for g, ks in keys.items()}
    for s in seeds:
      path = os.path.join(run_dir(workdir, s, m), "metrics.jsonl")
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
          if k in row:
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
  return f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]" if np.isfinite(v[0]) else "–"


def training_rows(curves: dict[str, dict[str, Any]], window: int = 20) -> list[str]:
  """Markdown rows of the runs' training statistics (means over seeds): mean lambda, pass@1 over the first and the
  last `window` steps, informative groups, and the judge's correlation with the true semantic / acoustic scores."""
  lines = ["| method | mean λ | pass@1 first → last | informative groups | judge ρ semantic | judge ρ acoustic |",
           "|---|---|---|---|---|---|"]
  fmt = lambda v: f"{v:.2f}" if np.isfinite(v) else "–"
  for m, c in curves.items():
    train = c.get("train", {})
    if "lambda" not in train:
      continue
    mean = lambda k, sl=slice(None): float(np.nanmean(train[k][1][sl])) if k in train else float("nan")
    lines.append(f"| {m} | {fmt(mean('lambda'))} | {fmt(mean('pass/at_1', slice(0, window)))} → "
                 f"{fmt(mean('pass/at_1', slice(-window, None)))} | {fmt(mean('diversity/informative'))} | "
                 f"{fmt(mean('judge/pearson_semantic'))} | {fmt(mean('judge/pearson_acoustic'))} |")
  return lines


SUMMARY_COLUMNS = (("iq", "IQ"), ("id/iq", "IQ in-dist."), ("ood/iq", "IQ OOD"), ("eq", "EQ"),
                   ("intelligibility", "intellig."), ("style", "style"), ("tradeoff", "trade-off"))


def summary_markdown(table: dict[str, dict[str, list[float]]], claims: list[dict[str, Any]]) -> list[str]:
  """The compact version (every method in one table, one line per claim) that the README quotes."""
  lines = ["| method | " + " | ".join(c for _, c in SUMMARY_COLUMNS) + " |", "|---|" + "---|" * len(SUMMARY_COLUMNS)]
  lines += [f"| {m} | " + " | ".join(_cell(v[k]) for k, _ in SUMMARY_COLUMNS) + " |" for m, v in table.items()]
  lines += ["", "| claim of the paper | verdict | a − b [95% CI] |", "|---|---|---|"]
  for c in claims:
    order = {"not reproduced": 0, "inconclusive": 1, "reproduced": 2}   # the comparisons that decide it first
    shown = sorted(c["comparisons"], key=lambda d: order[d["verdict"]])[:3]
    diffs = "; ".join(f"{c['a']} − {d['b']}: {100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
                      for d in shown)
    more = f"; … ({len(c['comparisons'])} comparisons in study.md)" if len(c["comparisons"]) > 3 else ""
    lines.append(f"| {c['claim']} ({c['metric']}) | **{c['verdict']}** | {diffs}{more} |")
  return lines


def markdown(title: str, table: dict[str, dict[str, list[float]]], claims: list[dict[str, Any]],
             seeds: Sequence[int], minutes: float | None, curves: dict[str, dict[str, Any]]) -> str:
  lines = [f"# {title}", "", f"Seeds: {list(seeds)}. Values in % as mean [95% CI]: hierarchical bootstrap over seeds "
           "and eval items (docs/testbed.md). Trade-off = mean of IQ and EQ." +
           (f" Summed run time: {minutes:.0f} min." if minutes else ""), ""]

  def table_of(title: str, methods: Sequence[str], columns: Sequence[tuple[str, str]]) -> None:
    lines.extend([f"## {title}", "", "| method | " + " | ".join(c for _, c in columns) + " |",
                  "|---|" + "---|" * len(columns)])
    lines.extend(f"| {m} | " + " | ".join(_cell(table[m][k]) for k, _ in columns) + " |"
                 for m in methods if m in table)
    lines.append("")

  lines += ["## Summary", "", *summary_markdown(table, claims), ""]
  main = [m for m in table if m not in ABLATIONS[1:]]
  table_of("Table 1: IQ (content)", main, TABLE_IQ + (("tradeoff", "trade-off"),))
  table_of("Table 2: EQ (speech) per dimension", main, TABLE_EQ)
  table_of("Table 3: ablations", ABLATIONS, (("iq", "IQ"), ("eq", "EQ"), ("tradeoff", "trade-off")))
  lines += ["## The paper's claims", "", "| claim | comparison (a − b) | difference [95% CI] | verdict |",
            "|---|---|---|---|"]
  for c in claims:
    for i, cmp in enumerate(c["comparisons"]):
      lines.append(f"| {c['claim'] if i == 0 else ''} | {c['a']} − {cmp['b']} ({c['metric']}) | "
                   f"{100 * cmp['diff']:+.1f} [{100 * cmp['lo']:+.1f}, {100 * cmp['hi']:+.1f}] | "
                   f"{cmp['verdict'] if len(c['comparisons']) > 1 else ''} |")
    lines.append(f"| | **verdict** | | **{c['verdict']}** |")
  lines += ["", "## Training statistics (rollout methods; means over steps and seeds)", "", *training_rows(curves),
            "", "![IQ vs EQ](iq_eq.png)", "", "![lambda and gates](gates.png)", "", "![EQ over training](eq_curve.png)",
            ""]
  return "\n".join(lines)


def plots(workdir: str, table: dict[str, dict[str, list[float]]], curves: dict[str, dict[str, Any]]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 6))
  for m, v in table.items():
    iq, eq = v["iq"], v["eq"]
    ax.errorbar(100 * iq[0], 100 * eq[0], xerr=[[100 * (iq[0] - iq[1])], [100 * (iq[2] - iq[0])]],
                yerr=[[100 * (eq[0] - eq[1])], [100 * (eq[2] - eq[0])]], fmt="o", capsize=3)
    ax.annotate(m, (100 * iq[0], 100 * eq[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax.set_xlabel("IQ (%)")
  ax.set_ylabel("EQ (%)")
  ax.set_title("IQ vs EQ per method (95% CI)")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "iq_eq.png"), dpi=100)
  plt.close(fig)

  for name, group, keys in (("gates.png", "train", ("lambda", "gate_direction", "gate_info")),
                            ("eq_curve.png", "eval", ("eq", "iq"))):
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
    for ax, key in zip(axes, keys):
      for m, c in curves.items():
        if key in c.get(group, {}):
          ax.plot(*c[group][key], label=m, lw=1)
      ax.set_title(f"{key} (mean over seeds)")
      ax.set_xlabel("step")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, name), dpi=100)
    plt.close(fig)


def report(workdir: str, title: str, methods: Sequence[str], seeds: Sequence[int],
           minutes: float | None = None) -> dict[str, Any]:
  """Writes study.md, study.json and the plots from the finished runs; returns the JSON dict."""
  rows = load_rows(workdir, methods, seeds)
  if not rows:
    raise FileNotFoundError(f"{workdir}: no finished run to report on")
  table = summarize(rows, seeds)
  claims = evaluate_claims(rows, seeds)
  curves = load_curves(workdir, [m for m in methods if m in rows], seeds)
  out = {"title": title, "seeds": list(seeds), "minutes": minutes, "table": table, "claims": claims, "curves": curves}
  with open(os.path.join(workdir, "study.json"), "w") as f:
    json.dump(out, f, indent=1)
  with open(os.path.join(workdir, "study.md"), "w") as f:
    f.write(markdown(title, table, claims, seeds, minutes, curves))
  plots(workdir, table, curves)
  return out


# ----------------------------------------------------------------------------- command line

def define_flags() -> None:
  """Defined when run as a program only (train.py defines --config too; tests import both modules)."""
  config_flags.DEFINE_config_file("config", None, "Testbed experiment, e.g. experiments/vita.py:tiny (without a "
                                  "method); --config.x=y overrides go to every run.")
  flags.DEFINE_string("workdir", None, "Study directory (resumable).")
  flags.DEFINE_string("seeds", "3", "Number of seeds (0..N-1), or a comma-separated list: 3,4,5 (one seed: 7,).")
  flags.DEFINE_string("methods", "", "Comma-separated methods (default: every method of METHODS).")
  flags.DEFINE_integer("jobs", 1, "Runs in parallel processes.")
  flags.DEFINE_integer("eval_every", 50, "Evaluate every N steps (the EQ-over-training plot).")
  flags.DEFINE_bool("report_only", False, "Only rewrite study.md / study.json / plots.")


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
  methods = [m for m in methods if m != "base"]
  seeds = parse_seeds(f.seeds)
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  try:   # the overrides go to every run: check them once, before any run starts
    for warning in config_check.check(f.config, f.workdir):
      print(f"warning: {warning}", file=sys.stderr, flush=True)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  os.makedirs(f.workdir, exist_ok=True)
  if not f.report_only:
    run_all(spec, methods, seeds, f.workdir, overrides, f.eval_every, f.jobs)
  times_path = os.path.join(f.workdir, "run_times.json")
  minutes = sum(json.load(open(times_path)).values()) / 60 if os.path.exists(times_path) else None
  title = f"Study: {spec}" + (f" {' '.join(overrides)}" if overrides else "")
  report(f.workdir, title, methods, seeds, minutes)
  print(f"wrote {os.path.join(f.workdir, 'study.md')}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.flags_parser)
