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

import functools
import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh
from ml_collections import config_flags

from wavalign_jax import (checkpointing, config_check, config_history, config_lib, errors, files, gating, log_setup,
                          models, optim, preemption, sharding, steps, train_state, workdir_lock)
from wavalign_jax.analysis import gradient_geometry, judge_agreement, rollout_diversity
from wavalign_jax.data import loader
from wavalign_jax.evaluation import generate as eval_generate
from wavalign_jax.objectives import grpo
from wavalign_jax.rewards.base import rollout_items
from wavalign_jax.rewards.llm_judge import FailureMonitor
from wavalign_jax.rollout import hosts
from wavalign_jax.rollout import sampler as sampler_lib
from wavalign_jax.run_setup import RunSetup, check_finite_knobs, make_reward_fn, setup_run


# ----------------------------------------------------------------------------- rollouts and rewards


def rollout_and_score(params: Any, setup: RunSetup, raw: dict, rng: jax.Array, reward_fn,
                      monitor: FailureMonitor | None, step: int, exclude_failed: bool, mesh: Mesh | None = None,
                      length_buckets: int = 8):
  """Samples G responses per prompt of this host's batch `raw` and scores them:
  (rl_batch, rl_start, rewards [P, G], valid [P, G], metrics), all on this host's rows. `rl_start` is the
  first completion target position (prompt length - 1, one value on every host), the step's `rl_start`."""
  prompts = hosts.same_prompt_length(sampler_lib.left_pad(raw["prompt"], raw["prompt_lengths"]))
  rollouts = hosts.sample_rows(params, setup.model_cfg, prompts, rng, setup.sampling, mesh)
  contents = sampler_lib.response_contents(rollouts, setup.constraint)
  G = setup.sampling.group_size
  result = reward_fn(rollout_items(raw["meta"], contents, setup.decode_text))
  metrics = monitor.update(result, step) if monitor is not None else {}
  P = len(raw["meta"])
  rewards = result.scores.reshape(P, G)
  valid = (~result.failed if exclude_failed else np.ones_like(result.failed)).reshape(P, G)
  lengths = np.asarray(rollouts.lengths)
  mask = np.asarray(rollouts.mask)
  forced = sum(np.asarray(f)[mask].sum() for f in rollouts.forced.values()) / max(mask.sum() * len(rollouts.forced), 1)
  metrics.update(rollout_diversity.summary(rollout_diversity.content_stats(rewards, contents)))
  metrics.update(judge_agreement.true_score_summary(result.scores, result.info))
  if judge_agreement.has_true_scores(result.info):   # the testbed judge: exact answers score semantic 5
    semantic = np.array([i["semantic"] for i in result.info]).reshape(P, G)
    metrics.update(rollout_diversity.pass_stats(semantic == 5))
    metrics["diversity/informative_semantic"] = float(rollout_diversity.informative(semantic).mean())
  metrics.update(rollout_length=float(lengths.mean()), rollout_truncated=float(np.mean(rollouts.truncated)),
                 rollout_forced_fraction=float(forced),
                 rollout_malformed=1.0 - float(np.mean(sampler_lib.well_formed(rollouts, setup.constraint))))
  batch = jax.device_get(sampler_lib.rl_batch(prompts, rollouts, setup.vocab.pad))
  batch.pop("group_ids")
  prompt_len = prompts["valid"].shape[1]
  batch = trim_rl_batch(batch, prompt_len, setup.sampling.max_new_tokens, length_buckets)
  return hosts.same_length(batch, setup.vocab.pad), prompt_len - 1, rewards, valid, metrics


def trim_rl_batch(batch: dict, prompt_len: int, max_new_tokens: int, buckets: int) -> dict:
  """Cuts the RL batch [B, Lp + N] (`sampler.rl_batch`) after the longest completion, rounded up to one of
  `buckets` lengths Lp + k·N/buckets (a few compiled shapes instead of always paying for Lp + N)."""
  longest = int(np.max(np.sum(np.asarray(batch["segment_ids"])[:, prompt_len:] > 0, axis=1)))
  step = -(-max_new_tokens // buckets)
  length = prompt_len + min(max_new_tokens, step * -(-max(longest, 1) // step))
  return jax.tree.map(lambda x: x[:, :length] if np.ndim(x) >= 2 else x, batch)


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
                                            sampler_lib.left_pad(raw["prompt"], raw["prompt_lengths"]),
                                            batch_size=batch_size, rng=jax.random.PRNGKey(seed), mesh=mesh)
      taken += [(meta, setup.decode_text(text_ids), codes) for meta, (text_ids, codes) in zip(raw["meta"], contents)]
      if num_examples and len(taken) >= num_examples:
        break
    items += taken[:num_examples] if num_examples else taken
  return setup.evaluator(items)


def _log_eval(writer, workdir: str, step: int, prefix: str, name: str,
              result: tuple[dict[str, float], list[dict]], seconds: float) -> None:
  """Eval metrics (and `eval_time`, its seconds) to the writer under `prefix`, per-item rows to
  WORKDIR/eval/<name>.jsonl (studies bootstrap them)."""
  summary, rows = result
  if not summary:
    return
  writer.write(step, {**summary, "eval_time": seconds}, prefix=prefix)
  if jax.process_index() == 0 and rows:
    files.write_jsonl(os.path.join(workdir, "eval", f"{name}.jsonl"), rows)


# ----------------------------------------------------------------------------- the run


def _initial_params(setup: RunSetup, param_sharding: Any, rng: jax.Array) -> Any:
  if setup.init_checkpoint:
    abstract = jax.eval_shape(lambda: models.init_params(setup.model_cfg, rng))
    logging.info("loading parameters from %s", setup.init_checkpoint)
    return checkpointing.load_params(setup.init_checkpoint,
                                     train_state.abstract_with_shardings(abstract, param_sharding))
  return jax.jit(lambda r: models.init_params(setup.model_cfg, r), out_shardings=param_sharding)(rng)


def train(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the job of `config` in `workdir`; returns the last metrics and the evaluations.

  SIGTERM / SIGINT end the run after the current step with a checkpoint (then `{"preempted": step}`).
  """
  with workdir_lock.hold(workdir), preemption.PreemptionGuard() as guard:
    try:
      return _train(config, workdir, guard)
    except preemption.Preempted as e:
      print(e, flush=True)
      return {"preempted": e.step}


def _train(config: mlc.ConfigDict, workdir: str, guard: preemption.PreemptionGuard) -> dict[str, Any]:
  optim_cfg = optim.OptimConfig(**config.optim, total_steps=config.train.total_steps)
  optim.validate(optim_cfg)
  check_finite_knobs(config)
  # Async saves write from a background thread while the loop goes on with a donated state. On CPU the host
  # copy Orbax writes from can alias a device buffer, and multi-process CPU collectives (gloo) are not ordered
  # across threads, so CPU runs (tests, the testbed) save synchronously; accelerators save asynchronously.
  async_save = jax.default_backend() != "cpu"
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                                    async_save=async_save)
  config_history.record(config, workdir, ckpt.latest_step())   # refuses a changed experiment on resume
  setup = setup_run(config, workdir, guard)
  mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes)
  per_host, shards = config.data.prompts_per_step // jax.process_count(), mesh.shape["data"] * mesh.shape["fsdp"]
  if jax.process_count() > 1 and per_host % shards:
    # Each host holds its own rows, so they must split evenly over the data shards (steps.batch_sharding).
    raise ValueError(f"--config.data.prompts_per_step={config.data.prompts_per_step}: each of the "
                     f"{jax.process_count()} hosts needs a multiple of the {shards} data shards (mesh data x fsdp)")
  cfg = steps.step_config(config)
  optimizer, schedule = optim.make_optimizer(optim_cfg), optim.learning_rate_schedule(optim_cfg)
  logprob_fn = models.logprob_fn(setup.model_cfg)
  param_sharding = models.param_shardings(setup.model_cfg, mesh)

  rng = jax.random.PRNGKey(config.seed)
  create = lambda params: train_state.create(params, optimizer, gating.init_gate_state(cfg.gate), rng)
  abstract = jax.eval_shape(lambda: create(models.init_params(setup.model_cfg, rng)))
  state_sharding = train_state.state_shardings(abstract, param_sharding, optimizer, mesh)
  train_it = loader.make_loader(setup.train_data, global_batch_size=config.data.prompts_per_step,
                                buckets=setup.buckets, seed=config.data.shuffle_seed,
                                num_epochs=config.data.num_epochs or None, worker_count=config.data.worker_count)

  resumed = ckpt.latest_step() is not None
  needs_ref = cfg.objective == "dpo" or cfg.hybrid.rl.uses_kl   # frozen initial params, sharded like the policy
  if resumed:
    state = ckpt.restore(train_state.abstract_with_shardings(abstract, state_sharding), train_it)
    ref_params = _initial_params(setup, param_sharding, rng) if needs_ref else None
    logging.info("resumed from step %d (lambda %.4f)", int(state.step), float(state.gate.lam))
    print(f"resumed from checkpoint step {int(state.step)}, lambda={float(state.gate.lam):.4f}", flush=True)
  else:
    params = _initial_params(setup, param_sharding, rng)
    ref_params = params if needs_ref else None   # `create` copies them into the (donated) state
    state = jax.jit(create, out_shardings=state_sharding)(params)

  writer = _writer(workdir, int(state.step))
  total = config.train.total_steps
  results: dict[str, Any] = {}
  if int(state.step) == 0 and config.train.eval_before:
    t0 = time.time()
    before = evaluate(state.params, setup, config.train.eval_examples, config.seed, mesh)
    results["eval_before"] = before[0]
    _log_eval(writer, workdir, 0, "eval_before", "before", before, time.time() - t0)
    if before[0] and jax.process_index() == 0:
      files.write_json(os.path.join(workdir, "eval_before.json"), before[0], indent=2)

  if cfg.objective == "dpo":
    step_fn = steps.jit_step(steps.make_dpo_step(logprob_fn, optimizer, cfg, schedule), state_sharding, mesh)
  else:
    step_fn = steps.jit_step(steps.make_hybrid_step(logprob_fn, optimizer, cfg, schedule,
                                                    microbatches=config.train.microbatches), state_sharding, mesh)
  # PPO-style reuse of a rollout batch: later iterations keep the lambda of the first (rl.num_iterations).
  reuse_fn = None
  if cfg.objective == "hybrid" and cfg.hybrid.rl.num_iterations > 1:
    reuse_fn = steps.jit_step(steps.make_hybrid_step(logprob_fn, optimizer, cfg, schedule, update_gate=False,
                                                     microbatches=config.train.microbatches), state_sharding, mesh)
  # π_old and π_ref forwards, once per rollout batch
  ref_logprobs = sharding.jit_with_rules(logprob_fn, mesh, static_argnums=(2,))
  reward_fn = make_reward_fn(config, workdir) if cfg.objective == "hybrid" else None
  monitor = FailureMonitor(config.reward.max_failed_fraction) if reward_fn is not None else None
  sft_stage_steps = int(round(config.train.sft_stage_fraction * total))
  analysis_every = config.train.analysis_every if cfg.objective == "hybrid" else 0
  geometry_fn = sharding.jit_with_rules(functools.partial(
      gradient_geometry.geometry, logprob_fn, cfg=cfg.hybrid.rl, num_minibatches=config.train.analysis_minibatches),
      mesh)
  metrics: dict[str, Any] = {}
  stop_at = min(total, config.train.stop_at_step or total)
  while int(state.step) < stop_at:
    step = int(state.step)
    t0 = time.time()
    raw = next(train_it)
    extra: dict[str, float] = {}
    rl_start = 0
    if cfg.objective == "dpo":
      batch = {}
      for half in ("chosen", "rejected"):
        b = steps.device_put_batch(hosts.same_length(raw[half], setup.vocab.pad), mesh)
        batch[half] = dict(b, ref_logp={k: v["logp"] for k, v in ref_logprobs(ref_params, b).items()})
    else:
      in_sft_stage = step < sft_stage_steps
      batch = {}
      if in_sft_stage or cfg.gate.mode != "rl_only":
        batch["sft"] = hosts.same_length(raw["reference"], setup.vocab.pad)
      if not in_sft_stage and cfg.gate.mode != "sft_only":
        rng_step = jax.random.fold_in(state.rng, 0)
        t_rollout = time.time()
        batch["rl"], rl_start, batch["rewards"], batch["reward_valid"], extra = rollout_and_score(
            state.params, setup, raw, rng_step, reward_fn, monitor, step, config.reward.exclude_failed, mesh,
            config.rollout.length_buckets)
        extra["rollout_time"] = time.time() - t_rollout   # sampling and scoring (host arrays: synchronous)
      batch = steps.device_put_batch(batch, mesh)
      if "rl" in batch and ref_params is not None:
        batch["rl"]["ref_logp"] = {k: v["logp"] for k, v in ref_logprobs(ref_params, batch["rl"], rl_start).items()}
    if analysis_every and (step + 1) % analysis_every == 0 and "rl" in batch:   # before the update: same params
      adv = grpo.group_advantages(batch["rewards"], batch["reward_valid"], cfg.hybrid.rl.advantage_scale,
                                  cfg.hybrid.rl.advantage_eps).reshape(-1)
      extra.update({f"geometry/{k}": v for k, v in jax.device_get(
          geometry_fn(state.params, dict(batch["rl"], advantages=adv))).items()})
    iterations = min(cfg.hybrid.rl.num_iterations, stop_at - step) if reuse_fn is not None and "rl" in batch else 1
    if iterations > 1:   # π_old: the training forward of the parameters that made the rollouts (not the sampler's)
      old_logp = {k: v["logp"] for k, v in ref_logprobs(state.params, batch["rl"], rl_start).items()}
    state, metrics = step_fn(state, batch, rl_start)   # iteration 1 is on-policy: ratio exactly 1
    for _ in range(iterations - 1):
      state, later = reuse_fn(state, dict(batch, rl=dict(batch["rl"], old_logp=old_logp)), rl_start)
      metrics = {**metrics, **later}   # keeps the gate statistics of the first iteration
    metrics = {**jax.device_get(metrics), **extra, "skipped_steps": int(state.skipped_steps),
               "step_time": time.time() - t0}
    now = int(state.step)
    crossed = lambda every: every and now // every > step // every
    if crossed(config.train.log_every) or now == total:
      writer.write(now, metrics, total_steps=total)
    stop = steps.report_skipped(state, config.train.max_consecutive_skips, "training", ckpt.latest_step(),
                                "optim.learning_rate (resuming with another value needs "
                                "--config.train.allow_config_change=True)")
    if stop:
      ckpt.close()
      writer.close()
      raise errors.NonFiniteStop(stop)
    saved = crossed(config.train.checkpoint_every) or now == stop_at
    if saved:
      ckpt.save(now, state, train_it)
    if guard.should_stop():
      if not saved:
        ckpt.save(now, state, train_it)
      ckpt.close()
      writer.close()
      raise preemption.Preempted(now, guard.signum, "training")
    if crossed(config.train.eval_every) and now < total:
      t0 = time.time()
      _log_eval(writer, workdir, now, "eval", f"step_{now}",
                evaluate(state.params, setup, config.train.eval_examples, config.seed, mesh), time.time() - t0)
  ckpt.close()
  summary_path = os.path.join(workdir, "eval_summary.json")
  if stop_at < total:
    print(f"stopped at step {stop_at} of {total} (train.stop_at_step); rerun the same command to continue", flush=True)
  elif resumed and metrics == {} and os.path.exists(summary_path):
    with open(summary_path) as f:
      results["eval_after"] = json.load(f)["after"]
    print(f"{workdir} already holds a finished run ({total} steps); nothing to do", flush=True)
  else:
    t0 = time.time()
    after = evaluate(state.params, setup, config.train.eval_examples, config.seed, mesh)
    results["eval_after"] = after[0]
    _log_eval(writer, workdir, total, "eval_after", "after", after, time.time() - t0)
    if after[0]:
      _write_eval_summary(workdir, after[0])
  writer.close()
  return {**results, "metrics": metrics, "state": state}


def _write_eval_summary(workdir: str, after: dict[str, float]) -> None:
  """WORKDIR/eval_summary.json: the evaluation before training (kept from the first run) and after."""
  if jax.process_index() != 0:
    return
  before_path = os.path.join(workdir, "eval_before.json")
  before = json.load(open(before_path)) if os.path.exists(before_path) else {}
  files.write_json(os.path.join(workdir, "eval_summary.json"), {"before": before, "after": after}, indent=2)
  print("evaluation before -> after: " + ", ".join(
      f"{k} {before.get(k, float('nan')):.4f} -> {v:.4f}" for k, v in sorted(after.items())
      if "/" not in k and not k.endswith(("_lo", "_hi"))),
      flush=True)


def _writer(workdir: str, resume_step: int):
  from wavalign_jax.metric_writer import MetricWriter
  return MetricWriter(workdir, resume_step=resume_step)


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/vita.py:tiny; "
                                          "override any field with --config.<section>.<field>=VALUE "
                                          "(--print_config lists them all).", lock_config=True)
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config (after overrides) and exit.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, logs.")
_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize() first (multi-host "
                                 "TPU pods / GPU clusters; coordinator and process ids come from the environment).")


def main(argv: list[str]) -> None:
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
  log_setup.quiet_stderr()
  try:   # before anything is written: a mistake is one line, not a traceback minutes in
    for warning in config_check.check(_CONFIG.value, _WORKDIR.value):
      print(f"warning: {warning}", file=sys.stderr, flush=True)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  try:
    with workdir_lock.hold(_WORKDIR.value):   # before the log file: a second job writes nothing
      log_file = log_setup.quiet_logs(_WORKDIR.value, "train")
      print(f"logs (absl / Orbax INFO and above): {log_file}", flush=True)
      train(_CONFIG.value, _WORKDIR.value)
  except errors.RunError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
