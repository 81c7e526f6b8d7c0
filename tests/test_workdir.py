"""A run's work directory survives real clusters: damaged checkpoints, a second job, a changed config, a torn
metrics line, strict JSON (README "Reliability")."""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from wavalign_jax import checkpointing, config_history, errors, provenance, train, workdir_lock
from wavalign_jax.evaluation import run_summary
from wavalign_jax.checkpointing import NoRestorableCheckpoint
from wavalign_jax.config_history import ConfigChanged
from wavalign_jax.errors import RunError
from wavalign_jax.metric_writer import MetricWriter
from wavalign_jax.workdir_lock import WorkdirLocked

from conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 4


def _config(base: str | None = None):
  c = tiny_config("interleaved", base)
  c.train.update(total_steps=TOTAL, checkpoint_every=1, keep_checkpoints=TOTAL, eval_before=False)
  return c


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_base):
  """A finished tiny run, checkpointed at every step: its work directory."""
  work = tmp_path_factory.mktemp("finished")
  train.train(_config(tiny_base("interleaved")), str(work))
  return work


def _copy_run(src, dst):
  shutil.copytree(src, dst)
  return dst


def _strict(line):
  def refuse(token):
    raise ValueError(f"non-standard JSON constant {token}")
  return json.loads(line, parse_constant=refuse)


def _record(config, workdir, resume_step):
  """What a launch records of its config when it resumes from `resume_step` (None: a new run)."""
  config_history.keep(workdir, resume_step, config_history.check(config, workdir, resume_step))


def _final_params(workdir):
  return checkpointing.load_host_params(os.path.join(workdir, "checkpoints", str(TOTAL), "state"), key="params")


# Reading the truncated checkpoint fails inside Orbax's asyncio loop; a tensorstore callback of that failed read arrives
# after Orbax closed the loop ("Event loop is closed", raised in a background thread and only printed). The failure
# itself is what the test provokes and checks; the late callback is Orbax's noise.
@pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
def test_damaged_checkpoints_and_a_torn_metrics_line_resume_from_the_newest_intact_checkpoint(
    finished_run, tiny_base, tmp_path, capsys):
  src, config = finished_run, _config(tiny_base("interleaved"))
  # Every JSON file the run wrote is strict (a NaN metric is null, never a bare NaN).
  for line in open(src / "metrics.jsonl"):
    _strict(line)
  _strict(open(src / "config.json").read())
  _strict(open(src / "eval_summary.json").read())
  for line in open(src / "eval" / "after.jsonl"):
    _strict(line)

  work = _copy_run(src, tmp_path / "damaged")
  # 4: a data file truncated (a node died mid-write, a disk error); 3: no _METADATA; 2: no iterator file.
  data_files = [os.path.join(work / "checkpoints/4/state/d", f) for f in os.listdir(work / "checkpoints/4/state/d")]
  os.truncate(max(data_files, key=os.path.getsize), 10)
  os.remove(work / "checkpoints/3/state/_METADATA")
  os.remove(work / "checkpoints/2/data/process_0-of-1.json")
  # killed while Orbax wrote step 5: its temporary directory is left behind
  os.makedirs(work / "checkpoints" / "5.orbax-checkpoint-tmp-1733" / "state")
  # kill -9 while a metric row was being written
  rows = open(work / "metrics.jsonl").read()
  with open(work / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "split": "train", "lo')
  capsys.readouterr()

  config.train.keep_checkpoints = TOTAL + 1   # a free field changed: kept as the config of the step resumed from
  resumed = train.train(config, str(work))
  out = capsys.readouterr().out
  failed = [line for line in out.splitlines() if "failed to restore" in line]
  assert [line.split()[1] for line in failed] == ["4", "3", "2"], out
  assert "byte range" in failed[0] and "process_0-of-1.json" in failed[2]
  assert all(len(line) < 300 for line in failed) and "Traceback" not in out, failed
  assert "resumed from checkpoint step 1" in out
  assert f"{work / 'metrics.jsonl'}" in out and "torn last line" in out
  assert sorted(os.listdir(work / "checkpoints.damaged")) == ["2", "3", "4"]
  assert not any("tmp" in name for name in os.listdir(work / "checkpoints"))   # the interrupted save removed
  # Steps 2..4 are redone exactly: the same parameters as the undamaged run, each step logged once.
  assert int(resumed.state.step) == TOTAL
  for a, b in zip(*(jax_leaves(_final_params(w)) for w in (src, work))):
    np.testing.assert_array_equal(a, b)
  lines = open(work / "metrics.jsonl").read().splitlines()
  assert [_strict(line)["step"] for line in lines if '"train"' in line] == [1, 2, 3, 4]
  assert lines[0] == rows.splitlines()[0]
  # The history names the step the run resumed from, not the newest (damaged) checkpoint it found.
  assert sorted(n for n in os.listdir(work) if n.startswith("config.")) == ["config.1.json", "config.json"]
  assert json.load(open(work / "config.1.json"))["train"]["keep_checkpoints"] == TOTAL + 1
  assert [launch["start_step"] for launch in provenance.read(str(work))][-1] == 1


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


_FULL_DISK = """
import os, resource, signal, sys
import numpy as np
from wavalign_jax import checkpointing
ckpt = checkpointing.Checkpointer(sys.argv[1], keep=3, async_save=False)
ckpt.save(1, {"w": np.zeros(100, np.float32)})
# Files may not grow past 64 KiB from here on (as on a full disk or an exhausted quota: the write fails with an OS
# error, here EFBIG, inside TensorStore).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
try:
  ckpt.save(2, {"w": np.random.default_rng(0).random(100_000).astype(np.float32)})
except checkpointing.SaveFailed as e:
  print(f"SaveFailed: {e}")
"""


def test_a_save_the_filesystem_refuses_is_a_one_line_error_naming_the_checkpoint_to_resume_from(tmp_path):
  """A checkpoint that cannot be written (disk full, quota, a file-size limit; here a real OS limit under Orbax and
  TensorStore in a separate process) stops the run with a RunError naming the failure and the newest complete
  checkpoint, not a traceback of hundreds of lines; that checkpoint still restores."""
  directory = tmp_path / "checkpoints"
  proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(directory)], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("SaveFailed")]
  assert len(lines) == 1, proc.stdout + proc.stderr
  assert f"saving checkpoint 2 in {directory} failed" in lines[0] and "File too large" in lines[0]
  assert "; the newest complete checkpoint is step 1: make room" in lines[0] and len(lines[0]) < 600
  restored = checkpointing.Checkpointer(str(directory), async_save=False).restore(
      {"w": jax.ShapeDtypeStruct((100,), np.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))})
  np.testing.assert_array_equal(restored["w"], np.zeros(100, np.float32))


def test_a_full_disk_under_the_metrics_is_a_one_line_error(tiny_base, tmp_path, monkeypatch):
  """Not only checkpoints fill a disk: a refused metrics row stops the run with the file and the way to resume."""
  write = MetricWriter.write

  def disk_full_at_step_2(writer, step, metrics, **kwargs):
    if step == 2:
      raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))
    return write(writer, step, metrics, **kwargs)

  monkeypatch.setattr(MetricWriter, "write", disk_full_at_step_2)
  config = _config(tiny_base("interleaved"))
  config.train.log_every = 1
  with pytest.raises(RunError, match=r"writing .*metrics.jsonl failed \(No space left on device\): make room .*"
                                     r"resume from the newest complete checkpoint"):
    train.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "job.lock")


def test_checkpoint_every_minutes_saves_when_the_time_has_passed(tiny_base, tmp_path):
  """train.checkpoint_every_minutes: a checkpoint once that much time passed since the last (here a few
  milliseconds: every step), besides the step cadence (off here) and the last step; an hour: only the last."""
  for minutes, want in ((1e-4, [1, 2, 3, 4]), (60.0, [4])):
    c = _config(tiny_base("interleaved"))
    c.train.update(checkpoint_every=0, checkpoint_every_minutes=minutes)
    work = tmp_path / f"every_{minutes}"
    train.train(c, str(work))
    assert sorted(int(s) for s in os.listdir(work / "checkpoints") if s.isdigit()) == want


def test_no_restorable_checkpoint_is_a_short_error_naming_the_steps(finished_run, tiny_base, tmp_path):
  src, config = finished_run, _config(tiny_base("interleaved"))
  work = _copy_run(src, tmp_path / "all_damaged")
  for step in range(1, TOTAL + 1):
    os.remove(work / f"checkpoints/{step}/state/_METADATA")
  with pytest.raises(NoRestorableCheckpoint, match=r"restores \(tried steps 4, 3, 2, 1;"):
    train.train(config, str(work))
  assert sorted(os.listdir(work / "checkpoints")) == ["1", "2", "3", "4"]   # nothing moved or lost


@pytest.mark.parametrize("refusal", [
    PermissionError(errno.EACCES, "Permission denied", "checkpoints/4/state/d/0"),
    ValueError("NOT_FOUND: Error opening file: [os_error_code=116] Stale file handle"),   # TensorStore's wording
])
def test_a_read_the_storage_refuses_stops_the_resume_and_moves_nothing(finished_run, tiny_base, tmp_path,
                                                                      monkeypatch, refusal):
  """A permission or a stale network mount is not damage: falling back to an older checkpoint (and moving the
  newest aside) would throw away an intact one."""
  work = _copy_run(finished_run, tmp_path / "refused")
  restore = ocp.CheckpointManager.restore

  def refuse_the_newest(manager, step, *args, **kwargs):
    if step == TOTAL:
      raise refusal
    return restore(manager, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", refuse_the_newest)
  with pytest.raises(RunError, match=rf"checkpoint {TOTAL} in .* could not be read .*nothing was moved"):
    train.train(_config(tiny_base("interleaved")), str(work))
  assert sorted(os.listdir(work / "checkpoints")) == ["1", "2", "3", "4"]
  assert not os.path.exists(work / "checkpoints.damaged")


def test_a_checkpoint_of_another_number_of_hosts_is_refused_not_set_aside(finished_run, tiny_base, tmp_path):
  """Each process saves its own data position; on another number of processes none restores. That is not damage."""
  work = _copy_run(finished_run, tmp_path / "hosts")
  for step in range(1, TOTAL + 1):
    data = work / f"checkpoints/{step}/data"
    os.rename(data / "process_0-of-1.json", data / "process_0-of-2.json")
    shutil.copy(data / "process_0-of-2.json", data / "process_1-of-2.json")
  with pytest.raises(RunError, match=rf"checkpoint {TOTAL} .* was written by 2 processes .* this launch has 1"):
    train.train(_config(tiny_base("interleaved")), str(work))
  assert sorted(os.listdir(work / "checkpoints")) == ["1", "2", "3", "4"]
  assert not os.path.exists(work / "checkpoints.damaged")


def test_resume_with_another_experiment_is_refused_with_the_changed_fields(finished_run, tiny_base, tmp_path):
  src, config = finished_run, _config(tiny_base("interleaved"))
  work = _copy_run(src, tmp_path / "changed")
  saved = open(work / "config.json").read()
  from wavalign_jax.config_lib import apply_method
  apply_method(config, "rl_full")
  config.rollout.group_size = 3
  config.train.total_steps = 8          # step counts and cadences may change
  config.train.checkpoint_every = 4
  config.data.worker_count = 1          # operational, but the checkpointed data position would not restore
  with pytest.raises(ConfigChanged) as e:
    train.train(config, str(work))
  message = str(e.value)
  assert "gate.mode: \"dynamic\" -> \"rl_only\"" in message and "method: \"hybrid\" -> \"rl_full\"" in message
  assert "rl.token_set: \"text\" -> \"all\"" in message and "rollout.group_size: 2 -> 3" in message
  assert "data.worker_count: 0 -> 1" in message
  assert "total_steps" not in message and "checkpoint_every" not in message
  assert open(work / "config.json").read() == saved and not os.path.exists(work / "job.lock")


@pytest.mark.parametrize("made", ["testbed", "base_model", "base_model.sft_checkpoints"])
def test_relaunch_before_the_first_checkpoint_checks_the_config_once_testbed_state_exists(tmp_path, made):
  """A launch killed before its first checkpoint may already have made the testbed's data, base model or the base
  model's SFT checkpoints from its config: a relaunch with another experiment is refused, not trained on them."""
  config = _config()
  _record(config, str(tmp_path), None)   # what the first launch wrote
  os.makedirs(tmp_path / made)
  config.testbed.base_sft_steps += 1
  config.optim.learning_rate *= 2
  with pytest.raises(ConfigChanged) as e:
    train.train(config, str(tmp_path))
  assert "testbed.base_sft_steps: " in str(e.value) and "optim.learning_rate: " in str(e.value)
  assert not os.path.exists(tmp_path / "config.0.json")
  shutil.rmtree(tmp_path / made)   # nothing made yet: a relaunch may fix its config freely
  assert not train._holds_testbed_state(str(tmp_path))


def test_inputs_written_again_in_place_are_refused_on_resume(tmp_path):
  """The same paths with other contents are another experiment: a checkpoint saved again at init_checkpoint (a
  resumed run's frozen reference would change) or a dataset rebuilt in place with other records (its checkpointed
  data position would point into other data). Inputs recorded without an identity are not compared."""
  from wavalign_jax.models.config import ModelConfig
  config = _config()
  model_cfg = ModelConfig(**{**config.model.to_dict(), "vocab_size": 64})
  ckpt, data = tmp_path / "ckpt", tmp_path / "data"
  checkpointing.save_params(str(ckpt), {"w": np.zeros(3, np.float32)}, model_cfg)
  data.mkdir()
  info = {"shards": [], "content_sha256": "1" * 64}
  (data / "dataset_info.json").write_text(json.dumps(info))
  config.init_checkpoint, config.data.train = str(ckpt), str(data)
  work = str(tmp_path / "work")
  os.makedirs(work)
  _record(config, work, None)
  assert set(json.load(open(os.path.join(work, "config.json")))["inputs"]) == {"init_checkpoint", "data.train"}
  _record(config, work, 2)                    # unchanged inputs: nothing new
  assert not os.path.exists(os.path.join(work, "config.2.json"))

  checkpointing.save_params(str(ckpt), {"w": np.zeros(3, np.float32)}, model_cfg)   # the same weights, saved again
  with pytest.raises(ConfigChanged, match=r"inputs.init_checkpoint: \"\w+\" -> \"\w+\" \(init_checkpoint names the "
                                          r"same path, whose contents were written again since\)"):
    _record(config, work, 4)
  config.train.allow_config_change = True
  _record(config, work, 4)                    # accepted, and the new identity recorded
  config.train.allow_config_change = False
  _record(config, work, 5)

  (data / "dataset_info.json").write_text(json.dumps({**info, "content_sha256": "2" * 64}))
  with pytest.raises(ConfigChanged, match=r"inputs.data.train: \"1+\" -> \"2+\""):
    _record(config, work, 6)
  (data / "dataset_info.json").write_text(json.dumps({"shards": []}))   # built before datasets carried one
  _record(config, work, 6)
  assert not os.path.exists(os.path.join(work, "config.6.json"))
  # Another path with other contents: the path's change is listed, and its identity's without "written again".
  other = tmp_path / "other"
  other.mkdir()
  (other / "dataset_info.json").write_text(json.dumps({**info, "content_sha256": "3" * 64}))
  (data / "dataset_info.json").write_text(json.dumps({**info, "content_sha256": "4" * 64}))
  config.train.allow_config_change = True
  _record(config, work, 7)   # the recorded identity is "4..." from here on
  config.train.allow_config_change = False
  config.data.train = str(other)
  with pytest.raises(ConfigChanged) as e:
    _record(config, work, 8)
  assert "data.train: " in str(e.value) and "inputs.data.train: " in str(e.value)
  assert "written again" not in str(e.value)


def test_config_history_keeps_every_config_of_a_run(tmp_path):
  config = _config()
  _record(config, str(tmp_path), None)
  first = open(tmp_path / "config.json").read()
  config.train.total_steps = 10                            # free: no error, the new config is kept
  _record(config, str(tmp_path), 4)
  assert json.load(open(tmp_path / "config.4.json"))["train"]["total_steps"] == 10
  _record(config, str(tmp_path), 6)          # same as the latest recorded: nothing new
  assert not os.path.exists(tmp_path / "config.6.json")
  config.optim.learning_rate = 5e-4
  with pytest.raises(ConfigChanged, match=r"optim.learning_rate: 0.001 -> 0.0005"):
    _record(config, str(tmp_path), 8)
  config.train.allow_config_change = True
  _record(config, str(tmp_path), 8)
  assert json.load(open(tmp_path / "config.8.json"))["optim"]["learning_rate"] == 5e-4
  assert open(tmp_path / "config.json").read() == first   # config.json stays the first
  config.train.allow_config_change = False                # the latest recorded config is the reference now
  _record(config, str(tmp_path), 10)
  assert not os.path.exists(tmp_path / "config.10.json")
  # A path spelled another way (relative, absolute) that resolves to the same file is the same experiment.
  os.makedirs(tmp_path / "data")
  config.data.train = str(tmp_path / "data")
  config.train.allow_config_change = True
  _record(config, str(tmp_path), 12)
  config.train.allow_config_change = False
  config.data.train = os.path.relpath(tmp_path / "data")
  _record(config, str(tmp_path), 14)
  assert not os.path.exists(tmp_path / "config.14.json")
  config.data.train = str(tmp_path / "other")
  with pytest.raises(ConfigChanged, match="data.train: "):
    _record(config, str(tmp_path), 16)
  # A change accepted at step 16 whose launch ended before its next checkpoint (out of memory) trained nothing:
  # resuming at 16 again with the config every checkpoint was trained with is no change.
  config.train.allow_config_change = True
  _record(config, str(tmp_path), 16)
  assert os.path.exists(tmp_path / "config.16.json")
  config.train.allow_config_change = False
  config.data.train = str(tmp_path / "data")
  _record(config, str(tmp_path), 16)
  assert not os.path.exists(tmp_path / "config.16.json")   # the abandoned change is not the run's history
  config.data.train = str(tmp_path / "other")
  with pytest.raises(ConfigChanged, match=f'data.train: "{tmp_path / "data"}" -> "{tmp_path / "other"}"'):
    _record(config, str(tmp_path), 18)
  # The checkpoints moved away: a new run, whose history must not be an earlier attempt's config.8.json.
  config = _config()
  _record(config, str(tmp_path), None)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "data"]
  _record(config, str(tmp_path), 2)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "data"]


def test_a_run_recorded_with_a_retired_field_resumes(tmp_path):
  """`layout.kind` (it always equalled model.arch) is gone from the configs: a run that recorded it is the same
  experiment without it."""
  config = _config()
  _record(config, str(tmp_path), None)
  saved = json.load(open(tmp_path / "config.json"))
  saved["layout"]["kind"] = config.model.arch
  (tmp_path / "config.json").write_text(json.dumps(saved))
  _record(config, str(tmp_path), 2)
  assert not os.path.exists(tmp_path / "config.2.json")


def test_a_run_recorded_before_a_field_was_added_resumes_at_its_former_behaviour(tmp_path):
  """`reward.decoder_command` / `decoder_url` / `decoder_timeout_s` came later: a run recorded without them is the
  same experiment at their defaults (the judge read the transcript only, as it does now: no config.<step>.json is
  written for them), and another with an audio decoder set."""
  config = _config()
  _record(config, str(tmp_path), None)
  saved = json.load(open(tmp_path / "config.json"))
  for field in ("decoder_command", "decoder_url", "decoder_timeout_s"):
    del saved["reward"][field]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  _record(config, str(tmp_path), 2)
  assert not os.path.exists(tmp_path / "config.2.json")
  config.reward.decoder_url = "http://127.0.0.1:9/decode"
  with pytest.raises(ConfigChanged, match='reward.decoder_url: "<absent>" -> "http://127.0.0.1:9/decode"'):
    _record(config, str(tmp_path), 2)


def test_a_longer_run_on_resume_says_how_its_learning_rate_jumps(tmp_path, capsys):
  """train.total_steps is free (a run may be continued), but the cosine decay runs over it: a run that ended at
  its final rate continues at a higher one. Peak 1e-3, no warmup, ending at step 4 (rate 0); stretched to 8 steps,
  step 4 is half-way down the cosine: 1e-3 * (1 + cos(pi / 2)) / 2 = 5e-4."""
  config = _config()
  config.optim.update(learning_rate=1e-3, warmup_steps=0, end_learning_rate=0.0)
  _record(config, str(tmp_path), None)
  capsys.readouterr()
  _record(config, str(tmp_path), 4)
  assert "learning-rate schedule" not in capsys.readouterr().out
  config.train.total_steps = 8
  _record(config, str(tmp_path), 4)
  assert ("warning: train.total_steps changed: the learning-rate schedule (warmup, then cosine decay to "
          "optim.end_learning_rate over train.total_steps) gives 0.0005 at step 4 where the run's was 0"
          in capsys.readouterr().out)


# ----------------------------------------------------------------------------- one job per work directory


@pytest.fixture
def live_pid():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  yield proc.pid
  proc.kill()
  proc.wait()


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, pid, host=None, **fields):
  """A lock as a job of this code writes it (fields=None: pid_ns left out, as before it was recorded)."""
  os.makedirs(workdir, exist_ok=True)
  lock = {"host": host or socket.gethostname(), "pid_ns": workdir_lock._pid_namespace(), "pid": pid,
          "start": 1700000000.0, **fields}
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), "w") as f:
    json.dump({k: v for k, v in lock.items() if v is not None}, f)


def test_a_second_job_is_refused_and_writes_nothing(tmp_path, live_pid):
  work = tmp_path / "run"
  _write_lock(work, live_pid)
  with pytest.raises(WorkdirLocked, match=rf"in use by another job \(host '{socket.gethostname()}', pid {live_pid}"):
    train.train(_config(), str(work))
  assert os.listdir(work) == [workdir_lock.LOCK_FILE]


@pytest.mark.parametrize("where", [dict(host="other-host"), dict(pid_ns="another-container")])
def test_a_lock_no_pid_can_check_is_held_while_renewed_and_taken_over_when_not(tmp_path, monkeypatch, capsys, where):
  """Another host's lock, or one from another pid namespace on this host (containers sharing the host's name; the
  holder may even have our pid): whether its job lives is seen from the lock's renewals, not from its pid."""
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  monkeypatch.setattr(workdir_lock, "LEASE_S", 2.0)   # far above the renewals' 0.05 s, even on a loaded machine
  lock = tmp_path / workdir_lock.LOCK_FILE
  _write_lock(tmp_path, os.getpid(), **where)
  stop = threading.Event()

  def holder_alive():   # the holder's heartbeat
    while not stop.wait(0.05):
      os.utime(lock)

  alive = threading.Thread(target=holder_alive)
  alive.start()
  try:
    with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"):
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    stop.set()
    alive.join()
  assert json.load(open(lock))["pid"] == os.getpid() and json.load(open(lock))["host"] == where.get(
      "host", socket.gethostname())   # still the other job's
  # Its job is gone: the lock stays untouched for LEASE_S and is taken over.
  with workdir_lock.hold(str(tmp_path)):
    assert json.load(open(lock))["host"] == socket.gethostname()
    first = os.stat(lock).st_mtime_ns
    time.sleep(0.3)
    assert os.stat(lock).st_mtime_ns > first   # and renewed by its new holder
  assert "taking it over" in capsys.readouterr().out and not lock.exists()
  # A lock of the code before pid namespaces were recorded is never renewed: from another host, refused at once.
  _write_lock(tmp_path, os.getpid(), **{**where, "pid_ns": None})
  if "host" in where:
    with pytest.raises(WorkdirLocked, match="other-host"):
      with workdir_lock.hold(str(tmp_path)):
        pass


def test_a_job_whose_lock_was_taken_over_stops_without_saving(tiny_base, tmp_path, monkeypatch):
  """A job stalled past the lease (suspended, a hung mount) wakes to find another job holding its work directory:
  it stops after the step it is in (WorkdirLost), writing neither that step's metrics nor its checkpoint, and
  leaves the other job's lock alone."""
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  config = _config(tiny_base("interleaved"))
  update = train._update

  def taken_over_during_step_2(run, fns, state, *args):
    if int(state.step) == 1:
      _write_lock(tmp_path, os.getpid(), host="other-host")
      time.sleep(0.5)   # ten heartbeats: the holder's sees the lock is not its own
    return update(run, fns, state, *args)

  monkeypatch.setattr(train, "_update", taken_over_during_step_2)
  with pytest.raises(workdir_lock.WorkdirLost, match=r"taken over while this job ran \(now held by host 'other-host'"):
    train.train(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1]
  assert json.load(open(tmp_path / workdir_lock.LOCK_FILE))["host"] == "other-host"
  # A removed lock (someone judged the job dead) is lost too; leaving the directory forgets it.
  with workdir_lock.hold(str(tmp_path / "b")):
    workdir_lock.check_held()
    os.remove(tmp_path / "b" / workdir_lock.LOCK_FILE)
    time.sleep(0.5)
    with pytest.raises(workdir_lock.WorkdirLost, match="removed"):
      workdir_lock.check_held()
  workdir_lock.check_held()


def test_a_job_whose_lock_was_taken_over_during_an_evaluation_writes_none_of_it(tiny_base, tmp_path, monkeypatch):
  """An evaluation (minutes at scale) may outlast the lease: a job that finds its work directory taken over when
  the evaluation ends writes neither its rows nor its metrics row (the new holder evaluates that step again, as a
  resume owes it: `train._evaluate_missed`)."""
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  config = _config(tiny_base("interleaved"))
  config.train.eval_every = 2
  evaluate = train.evaluate

  def taken_over_while_evaluating(*args, **kwargs):
    _write_lock(tmp_path, os.getpid(), host="other-host")
    time.sleep(0.5)   # ten heartbeats
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(train, "evaluate", taken_over_while_evaluating)
  with pytest.raises(workdir_lock.WorkdirLost, match="now held by host 'other-host'"):
    train.train(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]   # step 2 saved before its evaluation
  assert [json.loads(line)["split"] for line in open(tmp_path / "metrics.jsonl")] == ["train", "train"]
  assert not (tmp_path / run_summary.ROWS_DIR).exists()


def test_an_empty_lock_is_watched_then_taken_over_or_read_once_written(tmp_path, monkeypatch, live_pid):
  """Without hard links the lock is created empty and then written: a job killed in between leaves it empty for
  good (taken over after the lease); a job writing it now fills it within the lease (then it holds the directory)."""
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  monkeypatch.setattr(workdir_lock, "LEASE_S", 0.5)
  lock = tmp_path / workdir_lock.LOCK_FILE
  lock.write_text("")
  with workdir_lock.hold(str(tmp_path)):
    assert json.load(open(lock))["pid"] == os.getpid()
  assert not lock.exists()
  monkeypatch.setattr(workdir_lock, "LEASE_S", 30.0)
  lock.write_text("")
  writing = threading.Timer(0.2, _write_lock, [tmp_path, live_pid])
  writing.start()
  t0 = time.monotonic()
  with pytest.raises(WorkdirLocked, match=f"pid {live_pid}"):
    with workdir_lock.hold(str(tmp_path)):
      pass
  writing.join()
  assert time.monotonic() - t0 < 30   # refused once the holder was readable, not after the lease


def test_a_lock_released_while_watched_is_taken(tmp_path, monkeypatch):
  """The other host's job ends while this one watches its lock: this job then takes the free directory."""
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  monkeypatch.setattr(workdir_lock, "LEASE_S", 30.0)
  _write_lock(tmp_path, 1, host="other-host")
  release = threading.Timer(0.3, os.remove, [tmp_path / workdir_lock.LOCK_FILE])
  release.start()
  t0 = time.monotonic()
  with workdir_lock.hold(str(tmp_path)):
    assert json.load(open(tmp_path / workdir_lock.LOCK_FILE))["host"] == socket.gethostname()
  release.join()
  assert time.monotonic() - t0 < 30   # not after the lease: as soon as it was released


def test_without_hard_links_the_lock_is_an_exclusive_create(tmp_path, monkeypatch, live_pid):
  """Filesystems without hard links (gcsfuse, s3fs): the lock is still taken once, and a second job refused; a
  lock another job took over while this one moved the stale one aside is put back, not lost."""
  def no_links(src, dst):
    raise PermissionError(1, "Operation not permitted")
  monkeypatch.setattr(os, "link", no_links)
  with workdir_lock.hold(str(tmp_path)):
    assert json.load(open(tmp_path / workdir_lock.LOCK_FILE))["pid"] == os.getpid()
  _write_lock(tmp_path, live_pid)
  with pytest.raises(WorkdirLocked, match=f"pid {live_pid}"):
    with workdir_lock.hold(str(tmp_path)):
      pass

  lock = tmp_path / workdir_lock.LOCK_FILE
  _write_lock(tmp_path, _dead_pid())
  rename = os.rename

  def taken_over_meanwhile(src, dst):   # job B replaces the stale lock just before this job moves it aside
    if src == str(lock):
      _write_lock(tmp_path, live_pid)
    rename(src, dst)

  monkeypatch.setattr(os, "rename", taken_over_meanwhile)
  with pytest.raises(WorkdirLocked, match=f"pid {live_pid}"):
    with workdir_lock.hold(str(tmp_path)):
      pass
  assert json.load(open(lock))["pid"] == live_pid and sorted(os.listdir(tmp_path)) == [workdir_lock.LOCK_FILE]


def test_cli_second_job_stops_at_once_with_a_message(tmp_path, live_pid):
  work = tmp_path / "run"
  _write_lock(work, live_pid)
  proc = subprocess.run([sys.executable, "-m", "wavalign_jax.train", "--config=experiments/vita.py:tiny",
                         f"--workdir={work}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  assert f"pid {live_pid}" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
  assert os.listdir(work) == [workdir_lock.LOCK_FILE]   # not even the log file


def test_stale_lock_is_taken_over_with_a_warning_and_released(tmp_path, capsys):
  dead = _dead_pid()
  _write_lock(tmp_path, dead)
  with workdir_lock.hold(str(tmp_path)):
    holder = json.load(open(tmp_path / workdir_lock.LOCK_FILE))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with workdir_lock.hold(str(tmp_path)):   # re-entrant: main() and train() both hold it
      pass
    assert os.path.exists(tmp_path / workdir_lock.LOCK_FILE)
  assert f"pid {dead}" in capsys.readouterr().out
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_FILE)
  # released on errors too
  with pytest.raises(RuntimeError):
    with workdir_lock.hold(str(tmp_path)):
      raise RuntimeError("boom")
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_FILE)


def test_learning_rate_1e39_stops_with_a_message_before_any_checkpoint(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "wavalign_jax.train", "--config=experiments/vita.py:tiny",
                         f"--workdir={tmp_path}", "--config.optim.learning_rate=1e39"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  assert "--config.optim.learning_rate=1e+39: must be a finite" in proc.stderr
  assert "Traceback" not in proc.stderr + proc.stdout
  assert not os.path.exists(tmp_path / "checkpoints" / "1") and not os.path.exists(tmp_path / "job.lock")


# ----------------------------------------------------------------------------- metrics.jsonl


def test_torn_last_metrics_line_is_dropped_and_rows_are_strict_json(tmp_path, capsys):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "split": "train", "loss": 2.0}\n'
                  '{"step": 3, "split": "tr')
  writer = MetricWriter(str(tmp_path), resume_step=2, tensorboard=False)
  writer.write(3, {"loss": float("nan"), "lr": np.float32(np.inf), "x": 0.5}, echo=False)
  writer.close()
  assert f"{path}:3: dropping a torn last line" in capsys.readouterr().out
  rows = [_strict(line) for line in open(path)]
  assert rows[-1] == {"step": 3, "split": "train", "loss": None, "lr": None, "x": 0.5} and len(rows) == 3
  # a damaged line that is not the last was not torn by a kill: named, nothing rewritten
  path.write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
  with pytest.raises(RunError, match=r"metrics.jsonl:2 is not a JSON row"):
    MetricWriter(str(tmp_path), resume_step=3, tensorboard=False)
  assert path.read_text() == '{"step": 1}\n{"step": 2, oops\n{"step": 3}\n'


def test_non_finite_testbed_and_reward_knobs_are_refused_at_start_up(tmp_path):
  config = _config()
  config.testbed.judge_acoustic_noise = float("nan")
  config.reward.fallback_score = float("inf")
  with pytest.raises(RunError, match=r"--config.testbed.judge_acoustic_noise=nan, --config.reward.fallback_score=inf"):
    train.train(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_an_evaluation_owed_at_a_preempted_step_runs_on_resume(tiny_base, tmp_path, monkeypatch):
  """A preemption signal during a step that crosses `train.eval_every` saves the checkpoint and stops before that
  step's evaluation; the resumed run evaluates that step first, so the curve keeps the point (and only once)."""
  config = _config(tiny_base("interleaved"))
  config.train.update(eval_every=2, eval_examples=8)
  update = train._update

  def signalled_during_step_2(run, fns, state, *args):
    out = update(run, fns, state, *args)
    if int(out[0].step) == 2:
      run.guard.signum = signal.SIGTERM
    return out

  monkeypatch.setattr(train, "_update", signalled_during_step_2)
  assert train.train(config, str(tmp_path)) == train.TrainResult(preempted_at=2)
  assert not os.path.exists(tmp_path / "eval" / "step_2.jsonl")
  monkeypatch.setattr(train, "_update", update)
  train.train(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["split"]) for r in rows if r["split"] != "train"] == [(2, "eval"), (4, "eval_after")]
  assert os.path.exists(tmp_path / "eval" / "step_2.jsonl")
  # A finished run is left alone.
  train.train(config, str(tmp_path))
  assert [json.loads(line) for line in open(tmp_path / "metrics.jsonl")] == rows


def test_a_run_cannot_be_shortened_below_the_steps_it_trained(finished_run, tiny_base, tmp_path):
  """train.total_steps is free to change on resume, but not below the restored step: the final evaluation would be
  labelled with a step the state is not at (and a later continuation would file it as that step's point)."""
  work = _copy_run(finished_run, tmp_path / "shortened")
  before = {p: (work / p).read_bytes() for p in ("metrics.jsonl", "eval_summary.json", "launches.jsonl")}
  config = _config(tiny_base("interleaved"))
  config.train.total_steps = TOTAL - 2
  with pytest.raises(errors.ConfigError, match=f"has trained {TOTAL} steps, more than --config.train.total_steps="
                                               f"{TOTAL - 2}"):
    train.train(config, str(work))
  assert {p: (work / p).read_bytes() for p in before} == before
  assert not os.path.exists(work / f"config.{TOTAL}.json") and not os.path.exists(work / "job.lock")


def test_a_new_run_clears_an_earlier_attempts_evaluations(tiny_base, tmp_path):
  """A directory without training state but with an earlier attempt's evaluation files (its checkpoints deleted to
  start again): the summary would mark the new run finished while it trains (a study would report it), the
  evaluation before would become its "before" though made of other parameters."""
  work = tmp_path / "again"
  (work / "eval").mkdir(parents=True)
  for name in ("eval_summary.json", "eval_before.json", "eval_summary.step_2.json"):
    (work / name).write_text('{"after": {"iq": 1.0}}')
  (work / "eval" / "after.jsonl").write_text('{"iq": 1.0}\n')
  config = _config(tiny_base("interleaved"))
  config.train.stop_at_step = 1
  train.train(config, str(work))
  assert not run_summary.finished(str(work))
  assert sorted(p for p in os.listdir(work) if p.startswith("eval")) == []


def test_a_signal_during_an_evaluation_stops_the_run_after_it(tiny_base, tmp_path, monkeypatch, capsys):
  """SIGTERM during the step-2 evaluation: the run saves step 2 (not due by train.checkpoint_every) and stops there,
  instead of training step 3 first (minutes at scale: past a grace period). The rerun goes on from step 2 without
  evaluating it again. A signal during the set-up stops before the evaluation before training; one during that
  evaluation stops before the first step; neither saves anything."""
  config = _config(tiny_base("interleaved"))
  config.train.update(eval_every=2, eval_examples=8, checkpoint_every=100, eval_before=True)
  evaluate = train._evaluate_and_log

  def signalled_during(name):
    def evaluate_and_signal(run, params, step, prefix, this):
      out = evaluate(run, params, step, prefix, this)
      if this == name:
        run.guard.signum = signal.SIGTERM
      return out
    monkeypatch.setattr(train, "_evaluate_and_log", evaluate_and_signal)

  record = train._record_start
  monkeypatch.setattr(train, "_record_start", lambda run, step: (record(run, step),
                                                                 setattr(run.guard, "signum", signal.SIGTERM)))
  assert train.train(config, str(tmp_path)) == train.TrainResult(preempted_at=0)
  assert not (tmp_path / "eval_before.json").exists()
  monkeypatch.setattr(train, "_record_start", record)
  signalled_during("before")
  assert train.train(config, str(tmp_path)) == train.TrainResult(preempted_at=0)
  assert "training stopped before its first step" in capsys.readouterr().out
  assert not os.listdir(tmp_path / "checkpoints")
  signalled_during("step_2")
  assert train.train(config, str(tmp_path)) == train.TrainResult(preempted_at=2)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  signalled_during(None)
  train.train(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
  assert [(r["step"], r["split"]) for r in rows if r["split"] != "train"] == [(0, "eval_before"), (2, "eval"),
                                                                              (4, "eval_after")]


def test_a_finished_run_continued_past_its_end_is_not_finished_until_it_evaluates_again(finished_run, tiny_base,
                                                                                         tmp_path, monkeypatch):
  """A larger train.total_steps continues a finished run. Killed after its last checkpoint but before its final
  evaluation, it must not look finished (a study would report the old end's numbers) and the next launch must
  evaluate the new end, not say "nothing to do"."""
  work = _copy_run(finished_run, tmp_path / "continued")
  old_after = (work / "eval" / "after.jsonl").read_text()
  config = _config(tiny_base("interleaved"))
  config.train.total_steps = TOTAL + 2
  evaluate = train._evaluate_and_log

  def killed_at_the_final_evaluation(run, params, step, prefix, name):
    if name == "after":
      raise KeyboardInterrupt("killed")
    return evaluate(run, params, step, prefix, name)

  monkeypatch.setattr(train, "_evaluate_and_log", killed_at_the_final_evaluation)
  with pytest.raises(KeyboardInterrupt):
    train.train(config, str(work))
  assert os.path.exists(work / f"checkpoints/{TOTAL + 2}")
  assert not run_summary.finished(str(work))
  assert json.load(open(work / f"eval_summary.step_{TOTAL}.json"))["step"] == TOTAL
  assert (work / "eval" / f"step_{TOTAL}.jsonl").read_text() == old_after   # the old end: a point of the curve
  monkeypatch.setattr(train, "_evaluate_and_log", evaluate)
  out = train.train(config, str(work))
  assert run_summary.finished(str(work)) and json.load(open(work / "eval_summary.json"))["step"] == TOTAL + 2
  assert out.eval_after == run_summary.read_after(str(work))
  rows = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert [(r["step"], r["split"]) for r in rows if r["split"] == "eval_after"] == [(TOTAL, "eval_after"),
                                                                                   (TOTAL + 2, "eval_after")]
