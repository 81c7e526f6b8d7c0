"""Orbax checkpoints: the whole train state plus the data iterator state, keep-N, resume from the newest that
restores.

Layout of a run's work directory (see WORKSPACE.md):
  WORKDIR/checkpoints/<step>/state   the TrainState pytree (sharded arrays, restored straight onto the mesh)
  WORKDIR/checkpoints/<step>/data    the Grain iterator state (one file per process) so a resumed run sees
                                     exactly the next example
  WORKDIR/checkpoints.damaged/<step> checkpoints that failed to restore, moved aside by a resume
A converted / exported model (no optimizer state) is written by `save_params` as DIR/params + DIR/model_config.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import uuid
from typing import Any, Iterator

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from wavalign_jax.errors import RunError
from wavalign_jax.models.config import ModelConfig

# A converted / exported model: DIR/params (Orbax), DIR/model_config.json, DIR/hf (convert.py).
PARAMS_DIR = "params"
MODEL_CONFIG_FILE = "model_config.json"   # beside DIR/params: the model's config and the checkpoint's metadata
HF_FILES_DIR = "hf"                       # the source folder's non-weight files (config, tokenizer, remote code)


class NoRestorableCheckpoint(RunError):
  pass


class SaveFailed(RunError):
  """The filesystem refused a checkpoint (disk full, quota, a file-size limit, a lost mount)."""


# What a full disk, an exhausted quota, a file-size limit, a read-only or failing mount raise on a write.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
# What a read refused by the storage, not by the checkpoint's contents, raises: permissions, a stale or lost network
# mount, a failing disk. The checkpoint may be intact: the restore stops rather than falling back past it.
READ_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ESTALE, errno.ETIMEDOUT, errno.ENOTCONN, errno.EHOSTDOWN,
                         errno.EIO})


def storage_error(error: BaseException | None, errnos: frozenset[int] = STORAGE_ERRNOS) -> bool:
  """Whether the storage refused an access in `error` or its causes: an OSError of `errnos`, or TensorStore's
  report of one (Orbax raises it as a ValueError whose message ends with the OS error code)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in errnos:
      return True
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code and int(code.group(1)) in errnos:
      return True
    error = error.__cause__ or error.__context__
  return False


def _short_reason(error: BaseException) -> str:
  """The first line of the innermost cause of an error, shortened (Orbax / TensorStore errors wrap the
  informative one, e.g. "OUT_OF_RANGE ... byte range", in messages of hundreds of lines)."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  line = next((l.strip() for l in str(error).splitlines() if l.strip()), "")
  line = re.sub(r"\s*\[tensorstore_spec[^=]*=.*$", "", line)   # TensorStore appends its whole JSON spec
  line = line if len(line) <= 240 else f"{line[:80]} ... {line[-150:]}"   # the code, and the cause at the end
  return f"{type(error).__name__}: {line}" if line else type(error).__name__


# A restore's outcome on one process; every process takes the worst (`_worst_anywhere`).
_RESTORED, _DAMAGED, _UNREADABLE = 0, 1, 2
_RESTORE_BARRIER = "Checkpointer:restore"   # the barrier that ends Orbax's restore (orbax-checkpoint 0.12)


def _worst_anywhere(outcome: int) -> int:
  """The worst restore outcome of any process, on every process (each reads its own iterator file)."""
  if jax.process_count() == 1:
    return outcome
  return int(np.max(multihost_utils.process_allgather(np.int32(outcome))))


def _data_position_outcome(step_dir: epath.Path) -> tuple[int, str | None]:
  """(outcome, reason) of this process's saved data position (Grain's process_<i>-of-<n>.json) in a checkpoint
  step, read before the restore, so that every process agrees to skip a step whose position is damaged on some
  without going through Orbax's restore (which ends in a barrier that a process failing inside it must still join:
  `Checkpointer.restore`)."""
  path = step_dir / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  try:
    json.loads(path.read_text())
  except FileNotFoundError:
    return _DAMAGED, f"{path.name} is missing"
  except ValueError as e:
    return _DAMAGED, f"{path.name} is not valid JSON ({e})"
  except OSError as e:
    return (_UNREADABLE if storage_error(e, READ_ERRNOS) else _DAMAGED), f"{path.name}: {_short_reason(e)}"
  return _RESTORED, None


def _saved_process_counts(step_dir: epath.Path) -> set[int]:
  """The process counts of the data iterator files (Grain's process_<i>-of-<n>.json) of a checkpoint step."""
  return {int(m.group(1)) for p in (step_dir / "data").glob("process_*-of-*.json")
          if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", p.name))}


class Checkpointer:
  """Keeps the newest `keep` checkpoints and restores the newest intact one; the caller decides when to save."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    # cleanup_tmp_directories: a save killed midway leaves <step>.orbax-checkpoint-tmp-*; never restored, but removed.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                           enable_async_checkpointing=async_save, create=True,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any = None) -> bool:
    """Saves `state` and, if given, the Grain iterator's position (every process writes its own). A save the
    filesystem refuses raises SaveFailed, naming the newest complete checkpoint to resume from."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.wait()   # an earlier asynchronous save's failure, reported as such (Orbax's save would raise it as this one's)
    with self._storage_errors(f"saving checkpoint {step}"):
      return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  @contextlib.contextmanager
  def _storage_errors(self, what: str) -> Iterator[None]:
    """Turns a filesystem failure into a one-line SaveFailed (an asynchronous save's surfaces at the next save,
    `wait` or `close`); anything else propagates as it is."""
    try:
      yield
    except Exception as e:
      if not storage_error(e):
        raise
      self._manager.reload()
      latest = self._manager.latest_step()
      resume = (f"the newest complete checkpoint is step {latest}" if latest is not None else
                "no checkpoint is complete yet")
      raise SaveFailed(f"{what} in {self._manager.directory} failed ({_short_reason(e)}); {resume}: make room (or "
                       "fix the filesystem) and rerun the same command to resume") from e

  def restore(self, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores the newest checkpoint that restores onto the shardings carried by `abstract_state`
    (ShapeDtypeStructs with .sharding); a given `data_iterator` (built with the same arguments as the saved one)
    is moved in place to the saved position.

    A checkpoint that fails (a data file truncated by a dying node, a missing metadata or iterator file) is
    reported in one line and the previous one is tried; the failed ones are moved to `<directory>.damaged/` so that
    the run can save those steps again. Raises NoRestorableCheckpoint naming the steps tried when none restores.
    A read the storage refuses (READ_ERRNOS) and a checkpoint written by another number of processes stop the
    restore with a RunError instead: the checkpoint may be intact, so nothing is moved.
    """
    tried = sorted(self.all_steps(), reverse=True)
    if not tried:
      raise FileNotFoundError(f"no checkpoint in {self._manager.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    for i, step in enumerate(tried):
      step_dir = epath.Path(self._manager.directory) / str(step)
      counts = _saved_process_counts(step_dir) if data_iterator else set()
      if counts and jax.process_count() not in counts:
        raise RunError(f"checkpoint {step} in {self._manager.directory} was written by {max(counts)} processes "
                       f"(each with its data position) and this launch has {jax.process_count()}: resume on "
                       f"{max(counts)} processes (the mesh may change, the number of hosts may not)")
      outcome, reason = _data_position_outcome(step_dir) if data_iterator is not None else (_RESTORED, None)
      state, outcome = None, _worst_anywhere(outcome)
      if outcome == _RESTORED:
        try:
          state = self._manager.restore(step, args=ocp.args.Composite(**items)).state
        except Exception as e:   # whatever the damage, the previous checkpoint may be intact
          outcome, reason = (_UNREADABLE if storage_error(e, READ_ERRNOS) else _DAMAGED), _short_reason(e)
          if jax.process_count() > 1:   # processes whose read went well wait in the restore's closing barrier
            ocp.multihost.sync_global_processes(ocp.multihost.unique_barrier_key(_RESTORE_BARRIER))
        outcome = _worst_anywhere(outcome)
      reason = reason or "failed on another process; its log says why"
      if outcome == _UNREADABLE:
        raise RunError(f"checkpoint {step} in {self._manager.directory} could not be read "
                       f"({reason}): the storage refused the read, so the checkpoint may be intact and "
                       "nothing was moved. Fix the access (permissions, the mount) and rerun; if it is lost, move "
                       f"{step} to {self._manager.directory}.damaged/ to resume from the checkpoint before it")
      if outcome == _DAMAGED:
        print(f"checkpoint {step} failed to restore: {reason}", flush=True)
        continue
      if i:
        self._set_aside(tried[:i])
      return state
    raise NoRestorableCheckpoint(
        f"no checkpoint in {self._manager.directory} restores (tried steps {', '.join(map(str, tried))}; the "
        "reasons are above). Move the directory away to start this run afresh")

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged step directories to `<directory>.damaged/<step>` (kept for inspection, out of the way)."""
    directory = epath.Path(self._manager.directory)
    damaged = directory.parent / f"{directory.name}.damaged"
    if jax.process_index() == 0:
      damaged.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = damaged / str(step)
        n = 1
        while target.exists():
          target, n = damaged / f"{step}.{n}", n + 1
        (directory / str(step)).rename(target)
        print(f"moved the damaged checkpoint {step} to {target}", flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpointing.set_aside")
    self._manager.reload()

  def wait(self) -> None:
    with self._storage_errors("an asynchronous checkpoint save"):
      self._manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()


def _no_copy_registry() -> ocp.type_handlers.TypeHandlerRegistry:
  """The default type handlers, except that numpy leaves are written in place.

  Orbax's NumpyHandler deep-copies every host array before writing (a guard against the caller mutating
  it during an async save): a second copy of the whole model. save_params writes synchronously and
  nothing touches the leaves meanwhile, so the copy is pure overhead. Same typestr, same on-disk format.
  """
  return ocp.type_handlers.create_type_handler_registry(*(
      (ty, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False) if ty is np.ndarray
       else ocp.type_handlers.get_type_handler(ty)) for ty in ocp.type_handlers.supported_types()))


def save_params(directory: str, params: Any, model_cfg: ModelConfig, extra: dict[str, Any] | None = None) -> None:
  """Writes a parameters-only checkpoint (what converters produce and `config.init_checkpoint` reads)."""
  path = epath.Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  # Uncompressed: zstd buffers cost one more transient copy of the model in host memory (measured by
  # benchmarks/convert_memory.py), and weights barely compress. Restores like a StandardCheckpointer one.
  handler = ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=_no_copy_registry())
  with ocp.Checkpointer(handler) as ckptr:
    ckptr.save(path / PARAMS_DIR, args=ocp.args.PyTreeSave(params), force=True)
  # A new id for every save: a run resumed over a checkpoint written again in place (a re-conversion, even of the same
  # weights) is refused, as its frozen reference would change (config_history.input_fingerprints).
  meta = {"model": dataclasses.asdict(model_cfg), "checkpoint_id": uuid.uuid4().hex, **(extra or {})}
  if jax.process_index() == 0:   # (every process of a multi-process save calls this)
    (path / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_model_config(directory: str) -> tuple[ModelConfig, dict[str, Any]]:
  """Reads DIR/model_config.json; returns the ModelConfig and the remaining metadata (vocab, tokenizer, ...)."""
  meta_path = epath.Path(directory) / MODEL_CONFIG_FILE
  if not meta_path.exists():
    raise FileNotFoundError(
        f"{meta_path} not found: {directory} is not a converted checkpoint. Convert Hugging Face weights with "
        "`python -m wavalign_jax.convert --arch=... --hf_dir=... --out=DIR` first.")
  meta = json.loads(meta_path.read_text())
  return ModelConfig(**meta.pop("model")), meta


def load_params(directory: str, abstract_params: Any) -> Any:
  """Restores parameters onto the shardings carried by `abstract_params` (each host reads only its shards)."""
  path = epath.Path(directory) / PARAMS_DIR
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: not a parameters checkpoint written by save_params / convert")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract_params)


def load_host_params(path: str, key: str | None = None) -> Any:
  """Restores the pytree saved at `path` (or only its `key` subtree, e.g. a TrainState's "params") as host
  numpy arrays, shapes and dtypes from the checkpoint's own metadata (export, verification, inspection)."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} not found")
  # The handler reads only the item's own metadata: a training checkpoint's "state" item keeps the step-level
  # _CHECKPOINT_METADATA one folder up, which a Checkpointer would look for (and warn about) here.
  handler = ocp.PyTreeCheckpointHandler()
  tree = handler.metadata(path).tree
  if key is not None:
    if not isinstance(tree, dict) or key not in tree:
      raise KeyError(f"{path}: no {key!r} field (has {sorted(tree) if isinstance(tree, dict) else type(tree)})")
    tree = tree[key]
  item = jax.tree.map(lambda m: np.zeros((), m.dtype), tree)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  if key is None:
    args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args)
  else:
    args = ocp.args.PyTreeRestore(item={key: item}, restore_args={key: restore_args}, partial_restore=True)
  try:
    restored = handler.restore(path, args=args)
  finally:
    handler.close()
  return restored if key is None else restored[key]
