"""Preemption: SIGTERM / SIGINT finish the current step, save a checkpoint and end the run cleanly.

Schedulers (Slurm, Kubernetes, Borg, preemptible / spot VMs) send SIGTERM and allow a grace period
before killing the job. The handler only records the signal; the training loops poll `should_stop`
after each step, save, and raise `Preempted`, which the entry point turns into exit status 0 with a
message. SIGTERM stays intercepted: a scheduler that signals every process of the job (Slurm, systemd's
control group) and a study passing the signal on may both reach a train process, and a second SIGTERM must
not kill it while it saves (the scheduler's SIGKILL ends the grace period). After a SIGINT the default
handlers are back, so pressing Ctrl-C twice still stops a run at once.

On several hosts only some processes may receive the signal; `should_stop` is a collective (every
process calls it after every step), so all processes agree on the same step and write the same checkpoint.
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Raised after a checkpoint has been written because the job was asked to stop."""

  def __init__(self, step: int, signum: int, what: str):
    self.step, self.signum, self.what = step, signum, what
    where = f"after step {step} with a checkpoint" if step else "before its first step"
    super().__init__(f"{signal.Signals(signum).name} received: {what} stopped {where}; rerun the same command to "
                     "resume")


class PreemptionGuard:
  """Context manager that turns SIGTERM / SIGINT into a stop request polled between steps."""

  def __init__(self, signals: tuple[int, ...] = SIGNALS):
    self._signals = signals
    self._previous: dict[int, object] = {}
    self.signum: int | None = None

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():   # signal handlers live on the main thread only
      for s in self._signals:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()

  def _restore(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.signum is None:
      self.signum = signum
    if signum == signal.SIGINT:   # a second Ctrl-C stops at once; SIGTERM stays intercepted
      self._restore()

  def should_stop(self) -> bool:
    """True on every process once any process has received a signal (a collective on several hosts)."""
    local = self.signum is not None
    if jax.process_count() == 1:
      return local
    signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if not local and np.any(signums):
      self.signum = int(np.max(signums))
    return bool(np.any(signums))
