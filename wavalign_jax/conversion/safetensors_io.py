"""Streaming access to Hugging Face safetensors folders (no torch), with consistency checks.

A folder holds `model.safetensors`, or shards `*.safetensors` with or without
`model.safetensors.index.json`. Only headers are read up front; each tensor is read when asked for,
so a converter can hold one copy of the model plus one tensor. Anything that suggests two checkpoints
were mixed up (a tensor in two shards, a shard the index does not list, an index pointing at the wrong
file, a total size that disagrees) is an error naming the tensors and files.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from numpy.typing import DTypeLike
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# safetensors dtype tags -> bytes per element (for sizes computed from headers alone).
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# numpy / ml_dtypes dtype names -> safetensors tags (for writing).
_DTYPE_TAGS = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
               "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
               "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: str                 # shard file name (relative to the folder)
  shape: tuple[int, ...]
  dtype: str                # safetensors tag, e.g. "F32", "BF16"

  @property
  def nbytes(self) -> int:
    if self.dtype not in _DTYPE_BYTES:
      raise ValueError(f"safetensors dtype {self.dtype!r} is not supported (known: {sorted(_DTYPE_BYTES)})")
    return int(np.prod(self.shape, dtype=np.int64)) * _DTYPE_BYTES[self.dtype]


class CheckpointReader:
  """Header index of every tensor in a folder; `iter_tensors` reads them one at a time, shard by shard."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    self.infos: dict[str, TensorInfo] = _scan(hf_dir)

  def names(self) -> list[str]:
    return sorted(self.infos)

  def total_bytes(self) -> int:
    return sum(i.nbytes for i in self.infos.values())

  def iter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) in file order, one tensor read at a time.

    The shard is re-opened (its header re-parsed) per tensor so that its memory map, whose pages count
    towards the process RSS, never covers more than the tensor being read."""
    for name in sorted(self.infos, key=lambda n: (self.infos[n].file, n)):
      with safe_open(os.path.join(self.hf_dir, self.infos[name].file), framework="numpy") as f:
        yield name, f.get_tensor(name)


def _scan(hf_dir: str) -> dict[str, TensorInfo]:
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"--hf_dir {hf_dir} is not a directory")
  files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors file in {hf_dir}")
  infos: dict[str, TensorInfo] = {}
  duplicates = []
  for file in files:
    with safe_open(os.path.join(hf_dir, file), framework="numpy") as f:
      for name in f.keys():
        sl = f.get_slice(name)
        info = TensorInfo(file, tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
        if name in infos:
          duplicates.append(f"{name} (in {infos[name].file} and {file})")
        infos[name] = info
  if duplicates:
    raise ValueError(f"{hf_dir}: tensors stored in more than one shard (mixed checkpoints?): "
                     + ", ".join(duplicates[:20]) + (f" and {len(duplicates) - 20} more" if len(duplicates) > 20 else ""))
  index_path = os.path.join(hf_dir, INDEX_FILE)
  if os.path.exists(index_path):
    _check_index(index_path, infos, files)
  return infos


def _check_index(index_path: str, infos: dict[str, TensorInfo], files: list[str]) -> None:
  with open(index_path) as f:
    index = json.load(f)
  weight_map = index.get("weight_map")
  if not isinstance(weight_map, dict):
    raise ValueError(f"{index_path}: no 'weight_map' object")
  problems = []
  for name, file in sorted(weight_map.items()):
    if name not in infos:
      problems.append(f"{name}: listed in the index for {file} but stored in no shard")
    elif infos[name].file != file:
      problems.append(f"{name}: index says {file}, stored in {infos[name].file}")
  for name in sorted(set(infos) - set(weight_map)):
    problems.append(f"{name}: stored in {infos[name].file} but not listed in the index")
  unlisted = sorted(set(files) - set(weight_map.values()))
  if unlisted:
    problems.append(f"shard files not referenced by the index: {unlisted}")
  total = index.get("metadata", {}).get("total_size")
  if total is not None and not problems:
    actual = sum(i.nbytes for i in infos.values())
    if int(total) != actual:
      problems.append(f"metadata.total_size {total} != {actual} bytes actually stored")
  if problems:
    raise ValueError(f"{index_path} disagrees with the shards (mixed checkpoints?):\n  " + "\n  ".join(problems[:30]))


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
  """Greedy split of (name, nbytes) in order into shards of at most `max_shard_bytes` (a bigger tensor gets its own)."""
  shards: list[list[str]] = [[]]
  used = 0
  for name, nbytes in sizes:
    if shards[-1] and used + nbytes > max_shard_bytes:
      shards.append([])
      used = 0
    shards[-1].append(name)
    used += nbytes
  return shards


def write_checkpoint(out_dir: str, specs: Sequence[tuple[str, Sequence[int], DTypeLike]],
                     get: Callable[[str], np.ndarray], max_shard_bytes: int) -> list[str]:
  """Writes (name, shape, dtype) tensors in the HF layout; `get(name)` is called once per name, in order.

  One shard -> `model.safetensors`; several -> `model-0000i-of-0000n.safetensors` + the index json.
  Headers come from `specs`, so each tensor is written as soon as `get` returns it and then dropped:
  host memory holds one tensor, not a shard (a 5 GB shard is the whole of a 1-2B model).
  Returns the written file names.
  """
  specs = [(name, tuple(int(d) for d in shape), np.dtype(dtype)) for name, shape, dtype in specs]
  shards = plan_shards([(name, _nbytes(shape, dtype)) for name, shape, dtype in specs], max_shard_bytes)
  by_name = {name: (shape, dtype) for name, shape, dtype in specs}
  n = len(shards)
  files = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
  for file, names in zip(files, shards):
    _write_file(os.path.join(out_dir, file), [(name, *by_name[name]) for name in names], get)
  if n > 1:
    weight_map = {name: file for file, names in zip(files, shards) for name in names}
    total = sum(_nbytes(shape, dtype) for _, shape, dtype in specs)
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
  return files


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
  return math.prod(shape) * dtype.itemsize


def _write_file(path: str, specs: list[tuple[str, tuple[int, ...], np.dtype]], get: Callable[[str], np.ndarray]
                ) -> None:
  """One safetensors file (format as safetensors' own writer: compact JSON header space-padded to 8 bytes)."""
  header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, shape, dtype in specs:
    if dtype.name not in _DTYPE_TAGS:
      raise ValueError(f"{path}: {name}: dtype {dtype} has no safetensors tag")
    header[name] = {"dtype": _DTYPE_TAGS[dtype.name], "shape": list(shape),
                    "data_offsets": [offset, offset + _nbytes(shape, dtype)]}
    offset += _nbytes(shape, dtype)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for name, shape, dtype in specs:
      arr = get(name)
      if tuple(np.shape(arr)) != shape:
        raise ValueError(f"{path}: {name}: got shape {list(np.shape(arr))}, header says {list(shape)}")
      # Casts (and lays out C-contiguous, little-endian) only when needed: one tensor's worth at most.
      arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<"))
      f.write(arr.reshape(-1).view(np.uint8).data)
      del arr


def parse_size(text: str) -> int:
  """'5GB' / '500MB' / '2GiB' / '1024' -> bytes (GB, MB, KB decimal as transformers' max_shard_size; GiB, MiB,
  KiB binary)."""
  value = text.strip().upper()
  units = (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1))
  try:
    for unit, mult in units:
      if value.endswith(unit):
        return int(float(value[:-len(unit)]) * mult)
    return int(value)
  except ValueError:
    raise ValueError(f"--max_shard_size={text!r}: give a size such as 5GB, 500MB, 2GiB or a number of bytes") from None
