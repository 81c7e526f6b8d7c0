r"""The training entry point: rollouts -> rewards -> gate -> hybrid step, with Orbax checkpoints.

  python -m wavalign_jax.train --config=experiments/vita.py:tiny --workdir=/tmp/vita_tiny
  python -m wavalign_jax.train --config=experiments/kimi.py --config.init_checkpoint=DIR \
      --config.data.train=DIR --workdir=DIR

One step (hybrid objective):
  1. next batch of P prompts with their reference responses (Grain over ArrayRecord);
  2. G rollouts per prompt from the jitted KV-cache sampler (skipped when the RL weight is 0);
  3. rewards for the P*G responses (judge / rule), failures counted and optionally excluded;
  4. one jitted step: gate update (lambda), group advantages, (1-lambda) SFT + lambda GRPO, AdamW.
The train state (params, optimizer, gate, RNG) and the data iterator are checkpointed together, so a
killed run resumes with the same lambda, step, optimizer state and the next example.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import ml_collections as mlc
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from ml_collections import config_flags

from wavalign_jax import (checkpointing, config_check, config_history, config_lib, errors, files, log_setup,
                          models, optim, preemption, profiling, provenance, sharding, step_end, steps,
                          train_state, workdir_lock)
from wavalign_jax.analysis import gradient_geometry
from wavalign_jax.batches import DPOBatch, HybridBatch, PairBatch, PromptBatch
from wavalign_jax.data import loader
from wavalign_jax.evaluation import generate as eval_generate
from wavalign_jax.evaluation import run_summary
from wavalign_jax.metric_writer import MetricWriter
from wavalign_jax.objectives import gate as gate_lib
from wavalign_jax.objectives import grpo
from wavalign_jax.rewards.base import FailureMonitor, RewardItem
from wavalign_jax.rollout import batch as rl_batch_lib
from wavalign_jax.rollout import hosts
from wavalign_jax.testbed import base_model
from wavalign_jax.run_setup import RunSetup, setup_run


# ----------------------------------------------------------------------------- evaluation


def evaluate(params: Any, setup: RunSetup, num_examples: int, seed: int,
             mesh: Mesh | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Greedy responses on every eval set (`num_examples` rows of each; 0 = all) scored with the setup's
  evaluator (testbed: IQ / EQ per subset and task family): (summary metrics, per-item rows).

  Every host reads the whole eval sets and gets every response back, so all hosts compute the metrics
  of one host.
  """
  if not setup.eval_data or setup.evaluator is None:
    return {}, []
  greedy = eval_generate.eval_sampling(setup.sampling)
  batch_size = min(setup.eval_batch_size, num_examples) if num_examples else setup.eval_batch_size
  items = []
  for path in setup.eval_data.values():
    it = loader.make_loader(path, global_batch_size=batch_size, buckets=setup.buckets,
                            shuffle=False, num_epochs=1, process_index=0, process_count=1, drop_remainder=False)
    taken = []
    for raw in it:
      contents = eval_generate.sample_batch(params, setup.model_cfg, greedy,
                                            raw.left_padded(),
                                            batch_size=batch_size, rng=jax.random.PRNGKey(seed), mesh=mesh)
      taken += [RewardItem(meta, setup.decode_text(text_ids), tuple(codes))
                for meta, (text_ids, codes) in zip(raw.meta, contents)]
      if num_examples and len(taken) >= num_examples:
        break
    items += taken[:num_examples] if num_examples else taken
  return setup.evaluator(items)


def _evaluate_and_log(run: _Run, params: Any, step: int, prefix: str, name: str) -> dict[str, float]:
  """`evaluate` on `train.eval_examples` rows of each eval set; the per-item rows to WORKDIR/eval/<name>.jsonl
  (studies read them), then the metrics (and `eval_time`, the evaluation's seconds) to the writer under
  `prefix`: a logged row means its rows are on disk (`_evaluate_missed`). Returns the metrics ({}: no eval sets).
  An evaluation may outlast the lock's lease: a job that lost its work directory meanwhile writes nothing."""
  t0 = time.time()
  summary, rows = evaluate(params, run.setup, run.config.train.eval_examples, run.config.seed, run.mesh)
  seconds = time.time() - t0
  workdir_lock.check_held()
  if summary:
    if jax.process_index() == 0 and rows:
      files.write_jsonl(run_summary.rows_path(run.workdir, name), rows)
    run.writer.write(step, {**summary, "eval_time": seconds}, prefix=prefix)
  return summary


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class TrainResult:
  """What `train` returns. A run stopped by SIGTERM / SIGINT has only `preempted_at` (the step it saved); an
  evaluation not made (eval_before off, a run stopped at train.stop_at_step) is empty."""
  state: train_state.TrainState | None = None
  metrics: dict[str, Any] = dataclasses.field(default_factory=dict)   # the last step's
  eval_before: dict[str, float] = dataclasses.field(default_factory=dict)
  eval_after: dict[str, float] = dataclasses.field(default_factory=dict)
  preempted_at: int | None = None


def train(config: mlc.ConfigDict, workdir: str) -> TrainResult:
  """Runs (or resumes) the job of `config` in `workdir`; returns the final state, the last metrics and the
  evaluations.

  SIGTERM / SIGINT end the run after the current step with a checkpoint (then `preempted_at` is that step). A config
  mistake raises errors.ConfigError before anything is written; warnings go to the log.
  """
  for warning in config_check.check(config, workdir):
    logging.warning("%s", warning)
  return _train_checked(config, workdir)


def _train_checked(config: mlc.ConfigDict, workdir: str) -> TrainResult:
  """`train` after `config_check.check` (main() runs it first, to print its warnings before taking the workdir)."""
  with workdir_lock.hold(workdir), preemption.PreemptionGuard() as guard:
    try:
      return _train(config, workdir, guard)
    except preemption.Preempted as e:
      print(e, flush=True)
      return TrainResult(preempted_at=e.step)
    except OSError as e:   # a full disk or a lost mount under the run's other files (checkpoints: SaveFailed)
      if not checkpointing.storage_error(e):
        raise
      raise errors.RunError(f"writing {e.filename or 'a file of the run'} failed ({e.strerror or e}): make room "
                            "(or fix the filesystem) and rerun the same command to resume from the newest complete "
                            "checkpoint") from e


@dataclasses.dataclass
class _Run:
  """What the phases of one run share: the config, its resolved pieces, the open checkpointer and writer."""
  config: mlc.ConfigDict
  workdir: str
  guard: preemption.PreemptionGuard
  setup: RunSetup
  mesh: Mesh
  cfg: steps.StepConfig
  ckpt: checkpointing.Checkpointer
  train_it: Any
  optimizer: Any
  schedule: Any
  logprob_fn: Any
  param_sharding: Any
  state_sharding: Any
  abstract: Any            # the train state's shapes
  create: Any              # params -> a fresh train state
  new_run: bool = True     # no training state before this launch
  resumed_config: dict | None = None   # config_history.check's, recorded once the step resumed from is known
  writer: Any = None
  last_save: float = 0.0   # time.time() of the last checkpoint (or of the start): train.checkpoint_every_minutes


class _Steps(NamedTuple):
  """The run's jitted functions."""
  update: Any              # the train step (hybrid or DPO)
  reuse: Any               # later PPO iterations on one rollout batch (rl.num_iterations > 1), else None
  logprobs: Any            # π_old and π_ref forwards, once per rollout batch
  geometry: Any            # gradient geometry (train.analysis_every)


def _train(config: mlc.ConfigDict, workdir: str, guard: preemption.PreemptionGuard) -> TrainResult:
  """Set-up, restore, the evaluation before, the step loop (batch, update, after-step), shutdown."""
  run = _set_up(config, workdir, guard)
  state, ref_params, resumed = _restore(run)
  _record_start(run, int(state.step))
  run.writer = MetricWriter(workdir, resume_step=int(state.step))
  run.last_save = time.time()
  # A signal during the set-up, or during the evaluations before the loop: stop there. Nothing to save: a resumed
  # state is a checkpoint, a fresh one is made again identically.
  stop_if_signalled = functools.partial(step_end.stop_if_signalled, state, run.ckpt, run.train_it, guard,
                                        what="training", saved=True, close=(run.writer.close,))
  stop_if_signalled()
  before = _evaluate_before(run, state)
  _evaluate_missed(run, state)
  stop_if_signalled()
  fns = _make_steps(run)
  monitor = FailureMonitor(config.reward.max_failed_fraction) if config_lib.samples_rollouts(config) else None
  total = config.train.total_steps
  stop_at = min(total, config.train.stop_at_step or total)
  metrics: dict[str, Any] = {}
  profiler = profiling.StepProfiler(workdir, config.train.profile_start_step, config.train.profile_steps)
  try:
    while int(state.step) < stop_at:
      step = int(state.step)
      with profiler.step(step):
        t0 = time.time()
        raw = next(run.train_it)
        if run.cfg.objective == "dpo":
          batch, rl_start, extra = _dpo_batch(run, fns, raw, ref_params), 0, {}
        else:
          batch, rl_start, extra = _hybrid_batch(run, fns, state, raw, ref_params, monitor)
        if _analysis_due(run, step) and batch.rl is not None:   # hybrid only; before the update: same params
          extra.update(_geometry(run, fns, state, batch))
        state, metrics = _update(run, fns, state, batch, rl_start, stop_at)
        metrics = {**jax.device_get(metrics), **extra, "skipped_steps": int(state.skipped_steps),
                   "step_time": time.time() - t0}
      _after_step(run, state, metrics, step, stop_at)
  finally:
    profiler.close()
  after = _shut_down(run, state, metrics, resumed, stop_at)
  return TrainResult(state=state, metrics=metrics, eval_before=before, eval_after=after)


# ----------------------------------------------------------------------------- set-up and restore


def _set_up(config: mlc.ConfigDict, workdir: str, guard: preemption.PreemptionGuard) -> _Run:
  """Records the config (refusing a changed experiment on resume), builds the mesh and the data."""
  optim_cfg = optim.optim_config(config)
  # Async saves write from a background thread while the loop goes on with a donated state. On CPU the host
  # copy Orbax writes from can alias a device buffer, and multi-process CPU collectives (gloo) are not ordered
  # across threads, so CPU runs (tests, the testbed) save synchronously; accelerators save asynchronously.
  async_save = jax.default_backend() != "cpu"
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                                    async_save=async_save)
  resume_step = ckpt.latest_step()
  if resume_step is None and _holds_testbed_state(workdir):
    resume_step = 0   # relaunched before the first checkpoint, after the testbed's data or base model were made
  resumed_config = config_history.check(config, workdir, resume_step)   # refuses a changed experiment on resume
  setup = setup_run(config, workdir, guard)
  mesh = sharding.config_mesh(config.mesh)
  cfg = steps.step_config(config)
  optimizer = optim.make_optimizer(optim_cfg)
  param_sharding = models.param_shardings(setup.model_cfg, mesh)
  rng = jax.random.PRNGKey(config.seed)
  create = lambda params: train_state.create(params, optimizer, gate_lib.init_gate_state(cfg.gate), rng)
  abstract = jax.eval_shape(lambda: create(models.init_params(setup.model_cfg, rng)))
  try:   # config_check found what it could from the dataset's info; the loader checks the shards themselves
    train_it = loader.make_loader(setup.train_data, global_batch_size=config.data.prompts_per_step,
                                  buckets=setup.buckets, seed=config.data.shuffle_seed,
                                  num_epochs=config.data.num_epochs or None, worker_count=config.data.worker_count)
  except ValueError as e:
    flag = "--config.data.train" if config.data.source == "arrayrecord" else "the testbed's training set"
    raise errors.RunError(f"{flag} {setup.train_data} with --config.data.prompts_per_step="
                          f"{config.data.prompts_per_step}: {e}") from None
  return _Run(config, workdir, guard, setup, mesh, cfg, ckpt, train_it, optimizer,
              optim.learning_rate_schedule(optim_cfg), models.logprob_fn(setup.model_cfg), param_sharding,
              train_state.state_shardings(abstract, param_sharding, optimizer, mesh), abstract, create,
              new_run=resume_step is None, resumed_config=resumed_config)


def _record_start(run: _Run, step: int) -> None:
  """What a launch records once the step it starts from is known (older than the newest checkpoint when that one
  was damaged): a changed config as config.<step>.json, the launch, a new run's directory cleared of an earlier
  attempt's evaluations, and a finished run continued past its end (a larger train.total_steps, also of a run of
  0 steps) as not finished any more."""
  config_history.keep(run.workdir, step, run.resumed_config)
  provenance.record_launch(run.workdir, step, new_run=run.new_run)
  if run.new_run:
    run_summary.clear(run.workdir)
  elif step < run.config.train.total_steps:
    run_summary.reopen(run.workdir, step)


def _holds_testbed_state(workdir: str) -> bool:
  """Whether an earlier launch made testbed state from its config in `workdir` (data, base model, or the base
  model's SFT checkpoints): a relaunch must then run the same experiment, as a resume from a checkpoint must."""
  base = base_model.path(workdir)
  # WORKDIR/testbed, not prepare.root_dir: a study's shared testbed.dir is not this run's state
  made = (os.path.join(workdir, "testbed"), base, base_model.sft_checkpoints(base))
  return any(os.path.exists(p) for p in made)


def _initial_params(run: _Run, rng: jax.Array) -> Any:
  """The init_checkpoint's parameters (or a random init), sharded like the train state's."""
  setup = run.setup
  if setup.init_checkpoint:
    logging.info("loading parameters from %s", setup.init_checkpoint)
    return checkpointing.load_params(setup.init_checkpoint,
                                     train_state.abstract_with_shardings(run.abstract.params, run.param_sharding))
  return jax.jit(lambda r: models.init_params(setup.model_cfg, r), out_shardings=run.param_sharding)(rng)


def _restore(run: _Run) -> tuple[train_state.TrainState, Any, bool]:
  """(state, reference params or None, resumed): the last checkpoint's state and data position, or a fresh state.
  The reference (DPO, or a KL term) is the frozen initial params, sharded like the policy."""
  cfg, rng = run.cfg, jax.random.PRNGKey(run.config.seed)
  needs_ref = cfg.objective == "dpo" or cfg.hybrid.rl.uses_kl
  if run.ckpt.latest_step() is not None:
    state = run.ckpt.restore(train_state.abstract_with_shardings(run.abstract, run.state_sharding), run.train_it)
    if int(state.step) > run.config.train.total_steps:   # nothing recorded yet: the run stays as it was
      run.ckpt.close()
      raise errors.ConfigError(
          f"{run.workdir} has trained {int(state.step)} steps, more than --config.train.total_steps="
          f"{run.config.train.total_steps}: a run cannot be shortened after the fact (its evaluation would be "
          f"labelled with a step it is not at). Continue it with total_steps >= {int(state.step)}, or use a new "
          "work directory")
    ref_params = _initial_params(run, rng) if needs_ref else None
    logging.info("resumed from step %d (lambda %.4f)", int(state.step), float(state.gate.lam))
    print(f"resumed from checkpoint step {int(state.step)}, lambda={float(state.gate.lam):.4f}", flush=True)
    return state, ref_params, True
  params = _initial_params(run, rng)
  ref_params = params if needs_ref else None   # `create` copies them into the (donated) state
  return jax.jit(run.create, out_shardings=run.state_sharding)(params), ref_params, False


def _make_steps(run: _Run) -> _Steps:
  """The jitted step of the objective, PPO reuse's step, the log-prob forward and the gradient geometry."""
  train_cfg, cfg = run.config.train, run.cfg
  make = lambda step: steps.jit_step(step, run.state_sharding, run.mesh)
  if cfg.objective == "dpo":
    update = make(steps.make_dpo_step(run.logprob_fn, run.optimizer, cfg, run.schedule,
                                      microbatches=train_cfg.microbatches))
  else:
    update = make(steps.make_hybrid_step(run.logprob_fn, run.optimizer, cfg, run.schedule,
                                         microbatches=train_cfg.microbatches))
  # PPO-style reuse of a rollout batch: later iterations keep the lambda of the first (rl.num_iterations).
  reuse = None
  if cfg.objective == "hybrid" and cfg.hybrid.rl.num_iterations > 1:
    reuse = make(steps.make_hybrid_step(run.logprob_fn, run.optimizer, cfg, run.schedule, update_gate=False,
                                        microbatches=train_cfg.microbatches))
  geometry = sharding.jit_with_rules(functools.partial(
      gradient_geometry.geometry, run.logprob_fn, cfg=cfg.hybrid.rl, num_minibatches=train_cfg.analysis_minibatches),
      run.mesh)
  return _Steps(update, reuse, sharding.jit_with_rules(run.logprob_fn, run.mesh, static_argnums=(2,)), geometry)


# ----------------------------------------------------------------------------- one step


def _dpo_batch(run: _Run, fns: _Steps, raw: PairBatch, ref_params: Any) -> DPOBatch:
  """The chosen and rejected halves on the mesh, with the frozen reference's log-probs of each."""
  chosen, rejected = (sharding.device_put_batch(hosts.same_length(half, run.setup.vocab.pad), run.mesh)
                      for half in (raw.chosen, raw.rejected))
  return DPOBatch(chosen=chosen, rejected=rejected, chosen_ref_logp=fns.logprobs(ref_params, chosen).logp,
                  rejected_ref_logp=fns.logprobs(ref_params, rejected).logp)


def _hybrid_batch(run: _Run, fns: _Steps, state: train_state.TrainState, raw: PromptBatch, ref_params: Any,
                  monitor: FailureMonitor | None) -> tuple[HybridBatch, int, dict[str, float]]:
  """(batch on the mesh, rl_start, rollout metrics): the reference responses (SFT part) and, past the SFT stage,
  scored rollouts of the current params (RL part); either is left out where its weight is structurally 0."""
  step, mode, setup = int(state.step), run.cfg.gate.mode, run.setup
  in_sft_stage = step < config_lib.sft_stage_steps(run.config)
  batch, rl_start, extra = HybridBatch(), 0, {}
  if in_sft_stage or mode != "rl_only":
    batch = batch.replace(sft=hosts.same_length(raw.reference, setup.vocab.pad))
  if not in_sft_stage and mode != "sft_only":
    rng_step = jax.random.fold_in(state.rng, 0)
    t_rollout = time.time()
    rollouts = rl_batch_lib.rollout_batch(
        state.params, setup.model_cfg, setup.sampling, raw, rng_step, setup.reward_fn, setup.decode_text, mesh=run.mesh,
        monitor=monitor, step=step, exclude_failed=run.config.reward.exclude_failed,
        length_buckets=run.config.rollout.length_buckets)
    batch = batch.replace(rl=rollouts.rl, rewards=rollouts.rewards, reward_valid=rollouts.reward_valid)
    rl_start, extra = rollouts.rl_start, rollouts.metrics
    extra["rollout_time"] = time.time() - t_rollout   # sampling and scoring (host arrays: synchronous)
  batch = sharding.device_put_batch(batch, run.mesh)
  if batch.rl is not None and ref_params is not None:
    batch = batch.replace(rl=batch.rl.replace(ref_logp=fns.logprobs(ref_params, batch.rl, rl_start).logp))
  return batch, rl_start, extra


def _analysis_due(run: _Run, step: int) -> bool:
  every = run.config.train.analysis_every if run.cfg.objective == "hybrid" else 0
  return bool(every) and (step + 1) % every == 0


def _geometry(run: _Run, fns: _Steps, state: train_state.TrainState, batch: HybridBatch) -> dict[str, float]:
  """Text- vs speech-token policy-gradient geometry of the step's RL batch (`geometry/...` metrics)."""
  rl = grpo.with_group_fields(batch.rl, batch.rewards, batch.reward_valid, run.cfg.hybrid.rl)
  return {f"geometry/{k}": v for k, v in jax.device_get(fns.geometry(state.params, rl)).items()}


def _update(run: _Run, fns: _Steps, state: train_state.TrainState, batch: HybridBatch | DPOBatch, rl_start: int,
            stop_at: int) -> tuple[train_state.TrainState, dict]:
  """The train step; with PPO reuse (rl.num_iterations > 1) further steps on the same rollouts, whose π_old is
  the training forward of the parameters that made them (not the sampler's)."""
  step = int(state.step)
  iterations = (min(run.cfg.hybrid.rl.num_iterations, stop_at - step)
                if fns.reuse is not None and batch.rl is not None else 1)   # reuse is hybrid only
  if iterations > 1:
    old_logp = fns.logprobs(state.params, batch.rl, rl_start).logp
  state, metrics = fns.update(state, batch, rl_start)   # iteration 1 is on-policy: ratio exactly 1
  for _ in range(iterations - 1):
    step_end.report_skipped(state, 0, "training", None, "")   # a skipped iteration (the step's last: _after_step)
    state, later = fns.reuse(state, batch.replace(rl=batch.rl.replace(old_logp=old_logp)), rl_start)
    metrics = {**metrics, **later}   # keeps the gate statistics of the first iteration
  return state, metrics


def _after_step(run: _Run, state: train_state.TrainState, metrics: dict, step: int, stop_at: int) -> None:
  """Logs, applies the stop rules and checkpoints (`step_end.finish_step`) and evaluates."""
  c, writer = run.config.train, run.writer
  now, total = int(state.step), c.total_steps
  crossed = lambda every: every and now // every > step // every
  logged = crossed(c.log_every) or now == total
  log = functools.partial(writer.write, now, metrics, total_steps=total) if logged else None
  saved = step_end.finish_step(state, run.ckpt, run.train_it, run.guard, what="training",
                               max_skips=c.max_consecutive_skips,
                               learning_rate_field="optim.learning_rate (resuming with another value needs "
                                                   "--config.train.allow_config_change=True)",
                               save_due=bool(crossed(c.checkpoint_every)) or now == stop_at or _save_due_by_time(run),
                               log=log, close=(writer.close,))
  if saved:
    run.last_save = time.time()
  if crossed(c.eval_every) and now < total:
    _evaluate_and_log(run, state.params, now, "eval", f"step_{now}")
    step_end.stop_if_signalled(state, run.ckpt, run.train_it, run.guard, what="training", saved=saved,
                               close=(writer.close,))


def _save_due_by_time(run: _Run) -> bool:
  """`train.checkpoint_every_minutes` have passed since the last checkpoint (process 0's clock decides for all):
  bounds the work a kill without warning loses when step times vary (rollout lengths, evaluations)."""
  minutes = run.config.train.checkpoint_every_minutes
  if not minutes:
    return False
  due = time.time() - run.last_save >= 60 * minutes
  if jax.process_count() > 1:
    due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
  return due


# ----------------------------------------------------------------------------- evaluation and shutdown


def _evaluate_before(run: _Run, state: train_state.TrainState) -> dict[str, float]:
  """A fresh run's evaluation before training (train.eval_before), else {}."""
  if int(state.step) != 0 or not run.config.train.eval_before:
    return {}
  before = _evaluate_and_log(run, state.params, 0, "eval_before", "before")
  if before:
    run_summary.write_before(run.workdir, before)
  return before


def _evaluate_missed(run: _Run, state: train_state.TrainState) -> None:
  """On resume, the evaluation the last launch owed: it crossed a multiple of `train.eval_every` and saved its
  checkpoint, then stopped before evaluating (a preemption signal during that step, a kill during the evaluation).
  Without it the eval curve, and a study's learning curve, would lack that point."""
  c, now = run.config.train, int(state.step)
  if not c.eval_every or not 0 < now < c.total_steps:
    return
  last = max((r["step"] for r in run.writer.resumed_rows if r["split"] == "eval"), default=0)
  owed = now // c.eval_every > last // c.eval_every
  if jax.process_count() > 1:   # process 0 read metrics.jsonl; every process takes part in the evaluation
    owed = bool(multihost_utils.broadcast_one_to_all(np.int32(owed)))
  if owed:
    _evaluate_and_log(run, state.params, now, "eval", f"step_{now}")


def _shut_down(run: _Run, state: train_state.TrainState, metrics: dict, resumed: bool, stop_at: int
               ) -> dict[str, float]:
  """Closes the checkpointer, evaluates the finished run (once: a rerun of a finished run reads its summary) and
  closes the writer; returns the evaluation after training ({} when the run stopped before its end)."""
  run.ckpt.close()
  workdir, total = run.workdir, run.config.train.total_steps
  after: dict[str, float] = {}
  if stop_at < total:
    print(f"stopped at step {stop_at} of {total} (train.stop_at_step); rerun the same command to continue", flush=True)
  elif resumed and metrics == {} and run_summary.finished(workdir):
    after = run_summary.read_after(workdir)
    print(f"{workdir} already holds a finished run ({total} steps); nothing to do", flush=True)
  else:
    after = _evaluate_and_log(run, state.params, total, "eval_after", "after")
    if after:
      _print_before_after(run_summary.write_summary(workdir, after, total), after)
  run.writer.close()
  return after


def _print_before_after(before: dict[str, float], after: dict[str, float]) -> None:
  if jax.process_index() != 0:
    return
  print("evaluation before -> after: " + ", ".join(
      f"{k} {before.get(k, float('nan')):.4f} -> {v:.4f}" for k, v in sorted(after.items())
      if "/" not in k and not k.endswith(("_lo", "_hi"))),
      flush=True)


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/vita.py:tiny; "
                                          "override any field with --config.<section>.<field>=VALUE "
                                          "(--print_config lists them all).", lock_config=True)
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config (after overrides) and exit.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, logs.")
_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize() first (multi-host "
                                 "TPU pods / GPU clusters; coordinator and process ids come from the environment).")


def configure_process(config: mlc.ConfigDict) -> None:
  """Process-wide settings of a launch, before its first compile: XLA's persistent compilation cache
  (`train.compilation_cache_dir`), so that a restarted job reuses the programs its last launch compiled."""
  if config.train.get("compilation_cache_dir"):
    jax.config.update("jax_compilation_cache_dir", config.train.compilation_cache_dir)


def main(argv: list[str]) -> None:
  """The train command. Unlike cli.run's other commands it turns only errors.RunError into an `error: ...` line:
  its user errors are checked up front (config_check, the data and checkpoint readers) and raised as RunError, so a
  ValueError or OSError from inside training is a bug and keeps its traceback."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/vita.py:tiny")
  if _PRINT_CONFIG.value:
    print(_CONFIG.value)
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  configure_process(_CONFIG.value)
  log_setup.quiet_stderr()
  try:   # a config mistake (errors.ConfigError) before anything is written: one line, not a traceback minutes in
    for warning in config_check.check(_CONFIG.value, _WORKDIR.value):
      print(f"warning: {warning}", file=sys.stderr, flush=True)
    with workdir_lock.hold(_WORKDIR.value):   # before the log file: a second job writes nothing
      log_file = log_setup.quiet_logs(_WORKDIR.value, "train")
      print(f"logs (absl / Orbax INFO and above): {log_file}", flush=True)
      _train_checked(_CONFIG.value, _WORKDIR.value)
  except errors.RunError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
