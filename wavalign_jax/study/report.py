"""A study's report from its finished runs: the tables (mean [95% CI] per method), the claims' verdicts, the
positive control and its learning curve, training statistics and where the time went; study.md and study.json."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from wavalign_jax import files, provenance
from wavalign_jax.evaluation import run_summary
from wavalign_jax.metric_writer import METRICS_FILE
from wavalign_jax.study import figures
from wavalign_jax.study.claims import (POSITIVE_CONTROL, UNDERPOWERED, evaluate_claims, interval_note, item_values,
                                       paired_difference, power_check, seed_interval)
from wavalign_jax.study.runner import Study, read_times, run_dir, time_totals

TABLE_IQ = (("iq", "IQ (all)"), ("id/iq", "IQ in-dist."), ("ood/iq", "IQ out-of-dist."),
            ("arithmetic/iq", "IQ arithmetic"), ("lookup/iq", "IQ lookup"))
TABLE_EQ = (("eq", "EQ"), ("intelligibility", "intelligibility"), ("style", "style"), ("ood/eq", "EQ out-of-dist."))
ABLATIONS = ("hybrid", "ablate_all_fixed_0.5", "ablate_text_fixed_0.5", "ablate_text_fixed_0.3",
             "ablate_all_dynamic", "ablate_text_dynamic_no_ema", "ablate_text_dynamic_batch_std")


def learning_curve(workdir: str, seeds: Sequence[int], base_rows: dict[int, list[dict]],
                   method: str = POSITIVE_CONTROL) -> list[dict[str, Any]]:
  """`method`'s IQ gain over `base` [CI] at every step that every seed evaluated (WORKDIR/eval/step_<n>.jsonl,
  then after.jsonl at the end), paired by seed and item like the claims: the evidence for a study's budget."""
  evals: dict[int, dict[int, list[dict]]] = {}
  for s in seeds:
    folder = os.path.join(run_dir(workdir, s, method), "eval")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for name in names:   # step_<n>.jsonl, or step_<n>.jsonl.gz in an export
      if name.startswith("step_") and name.endswith((".jsonl", ".jsonl.gz")):
        step = int(name[5:].split(".")[0])
        evals.setdefault(step, {})[s] = files.read_jsonl(os.path.join(folder, name))
  out = []
  for step in sorted(evals):
    if len(evals[step]) == len(seeds):
      d, lo, hi = paired_difference({"a": evals[step], "b": base_rows}, seeds, "a", "b", "iq")
      out.append({"step": step, "diff": d, "lo": lo, "hi": hi})
  return out


def load_rows(workdir: str, methods: Sequence[str], seeds: Sequence[int],
              same_run: dict[str, str] | None = None) -> dict[str, dict[int, list[dict]]]:
  """{method: {seed: per-item eval rows of its final evaluation}} for every finished run (an alias of
  `same_run` reads its method's run)."""
  out: dict[str, dict[int, list[dict]]] = {}
  for m in ["base", *methods]:
    per_seed = {}
    for s in seeds:
      run = run_dir(workdir, s, (same_run or {}).get(m, m))
      path = files.existing_jsonl(run_summary.rows_path(run, "after"))
      if path is not None and run_summary.finished(run):   # (a run continued past its end keeps its old rows)
        per_seed[s] = files.read_jsonl(path)
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
      path = files.existing_jsonl(os.path.join(run_dir(workdir, s, (same_run or {}).get(m, m)), METRICS_FILE))
      if path is None:
        continue
      base = run_dir(workdir, s, "base")
      if run_summary.finished(base):   # the curve starts at the base model
        for k, v in run_summary.read_after(base).items():
          if k in keys["eval"]:
            series["eval"][k].setdefault(0, []).append(v)
      points = {}   # one value per (group, key, step) of this seed: a row logged twice (a kill between the final
      for row in files.read_jsonl(path):   # evaluation's row and eval_summary.json, then a rerun) counts once
        group = "train" if row["split"] == "train" else "eval" if row["split"] in ("eval", "eval_after") else None
        for k in keys.get(group, ()):
          if row.get(k) is not None:
            points[group, k, row["step"]] = row[k]
      for (group, k, step), value in points.items():
        series[group][k].setdefault(step, []).append(value)
    out[m] = {g: {k: [sorted(v), [float(np.mean(v[t])) for t in sorted(v)]] for k, v in ks.items() if v}
              for g, ks in series.items()}
  return out


def summarize(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int]) -> dict[str, dict[str, list[float]]]:
  """{method: {metric: [mean, lo, hi]}} for every table metric (scores in [0, 1]: an interval is clipped to it)."""
  metrics = [k for k, _ in TABLE_IQ + TABLE_EQ] + ["tradeoff"]

  def stat(values: list[np.ndarray]) -> list[float]:   # NaN where a seed has no item in the stratum
    if not all(np.isfinite(v).any() for v in values):
      return [np.nan] * 3
    mean, lo, hi = seed_interval(values)
    return [mean, max(lo, 0.0), min(hi, 1.0)]

  return {m: {k: stat([item_values(per_seed[s], k) for s in seeds]) for k in metrics} for m, per_seed in rows.items()}


def versus_base(rows: dict[str, dict[int, list[dict]]], seeds: Sequence[int]) -> dict[str, dict[str, list[float]]]:
  """{method: {"iq" | "eq": [method − base, lo, hi]}}, paired by seed and item: what iq_eq.png plots, since a
  method's own interval also holds the base model's spread between seeds (Kimi's base IQ is 24–45%)."""
  if "base" not in rows:   # (an exported study retraining its base model)
    return {}
  return {m: {k: list(paired_difference(rows, seeds, m, "base", k)) for k in ("iq", "eq")} for m in rows if m != "base"}


def _cell(v: Sequence[float]) -> str:
  return f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]" if v[0] is not None and np.isfinite(v[0]) else "–"


def _diff(d: dict[str, Any]) -> str:
  return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def power_line(power: dict[str, Any] | None, unfinished: Sequence[str] = ()) -> str:
  """The sentence study.md opens with: the positive control's IQ gain and what it means for the verdicts."""
  if power is None and "base" in unfinished:
    return ("**No comparison with the base model yet**: the `base` run has not finished on every seed (an exported "
            "study retrains it), so the positive control, the gains over it and its claims wait for it.")
  if power is None:
    return (f"**Verdicts unchecked by a positive control**: `{POSITIVE_CONTROL}` did not run, so an "
            "\"inconclusive\" or \"not reproduced\" verdict may only mean that RL learns nothing at this budget.")
  gain = f"`{POSITIVE_CONTROL}` − `base` on IQ: {_diff(power)}, one-sided 95% lower bound {100 * power['lower']:+.1f}"
  if len(power.get("per_seed", [])) > 1:
    gain += "; per seed " + ", ".join(f"{p['seed']}: {_diff(p)}" for p in power["per_seed"])
  if power["powered"]:
    return f"**Positive control** ({gain}): its lower bound lies above 0, so RL demonstrably learns at this budget."
  return (f"**Underpowered**: the positive control ({gain}) has a lower bound that does not lie above 0, so RL does "
          "not demonstrably learn at this budget and every verdict below is \"underpowered\" (differences and CIs "
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
      path = files.existing_jsonl(os.path.join(run_dir(workdir, s, m), METRICS_FILE))
      if f"seed_{s}/{m}" not in times or path is None:
        continue
      parts["wall"] += times[f"seed_{s}/{m}"]["seconds"]
      for row in files.read_jsonl(path):
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


def run_commits(workdirs: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> dict[str, int]:
  """{code: runs} over the runs of the studies in `workdirs` that recorded their launches (provenance.py): each
  run once (a sweep's shared runs are links), a run resumed at another commit under each."""
  out: dict[str, int] = {}
  runs = {os.path.realpath(run_dir(w, s, m)) for w in workdirs for m in ["base", *methods] for s in seeds}
  for path in sorted(runs):
    for code in provenance.commits(provenance.read(path)):
      out[code] = out.get(code, 0) + 1
  return out


def code_line(commits: dict[str, int]) -> str:
  """The sentence naming the code a study's runs were made at ("" where no run recorded it)."""
  if not commits:
    return ""
  named = ", ".join(f"{code[:10]}{code[40:]} ({n} run{'s' * (n != 1)})" for code, n in commits.items())
  if len(commits) == 1:
    return f"Code: every run that recorded its launches was made at commit {named}."
  return f"Code: the runs were made at {len(commits)} versions of the code, {named}: compare across them with care."


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


FAMILY_WISE_NOTE = ("*Family-wise*: Holm's step-down over the study's claims at 5% (`claims.claim_p_value`): a "
                     "decided verdict marked \"not family-wise\" is decided at 95% on its own, but not once the "
                     "chance that any of the claims is decided wrongly is held to 5%.")


def _p(p: float) -> str:
  return "p < 0.001" if p < 0.001 else f"p {p:.3f}"


def verdict_cell(c: dict[str, Any]) -> str:
  """A claim's verdict, with its p and whether it holds family-wise when it is decided."""
  if c["verdict"] not in ("reproduced", "not reproduced") or "family_wise" not in c:
    return f"**{c['verdict']}**"
  return f"**{c['verdict']}** ({_p(c['p'])}{'' if c['family_wise'] else '; not family-wise'})"


def claims_markdown(claims: list[dict[str, Any]]) -> list[str]:
  """One line per claim: its verdict and the (at most 3) comparisons that decide it."""
  lines = ["| claim of the paper | verdict | a − b [95% CI] |", "|---|---|---|"]
  order = {"not reproduced": 0, UNDERPOWERED: 1, "inconclusive": 1, "reproduced": 2}
  for c in claims:
    shown = sorted(c["comparisons"], key=lambda d: order[d["verdict"]])[:3]   # the comparisons that decide it first
    diffs = "; ".join(f"{c['a']} − {d['b']}: {_diff(d)}" for d in shown)
    more = f"; … ({len(c['comparisons'])} comparisons in study.md)" if len(c["comparisons"]) > 3 else ""
    lines.append(f"| {c['claim']} ({c['metric']}) | {verdict_cell(c)} | {diffs}{more} |")
  return lines


def summary_markdown(table: dict[str, dict[str, list[float]]], claims: list[dict[str, Any]]) -> list[str]:
  """The compact version (every method in one table, one line per claim) that the README quotes."""
  lines = ["| method | " + " | ".join(c for _, c in SUMMARY_COLUMNS) + " |", "|---|" + "---|" * len(SUMMARY_COLUMNS)]
  lines += [f"| {m} | " + " | ".join(_cell(v[k]) for k, _ in SUMMARY_COLUMNS) + " |" for m, v in table.items()]
  return lines + ["", *claims_markdown(claims)]


def markdown(out: dict[str, Any]) -> str:
  """study.md of one study from its report dict (`report`)."""
  table, claims = out["table"], out["claims"]
  intro = f"Seeds: {out['seeds']}. {interval_note(len(out['seeds']))} Trade-off = mean of IQ and EQ."
  lines = [f"# {out['title']}", "", power_line(out["positive_control"], out.get("unfinished", ())), ""]
  if out.get("unfinished"):
    lines += [f"**Incomplete**: {', '.join(f'`{m}`' for m in out['unfinished'])} "
              f"{'has' if len(out['unfinished']) == 1 else 'have'} not finished on every seed yet and "
              f"{'is' if len(out['unfinished']) == 1 else 'are'} left out (rerun the study's command to continue).", ""]
  lines += [" ".join(filter(None, [intro, same_run_note(out["same_run"]), times_line(out["times"]),
                                   code_line(out.get("commits", {}))])), ""]

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
  lines += ["## The paper's claims", "",
            "A claim naming k rivals is refuted only by a comparison whose (1 − 0.05/k) interval (the refuting CI) "
            "lies on the other side of 0. *Seeds to decide*: the fewest seeds whose interval would exclude 0 if the "
            "measured mean and between-seed spread held (a rough plan for a next study; `claims.seeds_to_decide`), "
            "at 95% / family-wise (at the Bonferroni level over the study's claims: at most what Holm needs). "
            + FAMILY_WISE_NOTE,
            "", "| claim | comparison (a − b) | difference [95% CI] | refuting CI | seeds to decide "
            "(95% / family-wise) | verdict |",
            "|---|---|---|---|---|---|"]
  for c in claims:
    k = len(c["comparisons"])
    for i, cmp in enumerate(c["comparisons"]):
      refute = f"[{100 * cmp['refute_lo']:+.1f}, {100 * cmp['refute_hi']:+.1f}]" if k > 1 else "(the 95% CI)"
      need = " / ".join("–" if n is None else str(n) for n in
                        (cmp.get("seeds_to_decide"), cmp.get("seeds_to_decide_family_wise")))
      lines.append(f"| {c['claim'] if i == 0 else ''} | {c['a']} − {cmp['b']} ({c['metric']}) | {_diff(cmp)} | "
                   f"{refute} | {need} | {cmp['verdict'] if k > 1 else ''} |")
    lines.append(f"| | **verdict** | | | | {verdict_cell(c)} |")
  lines += ["", "## Training statistics (rollout methods; means over steps and seeds)", "",
            *training_rows(out["curves"]), "",
            "## Where the time went (minutes, summed over seeds; `study/report.py` time_breakdown)", "",
            *breakdown_rows(out.get("time_breakdown", {})), "", "![IQ and EQ gain over the base model](iq_eq.png)", "",
            "![lambda and gates](gates.png)", "",
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
      f"table). {interval_note(len(sweep['seeds']))} A value whose positive control fails has every verdict "
      "\"underpowered\".", FAMILY_WISE_NOTE, shared_note(field, sweep.get("shared_methods")),
      times_line(sweep["times"]), code_line(sweep.get("commits", {}))])), "",
      f"## Claims × {field}", "", "| claim | " + " | ".join(values) + " |", "|---|" + "---|" * len(values)]
  claims = list(dict.fromkeys((c["claim"], c["metric"]) for st in studies.values() for c in st["claims"]))
  for claim, metric in claims:
    cells = []
    for st in studies.values():
      c = next((c for c in st["claims"] if c["claim"] == claim), None)
      cells.append("–" if c is None else verdict_cell(c) +
                   (f" {_diff(c['comparisons'][0])}" if len(c["comparisons"]) == 1 else ""))
    lines.append(f"| {claim} ({metric}) | " + " | ".join(cells) + " |")
  lines += ["", "![each claim's effect against the swept value](sweep.png)", ""]
  for v, st in studies.items():
    lines += [f"## {field} = {v}", "", power_line(st["positive_control"], st.get("unfinished", ())), "",
              f"Every table: [{field}={v}/study.md]({field}={v}/study.md).", "", *claims_markdown(st["claims"]), ""]
  return "\n".join(lines)


def report(study: Study, title: str, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
  """Writes study.md, study.json and the figures of one study from its finished runs; returns the JSON dict."""
  rows = load_rows(study.workdir, methods, seeds, study.same_run)
  if not rows:
    raise FileNotFoundError(f"{study.workdir}: no finished run to report on")
  power = power_check(rows, seeds)
  same_run = {a: m for a, m in study.same_run.items() if a in rows}
  table, vs_base = summarize(rows, seeds), versus_base(rows, seeds)
  curves = load_curves(study.workdir, [m for m in methods if m in rows], seeds, same_run)
  curve = learning_curve(study.workdir, seeds, rows["base"]) if power is not None else []
  out = {"title": title, "seeds": list(seeds), "times": time_totals([study.workdir]),
         "commits": run_commits([study.workdir], methods, seeds), "positive_control": power,
         "learning_curve": curve, "time_breakdown": time_breakdown(study.workdir, methods, seeds, same_run),
         "same_run": same_run, "table": table, "versus_base": vs_base,
         "claims": evaluate_claims(rows, seeds, same_run, power),
         "curves": curves, "unfinished": [m for m in ["base", *methods] if m not in rows]}
  files.write_json(os.path.join(study.workdir, "study.json"), out, indent=1)
  files.write_text(os.path.join(study.workdir, "study.md"), markdown(out))
  figures.save(figures.iq_eq_figure(vs_base, same_run), os.path.join(study.workdir, "iq_eq.png"))
  for name in figures.CURVE_PANELS:
    figures.save(figures.curves_figure(curves, name, same_run), os.path.join(study.workdir, name))
  return out


def shown_order(values: list[str]) -> list[str]:
  """Sweep values in the order the tables and the figure show them: ascending where every value is a number (the
  first value of the command owns the shared runs, so a sweep that continues a study lists that study's value
  first, e.g. 0.5,0,0.25), else as the command gave them."""
  try:
    return sorted(values, key=float)
  except ValueError:
    return values


def sweep_report(workdir: str, what: str, field: str, studies: dict[str, Study], methods: Sequence[str],
                 seeds: Sequence[int]) -> dict[str, Any]:
  """Each value's report in its own directory, then DIR/study.md, study.json and sweep.png side by side; `what`
  is the config spec and overrides of every run."""
  outs = {v: report(st, f"Study: {what} --config.{field}={v}", methods, seeds) for v, st in studies.items()}
  outs = {v: outs[v] for v in shown_order(list(outs))}
  sweep = {"title": f"Sweep of {field}: {what}", "field": field, "values": list(outs), "seeds": list(seeds),
           "times": time_totals([st.workdir for st in studies.values()]),
           "commits": run_commits([st.workdir for st in studies.values()], methods, seeds),
           "shared_methods": list(list(studies.values())[-1].shared_methods),
           "studies": {v: {k: o[k] for k in ("positive_control", "same_run", "claims", "table")}
                       for v, o in outs.items()}}
  files.write_json(os.path.join(workdir, "study.json"), sweep, indent=1)
  files.write_text(os.path.join(workdir, "study.md"), sweep_markdown(sweep))
  figures.save(figures.sweep_figure(sweep), os.path.join(workdir, "sweep.png"))
  return sweep
