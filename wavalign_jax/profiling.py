"""A profile of a few training steps (`train.profile_steps` from `train.profile_start_step` on): JAX's profiler
trace in WORKDIR/profile/plugins/profile/<time>/<host>.xplane.pb (XProf / TensorBoard's profile plugin; a
Perfetto-readable trace.json.gz beside it). Start after the first steps, whose compilations would fill it. Every
step is annotated (`train` with its step number), so the trace viewer shows where each begins and ends."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import jax


class StepProfiler:
  """`with profiler.step(step): ...` around each training step's work, including the device sync that ends it."""

  def __init__(self, workdir: str, start_step: int, num_steps: int):
    self.directory = os.path.join(workdir, "profile")
    self.start, self.stop = start_step, start_step + num_steps
    self.active = False

  @contextlib.contextmanager
  def step(self, step: int) -> Iterator[None]:
    if self.start <= step < self.stop and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True
      print(f"profiling steps {step + 1}..{self.stop} into {self.directory}", flush=True)
    with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
      yield
    if self.active and step + 1 >= self.stop:
      self.close()

  def close(self) -> None:
    """Ends a trace in progress (also when the run stops inside the window: what was traced is kept)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
