"""One job per work directory: WORKDIR/job.lock names the job that holds it (host, pid namespace, pid, start).

Two jobs on one work directory (a scheduler's double launch, a rerun while the first job lives) would write
the same checkpoints and metric rows. The lock is a file created atomically (written under a temporary name,
then hard-linked into place, which fails if the file exists; on a filesystem without hard links, an exclusive
create), so of two jobs starting together exactly one wins, and the loser stops before writing anything.

Whether the holder still lives: on this host and in this pid namespace, its pid tells (a lock whose pid is gone,
e.g. after kill -9, is taken over with a warning). From another host, or another pid namespace on the same host
(containers sharing the host's network, hence its name, each with their own pids), a pid says nothing, so the
holder renews its lock's modification time every HEARTBEAT_S seconds: a new job watches the lock for up to
LEASE_S seconds, stops as soon as it is renewed, and takes it over if it is not (a job killed on another machine,
a restarted container). An empty or unreadable lock (a job killed between creating and writing it, on a
filesystem without hard links) is watched the same way. Only changes of the time are compared, never the clocks of
two machines. On several hosts
only process 0 locks (the work directory is shared) and every process learns the outcome. The lock is removed
when the job ends: finished, preempted or failed.

A holder that stalls past the lease (a suspended job, a hung mount) may find its lock taken over when it wakes: its
heartbeat notices, and the loop's `check_held` after each step and each evaluation stops it without saving or
writing the evaluation (WorkdirLost), so the two jobs never write the same checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import tempfile
import threading
import time
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from wavalign_jax.errors import RunError

LOCK_FILE = "job.lock"
HEARTBEAT_S = 10.0   # how often a holder renews its lock
LEASE_S = 60.0       # a lock unrenewed this long (watched from another host or pid namespace) is a dead job's


@dataclasses.dataclass
class _Hold:
  depth: int               # nesting in this process (main() and train() both hold the lock)
  me: dict | None = None   # what this job wrote in the lock (process 0; None on the others)


_held: dict[str, _Hold] = {}   # lock path -> this process's hold
_lost: dict[str, dict] = {}    # lock path -> the job found holding it once it was taken over


class WorkdirLocked(RunError):
  pass


class WorkdirLost(RunError):
  pass


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by another user
    return True
  return True


def _pid_namespace() -> str | None:
  """This process's pid namespace (Linux: the inode of /proc/self/ns/pid), None where there is none to read."""
  try:
    return str(os.stat("/proc/self/ns/pid").st_ino)
  except OSError:
    return None


def _renewed(path: str, holder: dict) -> bool:
  """Watches the lock at `path` for up to LEASE_S seconds: True as soon as its holder renews it (or another job
  replaces it), False if it stays untouched (its job is gone)."""
  try:
    first = os.stat(path).st_mtime_ns
  except FileNotFoundError:
    return False
  print(f"{path} is held by {_describe(holder)}, which cannot be checked from here: watching for up to "
        f"{LEASE_S:.0f} s whether that job renews it", flush=True)
  deadline = time.monotonic() + LEASE_S
  while time.monotonic() < deadline:
    time.sleep(min(HEARTBEAT_S / 4, max(0.0, deadline - time.monotonic())))
    try:
      if os.stat(path).st_mtime_ns != first or _read(path) != holder:
        return True
    except FileNotFoundError:
      return True   # released (the caller tries again)
  return False


def _renew(path: str, me: dict, stop: threading.Event) -> None:
  """The holder's heartbeat: touches its lock every HEARTBEAT_S seconds while it is still its own; records it as
  lost once another job holds it or it was removed (an unreadable lock is read again at the next beat)."""
  while not stop.wait(HEARTBEAT_S) and _still_mine(path, me):
    with contextlib.suppress(OSError):
      os.utime(path)


def _still_mine(path: str, me: dict) -> bool:
  """Whether the lock at `path` still holds `me`; records it as lost once another job holds it or it was removed
  (an unreadable lock counts as still ours: it is read again later)."""
  holder = _read(path)
  if holder not in (me, {}):
    _lost[path] = holder or {}
  return path not in _lost


def check_held() -> None:
  """Raises WorkdirLost if another job took over a work directory this process holds: process 0 reads its lock
  (besides its heartbeat's reads). A collective on several hosts: every process calls it at the same points (after
  each step, before a save)."""
  for path, hold in list(_held.items()):
    if hold.me is not None:
      _still_mine(path, hold.me)
  path, holder = next(iter(_lost.items()), (None, None))
  if jax.process_count() > 1 and bool(multihost_utils.broadcast_one_to_all(np.int32(path is not None))):
    path = path or "the work directory's lock (process 0 found it taken)"
  if path is None:
    return
  taker = f"now held by {_describe(holder)}" if holder else "removed"
  raise WorkdirLost(f"{path} was taken over while this job ran ({taker}): this job stalled past the {LEASE_S:.0f} s "
                    "lease (suspended, or its filesystem hung) and another job took the work directory. It stops "
                    "without saving, so that the two never write the same checkpoints; the other job goes on from "
                    "the newest checkpoint")


def _describe(holder: dict) -> str:
  if not holder:
    return "an unknown job: the lock is empty or unreadable"
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
    return _place(tmp, path)
  finally:
    os.remove(tmp)


def _place(src: str, path: str) -> bool:
  """Gives the file `src` the name `path` too unless `path` exists (False then): a hard link, or where the
  filesystem has none (gcsfuse, s3fs, ...) an exclusive create of a copy (a reader may see it empty a moment)."""
  try:
    os.link(src, path)
    return True
  except FileExistsError:
    return False
  except OSError:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with open(src) as f, os.fdopen(fd, "w") as out:
      out.write(f.read())
    return True


def _acquire(path: str, me: dict) -> None:
  while not _try_create(path, me):
    holder = _read(path)
    if holder is None:   # released meanwhile
      continue
    # A lock written before pid namespaces were recorded counts as this namespace's; its holder never renews it,
    # so from another host it cannot be checked at all (as before: removed by hand).
    here = holder.get("host") == me["host"] and holder.get("pid_ns", me["pid_ns"]) == me["pid_ns"]
    if here and isinstance(holder.get("pid"), int):
      stale = holder["pid"] == me["pid"] or not _alive(holder["pid"])   # own pid: the holder was this pid's
    elif holder and "pid_ns" not in holder:
      stale = False
    else:   # another host or pid namespace, or an empty / unreadable lock (a job killed while creating it)
      stale = not _renewed(path, holder)
      if not stale and _read(path) != holder:   # released or written while watched: look at it again
        continue
    if not stale:
      raise WorkdirLocked(
          f"{os.path.dirname(path)} is in use by another job ({_describe(holder)}): two jobs would write the same "
          f"checkpoints and metrics. Wait for it to end, or, if that job is known to be dead, remove {path} and "
          "rerun")
    # Move the stale lock aside under a name of our own; if it is no longer the stale one (another job took it
    # over in between), put it back and try again (that job then holds the directory).
    aside = f"{path}.stale.{me['pid']}"
    try:
      os.rename(path, aside)
    except FileNotFoundError:
      continue
    if _read(aside) != holder:
      _place(aside, path)
    else:
      print(f"warning: {path} was left by a job that is gone ({_describe(holder)}); taking it over", flush=True)
    os.remove(aside)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/job.lock for the duration (re-entrant within a process); raises WorkdirLocked if taken."""
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  if path in _held:
    _held[path].depth += 1
    try:
      yield
    finally:
      _held[path].depth -= 1
    return
  me = {"host": socket.gethostname(), "pid_ns": _pid_namespace(), "pid": os.getpid(), "start": time.time()}
  error = None
  if jax.process_index() == 0:   # an error here is carried to the other processes (they would wait for ever)
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      _acquire(path, me)
    except WorkdirLocked as e:
      error = e
    except OSError as e:
      error = RunError(f"cannot create {path} ({e.strerror or e}): make room (or fix the filesystem) and rerun")
  if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(np.int32(error is None)):
    raise error or RunError(f"process 0 could not take {path} (its log says why)")
  if error is not None:
    raise error
  _held[path] = _Hold(1, me if jax.process_index() == 0 else None)
  stop = threading.Event()
  if jax.process_index() == 0:
    threading.Thread(target=_renew, args=(path, me, stop), daemon=True, name="job.lock heartbeat").start()
  try:
    yield
  finally:
    stop.set()
    del _held[path]
    _lost.pop(path, None)
    if jax.process_index() == 0 and _read(path) == me:
      os.remove(path)
