"""The one Flax module behind all three `ModelConfig.arch` values.

Parameter tree (what `conversion/hf_mapping.py` fills):
  embedding [V, d]                       shared by both streams of "parallel"
  adaptor/{in,out}/{kernel,bias}, adaptor/{scale,bias}      parallel + adaptor_input_dim > 0 (vq_adaptor)
  trunk/...                              Stack: all trunk layers ("qwen2", "interleaved") or the shared
                                         layers 0..mimo_from_layer ("parallel")
  text_trunk/..., mimo/..., mimo_norm    parallel: remaining trunk layers, MIMO layers, MIMO norm
  final_norm, lm_head [d, V]             lm_head = main head (VITA) / text head (Kimi)
  audio_head [d, V]                      parallel: HF `mimo_output`
  mtp_{k}/{embed_norm,hidden_norm,proj,layer}   interleaved: MCTP module k (shares final_norm, lm_head)
A Stack holds `layers/...` (scanned, leading "layers" axis) or `layer_{i}/...` (looped).

The module returns post-norm hidden states per stream; heads are applied outside (`api.py`) so
that target log-probs can be computed chunk by chunk without [B, L, V] logits.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from wavalign_jax.models.config import ModelConfig
from wavalign_jax.models.layers import Dense, DecoderLayer, RMSNorm, Stack, compute_view, logical_param
from wavalign_jax.sharding import constrain

Array = jax.Array

# stream -> name of the head parameter that predicts it
HEADS = {"tokens": "lm_head", "text": "lm_head", "audio": "audio_head"}
ARCHS = ("qwen2", "interleaved", "parallel")


def causal_mask(segment_ids: Array) -> Array:
  """[B,1,L,L]: query t sees key j iff j <= t and both lie in the same non-zero segment."""
  L = segment_ids.shape[1]
  causal = jnp.arange(L)[:, None] >= jnp.arange(L)[None, :]
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] != 0)
  return (causal[None] & same)[:, None]


class Adaptor(nn.Module):
  """Kimi `vq_adaptor`: Linear -> SiLU -> (Dropout) -> Linear -> LayerNorm(bias, eps=rms_norm_eps)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, f: Array) -> Array:
    c = self.cfg
    d = (c.hidden_size,)
    x = Dense(c, (c.adaptor_input_dim,), d, ("adaptor_in", "embed"), True, name="in")(f)
    x = Dense(c, d, d, (None, "embed"), True, name="out")(jax.nn.silu(x))
    scale = logical_param(self, "scale", d, ("norm",), nn.initializers.ones)
    bias = logical_param(self, "bias", d, ("norm",), nn.initializers.zeros)
    x = x.astype(jnp.float32)
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    y = (x - mu) * jax.lax.rsqrt(var + c.rms_norm_eps) * scale.astype(jnp.float32) + bias
    return y.astype(c.dtype)


class MTPModule(nn.Module):
  """VITA-Audio MCTP module: proj(concat[embed_norm(e), hidden_norm(h)]) -> one decoder layer."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, emb: Array, hidden: Array, aux: tuple[Array, Array, Array],
               cache: dict | None = None) -> tuple[Array, dict | None]:
    c = self.cfg
    z = jnp.concatenate([RMSNorm(c, name="embed_norm")(emb), RMSNorm(c, name="hidden_norm")(hidden)], -1)
    z = Dense(c, (2 * c.hidden_size,), (c.hidden_size,), (None, "embed"), name="proj")(z)
    return DecoderLayer(c, name="layer")(z, aux, cache)


class Transformer(nn.Module):
  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    if c.arch not in ARCHS:
      raise ValueError(f"cfg.arch={c.arch!r}; choose one of {ARCHS}")
    V, d = c.vocab_size, c.hidden_size
    self.embedding = logical_param(self, "embedding", (V, d), ("input_vocab", "embed"))
    self.final_norm = RMSNorm(c)
    self.lm_head = logical_param(self, "lm_head", (d, V), ("table_embed", "vocab"))
    if c.arch == "parallel":
      if not 0 <= c.mimo_from_layer < c.num_layers - 1 or c.num_mimo_layers < 1:
        raise ValueError(f"parallel needs 0 <= mimo_from_layer < num_layers - 1 and num_mimo_layers >= 1, "
                         f"got {c.mimo_from_layer}, {c.num_layers}, {c.num_mimo_layers}")
      sizes = c.stack_sizes
      self.trunk = Stack(c, sizes["trunk"])
      self.text_trunk = Stack(c, sizes["text_trunk"])
      self.mimo = Stack(c, sizes["mimo"])
      self.mimo_norm = RMSNorm(c)
      self.audio_head = logical_param(self, "audio_head", (d, V), ("table_embed", "vocab"))
      if c.adaptor_input_dim > 0:
        self.adaptor = Adaptor(c)
    else:
      self.trunk = Stack(c, c.num_layers)
    if c.arch == "interleaved":
      self.mtp = [MTPModule(c) for _ in range(c.num_mtp_modules)]

  def embed(self, ids: Array) -> Array:
    # Every row of the data shard looks up its slice of the embedding dimension (sharding.py).
    x = jnp.take(compute_view(self.embedding, ("input_vocab", "embed"), self.cfg.dtype), ids, axis=0)
    return constrain(x, ("activation_logits_batch", None, "activation_table_embed"))

  def embed_inputs(self, inputs: dict[str, Array], features: Array | None,
                   feature_mask: Array | None) -> Array:
    """Token embeddings; parallel: embed(audio) [+ adaptor features, x sqrt2 there] + embed(text)."""
    if self.cfg.arch != "parallel":
      return self.embed(inputs["tokens"])
    x = self.embed(inputs["audio"])
    if features is not None:
      if self.cfg.adaptor_input_dim <= 0:
        raise ValueError("features given but cfg.adaptor_input_dim == 0 (no vq_adaptor)")
      if feature_mask is None:
        raise ValueError("features given without feature_mask")
      w = self.adaptor(features)
      x = jnp.where(feature_mask[..., None], (x + w) * jnp.sqrt(2.0).astype(x.dtype), x)
    return x + self.embed(inputs["text"])

  def __call__(self, inputs: dict[str, Array], positions: Array, mask: Array,
               cache: dict | None = None, cache_index: Array | int = 0,
               features: Array | None = None, feature_mask: Array | None = None
               ) -> tuple[dict[str, Array], dict | None]:
    """Post-norm hidden states {stream: [B,T,d]} and the updated per-stack caches."""
    x = constrain(self.embed_inputs(inputs, features, feature_mask),
                  ("activation_batch", "activation_length", "activation_embed"))
    self.sow("intermediates", "input_embeds", x)
    aux = (positions, mask, jnp.asarray(cache_index, jnp.int32))
    get = (lambda name: None) if cache is None else cache.get
    x, new = self.trunk(x, aux, get("trunk"))
    new_cache = {"trunk": new}
    if self.cfg.arch != "parallel":
      return {"tokens": self.final_norm(x)}, (None if cache is None else new_cache)
    self.sow("intermediates", "mimo_branch_input", x)
    a, new_cache["mimo"] = self.mimo(x, aux, get("mimo"))
    x, new_cache["text_trunk"] = self.text_trunk(x, aux, get("text_trunk"))
    hidden = {"text": self.final_norm(x), "audio": self.mimo_norm(a)}
    return hidden, (None if cache is None else new_cache)

  def mtp_hidden(self, tokens: Array, positions: Array) -> list[Array]:
    """Post-norm hidden of each MCTP module k: [B, L-1-k, d] (one unpacked sequence per row).

    Module k at anchor t embeds token t+k+1, reads the previous stage's hidden at t and uses RoPE
    position positions[t+k+1]; it predicts token t+k+2 (fixture vita_audio_mtp/README.md)."""
    segs = jnp.ones_like(tokens)
    h = self({"tokens": tokens}, positions, causal_mask(segs))[0]["tokens"]
    out = []
    for k, module in enumerate(self.mtp):
      n = tokens.shape[1] - 1 - k
      aux = (positions[:, k + 1:], causal_mask(segs[:, :n]), jnp.zeros((), jnp.int32))
      h = self.final_norm(module(self.embed(tokens[:, k + 1:]), h[:, :n], aux)[0])
      out.append(h)
    return out

  def mtp_decode(self, k: int, tokens: Array, hidden: Array, positions: Array, mask: Array, cache: dict,
                 cache_index: Array) -> tuple[Array, dict]:
    """MCTP module k on T new anchors with its own KV cache: post-norm hidden [B, T, d] and the cache.

    Anchor t embeds `tokens` (the token k+1 slots after t) and reads `hidden` (the previous stage at t)."""
    aux = (positions, mask, jnp.asarray(cache_index, jnp.int32))
    h, cache = self.mtp[k](self.embed(tokens), hidden, aux, cache)
    return self.final_norm(h), cache

  def init_all(self, inputs: dict[str, Array], positions: Array, mask: Array,
               features: Array | None = None, feature_mask: Array | None = None):
    """Touches every parameter (init only)."""
    out = self(inputs, positions, mask, features=features, feature_mask=feature_mask)
    if self.cfg.arch == "interleaved" and self.cfg.num_mtp_modules:
      return out, self.mtp_hidden(inputs["tokens"], positions)
    return out
