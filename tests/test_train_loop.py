"""The train entry point end to end on the testbed: a stopped run resumes exactly where it left off."""
import json
import os

import jax
import numpy as np
import pytest

from wavalign_jax import provenance, train
from wavalign_jax.config_lib import apply_method
from conftest import built_testbed_datasets, tiny_config


def test_stopped_run_resumes_with_same_state(tmp_path, tiny_base):
  """On all 8 devices: the checkpoint holds FSDP-sharded params and optimizer moments. Kimi's layout (two streams,
  the MIMO branch, the feature adaptor: the larger parameter tree); VITA's resume, through the CLI and a SIGTERM, is
  test_preemption's."""
  arch = "parallel"
  def config(**train_fields):
    c = tiny_config(arch, tiny_base(arch))
    c.mesh.num_devices = 0
    c.train.update(train_fields)
    return c
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  full = train.train(config(), str(straight))
  assert sorted(int(s) for s in os.listdir(straight / "checkpoints") if s.isdigit()) == [2, 4]
  first = train.train(config(stop_at_step=2), str(interrupted))
  assert int(first.state.step) == 2
  resumed = train.train(config(), str(interrupted))

  a, b = full.state, resumed.state
  assert int(a.step) == int(b.step) == 4
  # Same data order, same rollouts (the RNG lives in the state), same programs on the same devices: the same
  # optimizer moments, params and gate, bit for bit.
  assert float(b.gate.lam) > 0.0
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               (a.params, a.opt_state, a.gate), (b.params, b.opt_state, b.gate))

  lines = [json.loads(l) for l in open(interrupted / "metrics.jsonl")]
  steps = [l["step"] for l in lines if l["split"] == "train"]
  assert steps == [1, 2, 3, 4]
  launches = provenance.read(str(interrupted))   # one record per launch, with the code it ran
  assert [l["start_step"] for l in launches] == [0, 2]
  assert launches[0]["commit"] == provenance.code_version()["commit"] and launches[0]["processes"] == 1
  for l in lines:
    if l["split"] == "train":
      for key in ("lambda", "lambda_raw", "gate_direction", "gate_info", "reward_max", "reward_var"):
        assert key in l, key
  summary = json.load(open(interrupted / "eval_summary.json"))
  assert set(summary["before"]) == set(summary["after"]) and {"iq", "iq_lo", "iq_hi", "eq", "style", "intelligibility",
                                                               "judge_score", "id/iq"} <= set(summary["after"])
  rows = [json.loads(l) for l in open(interrupted / "eval" / "after.jsonl")]
  assert len(rows) == summary["after"]["id/count"] + summary["after"].get("ood_style/count", 0) + \
      summary["after"].get("ood_question/count", 0)
  assert np.mean([r["iq"] for r in rows]) == pytest.approx(summary["after"]["iq"])


def test_kl_to_the_initial_policy_from_the_loop(tmp_path, tiny_base, monkeypatch):
  """β > 0: reference log-probs from a frozen copy of the initial params, once per rollout batch. At step 1 the
  policy is the reference (KL exactly 0); after an update (the warm-up's first lr is 0) it is not. On Kimi's two
  streams (text and speech KL weighted apart); the per-type KL arithmetic of both layouts is test_objectives'. The
  gradient diagnostics weigh the rows the step weighs (advantages, row weights, fallback: grpo.with_group_fields)."""
  config = tiny_config("parallel", tiny_base("parallel"))
  config.rl.beta_text, config.rl.beta_speech = 0.01, 0.01
  config.train.update(total_steps=3, checkpoint_every=3, analysis_every=2)
  make_steps, seen = train._make_steps, []

  def recording(run):
    fns = make_steps(run)
    return fns._replace(geometry=lambda params, rl: seen.append(rl) or fns.geometry(params, rl))
  monkeypatch.setattr(train, "_make_steps", recording)
  train.train(config, str(tmp_path))
  assert len(seen) == 1 and all(x is not None for x in (seen[0].advantages, seen[0].seq_weight, seen[0].fallback))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if '"train"' in l]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert rows[0]["rl/kl"] == 0.0 and rows[2]["rl/kl"] > 0.0
  # Gradient geometry at train.analysis_every = 2: only at step 2; the text and speech parts add up.
  assert not any(k.startswith("geometry/") for k in rows[0]) and "geometry/snr_text" in rows[1]
  g = {k.split("/")[1]: v for k, v in rows[1].items() if k.startswith("geometry/")}
  # (this tiny base model's rewards may all be equal: zero advantages give zero energies; the math is tested
  # in test_analysis.py)
  assert -1.0 <= g["cosine_text_speech"] <= 1.0 and g["energy_text"] >= 0 and g["energy_speech"] >= 0
  cross = 2 * g["cosine_text_speech"] * (g["energy_text"] * g["energy_speech"]) ** 0.5
  assert g["energy_all"] == pytest.approx(g["energy_text"] + g["energy_speech"] + cross, rel=1e-3, abs=1e-12)
  # float32 testbed: the sampler's KV-cache log-probs and the training forward agree closely
  assert rows[0]["rl/sampler_logp_gap_max"] < 1e-3


def test_ppo_iterations_run_end_to_end(tmp_path, tiny_base):
  """rl.num_iterations = 2 through train(): four steps, the second iteration off-policy (where π_old comes from:
  the stub test below)."""
  config = tiny_config("interleaved", tiny_base("interleaved"))
  config.rl.clip_eps, config.rl.num_iterations = 0.2, 2
  config.train.update(total_steps=4, checkpoint_every=4)
  out = train.train(config, str(tmp_path))
  m = out.metrics
  assert int(out.state.step) == 4
  # The second iteration's ratio is π_θ' / π_old with π_old from the training forward before the update.
  assert m["rl/ratio_mean"] != 1.0 and np.isfinite(m["rl/ratio_mean"]) and 0.0 <= m["rl/clip_frac"] <= 1.0


def test_ppo_iterations_take_pi_old_from_the_training_forward_before_the_update():
  """rl.num_iterations = 3: π_old is the training forward of the params before the first update (not the sampler's
  log-probs, not the updated params'), and every later iteration reuses it with the params it starts from."""
  from types import SimpleNamespace as NS

  class Batch:
    def __init__(self, rl):
      self.rl = rl

    def replace(self, rl):
      return Batch(rl)

  state = lambda step, params: NS(step=step, consecutive_skips=0, skipped_steps=0, params=params)
  forwards, reused = [], []

  def logprobs(params, rl, start):
    forwards.append((params, start))
    return NS(logp={"tokens": f"logp of {params}"})

  def reuse(s, batch, start):
    reused.append((s.params, batch.rl.old_logp, start))
    return state(int(s.step) + 1, f"θ{int(s.step) + 1}"), {}

  fns = train._Steps(update=lambda s, batch, start: (state(1, "θ1"), {}), reuse=reuse, logprobs=logprobs,
                     geometry=None)
  run = NS(cfg=NS(hybrid=NS(rl=NS(num_iterations=3))))
  out, _ = train._update(run, fns, state(0, "θ0"), Batch(NS(replace=lambda old_logp: NS(old_logp=old_logp))), 5,
                         stop_at=10)
  assert int(out.step) == 3 and forwards == [("θ0", 5)]
  assert reused == [("θ1", {"tokens": "logp of θ0"}, 5), ("θ2", {"tokens": "logp of θ0"}, 5)]
  # The run's last steps: iterations stop at stop_at (each is a step), so a run never passes train.total_steps.
  forwards.clear(), reused.clear()
  out, _ = train._update(run, fns, state(8, "θ8"), Batch(NS(replace=lambda old_logp: NS(old_logp=old_logp))), 5,
                         stop_at=10)
  assert int(out.step) == 2 and forwards == [("θ8", 5)] and reused == [("θ1", {"tokens": "logp of θ8"}, 5)]
  out, _ = train._update(run, fns, state(9, "θ9"), Batch(NS(replace=lambda old_logp: NS(old_logp=old_logp))), 5,
                         stop_at=10)
  assert int(out.step) == 1 and forwards == [("θ8", 5)] and len(reused) == 1   # one on-policy update only


def test_a_skipped_ppo_iteration_is_reported_though_a_later_one_applies(capsys):
  """rl.num_iterations > 1: a non-finite first iteration followed by an applied one leaves the step's last state
  with no skip in a row; the skipped one must still be printed (it is counted in skipped_steps)."""
  from types import SimpleNamespace as NS

  class Batch:   # what _update touches of a hybrid batch
    rl = NS(replace=lambda **kw: Batch.rl)

    def replace(self, **kw):
      return self

  after = lambda step, run, total: NS(step=step, consecutive_skips=run, skipped_steps=total, params=None)
  fns = train._Steps(update=lambda state, batch, start: (after(1, 1, 1), {}),   # skipped
                     reuse=lambda state, batch, start: (after(2, 0, 1), {}),    # applied
                     logprobs=lambda *args: NS(logp={}), geometry=None)
  run = NS(cfg=NS(hybrid=NS(rl=NS(num_iterations=2))))
  state, _ = train._update(run, fns, after(0, 0, 0), Batch(), 3, stop_at=10)
  assert int(state.step) == 2
  assert "training step 1: loss, gradient, learning rate or update not finite; nothing applied (1 in a row, 1 in all)" \
      in capsys.readouterr().out


@pytest.mark.parametrize("arch,objective", [("interleaved", "hybrid"), ("parallel", "hybrid"), ("interleaved", "dpo")])
def test_built_datasets_train_and_evaluate_as_the_testbed_does(tmp_path, tiny_base, arch, objective):
  """The path of real weights (`data.source=arrayrecord`: datasets from data/build.py and a converted checkpoint,
  here the testbed's base model) against the testbed's own path on the same JSONL: the same steps, rewards and
  losses (the testbed's judge reads the records' `task` / `style` metadata, which a build keeps), and `data.eval`
  scored with the run's reward, item by item as the testbed's evaluator scores the same responses. The datasets
  are moved after their build and the tokenizer they were built with deleted, as when they are built on a
  workstation and copied to a cluster: the run decodes the rollouts with each dataset's copy. VITA's and Kimi's
  layouts (Kimi's datasets built with the testbed's audio offset, as `--audio_offset` builds a real one), and DPO's
  chosen / rejected datasets."""
  base = tiny_base(arch)
  steps = 3 if objective == "dpo" else 2   # DPO's first step has the policy at the reference (and lr 0): log 2
  def config():
    c = tiny_config(arch, base)
    if objective == "dpo":
      apply_method(c, "dpo_text")
      c.optim.learning_rate = 1e-3
    c.testbed.judge_acoustic_noise = 0.0   # judge = 0.7 semantic + 0.3 (1 + 4 EQ): both in the testbed's rows
    c.train.update(total_steps=steps, checkpoint_every=steps)
    return c
  train.train(config(), str(tmp_path / "testbed_run"))

  c = config()
  c.data.source = "arrayrecord"
  c.data.train, c.data.eval = built_testbed_datasets(base, arch, c, tmp_path, objective)
  files_run = train.train(c, str(tmp_path / "files_run"))

  assert int(files_run.state.step) == steps
  rows = {name: [json.loads(l) for l in open(tmp_path / name / "metrics.jsonl") if '"train"' in l]
          for name in ("testbed_run", "files_run")}
  assert [r["step"] for r in rows["files_run"]] == list(range(1, steps + 1))
  keys = (("loss", "grad_norm", "dpo/reward_margin", "dpo/reward_accuracy") if objective == "dpo" else
          ("reward_mean", "reward_var", "reward/failed", "lambda", "loss", "sft_loss", "rl_loss", "grad_norm"))
  for a, b in zip(rows["testbed_run"], rows["files_run"]):
    for key in keys:
      assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
  if objective == "hybrid":
    assert rows["files_run"][0]["reward_var"] > 0   # the judge's rewards depend on the decoded rollouts
  else:
    # The first step's policy is the reference (margin 0, loss log 2); by the last its margins have moved.
    assert rows["files_run"][0]["loss"] == pytest.approx(np.log(2)) != rows["files_run"][-1]["loss"]

  # data.eval: the greedy responses of the same params, scored by the run's judge, and by the testbed's metrics.
  testbed_items = {r["id"]: r for r in map(json.loads, open(tmp_path / "testbed_run" / "eval" / "after.jsonl"))}
  scored = [json.loads(l) for l in open(tmp_path / "files_run" / "eval" / "after.jsonl")]
  assert len(scored) == c.train.eval_examples and not any(r["failed"] for r in scored)
  for r in scored:
    t = testbed_items[r["id"]]
    assert r["reward"] == pytest.approx(np.clip(0.7 * t["judge_score"] + 0.3 * (1 + 4 * t["eq"]), 1, 5), abs=1e-5)
  after = json.load(open(tmp_path / "files_run" / "eval_summary.json"))["after"]
  assert after["reward"] == pytest.approx(np.mean([r["reward"] for r in scored]), abs=1e-6)
  assert after["reward_lo"] <= after["reward"] <= after["reward_hi"] and after["reward/failed"] == 0


def test_profile_traces_the_steps_asked_for(tmp_path, tiny_base):
  """train.profile_steps: JAX's profiler trace of steps 2..3 (after step 1) in WORKDIR/profile, each step annotated
  with its number."""
  import glob
  import gzip
  c = tiny_config("interleaved", tiny_base("interleaved"))
  c.train.update(total_steps=4, checkpoint_every=4, eval_before=False, profile_start_step=1, profile_steps=2)
  out = train.train(c, str(tmp_path))
  assert int(out.state.step) == 4
  (trace,) = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.trace.json.gz"))
  assert glob.glob(os.path.join(os.path.dirname(trace), "*.xplane.pb"))
  events = json.load(gzip.open(trace))["traceEvents"]
  steps = sorted({int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "args" in e})
  assert steps == [2, 3]
