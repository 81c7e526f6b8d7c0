"""Configs and the command line a new user meets first."""
import errno
import os
import subprocess
import sys

import pytest

from experiments import kimi, vita
from wavalign_jax import config_lib, optim
from wavalign_jax.objectives import DPOConfig, GateConfig, GRPOConfig, SFTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_configs_keep_each_method_s_relative_learning_rate():
  for module in (vita, kimi):
    hybrid, dpo = module.get_config("tiny,hybrid"), module.get_config("tiny,dpo_text")
    assert hybrid.optim.learning_rate == pytest.approx(1e-4)
    assert dpo.optim.learning_rate == pytest.approx(5 * hybrid.optim.learning_rate)   # 5e-6 : 1e-6 in the recipe


def test_objective_sections_hold_the_dataclass_defaults():
  """A default is written once: the config a run gets and the dataclass built without arguments agree, at the
  recipe's values (docs/method.md: text-token DPO with beta 0.2)."""
  c = config_lib.base_config()
  for section, cls in (("sft", SFTConfig), ("rl", GRPOConfig), ("dpo", DPOConfig), ("gate", GateConfig)):
    assert cls(**c[section]) == cls(), section
  assert optim.OptimConfig(**c.optim) == optim.OptimConfig()   # total_steps comes from train.total_steps
  assert DPOConfig() == DPOConfig(beta=0.2, token_set="text")
  assert optim.OptimConfig() == optim.OptimConfig(learning_rate=1e-6, b1=0.9, b2=0.95, weight_decay=0.01, clip_norm=1.2)


def test_misspelled_fields_name_the_flag_and_the_nearest_fields():
  msgs = config_lib.unknown_overrides(["--config=experiments/vita.py:tiny", "--config.rl.gruop_size=8",
                                       "--config.rollout.group_size=8", "--config.optim.lerning_rate", "1e-5"])
  assert len(msgs) == 2
  assert msgs[0].startswith("--config.rl.gruop_size: experiments/vita.py:tiny has no field 'rl.gruop_size'")
  assert "did you mean --config.rollout.group_size" in msgs[0]
  assert "--config.optim.learning_rate" in msgs[1]


def test_cli_refuses_a_misspelled_field_without_a_traceback_and_prints_the_config():
  run = lambda *a: subprocess.run([sys.executable, "-m", "wavalign_jax.train", "--config=experiments/vita.py:tiny", *a],
                                  cwd=REPO, capture_output=True, text=True, timeout=120)
  bad = run("--workdir=/nonexistent", "--config.rl.gruop_size=8")
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "did you mean --config.rollout.group_size" in bad.stderr
  shown = run("--print_config", "--config.rollout.group_size=8")
  assert shown.returncode == 0 and "group_size: 8" in shown.stdout


# ----------------------------------------------------------------------------- checks before any work

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402

from wavalign_jax import config_check, sharding  # noqa: E402
from wavalign_jax.config_lib import ConfigError  # noqa: E402
from wavalign_jax.models.config import ModelConfig  # noqa: E402


def _train_cli(workdir, *args):
  return subprocess.run([sys.executable, "-m", "wavalign_jax.train", f"--workdir={workdir}", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def _read_only(path):
  """`path` (a folder) made unwritable, also for root (the immutable attribute, where chmod does not bind)."""
  os.chmod(path, 0o555)
  immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
  try:
    try:
      open(os.path.join(path, "probe"), "w").close()
      pytest.skip("cannot make a read-only folder here")
    except OSError:
      pass
    yield
  finally:
    if immutable:
      subprocess.run(["chattr", "-i", str(path)], check=True)
    os.chmod(path, 0o755)


@pytest.mark.parametrize("args, expected", [
    (["--config=experiments/vita.py:tiny,hybird"], "config variant 'hybird': did you mean 'hybrid'?"),
    (["--config=experiments/vita.py:tiny", "--config.rollout.group_size=0"],
     "--config.rollout.group_size=0: must be an integer >= 1"),
    (["--config=experiments/vita.py:tiny", "--config.rollout.group_size=1"],
     "--config.rollout.group_size=1: method 'hybrid' samples rollouts"),
    (["--config=experiments/vita.py:tiny", "--config.data.prompts_per_step=0"],
     "--config.data.prompts_per_step=0: must be an integer >= 1"),
    (["--config=experiments/kimi.py"], "needs a converted checkpoint"),
])
def test_cli_config_errors_are_one_short_message_before_any_work(tmp_path, args, expected):
  """Each was a traceback (or, for group_size=1, a run with lambda stuck at 0); now: a message, exit 1, no files."""
  workdir = tmp_path / "run"
  out = _train_cli(workdir, *args)
  assert out.returncode == 1, out.stderr
  assert out.stderr.startswith("error: ") and expected in out.stderr, out.stderr
  assert len(out.stderr.strip().splitlines()) <= 2 and "Traceback" not in out.stderr
  assert not workdir.exists()   # no logs/, config.json or testbed


def test_study_checks_the_overrides_of_its_runs_before_the_first(tmp_path):
  out = subprocess.run([sys.executable, "-m", "wavalign_jax.study", "--config=experiments/vita.py:tiny",
                        f"--workdir={tmp_path / 'study'}", "--config.rollout.group_size=1"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and out.stderr.startswith("error: --config.rollout.group_size=1"), out.stderr
  assert not (tmp_path / "study").exists()


def test_cli_refuses_a_read_only_checkpoint_folder_at_start(tmp_path):
  checkpoints = tmp_path / "run" / "checkpoints"
  checkpoints.mkdir(parents=True)
  with _read_only(checkpoints):
    out = _train_cli(tmp_path / "run", "--config=experiments/vita.py:tiny")
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(f"error: --workdir={tmp_path / 'run'}: cannot write in {checkpoints} (")
  assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints"]   # no logs/ either


def test_check_writable_creates_nothing(tmp_path):
  config_check.check_writable(str(tmp_path / "a" / "b"))
  (tmp_path / "file").write_text("")
  assert sorted(os.listdir(tmp_path)) == ["file"]
  with pytest.raises(ConfigError, match="is not a directory"):
    config_check.check_writable(str(tmp_path / "file"))


def test_a_full_disk_is_found_before_the_run_and_by_the_lock(tmp_path, monkeypatch):
  """A full disk still creates empty files: the probe writes (and syncs) a byte. Were it to fill up between the
  probe and the lock, taking the lock is a one-line RunError naming it (was a traceback; on several hosts the
  other processes waited for process 0 for ever)."""
  from wavalign_jax import workdir_lock
  from wavalign_jax.errors import RunError

  def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  with monkeypatch.context() as m:
    m.setattr(os, "fsync", full)
    with pytest.raises(ConfigError, match=f"cannot write in {tmp_path} \\(No space left on device\\)"):
      config_check.check_writable(str(tmp_path))
  monkeypatch.setattr(workdir_lock, "_try_create", full)
  with pytest.raises(RunError, match=f"cannot create {tmp_path / 'job.lock'} \\(No space left on device\\): make room"):
    with workdir_lock.hold(str(tmp_path)):
      pass


def test_variants():
  assert config_lib.parse_variant("boost, tiny,method=sft", {"model": {"boost"}, "size": {"tiny"}, "method": {"sft"}}) \
      == {"model": "boost", "size": "tiny", "method": "sft"}
  for arg, match in [("tiny,hybird", "did you mean 'hybrid'"), ("method=rl_txt", "did you mean 'rl_text'"),
                     ("sise=tiny", "did you mean 'size'"),
                     ("tiny,sft,rl_text", "'sft' and 'rl_text' both set the method"),
                     ("xyz", "choose from model: balance")]:
    with pytest.raises(ConfigError, match=match):
      vita.get_config(arg)
  with pytest.raises(ConfigError, match="did you mean 'tiny'"):
    kimi.get_config("tiyn")


def _tiny(**overrides):
  c = vita.get_config("tiny")
  for dotted, value in overrides.items():
    section, field = dotted.split("__")
    c[section][field] = value
  return c


@pytest.mark.parametrize("overrides, match", [
    ({"rollout__group_size": 0}, "group_size=0: must be an integer >= 1"),
    ({"rollout__max_new_tokens": -3}, "max_new_tokens=-3"),
    ({"train__total_steps": -1}, "total_steps=-1: must be an integer >= 0"),
    ({"data__prompts_per_step": 6, "train__microbatches": 4}, "does not split into --config.train.microbatches=4"),
    ({"gate__mode": "dynamc"}, "GateConfig.mode 'dynamc'"),
    ({"reward__kind": "judge"}, "did you mean 'llm_judge'"),
    ({"testbed__judge_acoustic_noise": float("nan")}, "not a finite number: --config.testbed.judge_acoustic_noise=nan"),
    ({"optim__learning_rate": 1e39}, "--config.optim.learning_rate"),
    ({"mesh__shape": (3, -1, 1)}, "does not divide 8 devices"),
    ({"rollout__top_p": 0.0}, r"--config.rollout.temperature=0.7, --config.rollout.top_p=0.0, .*: need"),
    ({"rollout__temperature": -0.5}, r"--config.rollout.temperature=-0.5"),
    ({"rollout__temperature": float("nan")}, "not a finite number: --config.rollout.temperature=nan"),
    ({"rollout__decode": "fast"}, r"--config.rollout.decode='fast': choose one of \['auto', 'main', 'mctp'\]"),
    ({"rollout__cache_windows": 0}, "cache_windows=0: must be an integer >= 1"),
    ({"rollout__decode": "mctp", "rollout__mctp_schedule": (0, 2)},
     r"--config.rollout.mctp_schedule=\[0, 2\] .*: MCTP schedule \[0, 2\]: need pairs"),
    ({"train__checkpoint_every_minutes": -1.0}, "checkpoint_every_minutes=-1.0: must be a number >= 0"),
    ({"rl__num_iterations": 2, "rl__clip_eps": 0.2, "train__stop_at_step": 3},
     "stop_at_step=3: with --config.rl.num_iterations=2"),
    ({"rl__num_iterations": 4, "rl__clip_eps": 0.2, "train__total_steps": 30, "train__sft_stage_fraction": 0.5,
      "train__stop_at_step": 20}, r"from step 15 on.*stop at 15 plus a multiple of 4"),
])
def test_check_refuses(tmp_path, overrides, match):
  config_check.check(_tiny(), str(tmp_path))
  reuse = dict(rl__num_iterations=2, rl__clip_eps=0.2)
  config_check.check(_tiny(**reuse, train__stop_at_step=4), str(tmp_path))   # at a rollout batch's end
  two_stage = dict(rl__num_iterations=4, rl__clip_eps=0.2, train__total_steps=30, train__sft_stage_fraction=0.5)
  for stop in (7, 15, 19):   # inside the SFT stage (one step each), or where a rollout batch ends
    config_check.check(_tiny(**two_stage, train__stop_at_step=stop), str(tmp_path))
  with pytest.raises(ConfigError, match=match):
    config_check.check(_tiny(**overrides), str(tmp_path))


def test_a_profile_window_past_the_last_step_is_a_warning(tmp_path):
  assert config_check.check(_tiny(train__profile_steps=2, train__profile_start_step=3), str(tmp_path)) == []
  total = _tiny().train.total_steps
  warnings = config_check.check(_tiny(train__profile_steps=2, train__profile_start_step=total), str(tmp_path))
  assert warnings == [f"--config.train.profile_start_step={total} is not below --config.train.total_steps={total}: "
                      "no step will be profiled"]


def test_group_size_one_is_refused_only_for_methods_that_sample():
  for method in ("sft", "dpo_text", "base"):   # no rollouts in training
    c = vita.get_config(f"tiny,{method}")
    c.rollout.group_size = 1
    config_check.check_sizes(c)
  c = vita.get_config("tiny,rl_text")
  c.rollout.group_size = 1
  with pytest.raises(ConfigError, match="method 'rl_text' samples rollouts"):
    config_check.check_sizes(c)


@pytest.mark.parametrize("shape, prompts, shards", [
    ((1, -1, 1), 4, 8),    # FSDP over all 8 devices: 4 prompts cannot be split
    ((2, -1, 1), 4, 8),    # data 2 x fsdp 4
    ((1, 2, -1), 4, 2),    # tensor parallelism takes the rest: 2 data shards
    ((2, 1, 4), 6, 2),
])
def test_prompts_over_data_parallel_shards(shape, prompts, shards):
  """The data-parallel width is mesh data x fsdp with -1 resolved against the 8 devices (tests/conftest.py)."""
  c = _tiny(mesh__shape=shape, data__prompts_per_step=prompts)
  warnings = config_check.check_mesh(c)
  assert bool(warnings) == bool(prompts % shards)
  if warnings:
    assert f"does not divide over the {shards} data shards" in warnings[0]


def test_prompts_over_several_hosts(monkeypatch):
  """On 2 hosts each holds its own rows: the prompts must divide over the hosts, and each host's share over the
  data shards (the 8 devices' data x fsdp); one host only warns where it would replicate."""
  monkeypatch.setattr(config_check.jax, "process_count", lambda: 2)
  with pytest.raises(ConfigError, match="prompts_per_step=3 does not divide over the 2 hosts"):
    config_check.check_mesh(_tiny(mesh__shape=(2, 1, -1), data__prompts_per_step=3))
  with pytest.raises(ConfigError, match=r"prompts_per_step=4: each of the 2 hosts needs a multiple of the 8 data"):
    config_check.check_mesh(_tiny(mesh__shape=(1, -1, 1), data__prompts_per_step=4))
  assert config_check.check_mesh(_tiny(mesh__shape=(2, 1, -1), data__prompts_per_step=4)) == []   # 2 rows, 2 shards


def test_renamed_mesh_axes_take_the_roles_in_order():
  """Other names for the three mesh axes are data, fsdp, tensor in the order given; names must be distinct."""
  c = _tiny(mesh__shape=(2, -1, 1), mesh__axes=("replica", "shard", "model"), data__prompts_per_step=4)
  assert config_check.check_mesh(c) == [
      "--config.data.prompts_per_step=4 does not divide over the 8 data shards (mesh replica x shard): the SFT batch "
      "is replicated on every shard (correct, but without data parallelism)"]
  with pytest.raises(ConfigError, match="give one size for each of"):
    config_check.check_mesh(_tiny(mesh__axes=("replica", "replica", "model")))


def test_mesh_over_the_first_num_devices():
  """mesh.num_devices = N: the mesh spans the first N of the 8 devices, -1 resolved against N; more than there
  are is a config error naming the flag."""
  c = _tiny(mesh__shape=(1, -1, 1), mesh__num_devices=2, data__prompts_per_step=4)
  mesh = sharding.config_mesh(c.mesh)
  assert mesh.shape == {"data": 1, "fsdp": 2, "tensor": 1} and list(mesh.devices.flat) == jax.devices()[:2]
  assert config_check.check_mesh(c) == []            # 4 prompts over 2 shards; over all 8 this would warn
  with pytest.raises(ConfigError, match=r"--config.mesh.num_devices=9: a mesh over the first 9 devices .* 8 devices"):
    config_check.check_mesh(_tiny(mesh__num_devices=9))


def _converted_checkpoint(path, arch):
  path.mkdir()
  model = ModelConfig(arch=arch, vocab_size=64, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=1,
                      num_kv_heads=1, head_dim=8)
  (path / "model_config.json").write_text(json.dumps({"model": dataclasses.asdict(model)}))
  return str(path)


def _dataset(path, **info):
  path.mkdir()
  (path / "tokenizer.json").write_text("{}")
  (path / "data-00000-of-00001.array_record").write_bytes(b"")   # (check_data reads the info, not the records)
  info = {"arch": "interleaved", "kind": "rl", "longest": 100, "shards": ["data-00000-of-00001.array_record"],
          "num_records": 1000, "tokenizer": "tokenizer.json",
          "ratios": list(vita.get_config("").layout.ratios), "audio_delay": 6, "vocab": {"vocab_size": 64}, **info}
  (path / "dataset_info.json").write_text(json.dumps(info))
  return str(path)


def test_real_config_data_is_checked_before_any_work(tmp_path):
  c = vita.get_config("")
  with pytest.raises(ConfigError, match="needs a converted checkpoint"):
    config_check.check_data(c)
  c.init_checkpoint = str(tmp_path)
  with pytest.raises(ConfigError, match="is not a converted checkpoint"):
    config_check.check_data(c)
  c.init_checkpoint = _converted_checkpoint(tmp_path / "parallel_ckpt", "parallel")
  with pytest.raises(ConfigError, match="holds a 'parallel' model but the config is for 'interleaved'"):
    config_check.check_data(c)
  c.init_checkpoint = _converted_checkpoint(tmp_path / "ckpt", "interleaved")
  # On the testbed too: a wrong init_checkpoint is refused at start, not after the testbed data are generated.
  tb = _tiny()
  tb.init_checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match=r"--config.init_checkpoint: .*nowhere.* is not a converted checkpoint"):
    config_check.check_data(tb)
  tb.init_checkpoint = c.init_checkpoint
  config_check.check_data(tb)
  with pytest.raises(ConfigError, match="data.train is empty"):
    config_check.check_data(c)
  c.data.train = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="missing does not exist"):
    config_check.check_data(c)
  c.data.train = _dataset(tmp_path / "sft", kind="sft")
  with pytest.raises(ConfigError, match="holds 'sft' records; this method needs a --kind=rl dataset"):
    config_check.check_data(c)
  # 512 + 1024: the largest bucket of the real configs
  c.data.train = _dataset(tmp_path / "long", longest=1537)
  with pytest.raises(ConfigError, match="examples of up to 1537 tokens exceed the largest length bucket 1536"):
    config_check.check_data(c)
  c.data.train = _dataset(tmp_path / "good", longest=1536)
  config_check.check_data(c)
  # A dataset of an older build names its tokenizer by an absolute path, here one that is gone.
  c.data.train = _dataset(tmp_path / "old", tokenizer=str(tmp_path / "gone" / "tokenizer.json"))
  with pytest.raises(ConfigError, match=r"data.train=.*old: its dataset_info.json names the tokenizer .*gone/"
                                        r"tokenizer.json, which does not exist"):
    config_check.check_data(c)
  c.data.train = _dataset(tmp_path / "good_again")
  config_check.check_data(c)
  # Copied in part: a shard is missing; too small for one step.
  c.data.train = _dataset(tmp_path / "partial", shards=["data-00000-of-00002.array_record",
                                                        "data-00001-of-00002.array_record"])
  with pytest.raises(ConfigError, match=r"partial: 2 of its 2 shards are missing \(.*data-00000-of-00002"):
    config_check.check_data(c)
  c.data.train = _dataset(tmp_path / "small", num_records=c.data.prompts_per_step - 1)
  with pytest.raises(ConfigError, match=rf"small: {c.data.prompts_per_step - 1} records cannot fill one step of "
                                        rf"--config.data.prompts_per_step={c.data.prompts_per_step}"):
    config_check.check_data(c)
  c.data.train = str(tmp_path / "good_again")
  # Layout and vocabulary: the SFT anchor must follow the layout the rollouts follow, eval the train set's ids.
  c.data.train = _dataset(tmp_path / "boost", ratios=[1, 10, 4, 10])
  with pytest.raises(ConfigError, match=r"boost: built with ratios \[1, 10, 4, 10\], but --config.layout.ratios is "
                                        r"\[1, 4, 3, 8, 4, 10\]: rebuild it with .*--ratios=1,4,3,8,4,10"):
    config_check.check_data(c)
  c.data.train = str(tmp_path / "good_again")
  c.data.eval = _dataset(tmp_path / "other_vocab", vocab={"vocab_size": 65})
  with pytest.raises(ConfigError, match="data.eval=.*other_vocab: built with another vocabulary than "
                                        "--config.data.train=.*good_again"):
    config_check.check_data(c)
  c.data.eval = _dataset(tmp_path / "eval")
  config_check.check_data(c)
  c.data.eval = ""
  k = kimi.get_config("")
  k.init_checkpoint = str(tmp_path / "parallel_ckpt")
  k.data.train = _dataset(tmp_path / "delay_2", arch="parallel", audio_delay=2)
  with pytest.raises(ConfigError, match=r"built with audio_delay 2, but --config.layout.audio_delay is 6: rebuild it "
                                        r"with `python -m data_pipeline.build --audio_delay=6`"):
    config_check.check_data(k)
  c.objective = "dpo"
  with pytest.raises(ConfigError, match="needs a --kind=dpo dataset"):
    config_check.check_data(c)


def test_a_missing_judge_api_key_is_a_config_error(monkeypatch):
  """The LLM judge's key is checked at start-up when the run will call the judge, naming the flag."""
  c = _tiny()
  c.reward.kind, c.reward.api_key_env = "llm_judge", "WAVALIGN_TEST_JUDGE_KEY"
  monkeypatch.delenv("WAVALIGN_TEST_JUDGE_KEY", raising=False)
  with pytest.raises(ConfigError, match="reward.api_key_env=WAVALIGN_TEST_JUDGE_KEY: the environment variable "
                                        "WAVALIGN_TEST_JUDGE_KEY is not set"):
    config_check.check_reward(c)
  monkeypatch.setenv("WAVALIGN_TEST_JUDGE_KEY", "k")
  config_check.check_reward(c)
  monkeypatch.delenv("WAVALIGN_TEST_JUDGE_KEY")
  c.reward.api_key_env = ""                 # a server without authentication
  config_check.check_reward(c)
  c.reward.api_key_env, c.gate.mode = "WAVALIGN_TEST_JUDGE_KEY", "sft_only"   # no rollouts, no data.eval: no call
  config_check.check_reward(c)
