"""Objectives against direct numpy computations of the formulas (docs/method.md §1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavalign_jax.objectives import (DPOConfig, GRPOConfig, HybridConfig, LossTerm, SFTConfig, aggregate,
                                     dpo_loss, group_advantages, group_weights, grpo_loss, hybrid_counts,
                                     group_fallback, kl_divergence, make_dpo_loss, make_hybrid_loss, rl_token_weights,
                                     sft_loss,
                                     term_value)
from wavalign_jax.batches import DPOBatch, HybridBatch, RLBatch, SeqBatch, TargetLogprobs
from wavalign_jax.tokens import TokenType

N, T, S, X = TokenType.NONE, TokenType.TEXT, TokenType.SPEECH, TokenType.BOUNDARY
V = 7  # vocabulary of the toy model

# Two streams, like the parallel layout; row 2 has no text token (fallback), row 3 is padding only.
TYPES = {
    "text": np.array([[N, T, T, T, N], [N, T, N, N, N], [N, N, N, N, N], [N, N, N, N, N]], np.int32),
    "audio": np.array([[N, S, S, S, S], [X, S, S, X, N], [N, S, S, X, N], [N, N, N, N, N]], np.int32),
}
RNG = np.random.default_rng(0)
LOGP = {k: -RNG.uniform(0.1, 3.0, v.shape).astype(np.float32) for k, v in TYPES.items()}
OLD = {k: (v + RNG.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in LOGP.items()}
REF = {k: (v + RNG.normal(0, 0.5, v.shape)).astype(np.float32) for k, v in LOGP.items()}
ADV = np.array([1.5, -0.7, 0.4, 2.0], np.float32)


def flat(x):
  return np.concatenate([x["audio"], x["text"]], axis=1)  # sorted stream order


def is_text(types):
  return types == T


def is_speech(types):
  return (types == S) | (types == X)


def jx(tree):
  return jax.tree.map(jnp.asarray, tree)


def typed(types, cls=SeqBatch, **fields):
  """A batch of `types` for the losses alone (they read no ids or positions: those are zeros)."""
  zeros = jnp.zeros(next(iter(types.values())).shape, jnp.int32)
  ids = {k: zeros for k in types}
  return cls(inputs=ids, targets=ids, types=jx(types), positions=zeros, segment_ids=zeros, **fields)


def rl_batch(types=TYPES, **fields):
  """The RL batch of the GRPO tests: `types` with the advantages ADV (and `fields`)."""
  return typed(types, RLBatch, advantages=jnp.asarray(ADV), **fields)


# ---------------------------------------------------------------- advantages


def np_advantages(r, valid, scale, eps=1e-4):
  out = np.zeros_like(r)
  allv = r[valid]
  for p in range(r.shape[0]):
    g = r[p][valid[p]]
    if g.size == 0:
      continue
    std = {"group": g.std(), "batch": allv.std(), "none": None}[scale]
    a = g - g.mean()
    out[p][valid[p]] = a if std is None else a / (std + eps)
  return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_numpy(scale):
  r = np.array([[1, 5, 3, 3], [2, 2, 2, 2], [4, 1, 5, 2.5]], np.float32)
  valid = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1]], bool)
  got = np.asarray(group_advantages(jnp.asarray(r), jnp.asarray(valid), scale))
  np.testing.assert_allclose(got, np_advantages(r, valid, scale), rtol=1e-5, atol=1e-6)
  assert got[2, 1] == 0.0  # invalid item: no advantage


def test_group_advantages_hand_values():
  # [1, 5, 3, 3]: mean 3, population std sqrt(2).
  got = np.asarray(group_advantages(jnp.array([[1.0, 5.0, 3.0, 3.0]])))
  s = np.sqrt(2.0) + 1e-4
  np.testing.assert_allclose(got, [[-2 / s, 2 / s, 0, 0]], rtol=1e-6)


# Equal rewards whose float32 group mean is a rounding off their value (7 x 4.995; 8/3, the mean of three judge
# choices, 8 times): a group without signal, whatever the rounding.
EQUAL_GROUPS = [np.full((1, 7), 4.995, np.float32), np.full((1, 8), 8 / 3, np.float32)]


@pytest.mark.parametrize("r", EQUAL_GROUPS, ids=["4.995x7", "8/3x8"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_a_group_of_equal_rewards_has_no_advantage(r, scale):
  """Deviations of a rounded mean (an ulp) scaled by a std of an ulp gave every row the same positive advantage."""
  assert jnp.sum(jnp.asarray(r)) / r.shape[1] != r[0, 0]   # the premise: the float32 mean does round
  np.testing.assert_array_equal(group_advantages(jnp.asarray(r), None, scale), 0.0)
  np.testing.assert_array_equal(group_weights(jnp.asarray(r), None, drop_equal_groups=True), 0.0)


def test_group_weights_drop_equal_groups():
  r = jnp.array([[2.0, 2.0, 2.0], [1.0, 3.0, 1.0], [4.0, 2.0, 4.0]])
  valid = jnp.array([[1, 1, 1], [1, 1, 1], [1, 0, 1]], bool)
  np.testing.assert_array_equal(group_weights(r, valid), [[1, 1, 1], [1, 1, 1], [1, 0, 1]])
  # Row 2's valid rewards are all 4: dropped although the invalid one differs.
  np.testing.assert_array_equal(group_weights(r, valid, drop_equal_groups=True), [[0, 0, 0], [1, 1, 1], [0, 0, 0]])


# ---------------------------------------------------------------- aggregation


def np_aggregate(values, weights, mode, seq_weight, norm_length=0.0):
  sw = seq_weight
  if mode == "stream_mean":  # one masked mean per stream, added
    return sum((sw[:, None] * weights[k] * values[k]).sum() / (sw[:, None] * weights[k]).sum() for k in values)
  return np_reduce(flat(values), flat(weights), mode, sw, norm_length)


def np_reduce(v, w, mode, sw, norm_length):
  if mode == "token_mean":
    return (sw[:, None] * w * v).sum() / (sw[:, None] * w).sum()
  per, cnt = [], []
  for b in range(v.shape[0]):
    if w[b].sum() == 0:
      continue
    s = (w[b] * v[b]).sum()
    per.append(sw[b] * (s / w[b].sum() if mode == "seq_mean_token_mean" else s / norm_length))
    cnt.append(sw[b])
  return sum(per) / sum(cnt)


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "stream_mean"])
def test_aggregate_modes_match_numpy(mode):
  weights = {k: (v != N).astype(np.float32) * RNG.uniform(0.5, 2.0, v.shape).astype(np.float32)
             for k, v in TYPES.items()}
  sw = np.array([1.0, 0.5, 2.0, 1.0], np.float32)
  term = aggregate(jx(LOGP), jx(weights), mode, seq_weight=jnp.asarray(sw), norm_length=8.0)
  np.testing.assert_allclose(term_value(term), np_aggregate(LOGP, weights, mode, sw, 8.0), rtol=1e-5)


def test_term_value_of_empty_term_is_zero():
  assert float(term_value(LossTerm(jnp.float32(0.0), jnp.float32(0.0)))) == 0.0


# ---------------------------------------------------------------- SFT


@pytest.mark.parametrize("mode", ["sample_mean", "token_mean", "stream_mean"])
def test_sft_loss_matches_numpy(mode):
  cfg = SFTConfig(text_weight=1.0, speech_weight=0.5, aggregation=mode)
  nll = {k: -v for k, v in LOGP.items()}
  w = {k: is_text(t) * 1.0 + is_speech(t) * 0.5 for k, t in TYPES.items()}
  if mode == "sample_mean":  # per-sample weighted mean, then batch mean over samples with targets
    fw, fn = flat(w), flat(nll)
    rows = [(fw[b] * fn[b]).sum() / fw[b].sum() for b in range(4) if fw[b].sum() > 0]
    want = np.mean(rows)
  elif mode == "token_mean":
    want = (flat(w) * flat(nll)).sum() / flat(w).sum()
  else:  # one masked mean per stream, added 1:1
    want = sum((w[k] * nll[k]).sum() / w[k].sum() for k in nll)
  got = term_value(sft_loss(jx(LOGP), typed(TYPES), cfg))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sft_token_set_text_only():
  got = term_value(sft_loss(jx(LOGP), typed(TYPES), SFTConfig(token_set="text", aggregation="token_mean")))
  m = flat({k: is_text(t) for k, t in TYPES.items()})
  np.testing.assert_allclose(got, -flat(LOGP)[m].mean(), rtol=1e-5)


# ---------------------------------------------------------------- GRPO


def np_rl_mask(types, token_set, group_size):
  """Token-set mask; a group (group_size consecutive rows) with no such token uses its whole completions."""
  sel = {"text": is_text, "speech": is_speech, "all": lambda t: t != N}[token_set]
  m, comp = flat({k: sel(t) for k, t in types.items()}), flat({k: t != N for k, t in types.items()})
  group_has = np.repeat(m.any(axis=1).reshape(-1, group_size).any(axis=1), group_size)[:, None]
  return np.where(group_has, m, comp).astype(np.float32)


def np_reduce_rl(per_tok, mask, types, mode, sw, norm_length):
  """The reference reduction: a sequence counts when it holds a completion, even if its mask is empty."""
  if mode == "token_mean":
    return (sw[:, None] * mask * per_tok).sum() / (sw[:, None] * mask).sum()
  completion = flat({k: t != N for k, t in types.items()}).any(axis=1)
  per = [sw[b] * ((mask[b] * per_tok[b]).sum() / max(mask[b].sum(), 1) if mode == "seq_mean_token_mean"
                  else (mask[b] * per_tok[b]).sum() / norm_length) for b in range(len(sw)) if completion[b]]
  return sum(per) / sum(sw[completion])


@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_rl_token_weights_group_fallback(group_size):
  fallback = group_fallback(jx(TYPES), "text", group_size)
  w = rl_token_weights(jx(TYPES), "text", fallback)
  np.testing.assert_array_equal(np.concatenate([w["audio"], w["text"]], 1), np_rl_mask(TYPES, "text", group_size))
  # Row 0 has text: its speech tokens are out.
  np.testing.assert_array_equal(w["audio"][0], [0, 0, 0, 0, 0])
  # Row 2 has no text token. Alone or with row 3 (padding) its group has none: its whole completion (codes and
  # boundary) is used. In one group with rows 0 and 1, which have text, it has no RL token at all.
  np.testing.assert_array_equal(w["audio"][2], [0, 0, 0, 0, 0] if group_size == 4 else [0, 1, 1, 1, 0])
  assert list(np.asarray(fallback)) == ([False, False, True, True] if group_size < 4 else [False] * 4)


GROUP = 2   # rows (0, 1) and (2, 3) are the prompt groups of the GRPO tests below


def np_ratio_kl(logp, old, ref, cfg):
  """Per-token ratio π/π_old (1 without clipping: on-policy) and KL estimate to the reference, [B, L] over streams."""
  lp, o, rf = flat(logp), flat(old), flat(ref)
  ratio = np.exp(lp - o) if cfg.clipping else np.ones_like(lp)
  d = rf - lp
  return ratio, {"k1": -d, "k2": 0.5 * d**2, "k3": np.exp(d) - d - 1}[cfg.kl_estimator]


def np_grpo(logp, old, ref, types, adv, cfg, sw, group_size=GROUP):
  tt = flat(types)
  ratio, kl = np_ratio_kl(logp, old, ref, cfg)
  a = adv[:, None]
  obj = ratio * a
  if cfg.clipping:
    hi = cfg.clip_eps_high or cfg.clip_eps
    obj = np.minimum(obj, np.clip(ratio, 1 - cfg.clip_eps, 1 + hi) * a)
  beta = is_text(tt) * cfg.beta_text + is_speech(tt) * cfg.beta_speech
  per_tok = -(obj - beta * kl)
  mask = np_rl_mask(types, cfg.token_set, group_size)
  return np_reduce_rl(per_tok, mask, types, cfg.aggregation, sw, cfg.norm_length)


def run_grpo(cfg, logp=LOGP, sw=None, group_size=GROUP):
  batch = rl_batch(old_logp=jx(OLD) if cfg.clipping else None, ref_logp=jx(REF),
                   seq_weight=None if sw is None else jnp.asarray(sw),
                   fallback=group_fallback(jx(TYPES), cfg.token_set, group_size))
  term, metrics = grpo_loss(jx(logp), batch, cfg)
  return term_value(term), metrics


GRPO_CASES = [
    GRPOConfig(),
    GRPOConfig(token_set="all", aggregation="token_mean"),
    GRPOConfig(token_set="speech", aggregation="seq_mean_token_sum_norm", norm_length=6),
    GRPOConfig(token_set="all", beta_text=0.1, beta_speech=0.02, kl_estimator="k1"),
    GRPOConfig(beta_text=0.05, kl_estimator="k2"),
    GRPOConfig(token_set="all", beta_speech=0.3, kl_estimator="k3"),
    GRPOConfig(token_set="all", clip_eps=0.2, num_iterations=2),
    GRPOConfig(token_set="all", clip_eps=0.1, clip_eps_high=0.28, beta_text=0.01),
]


@pytest.mark.parametrize("cfg", GRPO_CASES, ids=range(len(GRPO_CASES)))
@pytest.mark.parametrize("group_size", [2, 4])
def test_grpo_loss_matches_numpy(cfg, group_size):
  sw = np.array([1.0, 0.0, 1.0, 1.0], np.float32)  # row 1 e.g. a failed judge call
  got, metrics = run_grpo(cfg, sw=sw, group_size=group_size)
  np.testing.assert_allclose(got, np_grpo(LOGP, OLD, REF, TYPES, ADV, cfg, sw, group_size), rtol=1e-5)
  # The logged means run over the RL tokens (the token set, or a fallback group's whole completions) of every row.
  mask = np_rl_mask(TYPES, cfg.token_set, group_size) > 0
  ratio, kl = np_ratio_kl(LOGP, OLD, REF, cfg)
  np.testing.assert_allclose(metrics["ratio_mean"], ratio[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl"], kl[mask].mean(), rtol=1e-5)
  assert metrics["num_rl_tokens"] == mask.sum()


def test_grpo_reference_value_is_minus_mean_advantage():
  # ratio == 1 on-policy, β = 0: every sequence's mean is −A; rows 0-2 hold completions, row 3 none.
  got, _ = run_grpo(GRPOConfig())
  np.testing.assert_allclose(got, -ADV[:3].mean(), rtol=1e-6)
  # One group of 4: rows 0 and 1 have text, so row 2 does not fall back; it contributes 0 and still counts.
  got, _ = run_grpo(GRPOConfig(), group_size=4)
  np.testing.assert_allclose(got, -(ADV[0] + ADV[1] + 0.0) / 3, rtol=1e-6)


def test_grpo_gradient_only_on_the_token_set():
  def grad(cfg):
    f = lambda lp: term_value(grpo_loss(lp, rl_batch(fallback=group_fallback(jx(TYPES), cfg.token_set, GROUP)), cfg)[0])
    return jax.grad(f)(jx(LOGP))
  g = grad(GRPOConfig(token_set="text"))
  # Row 0: text tokens only; speech positions get exactly zero.
  np.testing.assert_array_equal(g["audio"][0], 0.0)
  np.testing.assert_allclose(g["text"][0], np.where(TYPES["text"][0] == T, -ADV[0] / 3 / 3, 0.0), rtol=1e-6)
  speech_rows_with_text = [0, 1]
  for b in speech_rows_with_text:
    assert np.all(np.asarray(g["audio"][b])[is_speech(TYPES["audio"][b])] == 0.0)
  # Row 2 falls back to its completion: speech gets gradient there.
  assert np.all(np.asarray(g["audio"][2])[is_speech(TYPES["audio"][2])] != 0.0)
  g_all = grad(GRPOConfig(token_set="all"))
  assert np.all(np.asarray(g_all["audio"][0])[is_speech(TYPES["audio"][0])] != 0.0)


def test_grpo_clipping_gradient_and_fractions():
  cfg = GRPOConfig(token_set="all", clip_eps=0.2, clip_eps_high=0.3, aggregation="token_mean")
  f = lambda lp: term_value(grpo_loss(lp, rl_batch(old_logp=jx(OLD)), cfg)[0])
  g = flat(jax.grad(f)(jx(LOGP)))
  ratio, a = np.exp(flat(LOGP) - flat(OLD)), ADV[:, None]
  mask = np_rl_mask(TYPES, "all", 1) > 0
  clipped = ((ratio > 1.3) & (a > 0)) | ((ratio < 0.8) & (a < 0))
  assert clipped[mask].any() and (~clipped[mask]).any()
  np.testing.assert_array_equal(g[mask & clipped], 0.0)
  # Unclipped: d/dlogp of −ratio·A / n_tokens.
  np.testing.assert_allclose(g[mask & ~clipped], (-ratio * a / mask.sum())[mask & ~clipped], rtol=1e-5)
  _, metrics = grpo_loss(jx(LOGP), rl_batch(old_logp=jx(OLD)), cfg)
  low, high = (ratio < 0.8) & (a < 0), (ratio > 1.3) & (a > 0)
  assert low[mask].any() and high[mask].any() and low[mask].mean() != high[mask].mean()   # a swap would show
  np.testing.assert_allclose(metrics["clip_frac_low"], low[mask].mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac_high"], high[mask].mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac"], clipped[mask].mean(), rtol=1e-6)


def test_kl_estimators_hand_values():
  logp, ref = jnp.float32(np.log(0.5)), jnp.float32(np.log(0.25))  # ref/π = 0.5
  np.testing.assert_allclose(kl_divergence(logp, ref, "k1"), np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(kl_divergence(logp, ref, "k2"), 0.5 * np.log(2.0)**2, rtol=1e-6)
  np.testing.assert_allclose(kl_divergence(logp, ref, "k3"), 0.5 + np.log(2.0) - 1.0, rtol=1e-5)
  assert float(kl_divergence(ref, ref, "k3")) == 0.0


def test_grpo_first_iteration_is_on_policy_and_logs_the_sampler_gap():
  """Without old_logp (iteration 1) the ratio is exactly 1, with or without clipping; the sampler's log-probs
  only feed the gap metric (mean and max |Δ| over the RL tokens)."""
  cfg = GRPOConfig(token_set="all", clip_eps=0.2, num_iterations=2)
  fb = group_fallback(jx(TYPES), "all", GROUP)
  _, m = grpo_loss(jx(LOGP), rl_batch(sampler_logp=jx(OLD), fallback=fb), cfg)
  assert float(m["ratio_mean"]) == 1.0 and float(m["clip_frac"]) == 0.0
  mask = np_rl_mask(TYPES, "all", GROUP) > 0
  gap = np.abs(flat(LOGP) - flat(OLD))[mask]
  np.testing.assert_allclose(m["sampler_logp_gap_mean"], gap.mean(), rtol=1e-5)
  np.testing.assert_allclose(m["sampler_logp_gap_max"], gap.max(), rtol=1e-6)
  # The on-policy gradient equals the clipped objective's at ratio 1: −A / n per RL token.
  g = jax.grad(lambda lp: term_value(grpo_loss(lp, rl_batch(fallback=fb), cfg)[0]))(jx(LOGP))
  per_token = -ADV[:, None] / np.maximum(mask.sum(1, keepdims=True), 1) / 3 * np.ones(mask.shape)
  np.testing.assert_allclose(flat(g)[mask], per_token[mask], rtol=1e-5)


def test_grpo_input_errors():
  with pytest.raises(ValueError, match="ref_logp"):
    grpo_loss(jx(LOGP), rl_batch(), GRPOConfig(beta_text=0.1))
  with pytest.raises(ValueError, match="token_set"):
    GRPOConfig(token_set="audio")
  with pytest.raises(ValueError, match="num_iterations"):
    GRPOConfig(num_iterations=2)
  with pytest.raises(ValueError, match="types"):
    grpo_loss(jx(LOGP), rl_batch({"text": TYPES["text"]}), GRPOConfig())


# ---------------------------------------------------------------- DPO


def test_dpo_loss_matches_numpy():
  pc, pr, rc, rr = (RNG.normal(-20, 3, 5).astype(np.float32) for _ in range(4))
  term, m = dpo_loss(*map(jnp.asarray, (pc, pr, rc, rr)), 0.2)
  margin = 0.2 * ((pc - rc) - (pr - rr))
  np.testing.assert_allclose(term_value(term), np.mean(np.log1p(np.exp(-margin))), rtol=1e-5)
  np.testing.assert_allclose(m["reward_accuracy"], np.mean(margin > 0), rtol=1e-6)


# ---------------------------------------------------------------- toy model and the hybrid loss


def toy_logprob_fn(params, batch, start=0):
  """Bigram model: logits of each position = params['w'][input id]; differentiable in params. Positions before
  `start` get 0 (the logprob_fn contract)."""
  out = TargetLogprobs(logp={}, entropy={})
  for k, ids in batch.inputs.items():
    logits = jax.nn.log_softmax(params["w"][k][ids], axis=-1)
    logp = jnp.take_along_axis(logits, batch.targets[k][..., None], axis=-1)[..., 0]
    kept = jnp.arange(ids.shape[1]) >= start
    entropy = -jnp.sum(jnp.exp(logits) * logits, axis=-1)
    out.logp[k], out.entropy[k] = jnp.where(kept, logp, 0.0), jnp.where(kept, entropy, 0.0)
  return out


PARAMS = {"w": {k: jnp.asarray(RNG.normal(0, 1, (V, V)).astype(np.float32)) for k in TYPES}}


def seq_batch(types, cls=SeqBatch, **fields):
  ids = {k: jnp.asarray(RNG.integers(0, V, t.shape), jnp.int32) for k, t in types.items()}
  zeros = jnp.zeros(next(iter(types.values())).shape, jnp.int32)   # the toy model reads no positions
  return cls(inputs=ids, targets={k: jnp.roll(v, -1, axis=1) for k, v in ids.items()}, types=jx(types),
             positions=zeros, segment_ids=zeros, **fields)


def hybrid_batch():
  rl = seq_batch(TYPES, RLBatch, advantages=jnp.asarray(ADV), sampler_logp=jx(OLD), ref_logp=jx(REF),
                 seq_weight=jnp.array([1.0, 1.0, 0.0, 1.0]), fallback=group_fallback(jx(TYPES), "text", GROUP))
  return HybridBatch(sft=seq_batch({k: np.roll(v, 1, axis=0) for k, v in TYPES.items()}), rl=rl)


def test_hybrid_lambda_identities():
  cfg = HybridConfig(sft=SFTConfig(aggregation="stream_mean"), rl=GRPOConfig(beta_text=0.1))
  loss_fn, batch = make_hybrid_loss(toy_logprob_fn, cfg), hybrid_batch()
  def part(name):
    lp = toy_logprob_fn(PARAMS, getattr(batch, name))
    logp = lp.logp
    if name == "sft":
      return term_value(sft_loss(logp, batch.sft, cfg.sft))
    return term_value(grpo_loss(logp, batch.rl, cfg.rl)[0])
  sft, rl = part("sft"), part("rl")
  assert float(loss_fn(PARAMS, batch, 0.0)[0]) == float(sft)
  assert float(loss_fn(PARAMS, batch, 1.0)[0]) == float(rl)
  np.testing.assert_allclose(loss_fn(PARAMS, batch, 0.3)[0], 0.7 * sft + 0.3 * rl, rtol=1e-6)
  # λ = 0: the gradient is exactly the SFT gradient.
  g0 = jax.grad(lambda p: loss_fn(p, batch, 0.0)[0])(PARAMS)
  g_sft = jax.grad(lambda p: make_hybrid_loss(toy_logprob_fn, cfg)(p, HybridBatch(sft=batch.sft), 0.0)[0])(PARAMS)
  jax.tree.map(np.testing.assert_array_equal, g0, g_sft)


def test_hybrid_split_batch_equals_whole_batch():
  cfg = HybridConfig(sft=SFTConfig(speech_weight=0.5), rl=GRPOConfig(token_set="all", clip_eps=0.2,
                                                                      num_iterations=2))
  loss_fn, batch = make_hybrid_loss(toy_logprob_fn, cfg), hybrid_batch()
  batch = batch.replace(rl=batch.rl.replace(old_logp=jx(OLD)))   # a later PPO iteration
  halves = [jax.tree.map(lambda x: x[:2], batch), jax.tree.map(lambda x: x[2:], batch)]
  counts = jax.tree.map(jnp.add, *[hybrid_counts(h, cfg) for h in halves])
  np.testing.assert_array_equal(jax.tree.leaves(counts), jax.tree.leaves(hybrid_counts(batch, cfg)))
  vg = jax.value_and_grad(lambda p, b, c: loss_fn(p, b, 0.4, c)[0])
  whole_loss, whole_grad = vg(PARAMS, batch, None)
  parts = [vg(PARAMS, h, counts) for h in halves]
  np.testing.assert_allclose(parts[0][0] + parts[1][0], whole_loss, rtol=1e-6)
  jax.tree.map(lambda a, b, w: np.testing.assert_allclose(a + b, w, rtol=1e-5, atol=1e-7),
               parts[0][1], parts[1][1], whole_grad)


def test_hybrid_metrics_and_bad_batch():
  loss_fn, batch = make_hybrid_loss(toy_logprob_fn, HybridConfig()), hybrid_batch()
  _, m = loss_fn(PARAMS, batch, 0.5)
  ent = toy_logprob_fn(PARAMS, batch.rl)
  entropy = flat({k: np.asarray(v) for k, v in ent.entropy.items()})
  for kind, where in (("text", is_text), ("speech", is_speech)):   # each over its own token type
    want = entropy[flat({k: where(t) for k, t in TYPES.items()})].mean()
    np.testing.assert_allclose(m[f"rl/entropy_{kind}"], want, rtol=1e-5)
  assert float(m["rl/num_fallback_seqs"]) == 1.0 and float(m["rl/num_text_tokens"]) == 4.0
  with pytest.raises(ValueError, match="'sft' and/or an 'rl'"):
    loss_fn(PARAMS, HybridBatch(), 0.5)


def test_make_dpo_loss_text_and_full_token():
  chosen, rejected = seq_batch(TYPES), seq_batch(TYPES)
  ref = [jx({k: -RNG.uniform(0.1, 3.0, v.shape).astype(np.float32) for k, v in TYPES.items()}) for _ in range(2)]
  for token_set, sel in (("text", is_text), ("all", lambda t: t != N)):
    loss, _ = make_dpo_loss(toy_logprob_fn, DPOConfig(beta=0.2, token_set=token_set))(
        PARAMS, DPOBatch(chosen=chosen, rejected=rejected, chosen_ref_logp=ref[0], rejected_ref_logp=ref[1]))
    m = flat({k: sel(t) for k, t in TYPES.items()})
    def summed(b, ref_logp):
      lp = toy_logprob_fn(PARAMS, b)
      return (flat({k: np.asarray(v) for k, v in lp.logp.items()}) * m).sum(1), (flat(ref_logp) * m).sum(1)
    (pc, rc), (pr, rr) = summed(chosen, ref[0]), summed(rejected, ref[1])
    margin = 0.2 * ((pc - rc) - (pr - rr))
    np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp(-margin))), rtol=1e-5)
