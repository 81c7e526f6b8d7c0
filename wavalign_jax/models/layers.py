"""Qwen2-style decoder building blocks shared by every architecture.

Pre-RMSNorm decoder layer: GQA attention with rotate-half RoPE (bias on q/k/v only) and a SwiGLU
MLP. Norm statistics, RoPE angles and softmax run in float32 whatever `cfg.dtype` is, because those
are where bfloat16 loses the accuracy the converted checkpoints need.

A layer is called as `layer(x, aux, cache) -> (x, new_cache)` so that the same class can be
`nn.scan`-ned (x is the carry, `aux` is broadcast, the per-layer cache is scanned) or looped.
`aux` = (positions [B,T], mask [B,1,T,S], cache_index []) where S = T without a cache; with one, S is the
number of cache slots: the shared prompt prefix (if the cache has one, api.share_prefix) then the row's own.
Keys and values are heads-major [B, K, S, D] from the projection on (and so in the KV cache): a decode step's
scores and weighted sums are then batched dots over (row, KV head) on contiguous slots, with no transpose of
the cache per token.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wavalign_jax.models.config import ModelConfig
from wavalign_jax.sharding import constrain

Array = jax.Array
_INIT = nn.initializers.normal(0.02)
# Finite "minus infinity": a query with no allowed key (padding) gets uniform, finite weights
# instead of NaNs that would poison gradients through a 0-weighted loss.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def logical_param(mod: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str | None, ...],
                  init=_INIT) -> Array:
  """A `cfg.param_dtype` parameter whose axes carry logical names (sharding.LOGICAL_RULES)."""
  return mod.param(name, nn.with_logical_partitioning(init, axes), shape,
                   jnp.dtype(mod.cfg.param_dtype))


def compute_view(w: Array, axes: tuple[str | None, ...], dtype: Any) -> Array:
  """`w` in the compute dtype, converted where it is stored: FSDP then gathers (and reduce-scatters the gradient
  of) the bfloat16 copy, not the float32 master weights."""
  return constrain(w.astype(dtype), axes)


class RMSNorm(nn.Module):
  """y = w * x / rms(x), statistics in float32 (HF Qwen2RMSNorm)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    w = logical_param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
    return (w.astype(jnp.float32) * x32).astype(self.cfg.dtype)


class Dense(nn.Module):
  """x @ kernel (+ bias) contracting the last `len(in_shape)` dims; kernel [*in_shape, *out_shape]."""
  cfg: ModelConfig
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = logical_param(self, "kernel", self.in_shape + self.out_shape, self.axes)
    # One 2-D matmul [rows, in] @ [in, out]: both reshapes only merge adjacent dimensions (free), and XLA's CPU
    # backend runs the transposed products of a 2-D dot ~1.5x faster than those of [B, L, ...] dots.
    n_in = len(self.in_shape)
    lead = x.shape[:x.ndim - n_in]
    w = compute_view(kernel, self.axes, self.cfg.dtype).reshape(math.prod(self.in_shape), math.prod(self.out_shape))
    y = (x.astype(self.cfg.dtype).reshape(math.prod(lead), -1) @ w).reshape(*lead, *self.out_shape)
    if self.use_bias:
      bias = logical_param(self, "bias", self.out_shape, self.axes[n_in:], nn.initializers.zeros)
      y = y + bias.astype(self.cfg.dtype)
    return y


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotate-half RoPE on x [B, T, heads, D] at integer positions [B, T]; angles in float32."""
  d = x.shape[-1]
  inv_freq = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  ang = positions.astype(jnp.float32)[..., None] * inv_freq          # [B, T, D/2]
  ang = jnp.concatenate([ang, ang], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(ang).astype(x.dtype), jnp.sin(ang).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def attend(q: Array, k: Array, v: Array, mask: Array, dtype: Any, block: int = 0, causal: bool = False,
           remat: bool = False) -> Array:
  """GQA softmax attention. q [B,T,H,D], k/v [B,K,S,D] (heads-major), mask bool [B,1,T,S] -> [B,T,H,D].

  With 0 < block < T the queries go `block` at a time, so the float32 scores [B, H, T, S] never exist whole.
  `causal` (S = T and no query may see a later key: training, no KV cache) lets block i read only the keys up
  to its last query: about half the work of the full square, exactly the same result. `remat` recomputes a
  block's scores in the backward pass instead of keeping them.

  The queries are put heads-major once ([B, K, T*G, D]: the G query heads of a KV head as consecutive rows of
  each position), so every block is two plain batched matmuls on contiguous slices, with no transposes."""
  b, t, h, d = q.shape
  if t == 1:
    return _attend_one(q, k, v, mask, dtype)
  kv = k.shape[1]
  g = h // kv                                                           # query head k*G + j uses KV head k
  q = (q * (d ** -0.5)).reshape(b, t, kv, g, d).transpose(0, 2, 1, 3, 4).reshape(b, kv, t * g, d)
  one = functools.partial(_attend_block, dtype=dtype)
  if remat:
    one = jax.checkpoint(one)
  block = block if 0 < block < t else t
  outs = []
  for start in range(0, t, block):
    end = min(start + block, t)
    keys = end if causal else k.shape[2]
    outs.append(one(q[:, :, start * g:end * g], k[:, :, :keys], v[:, :, :keys], mask[:, :, start:end, :keys]))
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  return out.reshape(b, kv, t, g, d).transpose(0, 2, 1, 3, 4).reshape(b, t, h, d)


def _attend_block(q: Array, k: Array, v: Array, mask: Array, dtype: Any) -> Array:
  """q [B, K, T*G, D] (pre-scaled; row t*G + j = position t, query head j of KV head k), k/v [B, K, S, D],
  mask [B, 1, T, S] -> [B, K, T*G, D]."""
  b, kv, rows, _ = q.shape
  t, s_len = mask.shape[2], k.shape[2]
  s = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32).reshape(b, kv, t, rows // t, s_len)
  s = jnp.where(mask[:, :, :, None, :], s, _MASK_VALUE)
  p = jax.nn.softmax(s, axis=-1).astype(dtype).reshape(b, kv, rows, s_len)
  return jnp.einsum("bkqs,bksd->bkqd", p, v)


def _attend_one(q: Array, k: Array, v: Array, mask: Array, dtype: Any,
                prefix: tuple[Array, Array] | None = None) -> Array:
  """`attend` for one query position (a decode step): per (row, KV head), [G x D] @ [D x S] and back.

  `prefix` = (k, v) [P, K, Sp, D]: keys shared by the G = B / P consecutive rows of each prompt, read once per
  prompt instead of once per row; mask [B, 1, 1, Sp + S] covers the prefix, then k / v."""
  b, _, h, d = q.shape
  kv = k.shape[1]
  g = h // kv
  q = (q * (d ** -0.5)).reshape(b, kv, g, d)
  s = jnp.einsum("bkgd,bksd->bkgs", q, k, preferred_element_type=jnp.float32)        # [B, K, G, S]
  if prefix is not None:
    pk, pv = prefix
    grouped = q.reshape(pk.shape[0], b // pk.shape[0], kv, g, d)                     # [P, rows, K, G, D]
    sp = jnp.einsum("prkgd,pksd->prkgs", grouped, pk, preferred_element_type=jnp.float32)
    s = jnp.concatenate([sp.reshape(b, kv, g, -1), s], axis=-1)
  p = jax.nn.softmax(jnp.where(mask, s, _MASK_VALUE), axis=-1).astype(dtype)         # mask [B, 1, 1, S]
  if prefix is None:
    return jnp.einsum("bkgs,bksd->bkgd", p, v).reshape(b, 1, h, d)
  n_pre = pk.shape[2]
  out = jnp.einsum("bkgs,bksd->bkgd", p[..., n_pre:], v)
  pp = p[..., :n_pre].reshape(pk.shape[0], b // pk.shape[0], kv, g, n_pre)
  out += jnp.einsum("prkgs,pksd->prkgd", pp, pv).reshape(b, kv, g, d)
  return out.reshape(b, 1, h, d)


def _attend_prefix(q: Array, k: Array, v: Array, mask: Array, dtype: Any, prefix: tuple[Array, Array]) -> Array:
  """T >= 1 new queries against a shared prompt prefix (k, v [P, K, Sp, D]) and each row's own block k / v
  [B, K, S, D]; mask [B, 1, T, Sp + S]. The MCTP decoder's catch-up forward (rollout/mctp.py) reads
  the prefix with several tokens at once; single tokens take `_attend_one`."""
  b, t, h, d = q.shape
  pk, pv = prefix
  n_prompts, kv, n_pre = pk.shape[0], k.shape[1], pk.shape[2]
  g = h // kv
  q = (q * (d ** -0.5)).reshape(b, t, kv, g, d)
  grouped = q.reshape(n_prompts, b // n_prompts, t, kv, g, d)
  sp = jnp.einsum("prtkgd,pksd->prtkgs", grouped, pk, preferred_element_type=jnp.float32).reshape(b, t, kv, g, n_pre)
  so = jnp.einsum("btkgd,bksd->btkgs", q, k, preferred_element_type=jnp.float32)
  s = jnp.where(mask[:, 0, :, None, None, :], jnp.concatenate([sp, so], axis=-1), _MASK_VALUE)
  p = jax.nn.softmax(s, axis=-1).astype(dtype)
  pp = p[..., :n_pre].reshape(n_prompts, b // n_prompts, t, kv, g, n_pre)
  out = jnp.einsum("prtkgs,pksd->prtkgd", pp, pv).reshape(b, t, kv, g, d)
  out += jnp.einsum("btkgs,bksd->btkgd", p[..., n_pre:], v)
  return out.reshape(b, t, h, d)


def fused_attend(q: Array, k: Array, v: Array, mask: Array, dtype: Any, implementation: str = "cudnn") -> Array:
  """Same contract as `attend` through jax.nn.dot_product_attention (cuDNN flash attention on GPU), which takes
  k / v [B, S, K, D]. Rows with no allowed key (padding queries) are implementation-defined: they flow on through
  the layers to the output head with a loss weight of 0, which keeps finite values out of the gradients but not a
  NaN (0 · NaN); XLA's implementation is finite there (as `attend`, whose masked scores are _MASK_VALUE, not -inf)."""
  k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation).astype(dtype)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array, cache: dict | None,
               cache_index: Array) -> tuple[Array, dict | None]:
    c = self.cfg
    e = (c.hidden_size,)
    q = Dense(c, e, (c.num_heads, c.head_dim), ("embed", "heads", "head_dim"), True, name="q")(x)
    k = Dense(c, e, (c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), True, name="k")(x)
    v = Dense(c, e, (c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), True, name="v")(x)
    q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
    k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)                                # heads-major [B, K, T, D]
    prefix = None
    if cache is not None:  # write the T new slots, then attend over the whole cache
      start = (0, 0, cache_index, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
      cache = {**cache, "k": k, "v": v}
      if "prefix_k" in cache:
        prefix = (cache["prefix_k"].astype(c.dtype), cache["prefix_v"].astype(c.dtype))
    k, v = k.astype(c.dtype), v.astype(c.dtype)
    if prefix is not None:   # decode steps (either attention_impl): a fused kernel gains nothing at T = 1
      out = (_attend_one(q, k, v, mask, c.dtype, prefix) if q.shape[1] == 1 else
             _attend_prefix(q, k, v, mask, c.dtype, prefix))
    elif c.attention_impl == "xla":
      out = attend(q, k, v, mask, c.dtype, c.attention_block, causal=cache is None, remat=c.remat != "none")
    elif c.attention_impl == "cudnn":
      out = fused_attend(q, k, v, mask, c.dtype)
    else:
      raise ValueError(f"cfg.attention_impl={c.attention_impl!r}; choose 'xla' or 'cudnn'")
    out = Dense(c, (c.num_heads, c.head_dim), e, ("heads", "head_dim", "embed"), name="o")(out)
    return out, cache


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.cfg
    e, m = (c.hidden_size,), (c.intermediate_size,)
    gate = Dense(c, e, m, ("embed", "mlp"), name="gate")(x)
    up = Dense(c, e, m, ("embed", "mlp"), name="up")(x)
    h = constrain(jax.nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
    return Dense(c, m, e, ("mlp", "embed"), name="down")(h)


class DecoderLayer(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, aux: tuple[Array, Array, Array],
               cache: dict | None) -> tuple[Array, dict | None]:
    positions, mask, cache_index = aux
    h, cache = Attention(self.cfg, name="attn")(RMSNorm(self.cfg, name="attn_norm")(x),
                                                positions, mask, cache, cache_index)
    x = x + h
    x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x))
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    self.sow("intermediates", "residual", x)
    return x, cache


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projections, redo attention
}


class Stack(nn.Module):
  """`num_layers` identical decoder layers, scanned (params stacked on a leading "layers" axis) or
  looped (params `layer_{i}`). The cache, when given, is a list of per-layer {"k","v": [B, K, S, D]} in
  both modes. Decode loops use the looped form (`api.for_decoding`): each layer's cache buffer is then
  updated in place, while a scan would slice and re-stack (copy) the whole cache at every token."""
  cfg: ModelConfig
  num_layers: int

  @nn.compact
  def __call__(self, x: Array, aux: tuple[Array, Array, Array],
               cache: dict | None = None) -> tuple[Array, dict | None]:
    c = self.cfg
    if c.remat not in ("none", *_REMAT_POLICIES):
      raise ValueError(f"cfg.remat={c.remat!r}; choose 'none', 'full' or 'dots'")
    layer_cls = DecoderLayer
    if c.remat != "none":
      layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
    if c.scan_layers:
      scanned = nn.scan(layer_cls, variable_axes={"params": 0, "intermediates": 0},
                        split_rngs={"params": True}, in_axes=(nn.broadcast, 0),
                        length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      stacked = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *cache)
      x, stacked = scanned(c, name="layers")(x, aux, stacked)
      return x, (None if cache is None else [jax.tree.map(lambda a: a[i], stacked) for i in range(self.num_layers)])
    new = []
    for i in range(self.num_layers):
      x, layer_cache = layer_cls(c, name=f"layer_{i}")(x, aux, None if cache is None else cache[i])
      new.append(layer_cache)
    return x, (None if cache is None else new)
