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

import jax.numpy as jnp
import numpy as np
import pytest

from wavalign_jax import checkpointing, optim, preemption, steps, train
from wavalign_jax.errors import NonFiniteStop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 6
OVERRIDES = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 2, "model.num_heads": 2,
    "model.num_kv_heads": 1, "model.head_dim": 16, "data.prompts_per_step": 4, "rollout.group_size": 2,
    "rollout.max_new_tokens": 16, "testbed.base_sft_steps": 12, "testbed.base_batch_size": 8,
    "testbed.base_checkpoint_every": 4, "train.total_steps": TOTAL, "train.checkpoint_every": 4,
    "train.eval_examples": 4, "optim.learning_rate": 1e-3, "mesh.num_devices": 1,
    "data.max_prompt_len": 80,   # one length bucket (prompt 40 + response 40): one step program per process
}


def _config():
  from experiments import vita
  c = vita.get_config("tiny")
  for dotted, value in OVERRIDES.items():
    section, field = dotted.split(".")
    c[section][field] = value
  return c


def _run_until(workdir, marker: str | None):
  """Runs the CLI; sends SIGTERM once a stdout line contains `marker`. Returns (exit code, stdout).

  The CLI keeps its compiled programs where `train.compilation_cache_dir` says (the session's cache, which the
  in-process run filled), not where the environment's JAX_COMPILATION_CACHE_DIR points: `<workdir>.decoy_cache`,
  which must stay empty."""
  cmd = [sys.executable, "-m", "wavalign_jax.train", "--config=experiments/vita.py:tiny", f"--workdir={workdir}",
         f"--config.train.compilation_cache_dir={os.environ['JAX_COMPILATION_CACHE_DIR']}"]
  cmd += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=f"{workdir}.decoy_cache"))
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
  assert int(straight.state.step) == TOTAL

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
  decoy = work + ".decoy_cache"
  assert not (os.path.exists(decoy) and os.listdir(decoy)), "the CLI compiled into the environment's cache"


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def _nan_learning_rate_from_step_2(monkeypatch, learning_rate):
  """The schedule of the optimizer with peak `learning_rate` is NaN at steps 2..4 (finite where optim.validate
  looks: 0, the end of the warm-up, the end): the loss and the gradient stay finite, only the update is NaN."""
  make = optim.learning_rate_schedule

  def schedule(cfg):
    inner = make(cfg)
    if cfg.learning_rate != learning_rate:
      return inner
    return lambda count: jnp.where((count >= 2) & (count <= 4), jnp.nan, inner(count))
  monkeypatch.setattr(optim, "learning_rate_schedule", schedule)


def _all_finite(path):
  return all(np.isfinite(x).all() for x in jax_leaves(checkpointing.load_host_params(path)))


def test_consecutive_non_finite_updates_stop_the_run_with_finite_checkpoints(tmp_path, monkeypatch):
  config = _config()
  config.train.max_consecutive_skips = 3
  config.train.checkpoint_every = 1
  _nan_learning_rate_from_step_2(monkeypatch, config.optim.learning_rate)
  with pytest.raises(NonFiniteStop, match=r"training stopped: 3 consecutive steps \(3..5\) were not finite; the last "
                                          r"checkpoint, step 4, holds finite parameters") as e:
    train.train(config, str(tmp_path))
  assert e.value.exit_code == 3 and not os.path.exists(tmp_path / "job.lock")
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"train"' in line]
  assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 2, 3]
  # skipped steps log the kept lambda, and the learning rate that was refused
  assert [r["lambda"] for r in rows[2:]] == [rows[1]["lambda"]] * 3 and [r["lr"] for r in rows[2:]] == [None] * 3
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert steps == [2, 3, 4]
  for step in steps:
    assert _all_finite(tmp_path / "checkpoints" / str(step) / "state"), step
  # the skip count is in the checkpoint: a resume (same config) stops after the next skipped step
  with pytest.raises(NonFiniteStop, match=r"3 consecutive steps \(3..5\)"):
    train.train(config, str(tmp_path))


def test_base_model_sft_uses_the_same_guard(tmp_path, monkeypatch, capsys):
  """... and the run's mesh: `mesh.num_devices` = 1 of the 8 fake devices, as training does (it once built every
  device's mesh)."""
  config = _config()
  config.train.max_consecutive_skips = 2
  config.testbed.base_checkpoint_every = 1
  _nan_learning_rate_from_step_2(monkeypatch, config.testbed.base_learning_rate)
  meshes, jit_step = [], steps.jit_step

  def recording_jit_step(fn, state_sharding, mesh):
    meshes.append(mesh)
    return jit_step(fn, state_sharding, mesh)
  monkeypatch.setattr(steps, "jit_step", recording_jit_step)
  with pytest.raises(NonFiniteStop, match=r"the testbed's base-model SFT stopped: 2 consecutive steps \(3..4\)"):
    train.train(config, str(tmp_path))
  assert meshes and all(m.size == config.mesh.num_devices == 1 for m in meshes)
  assert "the testbed's base-model SFT step 3: loss, gradient, learning rate or update not finite" in \
      capsys.readouterr().out
  assert not os.path.exists(tmp_path / "base_model")
  sft = tmp_path / "base_model.sft_checkpoints"
  assert all(_all_finite(sft / s / "state") for s in os.listdir(sft))


def test_a_second_sigterm_is_still_intercepted_a_second_ctrl_c_is_not():
  """Slurm or systemd signal every process of a job, and a study passes its signal on: a train process may get
  SIGTERM twice and must still save its checkpoint. A second Ctrl-C stops at once, as a user expects."""
  before = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.signum == signal.SIGTERM and guard.should_stop()
    assert signal.getsignal(signal.SIGTERM) == guard._handle   # still intercepted
  with preemption.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before   # the next Ctrl-C goes to the process's own handler
