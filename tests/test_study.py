"""The study: statistics on hand-computed cases, claim verdicts, the positive control, sweeps and duplicate runs
with a fake train runner, one colour per method in every figure, and a quick end-to-end study (1 seed, 2 methods,
a few steps) that is resumed without redoing finished runs."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from matplotlib.colors import to_hex

from wavalign_jax import config_lib, files, intervals, provenance, study
from wavalign_jax.errors import ConfigError, RunError
from wavalign_jax.workdir_lock import WorkdirLocked
from wavalign_jax.study import claims, export, figures, report, runner, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


T975 = {1: 12.706205, 2: 4.302653}   # Student t quantiles (0.975) from printed tables, by degrees of freedom


def test_seed_interval_hand_computed():
  """Seeds are the unit: two seeds whose items are all 0.2 and all 0.6 give the mean 0.4 and t over the two means
  (sd 0.2 * sqrt 2, se 0.2, 1 degree of freedom), however many items they have; seed means that agree better than
  their items' noise allows get that noise as their spread. One seed falls back to t over its items; many items
  approach the normal interval; NaN items (outside a stratum) are ignored."""
  assert claims.seed_interval([np.full(5, 0.2), np.full(3, 0.6)]) == pytest.approx((0.4, 0.4 - T975[1] * 0.2,
                                                                                   0.4 + T975[1] * 0.2))
  assert claims.seed_interval([np.array([0.0, 1.0, np.nan])]) == pytest.approx((0.5, 0.5 - T975[1] * 0.5,
                                                                               0.5 + T975[1] * 0.5))
  values = (np.random.default_rng(0).random(3000) < 0.3).astype(float)
  est, lo, hi = claims.seed_interval([values])
  assert (hi - lo) / 2 == pytest.approx(1.96 * values.std(ddof=1) / np.sqrt(len(values)), rel=1e-3)
  # three seeds that agree exactly (means 0.5) still carry their items' noise: se^2 = (1/3) / 4 on each
  assert claims.seed_interval([np.array([0.0, 1.0, 0.0, 1.0])] * 3) == pytest.approx(
      (0.5, 0.5 - T975[2] * np.sqrt(1 / 12) / np.sqrt(3), 0.5 + T975[2] * np.sqrt(1 / 12) / np.sqrt(3)))
  est, lo, hi = claims.seed_interval([np.array([0.7])])
  assert est == 0.7 and np.isnan(lo) and np.isnan(hi)   # one run, one item: no interval, so no verdict
  with pytest.raises(ValueError, match="at least one item"):
    claims.seed_interval([np.array([np.nan])])


@pytest.mark.parametrize("seed_sd", [0.0, 0.2])
def test_seed_interval_keeps_its_error_rate_when_seeds_differ_more_than_items(seed_sd):
  """Calibration of a verdict under no effect: 3 seeds of 300 items (item sd 1, so an item mean's se is 0.058) whose
  true mean is 0 plus a seed effect of sd 0 or 0.2 (the Kimi study's between-seed spread of some differences is
  1-5x their item se). A 95% interval must exclude 0 in at most 5% of 2000 studies plus 3 binomial sd (6.5%);
  resampling seeds and items (the bootstrap this replaced) excluded it in about 20% at sd 0.2."""
  rng = np.random.default_rng(0)
  false = 0
  for _ in range(2000):
    per_seed = [rng.normal(rng.normal(0, seed_sd), 1.0, 300) for _ in range(3)]
    _, lo, hi = claims.seed_interval(per_seed)
    false += lo > 0 or hi < 0
  assert false / 2000 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)


def test_seeds_to_decide_hand_computed():
  """Seed means 1, 2, 3 (mean 2, sd 1): t * 1 / sqrt(n) falls below 2 first at n = 4 (3.182 / 2 = 1.59; at n = 3
  4.303 / 1.73 = 2.48). The items within a seed only set its mean. No spread to extrapolate from one seed, and
  no number of seeds decides a mean of 0."""
  per_seed = [np.array([1.0, 1.0]), np.array([2.0, np.nan]), np.array([2.0, 4.0])]
  assert claims.seeds_to_decide(per_seed) == 4
  assert claims.seeds_to_decide([np.array([1.0, 3.0])]) is None
  assert claims.seeds_to_decide([np.array([1.0]), np.array([-1.0])]) is None


def test_verdicts_and_strata():
  assert claims.verdict(0.01, 0.2, "greater") == "reproduced"
  assert claims.verdict(-0.2, -0.01, "greater") == "not reproduced"
  assert claims.verdict(-0.01, 0.2, "greater") == "inconclusive"
  assert claims.verdict(-0.2, -0.01, "less") == "reproduced"
  assert claims.verdict(0.01, 0.2, "less") == "not reproduced"
  rows = [{"iq": 1.0, "eq": 0.5, "subset": "id", "family": "lookup"},
          {"iq": 0.0, "eq": 0.9, "subset": "ood_style", "family": "arithmetic"}]
  np.testing.assert_array_equal(claims.item_values(rows, "id/iq"), [1.0, np.nan])
  np.testing.assert_array_equal(claims.item_values(rows, "ood/eq"), [np.nan, 0.9])
  np.testing.assert_array_equal(claims.item_values(rows, "arithmetic/iq"), [np.nan, 0.0])
  np.testing.assert_array_equal(claims.item_values(rows, "tradeoff"), [0.75, 0.45])


def test_claims_from_rows():
  """sft lowers IQ by 1, 0.5 and 0.75 on seeds 0-2: mean -0.75, se 0.25 / sqrt 3, t with 2 degrees of freedom,
  reproduced; a claim whose methods did not run is left out."""
  item = lambda iq: {"iq": iq, "eq": 0.5, "subset": "id", "family": "lookup"}
  rows = {"base": {s: [item(1.0)] * 4 for s in range(3)},
          "sft": {0: [item(0.0)] * 4, 1: [item(1.0)] * 2 + [item(0.0)] * 2, 2: [item(1.0)] + [item(0.0)] * 3}}
  by_claim = {c["claim"]: c for c in claims.evaluate_claims(rows, [0, 1, 2])}
  assert set(by_claim) == {"SFT keeps or raises EQ", "SFT lowers IQ"}
  lowers = by_claim["SFT lowers IQ"]
  half = T975[2] * 0.25 / np.sqrt(3)
  assert lowers["verdict"] == "reproduced"
  assert [lowers["comparisons"][0][k] for k in ("diff", "lo", "hi")] == pytest.approx([-0.75, -0.75 - half,
                                                                                       -0.75 + half])
  assert by_claim["SFT keeps or raises EQ"]["verdict"] == "inconclusive"   # no difference at all
  # Seeds to decide -0.75 with spread 0.25: at 95%, 3 (t 4.303 * 0.25 / sqrt 3 = 0.62 < 0.75); family-wise over the
  # 2 claims (level 97.5%), 4 (at 3 seeds t 6.205 gives 0.90; at 4, t 4.177 gives 0.52).
  assert lowers["comparisons"][0]["seeds_to_decide"] == 3
  assert lowers["comparisons"][0]["seeds_to_decide_family_wise"] == 4
  # Pairs are items, not positions: runs that evaluated other items (one row broadcast over four, or other ids) are
  # refused, naming the seed and the methods.
  rows["sft"][1] = rows["sft"][1][:1]
  with pytest.raises(ValueError, match="seed 1: sft and base evaluated different items"):
    claims.evaluate_claims(rows, [0, 1, 2])
  rows["sft"][1] = [dict(r, id=k) for k, r in enumerate(rows["base"][1])]
  with pytest.raises(ValueError, match="first difference at row 0"):
    claims.evaluate_claims(rows, [0, 1, 2])


def test_family_wise_verdicts_hold_by_holm_over_the_claims():
  """A verdict decided at 95% holds family-wise only when Holm's step-down over the study's claims keeps it. p from
  the same t statistic as the interval: with 2 degrees of freedom p = 1 - t / sqrt(t^2 + 2) exactly. "SFT lowers IQ"
  at -0.75 (t = 5.20, p = 0.0351) is reproduced, but with a second claim in the family Holm's first threshold is
  0.025: not family-wise; at -1, -0.75, -0.75 (spread floored at the items' se, sqrt(1/24): t = 5 sqrt 2,
  p = 0.019) it holds."""
  t = 0.75 / (0.25 / np.sqrt(3))
  assert intervals.t_p_value(-0.75, 0.25, 3) == pytest.approx(1 - t / np.sqrt(t ** 2 + 2), rel=1e-9)
  assert intervals.holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]   # 0.03 > 0.05 / 2 stops it
  assert intervals.holm([0.001, float("nan")]) == [True, False]
  item = lambda iq: {"iq": iq, "eq": 0.5, "subset": "id", "family": "lookup"}
  base = {s: [item(1.0)] * 4 for s in range(3)}

  def lowers(drops):
    sft = {s: [item(1.0)] * (4 - n) + [item(0.0)] * n for s, n in enumerate(drops)}
    by_claim = {c["claim"]: c for c in claims.evaluate_claims({"base": base, "sft": sft}, [0, 1, 2])}
    assert by_claim["SFT keeps or raises EQ"]["p"] == 1.0 and not by_claim["SFT keeps or raises EQ"]["family_wise"]
    return by_claim["SFT lowers IQ"]

  weak, strong = lowers((4, 2, 3)), lowers((4, 3, 3))
  assert weak["verdict"] == strong["verdict"] == "reproduced"
  assert weak["p"] == pytest.approx(1 - t / np.sqrt(t ** 2 + 2)) and not weak["family_wise"]
  assert strong["p"] == pytest.approx(1 - np.sqrt(50) / np.sqrt(52), rel=1e-6) and strong["family_wise"]


def test_family_wise_error_of_a_whole_study_without_any_effect():
  """200 simulated 5-seed studies where no method differs from another (16 methods on the same 40 items per seed:
  shared item difficulty, a per-run offset of sd 0.02, item noise): taken one at a time, the 11 claims decide at
  least one verdict in a quarter of the studies (49 of 200; each claim at 95%, a claim's rivals all required to
  reproduce it); Holm across the claims keeps that chance at 5% (plus 3 binomial sd; here 0 of 200)."""
  rng = np.random.default_rng(1)
  methods = ["base", "sft", "rl_text", "rl_full", "dpo_text", "dpo_full", "hybrid", "two_stage", "fixed_balance",
             "fixed_boost", "fixed_plus_vanilla", "ablate_all_fixed_0.5", "ablate_text_fixed_0.5",
             "ablate_text_fixed_0.3", "ablate_all_dynamic", "ablate_text_dynamic_no_ema"]
  seeds, n, studies = list(range(5)), 40, 200
  any_decided = any_family_wise = 0
  for _ in range(studies):
    rows = {m: {} for m in methods}
    for s in seeds:
      iq, eq = rng.normal(0.5, 0.25, n), rng.normal(0.8, 0.1, n)
      for m in methods:
        a, b = rng.normal(0, 0.02, 2)
        iq_m, eq_m = np.clip(iq + a + rng.normal(0, 0.1, n), 0, 1), np.clip(eq + b + rng.normal(0, 0.05, n), 0, 1)
        rows[m][s] = [{"iq": x, "eq": y, "subset": "id", "family": "lookup"} for x, y in zip(iq_m, eq_m)]
    found = claims.evaluate_claims(rows, seeds)
    assert len(found) == 11
    any_decided += any(c["verdict"] in ("reproduced", "not reproduced") for c in found)
    any_family_wise += any(c["family_wise"] for c in found)
  assert any_family_wise / studies <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / studies)
  assert any_decided / studies >= 0.2   # what the correction is for


def test_a_claim_naming_k_rivals_is_refuted_only_at_the_bonferroni_level():
  """"dynamic > fixed mixes" names 3 rivals. A rival ahead of the hybrid by 0.2, 0.1, 0.15 on the 3 seeds (t = 5.2:
  beyond the 95% quantile 4.30 but not the 1 - 0.05/6 one, 7.65) leaves the claim inconclusive; ahead by 0.3, 0.28,
  0.32 (t = 26) it refutes it. The other two rivals tie the hybrid exactly."""
  item = lambda v: {"iq": v, "eq": v, "subset": "id", "family": "lookup"}
  hybrid = {s: [item(0.5)] * 3 for s in range(3)}

  def verdicts(ahead):
    rows = {"hybrid": hybrid, "fixed_boost": hybrid, "fixed_plus_vanilla": hybrid,
            "fixed_balance": {s: [item(0.5 + a)] * 3 for s, a in enumerate(ahead)}}
    claim = next(c for c in claims.evaluate_claims(rows, [0, 1, 2]) if c["claim"] == "dynamic > fixed mixes")
    balance = next(c for c in claim["comparisons"] if c["b"] == "fixed_balance")
    return claim["verdict"], balance

  verdict, balance = verdicts((0.2, 0.1, 0.15))
  assert balance["hi"] < 0 < balance["refute_hi"] and verdict == "inconclusive"
  assert balance["refute_hi"] == pytest.approx(-0.15 + 7.6488 * 0.05 / np.sqrt(3), abs=1e-3)
  verdict, balance = verdicts((0.3, 0.28, 0.32))
  assert balance["refute_hi"] < 0 and verdict == "not reproduced"
  claim = next(c for c in claims.evaluate_claims({"hybrid": hybrid, "fixed_boost": hybrid, "fixed_plus_vanilla": hybrid,
                                                  "fixed_balance": {s: [item(0.5 + a)] * 3 for s, a in
                                                                    enumerate((0.3, 0.28, 0.32))}}, [0, 1, 2])
               if c["claim"] == "dynamic > fixed mixes")
  assert claim["p"] == pytest.approx(3 * balance["p"]) and claim["p"] < 0.05   # refuted: k times the refuting p


def test_the_best_trade_off_is_compared_with_the_papers_methods_only():
  """"the dynamic hybrid has the best IQ-EQ trade-off" names every method that ran except the hybrid itself, `base`,
  the methods not in the paper (the positive control, the batch-std ablation) and second names of one run
  (`ablate_text_fixed_0.5` is `fixed_plus_vanilla`'s)."""
  item = lambda v: {"iq": v, "eq": v, "subset": "id", "family": "lookup"}
  run = lambda v: {s: [item(v + 0.01 * s)] * 2 for s in range(3)}
  rows = {m: run(0.5) for m in ("hybrid", "base", "rl_text_exact", "ablate_text_dynamic_batch_std", "sft",
                                "fixed_plus_vanilla", "ablate_text_fixed_0.5")}
  found = claims.evaluate_claims(rows, [0, 1, 2], same_run={"ablate_text_fixed_0.5": "fixed_plus_vanilla"})
  best = next(c for c in found if c["claim"] == "the dynamic hybrid has the best IQ-EQ trade-off")
  assert [c["b"] for c in best["comparisons"]] == ["sft", "fixed_plus_vanilla"]


def _study(workdir, *extra):
  cmd = [sys.executable, "-m", "wavalign_jax.study", "--config=experiments/vita.py:tiny", "--seeds=1",
         "--methods=sft,rl_text", f"--workdir={workdir}", "--eval_every=2",
         "--config.testbed.base_sft_steps=4", "--config.train.total_steps=2", "--config.train.eval_examples=8",
         "--config.model.num_layers=1", "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
         "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.model.head_dim=16",
         "--config.data.max_prompt_len=80", "--config.rollout.max_new_tokens=16",
         "--config.data.prompts_per_step=2", "--config.rollout.group_size=2", *extra]
  # One CPU device (the study's own setting), compiled without LLVM's optimisation passes like every test program.
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
  return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_study_end_to_end_and_resume(tmp_path):
  out = _study(tmp_path)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "study: 3 runs to do" in out.stdout and "[study 3/3]" in out.stdout and "s wall" in out.stdout
  result = json.load(open(tmp_path / "study.json"))
  assert set(result["table"]) == {"base", "sft", "rl_text"}
  for method, metrics in result["table"].items():
    rows = [json.loads(l) for l in open(tmp_path / "seed_0" / method / "eval" / "after.jsonl")]
    assert len(rows) == 16   # 8 rows of each eval set
    mean, lo, hi = metrics["iq"]
    assert mean == pytest.approx(np.mean([r["iq"] for r in rows])) and lo <= mean <= hi
  assert {c["claim"] for c in result["claims"]} == {"SFT keeps or raises EQ", "SFT lowers IQ"}
  assert "lambda" in result["curves"]["rl_text"]["train"] and "eq" in result["curves"]["sft"]["eval"]
  md = open(tmp_path / "study.md").read()
  assert "| sft |" in md and "**verdict**" in md and "Table 3" in md
  assert md.splitlines()[2].startswith("**Verdicts unchecked by a positive control**") and "wall clock" in md
  times = runner.read_times(str(tmp_path))
  assert set(times) == {"seed_0/base", "seed_0/sft", "seed_0/rl_text"}
  assert all(t["end"] - t["start"] == pytest.approx(t["seconds"]) for t in times.values())
  for png in ("iq_eq.png", "gates.png", "eq_curve.png"):
    assert os.path.getsize(tmp_path / png) > 1000
  # Every run used the seed's one base model and testbed.
  config = json.load(open(tmp_path / "seed_0" / "rl_text" / "config.json"))
  assert config["init_checkpoint"] == str(tmp_path / "seed_0" / "base" / "base_model")
  assert config["testbed"]["dir"] == str(tmp_path / "seed_0" / "testbed") and config["train"]["total_steps"] == 2

  # Resume from an export (no weights): finished runs are kept, a run without its summary is redone, and the
  # base model it needs is retrained first and must evaluate exactly as before (training is deterministic).
  exported = tmp_path / "exported"
  export.export_results(str(tmp_path), str(exported))
  assert not (exported / "seed_0" / "base" / "base_model").exists() and (exported / "seed_0" / "sft").is_dir()
  os.remove(exported / "seed_0" / "sft" / "eval_summary.json")
  again = _study(exported)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "study: 2 runs to do" in again.stdout and "retraining it" in again.stdout
  assert "seed 0 base" in again.stdout and "seed 0 sft" in again.stdout
  assert not (exported / "seed_0" / "base" / runner.EXPORTED_SUMMARY).exists()
  assert json.load(open(exported / "study.json"))["table"]["rl_text"] == result["table"]["rl_text"]


def test_study_refuses_a_config_with_a_method(tmp_path):
  out = subprocess.run([sys.executable, "-m", "wavalign_jax.study", "--config=experiments/vita.py:tiny,hybrid",
                        f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode != 0 and "without a method" in out.stderr


# ----------------------------------------------------------------------------- positive control


def _item(iq, eq=0.8):
  return {"iq": iq, "eq": eq, "intelligibility": eq, "style": eq, "subset": "id", "family": "lookup"}


def _hand_rows(control_gain: bool):
  """Three seeds of 20 items: base answers every other item; sft none (IQ -0.5) and speaks worse (EQ -0.2); the
  positive control answers 20, 18 and 19 items (IQ +0.5, +0.4, +0.45) or exactly what base answers (no gain)."""
  base = [_item(float(i % 2)) for i in range(20)]
  control = {s: [_item(float(i >= 20 - right)) for i in range(20)] if control_gain else base
             for s, right in enumerate((20, 18, 19))}
  return {"base": {s: base for s in range(3)}, "rl_text_exact": control,
          "sft": {s: [_item(0.0, 0.6)] * 20 for s in range(3)}}


def _out(rows, seeds=(0, 1, 2)):
  power = claims.power_check(rows, seeds)
  return {"title": "Study: hand-made", "seeds": list(seeds), "times": {}, "positive_control": power, "same_run": {},
          "table": report.summarize(rows, seeds), "claims": claims.evaluate_claims(rows, seeds, power=power),
          "curves": {}}


def test_positive_control_decides_power():
  """A clear gain: powered, and the claims keep their verdicts. No gain: underpowered, every verdict (claim and
  comparison) is "underpowered" in study.md and its README summary, the differences are still there."""
  powered = _out(_hand_rows(control_gain=True))
  p = powered["positive_control"]
  # seed gains 0.5, 0.4, 0.45 (sd 0.05) vary less than their 20 items' noise: the spread is the items' rms se
  rows = _hand_rows(True)
  diffs = [claims.item_values(rows["rl_text_exact"][s], "iq") - claims.item_values(rows["base"][s], "iq")
           for s in range(3)]
  spread = np.sqrt(np.mean([d.var(ddof=1) / 20 for d in diffs]))
  assert spread > 0.05
  half = T975[2] * spread / np.sqrt(3)
  assert p["powered"] and [p["diff"], p["lo"], p["hi"]] == pytest.approx([0.45, 0.45 - half, 0.45 + half])
  verdicts = {c["claim"]: c["verdict"] for c in powered["claims"]}
  assert verdicts == {"SFT lowers IQ": "reproduced", "SFT keeps or raises EQ": "not reproduced"}
  md = report.markdown(powered).splitlines()
  assert md[0] == "# Study: hand-made" and md[2].startswith("**Positive control** (`rl_text_exact` − `base` on IQ: "
                                                                "+45.0 [")

  weak = _out(_hand_rows(control_gain=False))
  assert weak["positive_control"]["diff"] == 0 and not weak["positive_control"]["powered"]
  for c in weak["claims"]:
    assert c["verdict"] == "underpowered" and {d["verdict"] for d in c["comparisons"]} == {"underpowered"}
  lowers = next(c for c in weak["claims"] if c["claim"] == "SFT lowers IQ")
  assert lowers["comparisons"][0]["diff"] == pytest.approx(-0.5)
  md = report.markdown(weak)
  assert md.splitlines()[2].startswith("**Underpowered**") and "not reproduced" not in md and "reproduced" not in md
  assert "| SFT lowers IQ (iq) | **underpowered** | sft − base: -50.0 [-" in md
  summary = "\n".join(report.summary_markdown(weak["table"], weak["claims"]))
  assert "**underpowered**" in summary and "reproduced" not in summary

  rows = _hand_rows(True)
  del rows["rl_text_exact"]
  unchecked = _out(rows)
  assert unchecked["positive_control"] is None
  assert report.markdown(unchecked).splitlines()[2].startswith("**Verdicts unchecked by a positive control**")
  assert {c["verdict"] for c in unchecked["claims"]} == {"reproduced", "not reproduced"}


def test_positive_control_decides_on_its_one_sided_lower_bound():
  """Gains of 0.4, 0.15 and 0.25 on 3 seeds of 200 items (mean 0.267, seed sd 0.126 > the items' se): the
  one-sided 95% bound 0.267 - 2.920 * 0.126 / sqrt 3 = +0.055 lies above 0, so powered, though the two-sided 95%
  CI reaches below 0. No gain on seed 1: the bound is below 0, underpowered."""
  base = [_item(float(i % 2)) for i in range(200)]

  def power(gains):
    control = {s: [_item(1.0 if i % 2 or i < 400 * g else 0.0) for i in range(200)] for s, g in enumerate(gains)}
    return claims.power_check({"base": {s: base for s in range(3)}, "rl_text_exact": control}, [0, 1, 2])

  p = power((0.4, 0.15, 0.25))
  gains = np.array([0.4, 0.15, 0.25])
  assert [q["diff"] for q in p["per_seed"]] == pytest.approx(gains)
  assert p["lower"] == pytest.approx(gains.mean() - 2.919986 * gains.std(ddof=1) / np.sqrt(3))
  assert p["lo"] < 0 < p["lower"] and p["powered"]
  assert report.power_line(p).startswith("**Positive control**")
  p = power((0.4, 0.0, 0.25))
  assert p["lower"] < 0 and not p["powered"] and report.power_line(p).startswith("**Underpowered**")


def test_learning_curve_pairs_each_evaluated_step_with_base(tmp_path):
  """Two seeds x 4 items. Step 100: the control answers item 0 of each seed right where base did not (+25 points per
  seed); step 200: items 0 and 1 (+50). A step only one seed evaluated is left out."""
  base = {s: [dict(iq=0.0, eq=0.5, subset="id", family="lookup") for _ in range(4)] for s in (0, 1)}
  for s in (0, 1):
    folder = tmp_path / f"seed_{s}" / "rl_text_exact" / "eval"
    folder.mkdir(parents=True)
    for step, right in ((100, 1), (200, 2)):
      rows = [dict(iq=float(i < right), eq=0.5, subset="id", family="lookup") for i in range(4)]
      (folder / f"step_{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "seed_0" / "rl_text_exact" / "eval" / "step_300.jsonl").write_text(json.dumps(base[0][0]) + "\n")
  curve = report.learning_curve(str(tmp_path), [0, 1], base)
  assert [p["step"] for p in curve] == [100, 200]
  assert [p["diff"] for p in curve] == pytest.approx([0.25, 0.5])
  assert all(p["lo"] <= p["diff"] <= p["hi"] for p in curve)


# ----------------------------------------------------------------------------- sweeps, duplicates (fake runner)


def test_parse_sweep():
  config = config_lib.load_config_file("experiments/vita.py:tiny")
  assert sweep.parse_sweep("testbed.judge_acoustic_noise=0,0.25,0.5", config) == (
      "testbed.judge_acoustic_noise", [0.0, 0.25, 0.5])
  field, values = sweep.parse_sweep("train.total_steps=200,600", config)
  assert values == [200, 600] and all(type(v) is int for v in values)
  assert sweep.parse_sweep("rl.drop_equal_groups=false,true", config)[1] == [False, True]
  assert sweep.parse_sweep("rl.token_set=text,all", config)[1] == ["text", "all"]
  for arg, message in [("testbed.judge_noise=0,1", "no field 'testbed.judge_noise'; did you mean "
                                                   "testbed.judge_acoustic_noise"),
                       ("testbed.judge_acoustic_noise=0,loud", "'loud' is not a float"),
                       ("train.total_steps=200,2.5", "'2.5' is not a int"),
                       ("rl.drop_equal_groups=maybe", "'maybe' is not a bool"),
                       ("testbed.judge_acoustic_noise", "give FIELD=V1,V2"),
                       ("testbed.judge_acoustic_noise=0.5,0.50", "a value twice"),
                       ("testbed.seed=1,2", "set by the study"),
                       ("mesh.shape=1,2", "holds a tuple"),
                       ("testbed.judge_acoustic_noise=nan", "not finite")]:
    with pytest.raises(ValueError, match=message):
      sweep.parse_sweep(arg, config)
  with pytest.raises(ValueError, match="set by --config.train.total_steps"):
    sweep.parse_sweep("train.total_steps=1,2", config, ["train.total_steps"])
  # The report shows numbers ascending whatever the command's order (its first value owns the shared runs).
  assert report.shown_order(["0.5", "0.0", "0.25"]) == ["0.0", "0.25", "0.5"]
  assert report.shown_order(["600", "200"]) == ["200", "600"]
  assert report.shown_order(["text", "all"]) == ["text", "all"]


def test_sweep_cli_error_is_a_message(tmp_path):
  out = subprocess.run([sys.executable, "-m", "wavalign_jax.study", "--config=experiments/vita.py:tiny",
                        f"--workdir={tmp_path}", "--sweep=testbed.judge_noise=0,1"], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
  assert out.returncode != 0 and "did you mean testbed.judge_acoustic_noise" in out.stderr
  assert "Traceback" not in out.stderr and not os.listdir(tmp_path)


def test_duplicate_runs():
  """Identical resolved configs (everything but `method`) share a run; overrides count (a fixed lambda of 0.7
  for every method makes every text-token fixed mix the same run)."""
  methods = [m for m in config_lib.METHODS if m != "base"]
  for spec in ("experiments/vita.py:tiny", "experiments/kimi.py:tiny"):
    assert sweep.duplicate_runs(spec, methods, {}) == {"ablate_text_fixed_0.5": "fixed_plus_vanilla"}
  assert sweep.duplicate_runs("experiments/vita.py:tiny", methods, {"gate.fixed_lambda": 0.7}) == {
      m: "fixed_balance" for m in ("fixed_boost", "fixed_plus_vanilla", "ablate_text_fixed_0.5",
                                   "ablate_text_fixed_0.3")}


def _arg(cmd, name):
  """The value of --name= in a command line (None when absent)."""
  return next((a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")), None)


class FakeTrain:
  """Stands in for train.py: records each command and writes the files a finished run leaves. IQ on 400 items
  (enough for a gain of 0.5 to stand out of its items' noise with 2 seeds, whose t quantile is 12.7): base
  answers every other item; rl_text_exact answers every item up to testbed.sft_wrong_fraction 0.3 and only
  base's above; sft none."""

  def __init__(self, base_shift: float = 0.0, commit: str = "a" * 40):
    self.calls = []
    self.base_shift = base_shift   # added to base's IQ: a base model retrained differently
    self.commit = commit           # the launch record's code (provenance.py)

  def __call__(self, cmd, log_path, env):
    self.calls.append(cmd)
    arg = lambda name: _arg(cmd, name)
    method, workdir = arg("config").rpartition(",")[2], arg("workdir")
    wrong = float(arg("config.testbed.sft_wrong_fraction") or 0.3)
    assert method == "base" or os.path.exists(os.path.join(os.path.dirname(workdir), "base", "eval_summary.json"))
    iq = {"base": lambda i: i % 2, "sft": lambda i: 0, "rl_text_exact": lambda i: 1 if wrong <= 0.3 else i % 2}.get(
        method, lambda i: i % 2)
    rows = [_item(float(iq(i)), 0.8 - 0.1 * (method == "rl_full")) for i in range(400)]
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    files.write_jsonl(os.path.join(workdir, provenance.FILE), [*provenance.read(workdir), {"commit": self.commit}])
    with open(os.path.join(workdir, "eval", "after.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps({"split": "train", "step": t, "lambda": 1.0, "diversity/informative": 0.9,
                               "diversity/informative_semantic": 0.5, "pass/at_1": 0.3}) + "\n" for t in (1, 2))
    with open(os.path.join(workdir, "eval_summary.json"), "w") as f:
      json.dump({"after": {"iq": np.mean([r["iq"] for r in rows]) + self.base_shift * (method == "base"),
                           "eq": 0.8}}, f)
    if method == "base":
      os.makedirs(os.path.join(workdir, "base_model"), exist_ok=True)
    os.makedirs(os.path.join(workdir, "checkpoints", "3"), exist_ok=True)
    return 0


def test_a_failed_run_is_one_line_and_a_bug_keeps_its_traceback(tmp_path):
  """A run whose train exits non-zero is a RunError naming it (one line at the command line); an exception of another
  kind inside the study (a bug) reaches the caller as itself, not turned into a RunError's message."""
  spec, config = "experiments/vita.py:tiny", config_lib.load_config_file("experiments/vita.py:tiny")
  with pytest.raises(RunError, match="seed 0 base: train exited with 3"):
    study.run_study(spec, config, str(tmp_path / "failed"), ["sft"], [0], runner=lambda cmd, log, env: 3)

  def buggy(cmd, log, env):
    raise KeyError("iq")
  with pytest.raises(KeyError, match="iq"):
    study.run_study(spec, config, str(tmp_path / "bug"), ["sft"], [0], runner=buggy)


def test_the_base_run_then_the_positive_control_go_first():
  """Whatever the order of --methods: each seed's base model first (the others start from it), then the positive
  control (its verdict says whether any other can be read), then the methods as given."""
  import tempfile
  spec, config = "experiments/vita.py:tiny", config_lib.load_config_file("experiments/vita.py:tiny")
  fake = FakeTrain()
  with tempfile.TemporaryDirectory() as work:
    study.run_study(spec, config, work, ["sft", "rl_full", "rl_text_exact"], [0], runner=fake)
  assert [_arg(c, "config").rpartition(",")[2] for c in fake.calls] == ["base", "rl_text_exact", "sft", "rl_full"]


def test_a_second_study_on_the_same_directory_is_refused_and_starts_no_run(tmp_path):
  """A study relaunched while the first still runs (a scheduler's double start) would start the runs the first is
  training: it is refused at once, naming the holder; reporting alone still works."""
  spec, config = "experiments/vita.py:tiny", config_lib.load_config_file("experiments/vita.py:tiny")
  work = tmp_path / "work"
  fake = FakeTrain()
  study.run_study(spec, config, str(work), ["sft"], [0], runner=fake)
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom wavalign_jax import workdir_lock\n"
                             "with workdir_lock.hold(sys.argv[1]):\n  print('held', flush=True)\n  time.sleep(60)",
                             str(work)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirLocked, match=rf"in use by another job .*pid {holder.pid}"):
      study.run_study(spec, config, str(work), ["sft", "rl_text_exact"], [0], runner=fake)
    assert len(fake.calls) == 2   # the first study's base and sft runs: the second started none
    study.run_study(spec, config, str(work), ["sft"], [0], report_only=True, runner=None)
  finally:
    holder.kill()
    holder.wait()
  study.run_study(spec, config, str(work), ["sft", "rl_text_exact"], [0], runner=fake)   # the holder gone (dead pid)
  assert len(fake.calls) == 3


def test_export_leaves_out_weights_and_unfinished_runs_and_a_study_continues_from_it(tmp_path):
  """An export keeps finished runs' records and the reports, not checkpoints, base models, testbed data or
  unfinished runs, and never overwrites; continuing from it retrains each base model still needed and refuses
  to go on when the retrained one evaluates differently from the exported one."""
  spec, config = "experiments/vita.py:tiny", config_lib.load_config_file("experiments/vita.py:tiny")
  work, dest = tmp_path / "work", tmp_path / "exported"
  study.run_study(spec, config, str(work), ["rl_text_exact"], [0, 1], runner=FakeTrain())
  for s in (0, 1):
    os.makedirs(work / f"seed_{s}" / "testbed")
    os.makedirs(work / f"seed_{s}" / "sft" / "checkpoints" / "2")   # interrupted: no summary
    for m in ("base", "rl_text_exact"):
      (work / f"seed_{s}" / m / "run.log").write_text("log\n")
      with open(work / f"seed_{s}" / m / "eval" / "step_100.jsonl", "w") as f:   # the eval set's 400 items
        f.writelines(json.dumps(_item(1.0)) + "\n" for _ in range(400))
      with open(work / f"seed_{s}" / m / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"split": "train", "step": 3, "lambda": 0.12345678901, "loss": 1.0}) + "\n")
  do_export = lambda: export.export_results(str(work), str(dest))
  runs = do_export()
  assert runs == [f"seed_{s}/{m}" for s in (0, 1) for m in ("base", "rl_text_exact")]
  kept = sorted(os.path.relpath(os.path.join(r, n), dest) for r, _, names in os.walk(dest) for n in names)
  assert kept == sorted(["run_times.json", "study.json", "study.md", "iq_eq.png", "gates.png", "eq_curve.png",
                         "study_command.json"] + [
      f"seed_{s}/{m}/{f}" for s in (0, 1) for m in ("base", "rl_text_exact")
      for f in ("eval_summary.json", "metrics.jsonl.gz", "eval/after.jsonl.gz", "launches.jsonl.gz")] + [
      f"seed_{s}/rl_text_exact/eval/step_100.jsonl.gz" for s in (0, 1)])   # the positive control's learning curve
  last = files.read_jsonl(str(dest / "seed_0" / "base" / "metrics.jsonl.gz"))[-1]
  assert last == {"split": "train", "step": 3, "lambda": 0.123457}   # the columns the report reads, 6 digits
  assert not os.path.exists(f"{dest}.partial")
  with pytest.raises(FileExistsError, match="exported"):
    do_export()
  # A study directory whose own name looks like a seed's holds runs like any other.
  shutil.copytree(work, tmp_path / "seed_study")
  assert export.export_results(str(tmp_path / "seed_study"), str(tmp_path / "seed_copy")) == runs
  rows = report.load_rows(str(work), ["rl_text_exact"], [0, 1])
  assert report.load_rows(str(dest), ["rl_text_exact"], [0, 1]) == rows   # read from the compressed copies
  curve = report.learning_curve(str(work), [0, 1], rows["base"])
  assert [c["step"] for c in curve] == [100] and report.learning_curve(str(dest), [0, 1], rows["base"]) == curve
  curves = report.load_curves(str(dest), ["rl_text_exact"], [0, 1])["rl_text_exact"]["train"]
  assert curves["lambda"] == [[1, 2, 3], [1.0, 1.0, 0.123457]]
  # A report of the export alone: nothing runs.
  study.run_study(spec, config, str(dest), ["rl_text_exact", "sft"], [0, 1], report_only=True, runner=None)
  assert json.load(open(dest / "study.json"))["unfinished"] == ["sft"]
  assert "**Incomplete**: `sft` has not finished" in open(dest / "study.md").read()
  # Its base run unfinished (a continued export retraining it, interrupted): the report says so, nothing is compared.
  nobase = tmp_path / "nobase"
  shutil.copytree(dest, nobase, symlinks=True)
  os.remove(nobase / "seed_0" / "base" / "eval_summary.json")
  study.run_study(spec, config, str(nobase), ["rl_text_exact"], [0, 1], report_only=True, runner=None)
  assert json.load(open(nobase / "study.json"))["unfinished"] == ["base"]
  assert "**No comparison with the base model yet**" in open(nobase / "study.md").read()

  other = tmp_path / "other"
  shutil.copytree(dest, other, symlinks=True)
  fake = FakeTrain()
  study.run_study(spec, config, str(dest), ["rl_text_exact", "sft"], [0, 1], runner=fake)
  assert [os.path.relpath(_arg(c, "workdir"), dest) for c in fake.calls] == [
      "seed_0/base", "seed_1/base", "seed_0/sft", "seed_1/sft"]
  assert not os.path.exists(dest / "seed_0" / "base" / runner.EXPORTED_SUMMARY)
  # Only a seed with a run to do retrains its base model (seed 1 has finished), and the study refuses to go on
  # from a base model that evaluates differently from the exported one.
  shutil.rmtree(other / "seed_1")
  shutil.copytree(dest / "seed_1", other / "seed_1", symlinks=True)
  shutil.rmtree(other / "seed_1" / "base" / "base_model")
  fake = FakeTrain(base_shift=0.05, commit="b" * 40)
  with pytest.raises(RunError, match=f"does not evaluate as the exported one did.*made at {'a' * 40}, this one "
                                         f"at {'b' * 40}"):
    study.run_study(spec, config, str(other), ["rl_text_exact", "sft"], [0, 1], runner=fake)
  assert [os.path.relpath(_arg(c, "workdir"), other) for c in fake.calls] == ["seed_0/base"]
  assert os.path.exists(other / "seed_0" / "base" / "eval_summary.retrained.json")
  assert not os.path.exists(other / "seed_0" / "base" / "eval_summary.json")


def test_reads_reward_field():
  """Which runs a reward-only sweep can change: those that draw rollouts scored by that reward."""
  spec, judge = "experiments/vita.py:tiny", "testbed.judge_acoustic_noise"
  reads = {m: sweep.reads_reward_field(spec, m, {}, judge) for m in config_lib.METHODS}
  assert {m for m, r in reads.items() if not r} == {"base", "sft", "rl_text_exact", "dpo_text", "dpo_full"}
  assert sweep.reads_reward_field(spec, "rl_text_exact", {}, "reward.fallback_score")
  assert not sweep.reads_reward_field(spec, "hybrid", {"reward.kind": "exact_match"}, judge)
  assert not sweep.reads_reward_field(spec, "hybrid", {"train.total_steps": 0}, judge)


def test_sweep_layout_shared_runs_duplicates_and_resume(tmp_path, capsys, monkeypatch):
  """A judge-noise sweep: one study per value in DIR/FIELD=V, the value passed to its runs, each seed's base run
  and the runs that never read the judge (sft, the exact-match positive control) shared, the positive control right
  after the base runs, a duplicate method run once; reports per value and side by side; a rerun does nothing. A
  sweep of a data field runs everything per value, and a value whose positive control fails is underpowered."""
  spec, config = "experiments/vita.py:tiny", config_lib.load_config_file("experiments/vita.py:tiny")
  field = "testbed.judge_acoustic_noise"
  methods = ["sft", "rl_text", "rl_full", "fixed_plus_vanilla", "ablate_text_fixed_0.5", "rl_text_exact"]
  fake = FakeTrain()
  study.run_study(spec, config, str(tmp_path), methods, [0, 1], ["--config.train.total_steps=3"],
                  sweep.parse_sweep(f"{field}=0,0.5", config), runner=fake)
  runs = [os.path.relpath(_arg(c, "workdir"), tmp_path) for c in fake.calls]
  v0, v5 = f"{field}=0.0", f"{field}=0.5"
  assert runs[:2] == [f"{v0}/seed_0/base", f"{v0}/seed_1/base"]   # shared: no base run under v5
  assert runs[2:4] == [f"{v0}/seed_{s}/rl_text_exact" for s in (0, 1)]   # shared: it does not read the judge
  assert sorted(runs[4:]) == sorted([f"{v0}/seed_{s}/sft" for s in (0, 1)] + [
      f"{v}/seed_{s}/{m}" for v in (v0, v5) for s in (0, 1) for m in ("rl_text", "rl_full", "fixed_plus_vanilla")])
  for cmd in fake.calls:
    value_dir, _, seed = _arg(cmd, "workdir").rpartition("/")[0].rpartition("/seed_")
    assert f"--config.{field}={value_dir.rpartition('=')[2]}" in cmd and "--config.train.total_steps=3" in cmd
    if _arg(cmd, "config").endswith(",base"):
      assert cmd[-1] == "--config.train.total_steps=0"   # the base model is evaluated untrained
    else:
      assert _arg(cmd, "config.init_checkpoint") == f"{value_dir}/seed_{seed}/base/base_model"
      assert _arg(cmd, "config.testbed.dir") == f"{value_dir}/seed_{seed}/testbed"
  for name in ("base", "testbed", "sft", "rl_text_exact"):
    assert os.path.realpath(tmp_path / v5 / "seed_1" / name) == str(tmp_path / v0 / "seed_1" / name)
  assert "[study 18/18] " in capsys.readouterr().out

  out = json.load(open(tmp_path / "study.json"))
  assert out["values"] == ["0.0", "0.5"] and out["times"]["wall_minutes"] >= 0
  assert [out["studies"][v]["positive_control"]["powered"] for v in ("0.0", "0.5")] == [True, True]
  assert out["studies"]["0.0"]["same_run"] == {"ablate_text_fixed_0.5": "fixed_plus_vanilla"}
  assert out["shared_methods"] == ["rl_text_exact", "sft"]
  md = open(tmp_path / "study.md").read()
  print(md)   # the format, for the record (pytest -s)
  assert f"## Claims × {field}" in md and f"## {field} = 0.0" in md and f"## {field} = 0.5" in md
  assert "| SFT lowers IQ (iq) | **reproduced** (p 0.023; not family-wise) -50.0 [" in md
  assert f"`rl_text_exact`, `sft` never read `{field}`" in md
  assert "Code: every run that recorded its launches was made at commit aaaaaaaaaa (18 runs)." in md   # links once
  assert report.code_line({"a" * 40: 2, "b" * 40 + "+dirty": 1}) == (
      "Code: the runs were made at 2 versions of the code, aaaaaaaaaa (2 runs), bbbbbbbbbb+dirty (1 run): compare "
      "across them with care.")
  assert os.path.getsize(tmp_path / "sweep.png") > 1000
  for v in (v0, v5):
    value_md = open(tmp_path / v / "study.md").read()
    assert "`ablate_text_fixed_0.5` resolve to the same configuration" in value_md
    assert "| ablate_text_fixed_0.5 |" in value_md and "| 0.90 | 0.50 |" in value_md   # informative, semantic
    assert len(runner.read_times(str(tmp_path / v))) == (6 if v == v5 else 12)

  monkeypatch.setattr(figures, "save", lambda fig, path: None)   # the figures were checked above: skip their cost
  again = FakeTrain()
  study.run_study(spec, config, str(tmp_path), methods, [0, 1], ["--config.train.total_steps=3"],
                  sweep.parse_sweep(f"{field}=0,0.5", config), runner=again)
  assert again.calls == []
  # Other settings would put new runs beside the finished ones under one report: refused, naming them.
  with pytest.raises(ConfigError, match=r"overrides: \[\"--config.train.total_steps=3\"\] -> "
                                        r"\[\"--config.train.total_steps=6\"\]\n  eval_every: 100 -> 20"):
    study.run_study(spec, config, str(tmp_path), methods, [0, 1], ["--config.train.total_steps=6"],
                    sweep.parse_sweep(f"{field}=0,0.5", config), eval_every=20, runner=again)
  assert again.calls == []
  # An export keeps the shared runs as links into the first value's copy, and a rerun from it does nothing.
  dest = tmp_path / "exported"
  export.export_results(str(tmp_path), str(dest))
  assert os.path.islink(dest / v5 / "seed_1" / "base") and not os.path.lexists(dest / v5 / "seed_1" / "testbed")
  assert os.path.realpath(dest / v5 / "seed_1" / "sft") == str(dest / v0 / "seed_1" / "sft")
  study.run_study(spec, config, str(dest), methods, [0, 1], ["--config.train.total_steps=3"],
                  sweep.parse_sweep(f"{field}=0,0.5", config), runner=again)
  assert again.calls == []
  # A field that changes the testbed data: every value trains its own base model and runs every method.
  other = FakeTrain()
  study.run_study(spec, config, str(tmp_path / "wrong"), ["sft", "rl_text_exact"], [0], [],
                  sweep.parse_sweep("testbed.sft_wrong_fraction=0.3,0.5", config), runner=other)
  assert [os.path.relpath(_arg(c, "workdir"), tmp_path / "wrong") for c in other.calls] == [
      f"testbed.sft_wrong_fraction={v}/seed_0/{m}" for m in ("base", "rl_text_exact", "sft") for v in (0.3, 0.5)]
  out = json.load(open(tmp_path / "wrong" / "study.json"))
  assert [out["studies"][v]["positive_control"]["powered"] for v in ("0.3", "0.5")] == [True, False]
  assert {c["verdict"] for c in out["studies"]["0.5"]["claims"]} == {"underpowered"}
  assert "| **underpowered** -50.0 [" in open(tmp_path / "wrong" / "study.md").read()
  assert "**Underpowered**" in open(tmp_path / "wrong" / "testbed.sft_wrong_fraction=0.5" / "study.md"
                                    ).read().splitlines()[2]


# ----------------------------------------------------------------------------- figures


def _artist_colours(fig):
  """{label: set of colours} over every labelled line, errorbar and legend entry of `fig`."""
  out = {}
  add = lambda label, colour: out.setdefault(label.split(" = ")[0], set()).add(to_hex(colour))
  for ax in fig.axes:
    for line in ax.get_lines():
      if not line.get_label().startswith("_"):
        add(line.get_label(), line.get_color())
    for container in ax.containers:
      add(container.get_label(), container.lines[0].get_color())
  for legend in fig.legends:
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
      if hasattr(handle, "get_marker"):
        add(text.get_text(), handle.get_color())
  return out


def test_one_colour_per_method_in_every_figure():
  """Every method keeps one colour and marker (unique over METHODS) in every figure and legend, also when an
  earlier method has no curve in a panel (DPO has no lambda: it used to shift the colour cycle)."""
  styles = {m: figures.method_style(m) for m in config_lib.METHODS}
  assert len({s["color"] for s in styles.values()}) == len(styles) <= 20
  methods = ["base", "dpo_full", "hybrid", "two_stage", "fixed_balance", "fixed_plus_vanilla", "ablate_text_fixed_0.5"]
  table = {m: {"iq": [0.4 + 0.01 * i, 0.3, 0.5], "eq": [0.8, 0.7, 0.9]} for i, m in enumerate(methods)}
  curves = {m: {"train": {} if m == "dpo_full" else {k: [[1, 2], [0.5, 0.6]] for k in ("lambda", "gate_direction",
                                                                                      "gate_info")},
                "eval": {"iq": [[0, 2], [0.4, 0.5]], "eq": [[0, 2], [0.8, 0.9]]}} for m in methods[1:]}
  same_run = {"ablate_text_fixed_0.5": "fixed_plus_vanilla"}
  claim_rows = [{"claim": "dynamic > fixed mixes", "metric": "tradeoff", "a": "hybrid", "comparisons": [
      {"b": b, "diff": 0.01, "lo": -0.01, "hi": 0.03, "verdict": "inconclusive"} for b in methods[3:6]]}]
  sweep_out = {"field": "testbed.judge_acoustic_noise",
               "studies": {v: {"claims": claim_rows, "positive_control": None} for v in ("0.0", "0.5")}}
  figs = [figures.iq_eq_figure(table, same_run), figures.curves_figure(curves, "gates.png", same_run),
          figures.curves_figure(curves, "eq_curve.png", same_run), figures.sweep_figure(sweep_out)]
  seen = {}
  for fig in figs:
    for label, colours in _artist_colours(fig).items():
      assert colours == {styles[label]["color"]}, (label, colours)
      seen.setdefault(label, 0)
      seen[label] += 1
  assert seen["two_stage"] == 4 and seen["hybrid"] == 3 and "dpo_full" in seen   # plotted and checked
  gates = _artist_colours(figs[1])
  assert "dpo_full" not in gates and gates["two_stage"] == {styles["two_stage"]["color"]}
  assert figs[0].axes[0].get_ylabel() == "EQ − base (points)" and figs[2].axes[0].get_ylabel() == "EQ (%)"
  assert [t.get_text() for t in figs[0].legends[0].get_texts()].count("fixed_plus_vanilla = ablate_text_fixed_0.5")


def test_iq_eq_figure_zooms_in_when_a_method_lies_far_from_base():
  """DPO 22 points below base squashes the others: a second panel shows the methods within 10 points, in their
  colours; with every method near base there is one panel."""
  vs_base = {"hybrid": {"iq": [0.01, -0.01, 0.03], "eq": [0.03, 0.01, 0.05]},
             "sft": {"iq": [-0.02, -0.05, 0.01], "eq": [0.01, -0.03, 0.05]},
             "dpo_full": {"iq": [-0.22, -0.35, -0.08], "eq": [-0.55, -0.65, -0.45]}}
  fig = figures.iq_eq_figure(vs_base, {})
  overview, zoom = fig.axes
  labels = lambda ax: {line.get_label() for line in ax.containers}
  assert labels(overview) == {"hybrid", "sft", "dpo_full"} and labels(zoom) == {"hybrid", "sft"}
  assert zoom.get_xlim()[0] > -10
  del vs_base["dpo_full"]
  assert len(figures.iq_eq_figure(vs_base, {}).axes) == 1


def test_base_run_stays_untrained_whatever_budget_the_overrides_give(tmp_path):
  """`--config.train.total_steps=N` sets the methods' budget; the base run must still evaluate the base model
  untrained. Checked with train.py's own flag parsing (--print_config): the last occurrence of a field wins."""
  steps = {}
  for method in ("base", "rl_text"):
    cmd = runner.train_command("experiments/vita.py:tiny", method, 0, str(tmp_path), ["--config.train.total_steps=700"],
                              eval_every=100)
    out = subprocess.run(cmd + ["--print_config"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    train_section = out[out.index("\ntrain:"):]
    steps[method] = int(re.search(r"\n  total_steps: (\d+)", train_section).group(1))
  assert steps == {"base": 0, "rl_text": 700}


def test_time_breakdown_from_run_times_and_metrics(tmp_path):
  """One run: 100 s wall; step 1 took 30 s (compile), steps 2-3 took 4 s each of which 1 s rollouts, two evals
  of 5 s: updates 6, rollouts 2, evals 10, other 100 - 30 - 2 - 6 - 10 = 52."""
  run = tmp_path / "seed_0" / "rl_text"
  run.mkdir(parents=True)
  rows = [{"step": 1, "split": "train", "step_time": 30.0, "rollout_time": 0.5},
          {"step": 2, "split": "train", "step_time": 4.0, "rollout_time": 1.0},
          {"step": 3, "split": "train", "step_time": 4.0, "rollout_time": 1.0},
          {"step": 2, "split": "eval", "eval_time": 5.0, "iq": 0.5},
          {"step": 3, "split": "eval_after", "eval_time": 5.0, "iq": 0.5}]
  # a last line torn by a kill (the study reports partial runs too): dropped, as a resumed run drops it
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "spl')
  (tmp_path / "run_times.json").write_text(json.dumps({"seed_0/rl_text": {"seconds": 100.0, "start": 0, "end": 100}}))
  got = report.time_breakdown(str(tmp_path), ["rl_text"], [0])
  assert got == {"rl_text": dict(wall=100.0, first_step=30.0, rollouts=2.0, updates=6.0, evals=10.0, other=52.0)}
  assert report.breakdown_rows(got)[-1].startswith("| all | 1.7 (100%) | 0.5 (30%) |")


def test_curves_count_a_row_logged_twice_once(tmp_path):
  """A run killed between its final evaluation's row and eval_summary.json logs that row again when rerun: the
  mean over seeds must not weigh that seed twice (1.0 and 0.0 on two seeds: 0.5, not 2/3)."""
  for seed, iq, times in ((0, 1.0, 2), (1, 0.0, 1)):
    run = tmp_path / f"seed_{seed}" / "rl_text"
    run.mkdir(parents=True)
    rows = [{"step": 1, "split": "train", "lambda": 0.25}] + [{"step": 1, "split": "eval_after", "iq": iq}] * times
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  curves = report.load_curves(str(tmp_path), ["rl_text"], [0, 1])["rl_text"]
  assert curves["eval"]["iq"] == [[1], [0.5]] and curves["train"]["lambda"] == [[1], [0.25]]


_STAND_IN = r"""
import json, os, signal, sys, time
path, method, slow = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(os.path.join(path, "eval"), exist_ok=True)
def finish():
  with open(os.path.join(path, "eval", "after.jsonl"), "w") as f:
    f.write(json.dumps({"id": "a", "iq": 1.0, "eq": 1.0}) + "\n")
  with open(os.path.join(path, "eval_summary.json"), "w") as f:
    json.dump({"after": {"iq": 1.0, "eq": 1.0}}, f)
if method == "base":
  os.makedirs(os.path.join(path, "base_model"), exist_ok=True)
if method != slow:
  finish()
  sys.exit(0)
got = []
if len(sys.argv) < 5:   # "bare": still starting, no handler yet (the signal kills it)
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda signum, frame: got.append(signum))
open(os.path.join(path, "started"), "w").close()
deadline = time.time() + 60
while not got and time.time() < deadline:
  time.sleep(0.05)
time.sleep(0.5)   # a second signal would arrive meanwhile
with open(os.path.join(path, "signals"), "w") as f:
  json.dump(got, f)
sys.exit(0)   # like train when preempted: a checkpoint, no eval_summary.json
"""


@pytest.mark.parametrize("signum, slow, seeds, finished", [(signal.SIGINT, "rl_text_exact", [0], 1),
                                                             (signal.SIGTERM, "rl_text_exact", [0], 1),
                                                             (signal.SIGTERM, "base", [0, 1], 0)])
def test_a_signal_stops_the_study_after_its_running_run_checkpointed(tmp_path, monkeypatch, signum, slow, seeds,
                                                                      finished):
  """Ctrl-C or SIGTERM while a run trains: the train process gets the signal exactly once (twice would stop it
  without a checkpoint), no queued run starts, and the study ends with StudyStopped (the CLI's exit status 0). The
  stop during a base run lets go of the runs waiting for a base model that will not be made (seed 1's)."""
  monkeypatch.setattr(runner, "train_command", lambda spec, method, seed, workdir, overrides, eval_every: [
      sys.executable, "-c", _STAND_IN, runner.run_dir(workdir, seed, method), method, slow])
  spec, config = "experiments/vita.py:tiny", config_lib.load_config_file("experiments/vita.py:tiny")
  started = tmp_path / "seed_0" / slow / "started"

  def send_when_started():
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
      time.sleep(0.05)
    os.kill(os.getpid(), signum)

  handler = signal.getsignal(signum)
  sender = threading.Thread(target=send_when_started)
  sender.start()
  total = 3 * len(seeds)
  with pytest.raises(runner.StudyStopped, match=f"{signal.Signals(signum).name} received.*{finished} of {total} runs "
                                                "finished"):
    study.run_study(spec, config, str(tmp_path), ["rl_text_exact", "sft"], seeds, runner=runner.run_train)
  sender.join()
  assert json.load(open(tmp_path / "seed_0" / slow / "signals")) == [int(signum)]
  assert not os.path.exists(tmp_path / "seed_0" / "sft") and not os.path.exists(tmp_path / "seed_1")
  assert signal.getsignal(signum) is handler   # the study's handler is gone
  # The stopped launch's time is kept, and the launch that finishes the run adds to it.
  stopped = runner.read_times(str(tmp_path))[f"seed_0/{slow}"]
  assert stopped["launches"] == 1 and stopped["seconds"] >= 0.5 and stopped["end"] - stopped["start"] == pytest.approx(
      stopped["seconds"])
  monkeypatch.setattr(runner, "train_command", lambda spec, method, seed, workdir, overrides, eval_every: [
      sys.executable, "-c", _STAND_IN, runner.run_dir(workdir, seed, method), method, "none"])
  runner.run_all(spec, [runner.Study(str(tmp_path))], ["rl_text_exact", "sft"], seeds, 100, 1,
                 str(tmp_path / "cache"))
  resumed = runner.read_times(str(tmp_path))[f"seed_0/{slow}"]
  assert resumed["launches"] == 2 and resumed["start"] == stopped["start"]
  assert stopped["seconds"] < resumed["seconds"] < stopped["seconds"] + resumed["end"] - stopped["end"]


def test_a_train_process_killed_by_the_signal_while_starting_counts_as_stopped(tmp_path, monkeypatch):
  """A train process that gets the passed-on SIGTERM before its own guard is installed (importing, checking the
  config, waiting for the work directory's lock) dies of it (exit -15); the study stops (StudyStopped: exit status
  0, rerun to continue), it does not report a failed run."""
  monkeypatch.setattr(runner, "train_command", lambda spec, method, seed, workdir, overrides, eval_every: [
      sys.executable, "-c", _STAND_IN, runner.run_dir(workdir, seed, method), method, "rl_text_exact", "bare"])
  spec, config = "experiments/vita.py:tiny", config_lib.load_config_file("experiments/vita.py:tiny")
  started = tmp_path / "seed_0" / "rl_text_exact" / "started"

  def send_when_started():
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  sender = threading.Thread(target=send_when_started)
  sender.start()
  with pytest.raises(runner.StudyStopped, match="SIGTERM received.*1 of 3 runs finished"):
    study.run_study(spec, config, str(tmp_path), ["rl_text_exact", "sft"], [0], runner=runner.run_train)
  sender.join()
  assert not (tmp_path / "seed_0" / "rl_text_exact" / "signals").exists()   # it died of the signal
