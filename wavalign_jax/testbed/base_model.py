"""The testbed's base model: a tiny random model SFT-trained on the synthetic task, cached on disk.

Post-training needs a policy that already speaks the layout and answers some questions: this plays
the role of the released VITA-Audio / Kimi-Audio checkpoints. It is trained briefly on purpose, so
that it stays imperfect and the hybrid has room to improve IQ. The SFT checkpoints every
`testbed.base_checkpoint_every` steps (and on SIGTERM) into `<out_dir>.sft_checkpoints`, so a killed
run resumes it; that folder is removed once the base model is saved.
"""
from __future__ import annotations

import functools
import os
import shutil
import time

import jax
from jax.experimental import multihost_utils
import ml_collections as mlc

from wavalign_jax import checkpointing, models, optim, sharding, step_end, steps, train_state
from wavalign_jax.batches import HybridBatch
from wavalign_jax.data import loader
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.objectives import gate as gate_lib
from wavalign_jax.objectives.hybrid import HybridConfig
from wavalign_jax.objectives.sft import SFTConfig
from wavalign_jax.preemption import PreemptionGuard


def path(run_dir: str) -> str:
  """Where a testbed run without `init_checkpoint` saves its base model, and where the runs started from it
  (a study's methods, `evaluate` of its checkpoints) find it."""
  return os.path.join(run_dir, "base_model")


def sft_checkpoints(out_dir: str) -> str:
  """Where the base model's SFT keeps its checkpoints until the base model is saved (a killed SFT resumes)."""
  return out_dir + ".sft_checkpoints"


def ensure_base_model(config: mlc.ConfigDict, model_cfg: ModelConfig, sft_data: str, buckets: tuple[int, ...],
                      out_dir: str, guard: PreemptionGuard | None = None) -> None:
  """Trains and saves the base model into `out_dir` unless it is already there (resuming a stopped SFT)."""
  if os.path.exists(os.path.join(out_dir, checkpointing.MODEL_CONFIG_FILE)):
    return
  tb = config.testbed
  optim_cfg = optim.OptimConfig(learning_rate=tb.base_learning_rate, warmup_steps=min(20, tb.base_sft_steps // 10),
                                total_steps=tb.base_sft_steps, weight_decay=0.0, clip_norm=1.0)
  optim.validate(optim_cfg, {"learning_rate": "testbed.base_learning_rate"})
  optimizer = optim.make_optimizer(optim_cfg)
  cfg = steps.StepConfig(hybrid=HybridConfig(sft=SFTConfig(**config.sft)), gate=gate_lib.GateConfig(mode="sft_only"))
  rng = jax.random.PRNGKey(tb.seed)
  mesh = sharding.config_mesh(config.mesh)   # the run's mesh (mesh.num_devices included), activation rules on
  create = lambda: train_state.create(models.init_params(model_cfg, rng), optimizer,
                                      gate_lib.init_gate_state(cfg.gate), rng)
  state, state_sharding = train_state.init_sharded(
      create, models.param_shardings(model_cfg, mesh), optimizer, mesh)
  step = steps.jit_step(steps.make_hybrid_step(models.logprob_fn(model_cfg), optimizer, cfg),
                        state_sharding, mesh)
  it = loader.make_loader(sft_data, global_batch_size=tb.base_batch_size, buckets=(buckets[-1],), seed=tb.seed)
  ckpt_dir = sft_checkpoints(out_dir)
  ckpt = checkpointing.Checkpointer(ckpt_dir, keep=1, async_save=False)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(train_state.abstract_with_shardings(jax.eval_shape(create), state_sharding), it)
    print(f"testbed: resuming the base-model SFT at step {int(state.step)}", flush=True)
  print(f"testbed: SFT-training the base model for {tb.base_sft_steps} steps -> {out_dir}", flush=True)
  start = time.time()
  for i in range(int(state.step), tb.base_sft_steps):
    state, metrics = step(state, sharding.device_put_batch(HybridBatch(sft=next(it)), mesh))
    log = functools.partial(print, f"[base sft {i + 1}/{tb.base_sft_steps} {time.time() - start:5.0f}s] "
                            f"sft_loss={float(metrics['sft_loss']):.4f}", flush=True
                            ) if (i + 1) % 50 == 0 or i + 1 == tb.base_sft_steps else None
    step_end.finish_step(state, ckpt, it, guard, what="the testbed's base-model SFT", log=log,
                         max_skips=config.train.max_consecutive_skips,
                         learning_rate_field="testbed.base_learning_rate",
                         save_due=bool(tb.base_checkpoint_every) and (i + 1) % tb.base_checkpoint_every == 0)
  ckpt.close()
  # On several processes: each gathers the whole params (an array spans every process's devices), all take part in
  # Orbax's save (it writes from process 0), and process 0 alone clears and renames the shared directories.
  several = jax.process_count() > 1
  params = multihost_utils.process_allgather(state.params, tiled=True) if several else jax.device_get(state.params)
  tmp = out_dir + ".tmp"
  if jax.process_index() == 0:
    shutil.rmtree(tmp, ignore_errors=True)
  if several:
    multihost_utils.sync_global_devices("testbed base model: temporary directory cleared")
  checkpointing.save_params(tmp, params, model_cfg, extra={"source": "testbed base SFT", "steps": tb.base_sft_steps})
  if jax.process_index() == 0:
    os.replace(tmp, out_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
  if several:
    multihost_utils.sync_global_devices("testbed base model saved")
