"""On-disk cache of judge replies, keyed by a hash of the full request (prompt, answer, settings).

One small JSON file per key, written to a temp file and renamed into place: the rename is atomic,
so threads and processes (several trainers, a resumed run, an offline re-score) can share one
directory without locks, and a crash never leaves a half-written entry. An entry that does not read as
JSON anyway (a damaged disk or network filesystem, a hand edit) is a miss: it is moved aside to
`<key>.json.corrupt` with a warning and the judge is asked again, so a run goes on and the file is kept
to look at. Only the request hash and the reply text are stored: never the API key.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Mapping

from wavalign_jax import files


def cache_key(payload: Mapping[str, Any]) -> str:
  """sha256 of the canonical JSON of everything that determines the reply."""
  blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
  """Directory-backed key -> JSON value store, safe for concurrent readers and writers."""

  def __init__(self, directory: str):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, key[:2], f"{key}.json")

  def get(self, key: str, valid: Callable[[Any], bool] | None = None) -> Any | None:
    """The entry of `key`, None if there is none; one that does not read as JSON or fails `valid` (the shape the
    caller writes) is set aside as damaged and is a miss."""
    path = self._path(key)
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      return None
    try:
      value = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      self._set_aside(path, data, f"does not read as JSON ({e})")
      return None
    if valid is not None and not valid(value):
      self._set_aside(path, data, f"does not hold what this cache stores ({data[:80]!r})")
      return None
    return value

  def _set_aside(self, path: str, data: bytes, problem: str) -> None:
    """Moves a damaged entry to `<path>.corrupt`, unless another process has meanwhile replaced it (then it is its
    good reply) or moved it; a cache it cannot write (read-only, shared) keeps it, and the judge is asked anyway."""
    aside = f"{path}.corrupt"
    try:
      with open(path, "rb") as f:
        if f.read() != data:
          return
      os.replace(path, aside)
    except OSError:
      return
    logging.warning("judge cache entry %s %s: moved to %s; asking the judge again", path, problem, aside)

  def put(self, key: str, value: Any) -> None:
    files.write_json(self._path(key), value, ensure_ascii=False)   # atomic, strict JSON, the run's file mode
