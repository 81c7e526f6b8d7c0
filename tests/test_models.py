"""Model invariants on tiny random configs: chunked log-probs, scan/remat, KV cache, packing,
bfloat16, parameter axes and the HF mapping's error handling."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES
from wavalign_jax import models, sharding
from wavalign_jax.batches import SeqBatch, TargetLogprobs
from wavalign_jax.conversion import config_from_hf, hf_to_params, params_to_hf

pytestmark = pytest.mark.usefixtures("highest_precision")
B, L = 2, 9


def _batch(cfg, key, segment_ids=None, positions=None):
  ks = jax.random.split(key, 4)
  ids = {s: jax.random.randint(k, (B, L), 0, cfg.vocab_size) for s, k in zip(cfg.streams, ks)}
  features = feature_mask = None
  if cfg.arch == "parallel":
    features = jax.random.normal(ks[3], (B, L, cfg.adaptor_input_dim))
    feature_mask = jnp.zeros((B, L), bool).at[:, 2:5].set(True)
  return SeqBatch(inputs=ids, targets={s: jnp.roll(v, -1, axis=1) for s, v in ids.items()},
                  types={s: jnp.zeros((B, L), jnp.int32) for s in ids},   # the model reads no types
                  positions=jnp.broadcast_to(jnp.arange(L), (B, L)) if positions is None else positions,
                  segment_ids=jnp.ones((B, L), jnp.int32) if segment_ids is None else segment_ids,
                  features=features, feature_mask=feature_mask)


def _model_inputs(batch):
  """The forward's inputs of a sequence batch, as `models.logits` takes them."""
  return dict(inputs=batch.inputs, positions=batch.positions, segment_ids=batch.segment_ids,
              features=batch.features, feature_mask=batch.feature_mask)


_logits = jax.jit(models.logits, static_argnums=1)


def _params(cfg, seed=0):
  """Random params of the right tree/shapes, drawn with numpy (compiling the Flax init costs ~10 s
  on a loaded CPU). Norm scales ~ U(0.6, 1.4) so that a missing norm weight would show."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(models.init_params, cfg, jax.random.key(0))
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(rng.uniform(0.6, 1.4, s.shape) if path[-1].key == "scale"
                                  else rng.normal(0, 0.3, s.shape), jnp.float32), shapes)


def _maxdiff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _maxabs(a):
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))


def _reference_logprobs(params, cfg, batch):
  """Second code path: log_softmax of the materialised full logits."""
  logp, entropy = {}, {}
  for s, lg in models.logits(params, cfg, _model_inputs(batch)).items():
    lp = jax.nn.log_softmax(lg)
    logp[s] = jnp.take_along_axis(lp, batch.targets[s][..., None], -1)[..., 0]
    entropy[s] = -jnp.sum(jnp.exp(lp) * lp, -1)
  return TargetLogprobs(logp=logp, entropy=entropy)


def test_chunked_logprobs_match_full_logits_and_grads():
  cfg = models.tiny_config("parallel", logprob_chunk=4, num_layers=2, num_mimo_layers=1)  # 4 does not divide L = 9
  params = _params(cfg)
  batch = _batch(cfg, jax.random.key(1))
  w = jax.random.normal(jax.random.key(2), (2, B, L))

  def weighted(fn, p):
    out = fn(p, cfg, batch)
    return sum(jnp.sum(out.logp[s] * w[0] + out.entropy[s] * w[1]) for s in out.logp), out

  grad = lambda fn: jax.jit(jax.value_and_grad(functools.partial(weighted, fn), has_aux=True))(params)
  (_, got), g_got = grad(models.target_logprobs)
  (_, want), g_want = grad(_reference_logprobs)
  assert got.logp["text"].shape == (B, L) and got.entropy["audio"].dtype == jnp.float32
  assert _maxdiff(got, want) < 1e-5
  assert _maxdiff(g_got, g_want) < 1e-5 * _maxabs(g_want)   # float32 noise on gradients of order 10
  assert float(jnp.abs(g_got["trunk"]["layers"]["attn"]["q"]["kernel"]).max()) > 1e-3  # gradients flow
  # entropy not differentiated (a symbolic zero in the closed-form backward): the log-prob gradients alone
  logp_only = lambda fn, p: sum(jnp.sum(v * w[0]) for v in fn(p, cfg, batch).logp.values())
  g_got, g_want = (jax.jit(jax.grad(functools.partial(logp_only, fn)))(params)
                   for fn in (models.target_logprobs, _reference_logprobs))
  assert _maxdiff(g_got, g_want) < 1e-5 * _maxabs(g_want)
  one_chunk = jax.jit(models.target_logprobs, static_argnums=1)(params, cfg.replace(logprob_chunk=64), batch)
  assert _maxdiff(one_chunk, want) < 1e-5                # chunk larger than L


@pytest.mark.parametrize("keep_logits", [False, True])
def test_head_logprob_backward_with_recomputed_or_kept_logits(keep_logits):
  """The head's closed-form backward (vocab_parallel) against autodiff of log_softmax, from logits recomputed in
  the backward pass or kept from the forward (`model.logprob_keep_logits`): the same gradients, and one head
  product less in the program when they are kept (forward, d_h, d_kernel; a recompute adds one)."""
  from wavalign_jax.models import vocab_parallel
  ks = jax.random.split(jax.random.key(0), 4)
  h, kernel = jax.random.normal(ks[0], (3, 5, 8)), jax.random.normal(ks[1], (8, 11))
  targets, w = jax.random.randint(ks[2], (3, 5), 0, 11), jax.random.normal(ks[3], (2, 3, 5))

  def reference(h, kernel):
    lp = jax.nn.log_softmax(h @ kernel)
    logp = jnp.take_along_axis(lp, targets[..., None], -1)[..., 0]
    return jnp.sum(logp * w[0] - jnp.sum(jnp.exp(lp) * lp, -1) * w[1])

  def closed_form(h, kernel):
    logp, entropy = vocab_parallel.target_logprob_entropy(h, kernel, targets, jnp.float32, keep_logits)
    return jnp.sum(logp * w[0] + entropy * w[1])

  got, want = (jax.value_and_grad(f, argnums=(0, 1))(h, kernel) for f in (closed_form, reference))
  assert abs(float(got[0] - want[0])) < 1e-5 * abs(float(want[0]))
  for a, e in zip(got[1], want[1]):
    np.testing.assert_allclose(a, e, rtol=0, atol=1e-5 * float(jnp.abs(e).max()))
  dots = str(jax.make_jaxpr(jax.grad(closed_form, argnums=(0, 1)))(h, kernel)).count("dot_general")
  assert dots == (3 if keep_logits else 4)


@pytest.mark.parametrize("shift", [0.0, 50.0, -50.0])
def test_head_entropy_and_logprob_do_not_depend_on_the_logits_level(shift):
  """Entropy and log p of peaked distributions (vocabulary 4096) against float64, with every logit shifted by
  `shift`: the statistics are computed from logits minus their peak, so their float32 error is that of log V and
  a sum of V terms (a few ulps of log 4096 ~ 8.3), whatever the level. (From raw logits, the log-sum-exp and
  E_p[logit] both carry the level and cancel: errors of 3e-5 and negative entropies at a shift of 50.)"""
  from wavalign_jax.models import vocab_parallel
  rng = np.random.default_rng(0)
  lg = rng.normal(0, 1, (256, 4096)).astype(np.float32)
  lg[:, 0] += 12                                           # entropies near 0.05: where cancellation shows
  targets = rng.integers(0, 4096, 256)
  x = (lg + np.float32(shift)).astype(np.float64)
  lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
  p = np.exp(x - lse[:, None])
  logp, entropy, _, _ = vocab_parallel._stats(jnp.asarray(lg + np.float32(shift)), jnp.asarray(targets))
  bound = 4 * np.log(4096) * np.finfo(np.float32).eps   # 4 ulps of log V: 4e-6
  np.testing.assert_allclose(entropy, -(p * np.log(p)).sum(-1), rtol=0, atol=bound)
  np.testing.assert_allclose(logp, x[np.arange(256), targets] - lse, rtol=0, atol=bound)
  assert float(jnp.min(entropy)) > 0


@pytest.mark.parametrize("causal,remat", [(False, False), (True, False), (True, True)])
def test_query_blocked_attention_matches_all_at_once(causal, remat):
  """Blocks of 4 queries over T = 10 (the last block short) give the same outputs and gradients as one block,
  including a query row with no allowed key (padding); `causal` blocks skip the keys after their last query."""
  from wavalign_jax.models.layers import attend
  ks = jax.random.split(jax.random.key(0), 4)
  b, t, h, kv, d = 2, 10, 4, 2, 8
  q, k, v = (jax.random.normal(key, shape) for key, shape in zip(ks, ((b, t, h, d), (b, kv, t, d), (b, kv, t, d))))
  mask = jnp.tril(jnp.ones((t, t), bool))[None, None].repeat(b, 0)
  mask = mask.at[1, 0, 3].set(False)                       # row 1, query 3 sees nothing
  # A query with no allowed key gets some finite output (uniform weights over the keys it reads); nothing uses
  # it, so it is left out of the comparison and of the loss.
  seen = jnp.any(mask[:, 0], axis=-1)[..., None, None]
  w = jax.random.normal(ks[3], (b, t, h, d)) * seen
  loss = lambda block, q, k, v: jnp.sum(w * attend(q, k, v, mask, jnp.float32, block, causal, remat))
  want, g_want = jax.value_and_grad(loss, argnums=(1, 2, 3))(0, q, k, v)
  got, g_got = jax.value_and_grad(loss, argnums=(1, 2, 3))(4, q, k, v)
  np.testing.assert_allclose(attend(q, k, v, mask, jnp.float32, 4, causal, remat) * seen,
                             attend(q, k, v, mask, jnp.float32, 0) * seen, rtol=0, atol=1e-6)
  assert abs(float(got - want)) < 1e-5 * abs(float(want))
  for a, e in zip(g_got, g_want):
    np.testing.assert_allclose(a, e, rtol=0, atol=1e-5 * float(jnp.abs(e).max()))


def test_scan_unrolled_and_remat_agree():
  base = models.tiny_config("interleaved")
  params = _params(base)
  hf = params_to_hf(params, base)
  batch = _batch(base, jax.random.key(1))
  logp = lambda p, cfg: models.target_logprobs(p, cfg, batch).logp["tokens"]
  loss = lambda p, cfg: jnp.sum(logp(p, cfg))
  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  ref_logp = jax.jit(logp, static_argnums=1)(params, base)
  _, ref_grad = value_and_grad(params, base)
  ref_grad = params_to_hf(ref_grad, base)
  # The same float32 computation in another loop structure: each token's log-prob (|logp| < 10) to a few ulps of
  # the log-sum-exp it subtracts, as elsewhere in this file.
  # looped layers (params converted to per-layer leaves through the HF mapping): forward only
  unrolled = base.replace(scan_layers=False)
  got = jax.jit(logp, static_argnums=1)(hf_to_params(hf, unrolled), unrolled)
  np.testing.assert_allclose(got, ref_logp, rtol=0, atol=1e-5)
  for remat in ("full", "dots"):  # rematerialisation only changes the backward pass
    cfg = base.replace(remat=remat)
    np.testing.assert_allclose(jax.jit(logp, static_argnums=1)(params, cfg), ref_logp, rtol=0, atol=1e-5,
                               err_msg=remat)
    _, grad = value_and_grad(params, cfg)
    grad = params_to_hf(grad, cfg)
    assert _maxdiff(grad, ref_grad) < 1e-5 * _maxabs(ref_grad), remat


@pytest.mark.parametrize("arch", ["interleaved", "parallel"])
def test_decode_with_cache_matches_uncached_forward(arch):
  cfg = models.tiny_config(arch)
  params = _params(cfg)
  prompt, steps = 5, 3
  total = prompt + steps
  # row 0: full 5-token prompt; row 1: 3-token prompt left-padded by 2
  valid = jnp.ones((B, total), bool).at[1, :2].set(False)
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  ids = {s: jax.random.randint(jax.random.key(i + 3), (B, total), 0, cfg.vocab_size)
         for i, s in enumerate(cfg.streams)}
  batch = dict(inputs=ids, positions=positions, segment_ids=valid.astype(jnp.int32))
  feats = {}
  if arch == "parallel":  # continuous features inside the prompt
    feats = dict(features=jax.random.normal(jax.random.key(9), (B, total, cfg.adaptor_input_dim)),
                 feature_mask=jnp.zeros((B, total), bool).at[:, 2:4].set(True))
    batch.update(feats)
  want = _logits(params, cfg, batch)

  decode = jax.jit(models.decode, static_argnums=1)
  cache = models.init_cache(cfg, B, total + 2)
  sl = lambda a, lo, hi: a[:, lo:hi]
  f = {k: sl(v, 0, prompt) for k, v in feats.items()}
  got, cache = decode(params, cfg, {s: sl(v, 0, prompt) for s, v in ids.items()}, sl(positions, 0, prompt),
                      cache, sl(valid, 0, prompt), **f)
  for s in cfg.streams:
    np.testing.assert_allclose(got[s], want[s][:, prompt - 1], atol=1e-5)
  for t in range(prompt, total):
    f = {k: sl(v, t, t + 1) for k, v in feats.items()}
    got, cache = decode(params, cfg, {s: sl(v, t, t + 1) for s, v in ids.items()}, sl(positions, t, t + 1),
                        cache, **f)
    for s in cfg.streams:
      np.testing.assert_allclose(got[s], want[s][:, t], atol=1e-5)
  assert int(cache["index"]) == total


def test_packed_rows_equal_separate_forwards():
  cfg = models.tiny_config("interleaved")
  params = _params(cfg)
  n1, n2 = 5, 3   # row = segment 1 (5 tokens), segment 2 (3 tokens), one padding slot
  seg = jnp.array([[1] * n1 + [2] * n2 + [0]] * B)
  pos = jnp.array([list(range(n1)) + list(range(n2)) + [0]] * B)
  packed = _batch(cfg, jax.random.key(1), segment_ids=seg, positions=pos)
  got = _logits(params, cfg, _model_inputs(packed))["tokens"]
  ids = packed.inputs["tokens"]
  for lo, hi in [(0, n1), (n1, n1 + n2)]:
    alone = dict(inputs={"tokens": ids[:, lo:hi]}, positions=pos[:, lo:hi],
                 segment_ids=jnp.ones((B, hi - lo), jnp.int32))
    np.testing.assert_allclose(got[:, lo:hi], _logits(params, cfg, alone)["tokens"], atol=1e-5)
  assert bool(jnp.all(jnp.isfinite(got)))  # the padding query attends nothing, yet stays finite


# bfloat16 keeps 8 significant bits: one rounding moves a value by up to u = 2^-8 of itself. The fixtures' logits
# come through 2 layers of a handful of rounded products each (embedding, norms, attention, MLP, head); rounding
# errors of independent operations add in quadrature, so the logits differ by a few u of their scale, bounded here
# by 16 u (~0.06 for the fixtures' |logit| ~2.4, measured ~0.03). Above u / 4 the bfloat16 path really ran.
BF16_U = 2.0 ** -8


@pytest.mark.parametrize("name", ["vita_audio_mtp", "kimi_audio"])
def test_bfloat16_compute_close_to_float32(name):
  folder = FIXTURES / name
  cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
  from safetensors.numpy import load_file
  params = hf_to_params(load_file(str(folder / "model.safetensors")), cfg)
  batch = _batch(cfg, jax.random.key(1))
  f32 = _logits(params, cfg, _model_inputs(batch))
  bf16 = _logits(params, cfg.replace(dtype="bfloat16"), _model_inputs(batch))
  for s in cfg.streams:
    assert bf16[s].dtype == jnp.float32
    diff, scale = float(jnp.abs(bf16[s] - f32[s]).max()), float(jnp.abs(f32[s]).max())
    assert BF16_U / 4 * scale < diff < 16 * BF16_U * scale, (diff, scale)


def test_fused_attention_wiring_matches_einsum_attention():
  """The cuDNN path shares everything but the kernel with jax.nn's XLA implementation (CPU-testable)."""
  from wavalign_jax.models import layers
  ks = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(ks[0], (2, 5, 4, 8))
  k, v = jax.random.normal(ks[1], (2, 2, 7, 8)), jax.random.normal(ks[2], (2, 2, 7, 8))   # heads-major
  mask = (jnp.arange(7)[None, :] <= jnp.arange(5)[:, None] + 2)[None, None] & jnp.array(
      [[True] * 7, [False] * 2 + [True] * 5])[:, None, None, :]
  want = layers.attend(q, k, v, mask, jnp.float32)
  got = layers.fused_attend(q, k, v, mask, jnp.float32, implementation="xla")
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_param_logical_axes_cover_every_leaf():
  names = {n for n, _ in sharding.LOGICAL_RULES}
  for arch in ("interleaved", "parallel"):
    cfg = models.tiny_config(arch)
    params = jax.eval_shape(models.init_params, cfg, jax.random.key(0))
    axes = models.param_logical_axes(cfg)
    leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert jax.tree.structure(params) == jax.tree.structure(axes, is_leaf=lambda x: isinstance(
        x, jax.sharding.PartitionSpec))
    for spec, leaf in zip(leaves, jax.tree.leaves(params)):
      assert len(spec) == leaf.ndim and set(spec) - {None} <= names, (spec, leaf.shape)
    assert axes["trunk"]["layers"]["attn"]["q"]["kernel"] == jax.sharding.PartitionSpec(
        "layers", "embed", "heads", "head_dim")


def _kimi():
  from safetensors.numpy import load_file
  folder = FIXTURES / "kimi_audio"
  hf_cfg = json.loads((folder / "config.json").read_text())
  return hf_cfg, load_file(str(folder / "model.safetensors"))


def test_hf_round_trip_is_bit_exact():
  hf_cfg, tensors = _kimi()
  for scan in (True, False):
    cfg = config_from_hf(hf_cfg, scan_layers=scan)
    back = params_to_hf(hf_to_params(tensors, cfg), cfg)
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
      assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes(), k


def test_hf_to_params_errors_name_the_tensors():
  hf_cfg, tensors = _kimi()
  cfg = config_from_hf(hf_cfg)
  with pytest.raises(ValueError, match=r"unknown tensors.*model\.layers\.7\.mlp\.up_proj\.weight"):
    hf_to_params({**tensors, "model.layers.7.mlp.up_proj.weight": tensors["model.layers.0.mlp.up_proj.weight"]}, cfg)
  with pytest.raises(ValueError, match=r"missing tensors.*model\.mimo_norm\.weight"):
    hf_to_params({k: v for k, v in tensors.items() if k != "model.mimo_norm.weight"}, cfg)
  bad = dict(tensors)
  bad["model.layers.2.self_attn.k_proj.weight"] = bad["model.layers.2.self_attn.k_proj.weight"].T
  with pytest.raises(ValueError, match=r"shape mismatch.*model\.layers\.2\.self_attn\.k_proj\.weight: "
                                       r"shape \(64, 32\), expected \(32, 64\)"):
    hf_to_params(bad, cfg)


def test_config_from_hf_dispatch():
  hf_cfg, _ = _kimi()
  assert hf_cfg["model_type"] == "qwen2"          # Kimi must not be taken for plain qwen2
  cfg = config_from_hf(hf_cfg)
  assert (cfg.arch, cfg.num_layers, cfg.mimo_from_layer, cfg.num_mimo_layers) == ("parallel", 4, 1, 2)
  vita = json.loads((FIXTURES / "vita_audio_mtp" / "config.json").read_text())
  assert (config_from_hf(vita).num_layers, config_from_hf(vita).num_mtp_modules) == (2, 2)
  with pytest.raises(ValueError, match="cannot tell the architecture"):
    config_from_hf({k: v for k, v in vita.items() if k != "num_nextn_predict_layers"}
                   | {"architectures": ["LlamaForCausalLM"]})
  # A config.json without rope_theta means transformers' Qwen2 default, 10000 (the released ones give 1e6).
  assert config_from_hf(vita).rope_theta == vita["rope_theta"]
  assert config_from_hf({k: v for k, v in vita.items() if k != "rope_theta"}).rope_theta == 10000.0


def test_mesh_axis_names_keep_their_roles_or_take_them_in_order():
  """The standard names in any order keep their roles; names of their own take data, fsdp, tensor in order; a mix
  (`data` standing where fsdp would be) is refused rather than silently giving `data` the fsdp role."""
  assert sharding.rules_for(("tensor", "fsdp", "data")) == sharding.LOGICAL_RULES
  renamed = dict(sharding.rules_for(("replica", "shard", "model")))
  assert renamed["embed"] == "shard" and renamed["activation_batch"] == ("replica", "shard")
  with pytest.raises(ValueError, match="or none of them"):
    sharding.rules_for(("fsdp", "data", "model"))


@pytest.mark.parametrize("vocab,head_spec", [(96, (None, ("fsdp", "tensor"))), (98, ("fsdp", None))])
def test_sharded_logprobs_and_grads_match_single_device(vocab, head_spec):
  """Params sharded by their logical axes and the rules on a (2, 2, 2) mesh, activation constraints active:
  same log-probs, entropies and gradients as one device. The tables are never gathered whole (sharding.py):
  heads split along the vocabulary, the embedding along the vocabulary (tensor) and its width (fsdp). A
  vocabulary of 98 does not split 4 ways: the heads are stored split along their width and the log-probs
  computed on the vocabulary padded to 100 (models/vocab_parallel.py)."""
  assert jax.device_count() == 8, "conftest.py sets 8 fake CPU devices"
  cfg = models.tiny_config("parallel", vocab_size=vocab)
  params = _params(cfg)
  batch = jax.tree.map(lambda a: jnp.concatenate([a, a[::-1]]), _batch(cfg, jax.random.key(1)))   # B = 4: divisible by data x fsdp
  w = jax.random.normal(jax.random.key(2), (2,) + batch.targets["text"].shape)

  def weighted(p):
    out = models.target_logprobs(p, cfg, batch)
    return sum(jnp.sum(out.logp[s] * w[0] + out.entropy[s] * w[1]) for s in out.logp), out

  f = jax.jit(jax.value_and_grad(weighted, has_aux=True))
  (_, want), g_want = f(params)
  mesh = sharding.make_mesh((2, 2, 2))
  sharded = jax.device_put(params, models.param_shardings(cfg, mesh))
  assert sharded["lm_head"].sharding.spec == jax.sharding.PartitionSpec(*head_spec)
  assert sharded["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  with sharding.use_rules(mesh):
    (_, got), g_got = f(sharded)
  # float32 sums taken in another order across shards: a few ulps of the largest value (log-probs reach ~10)
  assert _maxdiff(got, want) < 1e-5 * max(1.0, _maxabs(want))
  assert _maxdiff(g_got, g_want) < 1e-5 * _maxabs(g_want)
