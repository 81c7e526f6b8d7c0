"""Orbax checkpoints: the whole train state plus the data iterator state, keep-N, resume from latest.

Layout of a run's work directory (see WORKSPACE.md):
  WORKDIR/checkpoints/<step>/state   the TrainState pytree (sharded arrays, restored straight onto the mesh)
  WORKDIR/checkpoints/<step>/data    the data iterator state (JSON) so a resumed run sees exactly the next example
A converted / exported model (no optimizer state) is written by `save_params` as DIR/params + DIR/model_config.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from wavalign_jax.models.config import ModelConfig


class Checkpointer:
  """Saves every `save_every` steps, keeps the newest `keep`, restores the latest."""

  def __init__(self, directory: str, *, keep: int = 3, save_every: int = 100, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict[str, Any] | None = None, *, force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}))
    return self._manager.save(step, args=args, force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs with .sharding)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self._manager.directory}")
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out.state, dict(out.data or {})

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def save_params(directory: str, params: Any, model_cfg: ModelConfig, extra: dict[str, Any] | None = None) -> None:
  """Writes a parameters-only checkpoint (what converters produce and `config.init_checkpoint` reads)."""
  path = epath.Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / "params", params, force=True)
  meta = {"model": dataclasses.asdict(model_cfg), **(extra or {})}
  (path / "model_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_model_config(directory: str) -> tuple[ModelConfig, dict[str, Any]]:
  """Reads DIR/model_config.json; returns the ModelConfig and the remaining metadata (vocab, tokenizer, ...)."""
  meta_path = epath.Path(directory) / "model_config.json"
  if not meta_path.exists():
    raise FileNotFoundError(
        f"{meta_path} not found: {directory} is not a converted checkpoint. Convert Hugging Face weights with "
        "`python -m wavalign_jax.convert --arch=... --hf_dir=... --out=DIR` first.")
  meta = json.loads(meta_path.read_text())
  return ModelConfig(**meta.pop("model")), meta


def load_params(directory: str, abstract_params: Any) -> Any:
  """Restores parameters onto the shardings carried by `abstract_params` (each host reads only its shards)."""
  path = epath.Path(directory) / "params"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: not a parameters checkpoint written by save_params / convert")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract_params)


def tree_size_bytes(tree: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
