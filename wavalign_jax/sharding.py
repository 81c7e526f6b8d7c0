"""Mesh construction and the logical-axis rules table (MaxText style).

Model code names parameter axes ("embed", "mlp", "heads", ...) and, separately, activation axes
("activation_batch", "activation_embed", ...); this table alone decides which mesh axis each maps to.
Parameters and activations need different names because they shard differently: FSDP splits a weight's
"embed" axis over `fsdp`, while an activation [batch, length, embed] is split over its batch by
(data, fsdp) and must not use `fsdp` a second time. No device counts live in model code.

The activation constraints (`nn.with_logical_constraint` in the model) only act inside `use_rules(mesh)`;
every jitted entry point is called (and so traced) there (`jit_with_rules`).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("adaptor_in", None),
    ("cache_length", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_vocab", "tensor"),
)


@contextlib.contextmanager
def use_rules(mesh: Mesh) -> Iterator[None]:
  """Activation sharding constraints of the model mapped onto `mesh` while tracing inside this block."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


class jit_with_rules:  # noqa: N801  (used like jax.jit)
  """jax.jit of `fn` whose calls (and `lower`, for ahead-of-time analysis) run inside `use_rules(mesh)`, so
  the model's activation constraints apply when it is traced."""

  def __init__(self, fn: Callable, mesh: Mesh, **jit_kwargs: Any):
    self._jitted, self.mesh = jax.jit(fn, **jit_kwargs), mesh
    functools.update_wrapper(self, fn)

  def __call__(self, *args, **kwargs):
    with use_rules(self.mesh):
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with use_rules(self.mesh):
      return self._jitted.lower(*args, **kwargs)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), axes: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all); one entry of `shape` may be -1 (fill with the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, have {len(devices)}")
  return Mesh(np.asarray(devices).reshape(shape), tuple(axes))
