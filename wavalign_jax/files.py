"""Files a reader may meet while they are written: atomic writes and strict JSON (gzip-compressed where the name
says so).

A killed job or a second reader (a study, a loader, a resumed run) must never see half a file, so whole
files are written to a temporary name in the same directory and renamed into place (`os.replace` is atomic
on POSIX filesystems). JSON is strict everywhere the project writes it: a non-finite float (a NaN loss, an
infinite ratio) becomes `null`, never the bare `NaN` that standard JSON readers reject.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import tempfile
from typing import Any

from wavalign_jax.errors import RunError


def finite_or_none(obj: Any) -> Any:
  """`obj` with every non-finite float (also numpy scalars) replaced by None, recursively."""
  if isinstance(obj, dict):
    return {k: finite_or_none(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_or_none(v) for v in obj]
  if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:   # numpy / jax scalars
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def dumps(obj: Any, **kwargs: Any) -> str:
  """json.dumps of `finite_or_none(obj)`; raises on anything that would not be strict JSON."""
  return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


# The permissions `open(path, "w")` would give a new file. mkstemp makes its file 0600, which a rename keeps: other
# users and services of a shared cluster could not read the run's files.
_FILE_MODE = 0o666 & ~_umask()


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically: a temporary file in the same directory, flushed, then renamed."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with contextlib.suppress(OSError):   # a filesystem without permissions (vfat, some FUSE mounts) keeps its own
      os.fchmod(fd, _FILE_MODE)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically; gzip-compressed when `path` ends in `.gz`, with no time stamp in
  the header, so the same text always gives the same bytes (committed files do not change when rewritten)."""
  data = text.encode()
  write_bytes(path, gzip.compress(data, mtime=0) if path.endswith(".gz") else data)


def write_json(path: str, obj: Any, **kwargs: Any) -> None:
  """Strict JSON (`dumps`) written atomically (`write_text`)."""
  write_text(path, dumps(obj, **kwargs))


def write_jsonl(path: str, rows: Any, **kwargs: Any) -> None:
  """One strict JSON object per line (`dumps(row, **kwargs)`), written atomically (`write_text`: gzip for `.gz`)."""
  write_text(path, "".join(dumps(r, **kwargs) + "\n" for r in rows))


def existing_jsonl(path: str) -> str | None:
  """`path`, or where it is absent its compressed copy `path.gz` (a study export's, study/export.py); None when
  there is neither."""
  return next((p for p in (path, f"{path}.gz") if os.path.exists(p)), None)


def jsonl_rows(path: str, text: str) -> list[tuple[Any, str]]:
  """(row, line) of each non-blank line of `text`, the contents of the JSONL file `path`, which a job may have been
  appending to when it was killed (metrics.jsonl): a torn last line is dropped with a warning; an unreadable line
  before it was not torn by a kill and raises RunError naming the file and line."""
  lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
  rows = []
  for i, (n, line) in enumerate(lines):
    try:
      rows.append((json.loads(line), line))
    except ValueError:
      if i + 1 < len(lines):
        raise RunError(f"{path}:{n} is not a JSON row (a torn write can only be the last line); fix or remove "
                       "that line and rerun") from None
      print(f"warning: {path}:{n}: dropping a torn last line (the job was killed while writing it)", flush=True)
  return rows


def read_jsonl(path: str) -> list[Any]:
  """The rows of a JSONL file (gzip-compressed when its name ends in `.gz`), as `jsonl_rows` reads them."""
  with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
    return [row for row, _ in jsonl_rows(path, f.read())]
