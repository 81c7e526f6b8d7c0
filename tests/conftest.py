"""Shared pytest setup.

8 fake CPU devices (set before jax is imported) so sharding tests can build real meshes, a session-wide
persistent compilation cache, the long end-to-end tests scheduled first, and a `highest_precision` fixture for
tests that compare against float32 upstream fixtures (accelerators default to TF32 / bf16 matmul passes, which
exceed the 1e-4 fixture tolerance on their own).
"""
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
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

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
_LONG_FIRST = ("test_multihost.py", "test_analyze.py", "test_preemption.py", "test_train_loop.py", "test_study.py")


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in _LONG_FIRST)   # stable: the order within each group stays
  # The method smoke matrix on one worker per architecture (pytest.ini: --dist=loadgroup), so each architecture's
  # shared base model is built once and each step program compiled once, not once per worker.
  for item in items:
    if item.path.name == "test_methods_smoke.py":
      item.add_marker(pytest.mark.xdist_group(f"smoke_{item.callspec.params['arch']}"))
