"""The jitted hybrid step on real (tiny) models: sharding invariance and the text-only RL gradient."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wavalign_jax import models, optim, sharding, steps, train_state
from wavalign_jax.batches import DPOBatch, HybridBatch, RLBatch, SeqBatch
from wavalign_jax.objectives import gate as gate_lib
from wavalign_jax.objectives import grpo
from wavalign_jax.objectives.grpo import GRPOConfig
from wavalign_jax.objectives.hybrid import HybridConfig, make_hybrid_loss
from wavalign_jax.objectives.sft import SFTConfig
from wavalign_jax.tokens import TokenType

P, G, L = 8, 2, 12


# Sharding changes only the order of float32 reductions. Each gradient element is a sum of at most
# n ~ B*L*d ~ 10^4 products; reordering such a sum moves it by ~ sqrt(n)·u·sum|terms| with u = 6e-8,
# i.e. up to ~1e-5 of the sum of magnitudes, which cancellation can make larger than the largest element
# of a leaf; 1e-4 of that element leaves this margin (measured: <= 5e-7). A sharding bug (a missing or
# doubled reduction over a mesh axis) moves elements by O(1) of that scale.
GRAD_RTOL = 1e-4
# Optimizer for parameter comparisons after reordered reductions (see test_step_on_8_devices_matches_1_device)
# and the bound on how far two steps can move parameters apart for gradient noise of GRAD_RTOL.
PARITY_OPTIM = optim.OptimConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10, eps=1e-2)
PARAM_ATOL = 2 * PARITY_OPTIM.learning_rate / PARITY_OPTIM.eps * GRAD_RTOL * PARITY_OPTIM.clip_norm


def _seq_batch(cfg, rng, rows, types_by_stream, cls=SeqBatch):
  ks = jax.random.split(rng, 2)
  inputs = {s: np.asarray(jax.random.randint(ks[0], (rows, L), 0, cfg.vocab_size), np.int32) for s in cfg.streams}
  targets = {s: np.roll(v, -1, axis=1) for s, v in inputs.items()}
  types = {}
  for s in cfg.streams:
    t = np.zeros((rows, L), np.int32)
    t[:, L // 2:-1] = types_by_stream[s]
    types[s] = t
  return cls(inputs=inputs, targets=targets, types=types,
             positions=np.tile(np.arange(L, dtype=np.int32), (rows, 1)), segment_ids=np.ones((rows, L), np.int32))


def _hybrid_batch(cfg, seed=0):
  rng = jax.random.PRNGKey(seed)
  types = ({"text": TokenType.TEXT, "audio": TokenType.SPEECH} if cfg.arch == "parallel"
           else {"tokens": TokenType.TEXT})
  sft = _seq_batch(cfg, rng, P, types)
  rl = _seq_batch(cfg, jax.random.fold_in(rng, 1), P * G, types, RLBatch)
  rewards = np.asarray(jax.random.randint(jax.random.fold_in(rng, 2), (P, G), 1, 6), np.float32)
  return HybridBatch(sft=sft, rl=rl, rewards=rewards, reward_valid=np.ones((P, G), bool))


def _step_on_mesh(cfg, mesh, microbatches=1, step_cfg=steps.StepConfig(), update_gate=True):
  """(initial state, jitted step) on `mesh`, with PARITY_OPTIM: the tests that only need some step of a model on a
  mesh then build the very program a parity test compiled (the session's cache hands it over, no new compile)."""
  opt_cfg = PARITY_OPTIM
  optimizer = optim.make_optimizer(opt_cfg)
  rng = jax.random.PRNGKey(0)
  param_sharding = models.param_shardings(cfg, mesh)
  create = lambda: train_state.create(models.init_params(cfg, rng), optimizer, gate_lib.init_gate_state(step_cfg.gate),
                                      rng)
  state, state_sharding = train_state.init_sharded(create, param_sharding, optimizer, mesh)
  step = steps.jit_step(steps.make_hybrid_step(models.logprob_fn(cfg), optimizer, step_cfg,
                                               optim.learning_rate_schedule(opt_cfg), microbatches=microbatches,
                                               update_gate=update_gate),
                        state_sharding, mesh)
  return state, step


def _run_on_mesh(cfg, mesh, batch, num_steps=2, microbatches=1, step_cfg=steps.StepConfig(), rl_start=0):
  state, step = _step_on_mesh(cfg, mesh, microbatches, step_cfg)
  losses = []
  for _ in range(num_steps):
    state, metrics = step(state, sharding.device_put_batch(batch, mesh), rl_start)
    losses.append(float(metrics["loss"]))
  return state, losses


def _gradients_on_mesh(cfg, mesh, batch, lam=0.5):
  """d(hybrid loss)/d(params) at the initial params, computed on `mesh` (advantages from the rewards)."""
  param_sharding = models.param_shardings(cfg, mesh)
  params = jax.jit(lambda r: models.init_params(cfg, r), out_shardings=param_sharding)(jax.random.PRNGKey(0))
  loss_fn = make_hybrid_loss(models.logprob_fn(cfg), HybridConfig())
  adv = np.asarray(grpo.group_advantages(jnp.asarray(batch.rewards))).reshape(-1)
  loss_batch = HybridBatch(sft=batch.sft, rl=batch.rl.replace(advantages=adv))
  grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, lam)[0]))
  return jax.device_get(grad(params, sharding.device_put_batch(loss_batch, mesh)))




@pytest.mark.parametrize("arch", ["interleaved", "parallel"])
def test_gradients_on_8_devices_match_1_device(arch):
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  cfg = models.tiny_config(arch)
  batch = _hybrid_batch(cfg)
  g1 = _gradients_on_mesh(cfg, sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]), batch)
  g8 = _gradients_on_mesh(cfg, sharding.make_mesh((2, 2, 2)), batch)
  flat1, flat8 = jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g8)
  for (path, a), b in zip(flat1, flat8):
    scale = float(np.max(np.abs(a)))   # 0 for parts the batch does not reach (e.g. the feature adaptor)
    np.testing.assert_allclose(b, a, rtol=0, atol=GRAD_RTOL * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("arch", ["interleaved", "parallel"])
def test_step_on_8_devices_matches_1_device(arch):
  """Two full steps (gate, advantages, loss, AdamW) give the same state on a (2,2,2) mesh as on one device.

  Adam's first update is lr·g/(|g| + eps) per element: its sensitivity to a gradient perturbation δ is
  lr·eps/(|g| + eps)² <= lr/eps. With the default eps = 1e-8 an element whose gradient is ~0 turns
  reassociation noise into an update of up to lr, so parameters cannot be compared elementwise (this
  is what made the old test fail on some CPUs). The comparison uses eps = 1e-2, for which two steps
  differ by at most 2·lr/eps·δ with δ <= GRAD_RTOL·max|g| <= GRAD_RTOL·clip_norm (clipped gradients),
  i.e. 2.4e-4, while a missing or doubled reduction moves an element by ~lr·|g|/(|g| + eps) ~ 5e-3.
  """
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  cfg = models.tiny_config(arch)
  batch = _hybrid_batch(cfg)
  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  eight = sharding.make_mesh((2, 2, 2))
  state1, losses1 = _run_on_mesh(cfg, one, batch)
  state8, losses8 = _run_on_mesh(cfg, eight, batch)
  # The params really are spread over the 8 devices (fsdp on "embed", tensor on heads / mlp / vocab).
  emb = state8.params["embedding"]
  assert len(emb.sharding.device_set) == 8 and emb.addressable_shards[0].data.size < emb.size
  np.testing.assert_allclose(losses8, losses1, rtol=GRAD_RTOL)
  assert float(state8.gate.lam) == pytest.approx(float(state1.gate.lam), abs=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=PARAM_ATOL),
               state8.params, state1.params)
  assert int(state8.step) == int(state1.step) == 2


def test_step_scoring_only_the_completions_matches_the_whole_rows():
  """rl_start (the head runs on the RL rows from their first scored target on) changes nothing but the order of
  float32 sums: same losses and, within the bound of the sharding test, the same params; on a (2,2,2) mesh."""
  cfg = models.tiny_config("parallel")
  batch = _hybrid_batch(cfg)
  assert not any(t[:, :L // 2].any() for t in batch.rl.types.values())
  mesh = sharding.make_mesh((2, 2, 2))
  whole, losses_whole = _run_on_mesh(cfg, mesh, batch)
  window, losses_window = _run_on_mesh(cfg, mesh, batch, rl_start=L // 2)
  np.testing.assert_allclose(losses_window, losses_whole, rtol=GRAD_RTOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=PARAM_ATOL),
               window.params, whole.params)


AUDIO_ONLY = ("mimo", "mimo_norm", "audio_head")


@pytest.mark.parametrize("token_set,expect_zero", [("text", True), ("all", False)])
def test_text_only_rl_gives_no_gradient_to_the_audio_branch(token_set, expect_zero):
  cfg = models.tiny_config("parallel")
  params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(1))
  batch = _hybrid_batch(cfg, seed=3)
  rl = batch.rl.replace(advantages=jnp.asarray(np.linspace(-1.5, 1.5, P * G), jnp.float32))
  loss_fn = make_hybrid_loss(models.logprob_fn(cfg),
                             HybridConfig(rl=GRPOConfig(token_set=token_set)))
  grads = jax.jit(jax.grad(lambda p: loss_fn(p, HybridBatch(rl=rl), 1.0)[0]))(params)
  audio_norm = optax.tree.norm({k: grads[k] for k in AUDIO_ONLY})
  text_norm = optax.tree.norm(grads["lm_head"])
  assert float(text_norm) > 1e-4   # the text head learns either way
  if expect_zero:
    for k in AUDIO_ONLY:   # exactly zero, not merely small
      assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads[k])), k
  else:
    assert float(audio_norm) > 1e-4


def test_interleaved_rl_ignores_speech_positions():
  """With token_set "text", changing the targets at speech positions leaves the RL loss unchanged."""
  cfg = models.tiny_config("interleaved")
  params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(2))
  rl = _hybrid_batch(cfg, seed=4).rl
  types = rl.types["tokens"].copy()
  types[:, L // 2:L // 2 + 3] = TokenType.SPEECH
  types[:, L // 2 + 3] = TokenType.BOUNDARY
  rl = rl.replace(types={"tokens": types}, advantages=jnp.asarray(np.linspace(-1, 1, P * G), jnp.float32))
  loss_fn = make_hybrid_loss(models.logprob_fn(cfg), HybridConfig())
  speech = (types == TokenType.SPEECH) | (types == TokenType.BOUNDARY)
  other_targets = np.where(speech, (rl.targets["tokens"] + 7) % cfg.vocab_size, rl.targets["tokens"])
  rl2 = rl.replace(targets={"tokens": other_targets})
  # one program for both batches (jitted: op by op, the loss would compile each of its ~200 operations)
  rl_grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, HybridBatch(rl=b), 1.0)[0]))
  g1, g2 = rl_grad(params, rl), rl_grad(params, rl2)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g1, g2)
  # ... while the SFT anchor does see them.
  sft_loss = jax.jit(lambda p, b: loss_fn(p, HybridBatch(sft=b), 0.0)[0])
  s1, s2 = sft_loss(params, rl), sft_loss(params, rl2)
  assert abs(float(s1) - float(s2)) > 1e-4


def test_gradient_accumulation_matches_one_batch():
  """4 micro-batches (strided rows, global counts) give the loss and update of the whole batch."""
  cfg = models.tiny_config("parallel")
  batch = _hybrid_batch(cfg, seed=5)
  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  # "token_mean" SFT makes per-sample weights unequal across micro-batches: a plain average of
  # micro-batch losses would be wrong, only global counts give the same answer.
  step_cfg = steps.StepConfig(hybrid=HybridConfig(sft=SFTConfig(aggregation="token_mean")))
  whole, losses1 = _run_on_mesh(cfg, one, batch, num_steps=1, step_cfg=step_cfg)
  micro, losses4 = _run_on_mesh(cfg, one, batch, num_steps=1, microbatches=4, step_cfg=step_cfg)
  np.testing.assert_allclose(losses4, losses1, rtol=GRAD_RTOL)
  # Accumulation reorders the same float32 sums as sharding does: the same bound applies (one step).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=PARAM_ATOL / 2),
               micro.params, whole.params)
  with pytest.raises(ValueError, match="does not split into 3 micro-batches"):
    steps.accumulate_gradients(lambda *a: (0.0, {}), {}, {"sft": {"x": np.zeros((8, 2))}}, 0.0, {}, 3)


def test_dpo_gradient_accumulation_matches_one_batch():
  """DPO in 2 micro-batches gives the loss and update of the whole batch of pairs: each piece's loss is its share of
  the step's (divided by the step's pair count, not its own)."""
  cfg = models.tiny_config("interleaved")
  rng = jax.random.PRNGKey(3)
  types = {"tokens": TokenType.TEXT}
  chosen, rejected = _seq_batch(cfg, rng, P, types), _seq_batch(cfg, jax.random.fold_in(rng, 1), P, types)
  ref = lambda k: {"tokens": -np.asarray(jax.random.uniform(jax.random.fold_in(rng, k), (P, L), minval=0.1,
                                                            maxval=3.0))}
  batch = DPOBatch(chosen=chosen, rejected=rejected, chosen_ref_logp=ref(2), rejected_ref_logp=ref(3))
  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  optimizer = optim.make_optimizer(PARITY_OPTIM)
  params = models.init_params(cfg, rng)
  results = []
  for microbatches in (1, 2):
    state = train_state.create(params, optimizer, gate_lib.init_gate_state(steps.StepConfig().gate), rng)
    step = jax.jit(steps.make_dpo_step(models.logprob_fn(cfg), optimizer, steps.StepConfig(),
                                       optim.learning_rate_schedule(PARITY_OPTIM), microbatches=microbatches))
    results.append(step(state, sharding.device_put_batch(batch, one)))
  (whole, m1), (micro, m2) = results
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=GRAD_RTOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=PARAM_ATOL / 2),
               micro.params, whole.params)


def test_logged_lambda_is_the_one_the_loss_applied():
  """Without RL rows (the SFT stage of two_stage) the loss applies λ = 0 whatever the gate holds (rl_only: 1), and
  the step logs 0; with them it logs the gate's λ (1). The SFT-only step's loss is then the SFT loss whole."""
  cfg = models.tiny_config("interleaved")
  batch = _hybrid_batch(cfg)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  step_cfg = steps.StepConfig(gate=gate_lib.GateConfig(mode="rl_only"))
  state, step = _step_on_mesh(cfg, mesh, step_cfg=step_cfg)
  assert float(state.gate.lam) == 1.0
  after, metrics = step(state, sharding.device_put_batch(HybridBatch(sft=batch.sft), mesh), 0)
  assert float(metrics["lambda"]) == 0.0 and float(after.gate.lam) == 1.0
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics["sft_loss"]), rtol=1e-6)
  _, metrics = step(after, sharding.device_put_batch(batch, mesh), 0)
  assert float(metrics["lambda"]) == 1.0


def test_the_loss_applies_the_lambda_the_gate_computes_in_the_same_step():
  """A dynamic gate at λ 0.6: the step's loss mixes SFT and RL with the λ its own gate update gives (from this
  step's rewards: objectives/gate.py), not the state's. Both parts are logged, so the mix is checked by hand."""
  cfg = models.tiny_config("interleaved")
  batch = _hybrid_batch(cfg)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  step_cfg = steps.StepConfig()
  state, step = _step_on_mesh(cfg, mesh, step_cfg=step_cfg)
  state = state.replace(gate=gate_lib.GateState(lam=jnp.float32(0.6), initialized=jnp.asarray(True)))
  new, _ = gate_lib.update_gate(state.gate, jnp.asarray(batch.rewards), jnp.asarray(batch.reward_valid), step_cfg.gate)
  lam = float(new.lam)
  assert abs(lam - 0.6) > 1e-3
  _, metrics = step(state, sharding.device_put_batch(batch, mesh), 0)
  assert float(metrics["lambda"]) == pytest.approx(lam, rel=1e-6)
  mixed = (1 - lam) * float(metrics["sft_loss"]) + lam * float(metrics["rl_loss"])
  assert float(metrics["loss"]) == pytest.approx(mixed, rel=1e-5, abs=1e-6)   # float32 sums of three terms
  # A later PPO iteration on the same rollouts (update_gate=False) keeps the state's λ: the same rewards must not move
  # the gate's moving average once per iteration.
  state, reuse = _step_on_mesh(cfg, mesh, step_cfg=step_cfg, update_gate=False)
  state = state.replace(gate=gate_lib.GateState(lam=jnp.float32(0.6), initialized=jnp.asarray(True)))
  after, metrics = reuse(state, sharding.device_put_batch(batch, mesh), 0)
  assert float(after.gate.lam) == float(metrics["lambda"]) == pytest.approx(0.6, rel=1e-7)
  mixed = 0.4 * float(metrics["sft_loss"]) + 0.6 * float(metrics["rl_loss"])
  assert float(metrics["loss"]) == pytest.approx(mixed, rel=1e-5, abs=1e-6)


def test_micro_batch_metrics_are_the_whole_batch_metrics():
  """4 micro-batches holding different numbers of RL tokens (completions of 2..8 tokens) of a later PPO iteration
  (π_old given, so ratios vary by token): every logged metric of the step equals the one-batch step's, the token
  means (ratio, clip fractions, entropy by type) included, which a plain average of the pieces' means is not."""
  cfg = models.tiny_config("parallel")
  batch = _hybrid_batch(cfg, seed=6)
  ends = L // 2 + 2 + np.arange(P * G) % 7   # row r's completion: L//2 .. ends[r]
  keep = np.arange(L)[None, :] < ends[:, None]
  noise = np.random.default_rng(0).uniform(-1, 1, (P * G, L)).astype(np.float32)
  old_logp = {s: -np.log(cfg.vocab_size) + noise for s in cfg.streams}
  batch = batch.replace(rl=batch.rl.replace(types={s: np.where(keep, t, 0) for s, t in batch.rl.types.items()},
                                            old_logp=old_logp))
  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, m1 = _step_on_mesh(cfg, one)[1](_step_on_mesh(cfg, one)[0], sharding.device_put_batch(batch, one), 0)
  state, step4 = _step_on_mesh(cfg, one, microbatches=4)
  _, m4 = step4(state, sharding.device_put_batch(batch, one), 0)
  assert set(m1) == set(m4) and "rl/entropy_text" in m1
  counts = np.asarray(batch.rl.types["text"] == TokenType.TEXT).sum(1)
  assert len({int(counts[i::4].sum()) for i in range(4)}) > 1   # the pieces' token counts differ
  for k in m1:
    np.testing.assert_allclose(np.asarray(m4[k]), np.asarray(m1[k]), rtol=GRAD_RTOL, atol=1e-6, err_msg=k)


def test_non_finite_step_changes_nothing_and_is_counted():
  """A NaN reward makes the loss NaN: params, optimizer moments and gate stay, skipped_steps counts it."""
  cfg = models.tiny_config("interleaved")
  batch = _hybrid_batch(cfg)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  state, step = _step_on_mesh(cfg, mesh)
  state, _ = step(state, sharding.device_put_batch(batch, mesh), 0)
  before = jax.device_get(state)
  bad = batch.replace(rewards=np.where(np.arange(P * G).reshape(P, G) == 3, np.nan, batch.rewards).astype(np.float32))
  after, metrics = step(state, sharding.device_put_batch(bad, mesh), 0)
  assert bool(metrics["skipped"]) and not np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get((after.params, after.opt_state, after.gate)),
               (before.params, before.opt_state, before.gate))
  assert int(after.skipped_steps) == 1 and int(after.step) == int(before.step) + 1
  assert int(after.consecutive_skips) == 1
  # The logged lambda is the state's (kept) one, not the rejected NaN of the gate update.
  assert float(metrics["lambda"]) == float(before.gate.lam)
  # The next finite step applies as usual and does not count; it logs the learning rate the optimizer applies, at
  # its own update count (1: the skipped step did not advance it), not at the train state's step (2).
  counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(after.opt_state, "count")]   # Adam's, schedule's
  schedule = optim.learning_rate_schedule(PARITY_OPTIM)
  assert counts == [1, 1] and int(after.step) == 2 and float(schedule(1)) != float(schedule(2))
  after, metrics = step(after, sharding.device_put_batch(batch, mesh), 0)
  assert not bool(metrics["skipped"]) and int(after.skipped_steps) == 1 and int(after.consecutive_skips) == 0
  assert float(optax.tree.norm(jax.tree.map(jnp.subtract, after.params, before.params))) > 0
  assert float(metrics["lr"]) == float(schedule(1))


@pytest.mark.parametrize("case", ["nan_learning_rate", "overflowing_update"])
def test_step_with_finite_loss_and_gradient_but_non_finite_update_is_skipped(case):
  """The guard covers the update, not only the loss and the gradient: a NaN learning rate, or an update that
  overflows to inf, leaves params / moments / gate untouched and counts as skipped (steps.all_finite)."""
  cfg = models.tiny_config("interleaved")
  batch = _hybrid_batch(cfg)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  state, _ = _run_on_mesh(cfg, mesh, batch, num_steps=1)
  if case == "nan_learning_rate":
    schedule = lambda count: jnp.float32(jnp.nan)
    optimizer = optax.adamw(schedule)
  else:   # finite learning rate; the updates (gradient x 1e60) overflow float32
    schedule = lambda count: jnp.float32(1e-3)
    optimizer = optax.chain(optax.scale(1e30), optax.scale(1e30))
  state = state.replace(opt_state=optimizer.init(state.params))
  before = jax.device_get(state)
  step = jax.jit(steps.make_hybrid_step(models.logprob_fn(cfg), optimizer, steps.StepConfig(), schedule))
  after, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert bool(metrics["skipped"]) and int(after.skipped_steps) == 1 and int(after.consecutive_skips) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get((after.params, after.opt_state, after.gate)),
               (before.params, before.opt_state, before.gate))
  after, _ = step(after, batch)
  assert int(after.consecutive_skips) == 2 and int(after.skipped_steps) == 2


def test_all_finite_is_one_reduction_over_every_float_leaf():
  tree = {"a": jnp.ones((3,)), "b": [jnp.zeros((2, 2)), jnp.arange(3)], "c": jnp.float32(2.0)}
  assert bool(steps.all_finite(tree))
  for path, bad in [("a", jnp.array([1.0, jnp.inf, 0.0])), ("c", jnp.float32(jnp.nan))]:
    assert not bool(steps.all_finite(dict(tree, **{path: bad})))
  assert not bool(steps.all_finite(tree, jnp.float32(-jnp.inf)))


def test_learning_rate_schedule_is_validated_at_start_up():
  """1e39 is inf in float32: refused with the field named, before any step (optim.validate)."""
  from wavalign_jax.errors import RunError
  optim.validate(optim.OptimConfig(learning_rate=3e38))   # finite in float32: the step's guard handles it
  for kwargs, field in [(dict(learning_rate=1e39), "optim.learning_rate=1e+39"),
                        (dict(learning_rate=float("nan")), "optim.learning_rate=nan"),
                        (dict(end_learning_rate=float("inf")), "optim.end_learning_rate=inf"),
                        (dict(b2=1.0), "optim.b2=1.0"), (dict(weight_decay=-1.0), "optim.weight_decay=-1.0")]:
    with pytest.raises(RunError, match=re.escape(field)):
      optim.validate(optim.OptimConfig(**kwargs))


def test_renamed_mesh_axes_shard_and_step_alike():
  """Mesh axes named otherwise (config `mesh.axes`) take the roles data, fsdp, tensor in order: the rules, the
  parameter layout, the batch placement and two full steps are those of the default names."""
  cfg = models.tiny_config("interleaved")
  batch = _hybrid_batch(cfg)
  named = sharding.make_mesh((2, 2, 2))
  renamed = sharding.make_mesh((2, 2, 2), axes=("replica", "shard", "model"))
  assert sharding.batch_axes(renamed) == ("replica", "shard") and sharding.data_parallel_size(renamed) == 4
  assert sharding.mesh_shards(renamed, "embed") == 2 and sharding.mesh_shards(renamed, "mlp") == 2
  rows = sharding.device_put_batch(batch, renamed).sft.segment_ids
  assert rows.sharding.spec[0] == ("replica", "shard") and rows.addressable_shards[0].data.shape[0] == P // 4
  state_a, losses_a = _run_on_mesh(cfg, named, batch)
  state_b, losses_b = _run_on_mesh(cfg, renamed, batch)
  rename = {"data": "replica", "fsdp": "shard", "tensor": "model"}
  as_renamed = lambda spec: tuple(None if e is None else rename[e] if isinstance(e, str) else
                                  tuple(rename[a] for a in e) for e in spec)
  jax.tree.map(lambda a, b: _assert_same_spec(as_renamed(a.sharding.spec), tuple(b.sharding.spec)),
               state_a.params, state_b.params)
  np.testing.assert_allclose(losses_b, losses_a, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6),
               state_a.params, state_b.params)


def _assert_same_spec(a: tuple, b: tuple) -> None:
  pad = lambda s, n: tuple(s) + (None,) * (n - len(s))
  n = max(len(a), len(b))
  assert pad(a, n) == pad(b, n)
