"""The study: statistics on hand-computed cases, claim verdicts, and a quick end-to-end study (1 seed, 2 methods,
a few steps) that is resumed without redoing finished runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wavalign_jax import study


def test_hierarchical_bootstrap_hand_computed():
  """Two seeds with constant items a and b: a draw is a, (a+b)/2 or b with probabilities 1/4, 1/2, 1/4, so the
  95% interval is [a, b] around the estimate (a+b)/2. One seed reduces to the item bootstrap: items 0 and 1 give
  [0, 1]. NaN items (outside a stratum) are ignored."""
  assert study.hierarchical_bootstrap([np.full(5, 0.2), np.full(3, 0.6)]) == pytest.approx((0.4, 0.2, 0.6))
  assert study.hierarchical_bootstrap([np.array([0.0, 1.0, np.nan])]) == pytest.approx((0.5, 0.0, 1.0))
  values = (np.random.default_rng(0).random(3000) < 0.3).astype(float)
  est, lo, hi = study.hierarchical_bootstrap([values])
  normal = 1.96 * values.std() / np.sqrt(len(values))
  assert abs((hi - lo) / 2 - normal) < 0.1 * normal
  with pytest.raises(ValueError, match="at least one item"):
    study.hierarchical_bootstrap([np.array([np.nan])])


def test_verdicts_and_strata():
  assert study.verdict(0.01, 0.2, "greater") == "reproduced"
  assert study.verdict(-0.2, -0.01, "greater") == "not reproduced"
  assert study.verdict(-0.01, 0.2, "greater") == "inconclusive"
  assert study.verdict(-0.2, -0.01, "less") == "reproduced"
  assert study.verdict(0.01, 0.2, "less") == "not reproduced"
  rows = [{"iq": 1.0, "eq": 0.5, "subset": "id", "family": "lookup"},
          {"iq": 0.0, "eq": 0.9, "subset": "ood_style", "family": "arithmetic"}]
  np.testing.assert_array_equal(study.item_values(rows, "id/iq"), [1.0, np.nan])
  np.testing.assert_array_equal(study.item_values(rows, "ood/eq"), [np.nan, 0.9])
  np.testing.assert_array_equal(study.item_values(rows, "arithmetic/iq"), [np.nan, 0.0])
  np.testing.assert_array_equal(study.item_values(rows, "tradeoff"), [0.75, 0.45])


def test_claims_from_rows():
  """sft lowers IQ on every item of both seeds: reproduced; a claim whose methods did not run is left out."""
  item = lambda iq: {"iq": iq, "eq": 0.5, "subset": "id", "family": "lookup"}
  rows = {"base": {0: [item(1.0)] * 4, 1: [item(1.0)] * 4}, "sft": {0: [item(0.0)] * 4, 1: [item(1.0)] * 2 +
                                                                     [item(0.0)] * 2}}
  claims = {c["claim"]: c for c in study.evaluate_claims(rows, [0, 1])}
  assert set(claims) == {"SFT keeps or raises EQ", "SFT lowers IQ"}
  lowers = claims["SFT lowers IQ"]
  assert lowers["verdict"] == "reproduced" and lowers["comparisons"][0]["diff"] == pytest.approx(-0.75)
  assert claims["SFT keeps or raises EQ"]["verdict"] == "inconclusive"   # no difference at all


def _study(workdir, *extra):
  cmd = [sys.executable, "-m", "wavalign_jax.study", "--config=experiments/vita.py:tiny", "--seeds=1",
         "--methods=sft,rl_text", f"--workdir={workdir}", "--eval_every=2",
         "--config.testbed.base_sft_steps=4", "--config.train.total_steps=2", "--config.train.eval_examples=8",
         "--config.model.num_layers=1", "--config.rollout.max_new_tokens=16",
         "--config.data.prompts_per_step=2", "--config.rollout.group_size=2", *extra]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device: the study's own setting
  return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_study_end_to_end_and_resume(tmp_path):
  out = _study(tmp_path)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "study: 3 runs to do" in out.stdout and "[study 3/3]" in out.stdout and "ETA" in out.stdout
  report = json.load(open(tmp_path / "study.json"))
  assert set(report["table"]) == {"base", "sft", "rl_text"}
  for method, metrics in report["table"].items():
    rows = [json.loads(l) for l in open(tmp_path / "seed_0" / method / "eval" / "after.jsonl")]
    assert len(rows) == 16   # 8 rows of each eval set
    mean, lo, hi = metrics["iq"]
    assert mean == pytest.approx(np.mean([r["iq"] for r in rows])) and lo <= mean <= hi
  assert {c["claim"] for c in report["claims"]} == {"SFT keeps or raises EQ", "SFT lowers IQ"}
  assert "lambda" in report["curves"]["rl_text"]["train"] and "eq" in report["curves"]["sft"]["eval"]
  md = open(tmp_path / "study.md").read()
  assert "| sft |" in md and "**verdict**" in md and "Table 3" in md
  for png in ("iq_eq.png", "gates.png", "eq_curve.png"):
    assert os.path.getsize(tmp_path / png) > 1000
  # Every run used the seed's one base model and testbed.
  config = json.load(open(tmp_path / "seed_0" / "rl_text" / "config.json"))
  assert config["init_checkpoint"] == str(tmp_path / "seed_0" / "base" / "base_model")
  assert config["testbed"]["dir"] == str(tmp_path / "seed_0" / "testbed") and config["train"]["total_steps"] == 2

  # Resume: finished runs are kept, a run without its summary is redone.
  os.remove(tmp_path / "seed_0" / "sft" / "eval_summary.json")
  again = _study(tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "study: 1 runs to do" in again.stdout and "seed 0 sft" in again.stdout
  assert json.load(open(tmp_path / "study.json"))["table"]["rl_text"] == report["table"]["rl_text"]


def test_study_refuses_a_config_with_a_method(tmp_path):
  out = subprocess.run([sys.executable, "-m", "wavalign_jax.study", "--config=experiments/vita.py:tiny,hybrid",
                        f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode != 0 and "without a method" in out.stderr
