"""What a training loop does after each step: the rules that stop it, and its checkpoint.

One home for the RL run (`train.py`) and the testbed's base-model SFT (`testbed/base_model.py`), in this order:
stop at once if another job took the work directory over (`workdir_lock.WorkdirLost`: nothing more is written),
log the step, stop after `limit` non-finite steps in a row (`errors.NonFiniteStop`; no non-finite update is ever
applied, so the last checkpoint holds finite parameters), save a checkpoint when one is due, and on a preemption
signal save this step (unless just saved) and stop cleanly (`preemption.Preempted`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from wavalign_jax import errors, workdir_lock
from wavalign_jax.checkpointing import Checkpointer
from wavalign_jax.preemption import Preempted, PreemptionGuard
from wavalign_jax.train_state import TrainState


def report_skipped(state: TrainState, limit: int, what: str, last_checkpoint: int | None,
                   learning_rate_field: str) -> str | None:
  """After a step: prints one line if it was skipped; returns the stop message once `limit` (> 0) steps in a
  row were skipped, else None."""
  run, now = int(state.consecutive_skips), int(state.step)
  if not run:
    return None
  print(f"{what} step {now}: loss, gradient, learning rate or update not finite; nothing applied "
        f"({run} in a row, {int(state.skipped_steps)} in all)", flush=True)
  if not 0 < limit <= run:
    return None
  last = (f"the last checkpoint, step {last_checkpoint}, holds finite parameters (no non-finite update is ever "
          "applied)" if last_checkpoint is not None else "no checkpoint was written yet")
  return (f"{what} stopped: {run} consecutive steps ({now - run + 1}..{now}) were not finite; {last}. Look at "
          f"the metrics of those steps (rewards, losses, grad_norm, lr) and lower {learning_rate_field} or check "
          "the data (train.max_consecutive_skips sets the limit)")


def finish_step(state: TrainState, ckpt: Checkpointer, data_iterator: Any, guard: PreemptionGuard | None, *,
                what: str, max_skips: int, learning_rate_field: str, save_due: bool,
                log: Callable[[], None] | None = None, close: Iterable[Callable[[], None]] = ()) -> bool:
  """Applies the stop rules after a step (`log` writes its metrics); returns whether it saved a checkpoint.

  Raises NonFiniteStop or Preempted after closing `ckpt` and `close` (the loop's other files), WorkdirLost
  closing nothing. On several hosts both checks are collectives: every process calls this after every step.
  """
  workdir_lock.check_held()
  if log is not None:
    log()
  message = report_skipped(state, max_skips, what, ckpt.latest_step(), learning_rate_field)
  if message:
    _close(ckpt, close)
    raise errors.NonFiniteStop(message)
  if save_due:
    workdir_lock.check_held()   # the step's logging may have outlasted the lease
    ckpt.save(int(state.step), state, data_iterator)
  stop_if_signalled(state, ckpt, data_iterator, guard, what=what, saved=save_due, close=close)
  return save_due


def stop_if_signalled(state: TrainState, ckpt: Checkpointer, data_iterator: Any, guard: PreemptionGuard | None, *,
                      what: str, saved: bool, close: Iterable[Callable[[], None]] = ()) -> None:
  """On a preemption signal: saves `state` unless `saved` (it is in a checkpoint already), closes `ckpt` and
  `close`, raises Preempted. Also called after work between steps that may outlast a grace period (an evaluation,
  the set-up), so the signal is not left waiting for a whole training step. A collective on several hosts."""
  if guard is None or not guard.should_stop():
    return
  if not saved:
    workdir_lock.check_held()
    ckpt.save(int(state.step), state, data_iterator)
  _close(ckpt, close)
  raise Preempted(int(state.step), guard.signum, what)


def _close(ckpt: Checkpointer, close: Iterable[Callable[[], None]]) -> None:
  ckpt.close()
  for c in close:
    c()
