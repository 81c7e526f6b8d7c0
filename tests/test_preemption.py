"""Preemption and non-finite steps in the real entry point.

SIGTERM during the testbed's base-model SFT and again during hybrid training: each time the job saves,
exits 0, and the rerun continues; the final parameters are bit-identical to an uninterrupted run and
every metric row appears once.
"""
import json
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import config_flags  # noqa: F401  (the CLI's flag parser, used by the subprocess)

from wavalign_jax import checkpointing, train
from wavalign_jax.rewards.base import RewardResult

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 6
OVERRIDES = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 2, "model.num_heads": 2,
    "model.num_kv_heads": 1, "model.head_dim": 16, "data.prompts_per_step": 4, "rollout.group_size": 2,
    "rollout.max_new_tokens": 16, "testbed.base_sft_steps": 12, "testbed.base_batch_size": 8,
    "testbed.base_checkpoint_every": 4, "train.total_steps": TOTAL, "train.checkpoint_every": 4,
    "train.eval_examples": 4, "optim.learning_rate": 1e-3,
}


def _config():
  from experiments import vita
  c = vita.get_config("tiny")
  for dotted, value in OVERRIDES.items():
    section, field = dotted.split(".")
    c[section][field] = value
  return c


def _run_until(workdir, marker: str | None):
  """Runs the CLI; sends SIGTERM once a stdout line contains `marker`. Returns (exit code, stdout)."""
  cmd = [sys.executable, "-m", "wavalign_jax.train", "--config=experiments/vita.py:tiny", f"--workdir={workdir}"]
  cmd += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if marker and marker in line:
      proc.send_signal(signal.SIGTERM)
      marker = None
  return proc.wait(timeout=600), "".join(lines)


def _final_params(workdir):
  return checkpointing.load_host_params(os.path.join(workdir, "checkpoints", str(TOTAL), "state"), key="params")


def _event_steps(logdir):
  """(step, kind) of every scalar / session-start event in the TensorBoard files (TFRecord framing)."""
  from tensorboardX.proto import event_pb2
  out = []
  for name in sorted(os.listdir(logdir)):
    data = open(os.path.join(logdir, name), "rb").read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      if event.HasField("session_log"):
        out.append((event.step, "start"))
      for v in event.summary.value:
        out.append((event.step, v.tag))
  return out


def test_sigterm_during_base_sft_and_training_resumes_exactly(tmp_path):
  straight = train.train(_config(), str(tmp_path / "straight"))
  assert int(straight["state"].step) == TOTAL

  work = str(tmp_path / "interrupted")
  code, out = _run_until(work, "SFT-training the base model")
  assert code == 0, out
  assert "SIGTERM received: the testbed's base-model SFT stopped after step" in out
  assert not os.path.exists(os.path.join(work, "base_model"))
  assert os.listdir(os.path.join(work, "base_model.sft_checkpoints"))

  code, out = _run_until(work, f"[train 2/{TOTAL}")
  assert code == 0, out
  assert "resuming the base-model SFT at step" in out and "SIGTERM received: training stopped after step" in out
  stopped = int(out.split("training stopped after step ")[1].split()[0])
  assert 2 <= stopped < TOTAL
  assert not os.path.exists(os.path.join(work, "base_model.sft_checkpoints"))

  code, out = _run_until(work, None)
  assert code == 0, out
  assert f"resumed from checkpoint step {stopped}" in out

  # Bit-identical to the uninterrupted run: same data order, rollouts, optimizer moments and gate.
  for a, b in zip(*(jax_leaves(_final_params(w)) for w in (str(tmp_path / "straight"), work))):
    np.testing.assert_array_equal(a, b)

  rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
  assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, TOTAL + 1))
  assert [r["split"] for r in rows].count("eval_before") == 1 and [r["split"] for r in rows].count("eval_after") == 1
  # TensorBoard: the resumed writer purges the steps the interrupted run logged after its checkpoint.
  events = _event_steps(os.path.join(work, "tensorboard"))
  assert (stopped + 1, "start") in events

  # A finished work directory is left alone.
  code, out = _run_until(work, None)
  assert code == 0 and "already holds a finished run" in out, out
  assert len([json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]) == len(rows)


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


class _NaNRewards:
  def __init__(self, inner):
    self.inner = inner

  def __call__(self, items):
    r = self.inner(items)
    return RewardResult(np.full_like(r.scores, np.nan), r.failed, r.info)


def test_consecutive_non_finite_steps_stop_the_run(tmp_path, monkeypatch):
  make = train.make_reward_fn
  monkeypatch.setattr(train, "make_reward_fn", lambda *a: _NaNRewards(make(*a)))
  config = _config()
  config.train.max_consecutive_skips = 3
  with pytest.raises(FloatingPointError, match=r"3 consecutive steps \(1..3\) had a non-finite loss"):
    train.train(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["skipped_steps"] for r in rows if r["split"] == "train"] == [1, 2, 3]
