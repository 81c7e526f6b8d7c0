"""Every method of config_lib.METHODS x both architectures through the train entry point, 2 steps each.

Each method's config is resolved from its experiment file (`experiments/<arch>.py:tiny,<method>`) and run by
`train.train` at unit-test sizes from one shared base model and testbed per architecture, so a method whose
step, batch or reward path breaks (e.g. a step jitted for the wrong number of arguments) fails here, named.
Methods that build the same step hit the session's compilation cache.
"""
import json
import os

import numpy as np
import pytest

from conftest import one_length_bucket
from wavalign_jax import config_lib, train

EXPERIMENTS = {"interleaved": "experiments/vita.py", "parallel": "experiments/kimi.py"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arch: str, method: str, shared: str):
  c = config_lib.load_config_file(os.path.join(ROOT, f"{EXPERIMENTS[arch]}:tiny,{method}"))
  # The smallest models each layout allows (parallel: a shared layer, then the MIMO branch), unrolled: the
  # matrix is compile-bound.
  c.model.update(dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                      scan_layers=False))
  if arch == "parallel":
    c.model.update(dict(num_layers=2, mimo_from_layer=0, num_mimo_layers=1))
  c.data.prompts_per_step = 4
  c.mesh.num_devices = 1   # one of the 8 fake CPU devices: sharding has its own tests, this matrix is about methods
  one_length_bucket(c)
  c.rollout.group_size = 2
  c.rollout.max_new_tokens = 16
  c.testbed.update(dict(dir=os.path.join(shared, "testbed"), base_sft_steps=4, base_batch_size=8))
  c.init_checkpoint = os.path.join(shared, "base", "base_model")
  c.train.update(dict(total_steps=min(c.train.total_steps, 2), checkpoint_every=2, eval_before=False,
                      eval_examples=4))
  return c


@pytest.fixture(scope="module")
def shared_base(tmp_path_factory):
  """arch -> dir with the testbed data and a base model (the `base` method's run, as a study does); built on
  first use, once per architecture and test process."""
  built = {}

  def get(arch: str) -> str:
    if arch not in built:
      shared = str(tmp_path_factory.mktemp(f"smoke_{arch}"))
      c = _config(arch, "base", shared)
      c.init_checkpoint = ""
      train.train(c, os.path.join(shared, "base"))
      built[arch] = shared
    return built[arch]
  return get


def _check_wiring(config, row):
  """A logged step against what the method's own config patch says it is: its λ (0 SFT only, 1 RL only, the fixed
  value, at most λ_max when gated), which loss parts it has, and its RL tokens (the token set's; a group with none
  of it trains on its whole completion)."""
  if config.objective == "dpo":
    assert "lambda" not in row and "rl_loss" not in row and "dpo/reward_margin" in row
    return
  mode = "sft_only" if row["step"] <= config_lib.sft_stage_steps(config) else config.gate.mode
  lam = {"sft_only": 0.0, "rl_only": 1.0, "fixed": config.gate.fixed_lambda}.get(mode)
  if lam is None:
    assert 0.0 <= row["lambda"] <= config.gate.lambda_max
  else:
    assert row["lambda"] == pytest.approx(lam, rel=1e-6)
  assert ("rl_loss" in row) == (mode != "sft_only") and ("sft_loss" in row) == (mode != "rl_only")
  if "rl_loss" in row:
    text, speech, rl = row["rl/num_text_tokens"], row["rl/num_speech_tokens"], row["rl/num_rl_tokens"]
    if config.rl.token_set == "all":
      assert rl == text + speech
    elif row["rl/num_fallback_seqs"] == 0:
      assert rl == text
    else:
      assert text < rl <= text + speech


@pytest.mark.parametrize("method", [m for m in config_lib.METHODS if m != "base"])
@pytest.mark.parametrize("arch", list(EXPERIMENTS))
def test_every_method_trains_two_steps(tmp_path, shared_base, arch, method):
  config = _config(arch, method, shared_base(arch))
  assert config.method == method
  out = train.train(config, str(tmp_path))
  assert int(out.state.step) == 2
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and not r["skipped"] for r in train_rows)
  for r in train_rows:
    _check_wiring(config, r)
  if "rl_loss" in train_rows[-1] and config.reward.kind == "testbed":   # the testbed judge reports true scores
    assert 0.0 <= train_rows[-1]["diversity/informative_semantic"] <= 1.0
  assert "iq" in json.load(open(tmp_path / "eval_summary.json"))["after"]
