"""Shared pytest setup.

8 fake CPU devices (set before jax is imported) so sharding tests can build real meshes, and a
`highest_precision` fixture for tests that compare against float32 upstream fixtures (accelerators
default to TF32 / bf16 matmul passes, which exceed the 1e-4 fixture tolerance on their own).
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

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
