"""One job per work directory: WORKDIR/job.lock names the job that holds it (host, pid, start time).

Two jobs on one work directory (a scheduler's double launch, a rerun while the first job lives) would write
the same checkpoints and metric rows. The lock is a file created atomically (written under a temporary name,
then hard-linked into place, which fails if the file exists), so of two jobs starting together exactly one
wins, and the loser stops before writing anything. A lock whose job is gone on this host (its pid is not
alive, e.g. after kill -9) is taken over with a warning; a lock from another host cannot be checked from here,
so the message says how to remove it once that job is known to be dead. On several hosts only process 0 locks
(the work directory is shared) and every process learns the outcome. The lock is removed when the job ends:
finished, preempted or failed.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import tempfile
import time
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from wavalign_jax.errors import RunError

LOCK_FILE = "job.lock"
_held: dict[str, int] = {}   # lock path -> nesting depth in this process (main() and train() both hold it)


class WorkdirLocked(RunError):
  pass


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by another user
    return True
  return True


def _describe(holder: dict) -> str:
  started = datetime.datetime.fromtimestamp(holder.get("start", 0)).isoformat(sep=" ", timespec="seconds")
  return f"host {holder.get('host')!r}, pid {holder.get('pid')}, started {started}"


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}   # unreadable: treated as held by an unknown job


def _try_create(path: str, me: dict) -> bool:
  """Creates `path` holding `me` unless it exists (atomic: the content is complete before the name appears)."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".job.lock.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def _acquire(path: str, me: dict) -> None:
  while not _try_create(path, me):
    holder = _read(path)
    if holder is None:   # released meanwhile
      continue
    stale = holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and (
        holder["pid"] == me["pid"] or not _alive(holder["pid"]))   # own pid: a restarted container
    if not stale:
      raise WorkdirLocked(
          f"{os.path.dirname(path)} is in use by another job ({_describe(holder) if holder else 'unreadable lock'}"
          f"): two jobs would write the same checkpoints and metrics. Wait for it to end, or, if that job is "
          f"known to be dead, remove {path} and rerun")
    # Move the stale lock aside under a name of our own; if it is no longer the stale one (another job took it
    # over in between), put it back and try again (that job then holds the directory).
    aside = f"{path}.stale.{me['pid']}"
    try:
      os.rename(path, aside)
    except FileNotFoundError:
      continue
    if _read(aside) != holder:
      with contextlib.suppress(FileExistsError):
        os.link(aside, path)
    else:
      print(f"warning: {path} was left by a job that is gone ({_describe(holder)}); taking it over", flush=True)
    os.remove(aside)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/job.lock for the duration (re-entrant within a process); raises WorkdirLocked if taken."""
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  if path in _held:
    _held[path] += 1
    try:
      yield
    finally:
      _held[path] -= 1
    return
  me = {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time()}
  error = None
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
      _acquire(path, me)
    except WorkdirLocked as e:
      error = e
  if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(np.int32(error is None)):
    raise error or WorkdirLocked(f"{workdir} is in use by another job (process 0 found its lock {path})")
  if error is not None:
    raise error
  _held[path] = 1
  try:
    yield
  finally:
    del _held[path]
    if jax.process_index() == 0 and _read(path) == me:
      os.remove(path)
