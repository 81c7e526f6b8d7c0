"""Shared pytest setup.

8 fake CPU devices (set before jax is imported) so sharding tests can build real meshes, a session-wide
persistent compilation cache, the long end-to-end tests scheduled first, a `highest_precision` fixture for
tests that compare against float32 upstream fixtures (accelerators default to TF32 / bf16 matmul passes, which
exceed the 1e-4 fixture tolerance on their own), and the tiny testbed run's config with one base model per
architecture for the whole session (`tiny_config`, `tiny_base`).
"""
import fcntl
import os
import pathlib
import tempfile

# The tests' programs are tiny and compile-bound: XLA's backend optimisation (LLVM) costs more compile time than it
# saves at run time (the method smoke matrix: 66 s -> 48 s), so the test session compiles at level 0.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
# One persistent XLA compilation cache per test session, shared by the xdist workers and by the processes the
# tests start (inherited through the environment): the many tests that build the same tiny models' programs
# (train steps, samplers, the testbed's base model; the preemption test's five runs) compile each one once.
_SESSION = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "wavalign_jax_tests_xla_cache", _SESSION))
# Every program, however small: the processes the tests start (CLI runs, studies, hosts) would otherwise compile again
# the many small programs of a run (eager ops, casts, the RNG's) that each compile in under 0.2 s (the SIGTERM test:
# 86 s -> 80 s, measured alternately).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

from wavalign_jax import train  # noqa: E402
from wavalign_jax.config_lib import apply_method, base_config, make_tiny  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  return FIXTURES


# The end-to-end tests (whole training runs, several processes) first: xdist hands tests to its workers in
# collection order, so a long test collected last keeps one worker busy long after the other has finished.
_LONG_FIRST = ("test_multihost.py", "test_analyze.py", "test_preemption.py", "test_train_loop.py", "test_study.py",
               "test_train_step.py", "test_methods_smoke.py")


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in _LONG_FIRST)   # stable: the order within each group stays
  # On one worker each (pytest.ini: --dist=loadgroup), so that what their tests share is built once, not once per
  # worker: the method smoke matrix per architecture (its base model; each step program), and test_train_step (the
  # programs its tests share with the parity tests, which come first).
  for item in items:
    if item.path.name == "test_methods_smoke.py":
      item.add_marker(pytest.mark.xdist_group(f"smoke_{item.callspec.params['arch']}"))
    elif item.path.name == "test_train_step.py":
      item.add_marker(pytest.mark.xdist_group("train_step"))


def one_length_bucket(c) -> None:
  """The prompt bucket holds every example (config_lib.length_buckets): each step program compiles once per run,
  not once per bucket an SFT batch happens to land in."""
  c.data.max_prompt_len += c.data.max_response_len


def tiny_config(arch: str, base: str | None = None):
  """The hybrid method on the testbed at unit-test sizes. `base`: a `tiny_base` directory whose base model and
  testbed data the run starts from; without it the run generates both in its work directory."""
  c = base_config()
  c.model.arch = arch
  c.layout = {"kind": arch, "ratios": (1, 10, 4, 10)} if arch == "interleaved" else {"kind": arch, "audio_delay": 2}
  apply_method(c, "hybrid")
  make_tiny(c)
  c.model.update(dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16))
  if arch == "parallel":
    c.model.update(dict(mimo_from_layer=0, num_mimo_layers=1))
  c.data.prompts_per_step = 4
  one_length_bucket(c)
  c.rollout.group_size = 2
  c.rollout.max_new_tokens = 16
  c.testbed.base_sft_steps = 10
  c.testbed.base_batch_size = 8
  c.train.update(dict(total_steps=4, checkpoint_every=2, eval_examples=4))
  c.optim.learning_rate = 1e-3
  # One of the 8 fake CPU devices (about half the compile and run time); the resume test and test_multihost run
  # on all of them, test_train_step checks that sharding changes no value.
  c.mesh.num_devices = 1
  if base:
    c.init_checkpoint = os.path.join(base, "base", "base_model")
    c.testbed.dir = os.path.join(base, "testbed")
  return c


@pytest.fixture(scope="session")
def tiny_base():
  """arch -> a directory with `tiny_config(arch)`'s testbed data and base model, built once per test session and
  shared by the xdist workers (the first to ask builds it under a file lock; the others wait, then read it).
  Runs must not change the testbed's knobs (they would regenerate the shared data)."""
  def get(arch: str) -> str:
    root = os.path.join(tempfile.gettempdir(), "wavalign_jax_tests_base", _SESSION, arch)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not os.path.exists(os.path.join(root, "ready")):
        config = tiny_config(arch)
        config.testbed.dir = os.path.join(root, "testbed")
        config.train.total_steps = 0
        train.train(config, os.path.join(root, "base"))
        open(os.path.join(root, "ready"), "w").close()
    return root
  return get


def built_testbed_datasets(base: str, arch: str, config, out_dir, objective: str = "hybrid") -> tuple[str, str]:
  """(train, eval) datasets built by data/build.py from a `tiny_base` directory's testbed JSONL, as a user builds
  real ones (train: the RL split, or the DPO pairs; eval: the in-distribution split), then moved and the tokenizer
  they were built with deleted, as when built on a workstation and copied to a cluster. `config`: the run's, whose
  layout they follow."""
  import shutil
  from wavalign_jax.data import build as build_lib
  from wavalign_jax.testbed import unit_tts
  from wavalign_jax.testbed import vocab as testbed_vocab
  jsonl, out_dir = os.path.join(base, "testbed", "jsonl"), str(out_dir)
  tokenizer = os.path.join(out_dir, "tokenizer.json")
  shutil.copyfile(os.path.join(jsonl, "tokenizer.json"), tokenizer)
  layout = dict(ratios=tuple(config.layout.ratios)) if arch == "interleaved" else dict(
      audio_delay=config.layout.audio_delay, audio_offset=testbed_vocab.parallel_vocab().audio_offset,
      num_audio_codes=unit_tts.NUM_AUDIO_CODES)
  splits = (("train", "dpo.jsonl" if objective == "dpo" else "train.jsonl", "dpo" if objective == "dpo" else "rl"),
            ("eval", os.path.join("eval", "eval_id.jsonl"), "rl"))
  out = []
  for name, split, kind in splits:
    builder = build_lib.Builder(tokenizer, arch=arch, kind=kind, **layout)
    build_lib.build(builder, [os.path.join(jsonl, split)], os.path.join(out_dir, f"built_{name}"))
    out.append(os.path.join(out_dir, f"copied_{name}"))
    os.replace(os.path.join(out_dir, f"built_{name}"), out[-1])
  os.remove(tokenizer)
  return out[0], out[1]
