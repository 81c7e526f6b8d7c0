"""Mesh construction and the logical-axis rules table (MaxText style).

Model code names parameter axes ("embed", "mlp", "heads", ...) and, separately, activation axes
("activation_batch", "activation_embed", ...); this table alone decides which mesh axis each maps to.
Parameters and activations need different names because they shard differently: FSDP splits a weight's
"embed" axis over `fsdp`, while an activation [batch, length, embed] is split over its batch by
(data, fsdp) and must not use `fsdp` a second time. No device counts live in model code, and no mesh axis names
live outside this module: the config's `mesh.axes` may name the three axes differently (`rules_for`), and
batches are placed over the axes the rules give their rows (`batch_axes`, `device_put_batch`).

The vocabulary tables are never gathered whole (a 168k x 3584 table is 2.2 GiB in float32); the rows move
instead, gathered over `fsdp` ("activation_logits_batch"):
  * heads [d, V] are split along the vocabulary over (fsdp, tensor); each device computes its slice of the
    logits for every row of its data shard (`models/vocab_parallel.py`);
  * the embedding [V, d] is split along its width over fsdp ("embed") and the vocabulary over tensor
    ("input_vocab"); each device looks up its columns for every row, then an all-to-all returns whole
    embeddings to the rows' own devices ("activation_table_embed").

The activation constraints (`constrain` in the model) only act inside `use_rules(mesh)`;
every jitted entry point is called (and so traced) there (`jit_with_rules`).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", ("fsdp", "tensor")),
    ("table_embed", "fsdp"),     # only where "vocab" does not divide (then fsdp is free; see spec_for)
    ("input_vocab", "tensor"),
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
    ("activation_vocab", ("fsdp", "tensor")),
    ("activation_logits_batch", "data"),
    ("activation_table_embed", "fsdp"),
)


def rules_for(axis_names: Sequence[str]) -> tuple[tuple[str, Any], ...]:
  """LOGICAL_RULES on a mesh whose axes are `axis_names` (config `mesh.axes`). The names of MESH_AXES, in any
  order, keep their roles; other names take the roles data, fsdp and tensor in the order given."""
  names = tuple(axis_names)
  if sorted(names) == sorted(MESH_AXES):
    return LOGICAL_RULES
  if len(names) != len(MESH_AXES) or len(set(names)) != len(names):
    raise ValueError(f"mesh axes {names}: need {len(MESH_AXES)} distinct names, one for each of {MESH_AXES}")
  if set(names) & set(MESH_AXES):   # ("fsdp", "data", "model") would give "data" the role of fsdp
    raise ValueError(f"mesh axes {names}: use the names {MESH_AXES} (in any order) or none of them; names of "
                     "their own take the roles data, fsdp, tensor in the order given")
  role = dict(zip(MESH_AXES, names))
  rename = lambda e: None if e is None else role[e] if isinstance(e, str) else tuple(role[a] for a in e)
  return tuple((logical, rename(entry)) for logical, entry in LOGICAL_RULES)


def gathered_rules(axis_names: Sequence[str]) -> tuple[tuple[str, Any], ...]:
  """`rules_for(axis_names)` for weights gathered once per rollout call (`rollout.gather_weights`): "embed", FSDP's
  split of a weight, is whole, so a decode loop reads local weights instead of all-gathering them at every token.
  The output heads keep their vocabulary split ("vocab"); the input embedding becomes whole in width."""
  return tuple((logical, None if logical == "embed" else entry) for logical, entry in rules_for(axis_names))


def mesh_axes(mesh: Mesh, axis: str) -> tuple[str, ...]:
  """The mesh axes the rules split a dimension named `axis` over on `mesh`."""
  entry = nn.logical_to_mesh_axes((axis,), rules_for(mesh.axis_names))[0]
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes a batch's rows are split over (the rules' "activation_batch")."""
  return mesh_axes(mesh, "activation_batch")


def mesh_shards(mesh: Mesh, axis: str) -> int:
  """Into how many pieces the rules split a dimension named `axis` on `mesh` (`shards` inside `use_rules`)."""
  return _ways(mesh_axes(mesh, axis), mesh.shape)


def data_parallel_size(mesh: Mesh) -> int:
  """Into how many row shards a batch is split on `mesh`."""
  return mesh_shards(mesh, "activation_batch")


def batch_sharding(batch: Any, mesh: Mesh, *, process_local: bool = True) -> Any:
  """Leading (example) axis over the batch axes (`batch_axes`); per-prompt reward arrays [P, G] likewise.

  `process_local`: the arrays hold this process's rows, so the global batch has process_count times
  as many. An axis that does not divide the data shards is replicated, which is only right when every
  process holds the same rows; on several processes that is an error.
  """
  axes, n = batch_axes(mesh), data_parallel_size(mesh)
  hosts = jax.process_count() if process_local else 1

  def spec(x):
    if x.ndim and (x.shape[0] * hosts) % n == 0:
      return NamedSharding(mesh, PartitionSpec(axes))
    if x.ndim and hosts > 1:
      raise ValueError(f"a global batch of {x.shape[0] * hosts} rows ({x.shape[0]} per process) does not divide "
                       f"over the {n} data shards (mesh {' x '.join(axes)})")
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(spec, batch)


def device_put_batch(batch: Any, mesh: Mesh) -> Any:
  """Host numpy batch (a `batches` pytree of this process's rows) -> global arrays sharded over the batch axes."""
  shardings = batch_sharding(batch, mesh)
  return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x), batch, shardings)


def _ways(entry: Any, mesh_shape: Mapping[str, int]) -> int:
  """Into how many pieces a PartitionSpec entry (None, a mesh axis or a tuple of them) splits a dimension."""
  names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return int(np.prod([mesh_shape[n] for n in names]))


def spec_for(axes: Sequence[str | None], shape: Sequence[int], mesh_shape: Mapping[str, int],
             rules: Sequence[tuple[str, Any]] | None = None) -> PartitionSpec:
  """The rules' PartitionSpec for an array of `shape` whose dimensions have logical names `axes`.

  A dimension that its mesh axes do not divide gives up its rule and the next rule that fits takes over: VITA's
  168072-entry vocabulary does not split 16 ways, so on 16 devices its heads split along their width
  ("table_embed") instead. `rules` default to the table on the mesh's axes (`rules_for`)."""
  rules = rules_for(tuple(mesh_shape)) if rules is None else tuple(rules)
  while True:
    spec = nn.logical_to_mesh_axes(tuple(axes), rules)
    bad = {a for a, size, entry in zip(axes, shape, spec) if size % _ways(entry, mesh_shape)}
    if not bad:
      return spec
    rules = tuple(r for r in rules if r[0] not in bad)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`x` constrained to the sharding its logical `axes` map to inside `use_rules` (a no-op outside). A
  dimension that its mesh axes do not divide is left to XLA (`spec_for`)."""
  mesh, rules = jax.sharding.get_abstract_mesh(), nn.get_logical_axis_rules()
  if mesh.empty or not rules:
    return x
  wanted = nn.logical_to_mesh_axes(tuple(axes), rules)
  spec = spec_for(axes, x.shape, mesh.shape, rules)
  spec = PartitionSpec(*(PartitionSpec.UNCONSTRAINED if w is not None and s is None else s
                         for w, s in zip(wanted, spec)))
  return jax.lax.with_sharding_constraint(x, spec)


def shards(axis: str) -> int:
  """Into how many pieces, inside `use_rules`, the rules split a dimension named `axis` (1 outside)."""
  mesh, rules = jax.sharding.get_abstract_mesh(), nn.get_logical_axis_rules()
  if mesh.empty or not rules:
    return 1
  return _ways(nn.logical_to_mesh_axes((axis,), rules)[0], mesh.shape)


@contextlib.contextmanager
def use_rules(mesh: Mesh, gathered: bool = False) -> Iterator[None]:
  """Activation sharding constraints of the model mapped onto `mesh` while tracing inside this block;
  `gathered`: with the weights whole over the FSDP axis (`gathered_rules`)."""
  rules = gathered_rules(mesh.axis_names) if gathered else rules_for(mesh.axis_names)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
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


def config_mesh(mesh_cfg: Any) -> Mesh:
  """The mesh of a run's `config.mesh`: `shape` over every device, or over the first `num_devices` (> 0) of a
  single-process job (a debugging run on part of a host; the tests' end-to-end runs on one of 8 fake CPU
  devices)."""
  n = mesh_cfg.get("num_devices", 0)
  if n <= 0:
    return make_mesh(mesh_cfg.shape, mesh_cfg.axes)
  if jax.process_count() > 1 or n > jax.device_count():
    raise ValueError(f"a mesh over the first {n} devices needs one process with at least {n} devices "
                     f"(have {jax.process_count()} processes, {jax.device_count()} devices)")
  return make_mesh(mesh_cfg.shape, mesh_cfg.axes, jax.devices()[:n])
