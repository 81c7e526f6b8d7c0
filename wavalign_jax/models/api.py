"""Functional model API over plain parameter pytrees (see WORKSPACE.md "Model API").

Decoding contract (the sampler builds on exactly this):
  cache = init_cache(cfg, batch_size, max_len)
      {"index": int32[] next slot to write, "valid": bool[B, max_len] slots that may be attended,
       <stack>: [{"k","v": cfg.dtype[B, kv_heads, max_len, head_dim]} per layer]}  (heads-major)
  logits, cache = decode(params, cfg, inputs, positions, cache, valid=None, features=None, feature_mask=None)
      inputs {stream: int32[B, T]}, positions int32[B, T] (RoPE positions: for a left-padded prompt
      use cumsum(valid) - 1), valid bool[B, T] (False = padding, never attended; default all True).
      Writes slots [index, index + T), query slot i sees slot j iff j <= i and valid[j]; returns
      {stream: float32[B, V]} for the LAST of the T positions and the cache with index += T.
      The caller keeps index + T <= max_len (dynamic_update_slice would clamp silently).
  cache = extend_cache(cache, max_len)
      The same cache with room for max_len slots (the new ones empty): a decode loop that grows its cache
      in steps attends to the slots written so far, not to a whole static cache from the first token.
  cache = share_prefix(cache, group_size, max_len)
      After a prefill of P prompts: their cache becomes a prefix shared by G = group_size consecutive rows
      each (stored once per prompt), plus an empty own cache of P*G rows x max_len slots that
      `decode` then fills (slot 0 = the first new token; one token per step, several in the MCTP decoder's
      catch-up); queries see every valid prefix slot. Prefill P rows instead of P*G, and keep one copy of each
      prompt's keys and values.
  Pure and jit-friendly: T, B and max_len are static, index is a traced scalar.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from wavalign_jax.batches import LogprobFn, SeqBatch, TargetLogprobs
from wavalign_jax.models import vocab_parallel
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.models.transformer import HEADS, Transformer, causal_mask
from wavalign_jax import sharding
from wavalign_jax.sharding import constrain, spec_for

Array = jax.Array
Params = Any


def tiny_config(arch: str, **overrides: Any) -> ModelConfig:
  """A model small enough for CPU unit tests, with every architectural feature switched on."""
  kw: dict[str, Any] = dict(arch=arch, vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, logprob_chunk=5)
  if arch == "interleaved":
    kw.update(num_mtp_modules=2)
  if arch == "parallel":
    kw.update(num_layers=3, mimo_from_layer=0, num_mimo_layers=2, adaptor_input_dim=12)
  kw.update(overrides)
  return ModelConfig(**kw)


def _init_args(cfg: ModelConfig) -> tuple[tuple, dict]:
  L = cfg.num_mtp_modules + 2
  ids = jnp.zeros((1, L), jnp.int32)
  kwargs = {}
  if cfg.arch == "parallel" and cfg.adaptor_input_dim > 0:
    kwargs = dict(features=jnp.zeros((1, L, cfg.adaptor_input_dim), cfg.dtype),
                  feature_mask=jnp.ones((1, L), bool))
  inputs = {s: ids for s in cfg.streams}
  return (inputs, jnp.arange(L)[None], causal_mask(jnp.ones_like(ids))), kwargs


def _init_boxed(cfg: ModelConfig, rng: Array) -> Params:
  args, kwargs = _init_args(cfg)
  return Transformer(cfg).init(rng, *args, **kwargs, method=Transformer.init_all)["params"]


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: ModelConfig, rng: Array) -> Params:
  """Random parameters as plain arrays (the logical axes are in `param_logical_axes(cfg)`).

  Jitted: an eager Flax init dispatches (and for nn.scan re-traces) op by op, ~100x slower."""
  return nn.unbox(_init_boxed(cfg, rng))


@functools.lru_cache(maxsize=16)
def _abstract_boxed(cfg: ModelConfig) -> Params:
  """Parameter shapes, each boxed with its logical axis names (no computation; cached: tracing the init takes
  about a second, and every run asks for it several times)."""
  return jax.eval_shape(functools.partial(_init_boxed, cfg), jax.random.key(0))


def param_logical_axes(cfg: ModelConfig) -> Params:
  """PartitionSpec of logical axis names for every parameter leaf (map with sharding.LOGICAL_RULES)."""
  return nn.get_partition_spec(_abstract_boxed(cfg))


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh, gathered: bool = False) -> Params:
  """NamedSharding of every parameter on `mesh`: its logical axes through the rules table (`sharding.spec_for`:
  a dimension its mesh axes do not divide falls back to the next rule that fits). `gathered`: as a decode loop
  reads them after `gather_for_decoding` (`sharding.gathered_rules`: whole over the FSDP axis but for the output
  heads' vocabulary split)."""
  boxed = _abstract_boxed(cfg)
  rules = sharding.gathered_rules(mesh.axis_names) if gathered else None
  spec = lambda axes, p: jax.sharding.NamedSharding(mesh, spec_for(tuple(axes), p.shape, mesh.shape, rules))
  return jax.tree.map(spec, nn.get_partition_spec(boxed), nn.unbox(boxed),
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def _forward(params: Params, cfg: ModelConfig, inputs: Mapping[str, Array], positions: Array, segment_ids: Array,
             features: Array | None = None, feature_mask: Array | None = None) -> dict[str, Array]:
  hidden, _ = Transformer(cfg).apply({"params": params}, inputs, positions, causal_mask(segment_ids),
                                     features=features, feature_mask=feature_mask)
  return hidden


def _head_logits(h: Array, kernel: Array, cfg: ModelConfig) -> Array:
  return vocab_parallel.head_logits(h, kernel, cfg.dtype)


def logits(params: Params, cfg: ModelConfig, batch: Mapping[str, Any]) -> dict[str, Array]:
  """Full float32 logits {stream: [B, L, V]} (tests and small shapes only) of the model inputs in `batch`: "inputs",
  "positions", "segment_ids" and optional "features" / "feature_mask" (no targets needed)."""
  hidden = _forward(params, cfg, batch["inputs"], batch["positions"], batch["segment_ids"], batch.get("features"),
                    batch.get("feature_mask"))
  return {s: _head_logits(h, params[HEADS[s]], cfg) for s, h in hidden.items()}


def chunked_logprobs(h: Array, kernel: Array, targets: Array, cfg: ModelConfig) -> tuple[Array, Array]:
  """log p(target) and entropy, float32 [B, L], `cfg.logprob_chunk` positions at a time.

  Each chunk's logits live only inside one scan step (`vocab_parallel.target_logprob_entropy` recomputes them in
  the backward pass), so neither pass holds more than [B, chunk, V] float32 logits (split over the vocabulary);
  `cfg.logprob_keep_logits` keeps every chunk's logits for the backward pass instead ([B, L, V] float32)."""
  B, L, d = h.shape
  n = -(-L // max(1, min(cfg.logprob_chunk, L)))
  c = -(-L // n)                        # n chunks of equal size <= logprob_chunk: padding < n positions
  pad = n * c - L
  targets = jnp.clip(targets, 0, kernel.shape[-1] - 1)
  # Rows stay split over the data axes outside the loop: each chunk gathers its own rows (vocab_parallel).
  hs = constrain(jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, n, c, d).swapaxes(0, 1),
                 (None, "activation_batch", None, "activation_embed"))
  ts = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, c).swapaxes(0, 1)
  keep = cfg.logprob_keep_logits
  stats = lambda x: vocab_parallel.target_logprob_entropy(x[0], kernel, x[1], cfg.dtype, keep)
  _, (logp, ent) = jax.lax.scan(lambda _, x: (None, stats(x)), None, (hs, ts))
  unchunk = lambda a: constrain(a.swapaxes(0, 1).reshape(B, n * c)[:, :L], ("activation_batch", "activation_length"))
  return unchunk(logp), unchunk(ent)


def target_logprobs(params: Params, cfg: ModelConfig, batch: SeqBatch, start: int = 0) -> TargetLogprobs:
  """Log-probs and entropies, f32 {stream: [B, L]}, of `batch.targets` (main head only for VITA).

  `start` (static) runs the output head on positions start.. only, like TRL's `logits_to_keep`: an RL batch's
  targets before its completions (`rollout.batch.rl_batch`) carry no loss, and the head is the costliest part of the
  step's log-probs. Positions before `start` get log-prob and entropy 0."""
  logp, entropy = {}, {}
  hidden = _forward(params, cfg, batch.inputs, batch.positions, batch.segment_ids, batch.features, batch.feature_mask)
  for s, h in hidden.items():
    lp, ent = chunked_logprobs(h[:, start:], params[HEADS[s]], batch.targets[s][:, start:], cfg)
    logp[s], entropy[s] = (jnp.pad(v, ((0, 0), (start, 0))) for v in (lp, ent))
  return TargetLogprobs(logp=logp, entropy=entropy)


def logprob_fn(cfg: ModelConfig) -> LogprobFn:
  """`target_logprobs` with `cfg` bound: the `logprob_fn(params, batch, start=0)` the objectives take."""
  return lambda params, batch, start=0: target_logprobs(params, cfg, batch, start)


def mtp_logits(params: Params, cfg: ModelConfig, tokens: Array, positions: Array) -> list[Array]:
  """Float32 logits of each VITA MCTP module k: [B, L-1-k, V], row t predicting tokens[t+k+2]."""
  if cfg.arch != "interleaved":
    raise ValueError(f"mtp_logits needs arch 'interleaved', got {cfg.arch!r}")
  hidden = Transformer(cfg).apply({"params": params}, tokens, positions, method=Transformer.mtp_hidden)
  return [_head_logits(h, params["lm_head"], cfg) for h in hidden]


_KV_AXES = ("activation_batch", "activation_kv_heads", "activation_length", None)


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int) -> dict[str, Any]:
  """Empty static-shape KV cache (layout in the module docstring)."""
  cache: dict[str, Any] = {"index": jnp.zeros((), jnp.int32), "valid": jnp.zeros((batch_size, max_len), bool)}
  for name, n in cfg.stack_sizes.items():
    shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
    cache[name] = [{"k": _cache_buffer(shape, cfg.dtype), "v": _cache_buffer(shape, cfg.dtype)} for _ in range(n)]
  return cache


def _cache_buffer(shape: tuple[int, ...], dtype: Any) -> Array:
  """A zero KV buffer [B, K, S, D] sharded like the activations (rows over the data axes)."""
  return constrain(jnp.zeros(shape, dtype), _KV_AXES)


def decode(params: Params, cfg: ModelConfig, inputs: Mapping[str, Array], positions: Array,
           cache: dict[str, Any], valid: Array | None = None, features: Array | None = None,
           feature_mask: Array | None = None) -> tuple[dict[str, Array], dict[str, Any]]:
  """Prefill (T = prompt length) or step (T = 1) with the KV cache; see the module docstring."""
  hidden, cache = decode_hidden(params, cfg, inputs, positions, cache, valid, features, feature_mask)
  return {s: _head_logits(h[:, -1], params[HEADS[s]], cfg) for s, h in hidden.items()}, cache


def _shared_layer(kv: dict[str, Array], rows: int, own_slots: int) -> dict[str, Array]:
  """One layer's prefilled keys / values {"k","v": [P, K, Sp, D]} as a prefix shared by `rows` rows (P groups)
  and an empty own block of `own_slots` slots per row."""
  _, heads, _, dim = kv["k"].shape
  shape = (rows, heads, own_slots, dim)
  out = {"k": _cache_buffer(shape, kv["k"].dtype), "v": _cache_buffer(shape, kv["v"].dtype)}
  out.update({f"prefix_{n}": constrain(kv[n], _KV_AXES) for n in ("k", "v")})
  return out


def _with_prefix(mask: Array, prefix_valid: Array) -> Array:
  """mask [B, 1, T, S] over a row's own slots, preceded by its group's prefix slots (prefix_valid [P, Sp]):
  every new query sees each valid prefix slot."""
  B, _, T, _ = mask.shape
  prefix = jnp.repeat(prefix_valid, B // prefix_valid.shape[0], axis=0)
  return jnp.concatenate([jnp.broadcast_to(prefix[:, None, None, :], (B, 1, T, prefix.shape[1])), mask], axis=-1)


def share_prefix(cache: dict[str, Any], group_size: int, max_len: int) -> dict[str, Any]:
  """A prefilled cache of P prompts -> the prompts as a shared prefix of P * group_size rows (module docstring)."""
  B = cache["valid"].shape[0] * group_size
  stacks = {name: [_shared_layer(kv, B, max_len) for kv in layers]
            for name, layers in cache.items() if name not in ("index", "valid")}
  return {"index": jnp.zeros((), jnp.int32), "valid": jnp.zeros((B, max_len), bool),
          "prefix_valid": cache["valid"], **stacks}


def extend_cache(cache: dict[str, Any], max_len: int) -> dict[str, Any]:
  """`cache` with room for `max_len` slots; the new slots are empty (module docstring)."""
  def grow(x, axis):   # the slot axis: 1 of valid [B, S], 2 of k / v [B, K, S, D]
    return jnp.pad(x, [(0, max_len - x.shape[axis]) if a == axis else (0, 0) for a in range(x.ndim)])
  out = dict(cache, valid=grow(cache["valid"], 1))
  for name, layers in cache.items():
    if name not in ("index", "valid", "prefix_valid"):
      out[name] = [dict(kv, **{n: constrain(grow(kv[n], 2), _KV_AXES) for n in ("k", "v")}) for kv in layers]
  return out


def in_compute_dtype(params: Params, cfg: ModelConfig) -> Params:
  """Matrices in the compute dtype (a decode loop then reads bf16 weights instead of converting the float32 master
  copy at every token); vectors such as norm scales stay."""
  dtype = jnp.dtype(cfg.dtype)
  return jax.tree.map(lambda x: x.astype(dtype) if x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating) else x,
                      params)


@functools.lru_cache(maxsize=8)
def _gather(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> Callable[[Params], Params]:
  return jax.jit(functools.partial(in_compute_dtype, cfg=cfg), out_shardings=param_shardings(cfg, mesh, gathered=True))


def gather_for_decoding(params: Params, cfg: ModelConfig, mesh: jax.sharding.Mesh) -> Params:
  """The weights a rollout call decodes with, gathered once (`rollout.gather_weights`): in the compute dtype and
  whole over the FSDP axis but for the output heads' vocabulary split (`param_shardings(gathered=True)`). Each
  device then holds a compute-dtype copy of the weights (divided over the tensor axis) for the call, and the
  decode loop, traced inside `sharding.use_rules(mesh, gathered=True)`, no longer all-gathers every layer's
  weights at every token (docs/performance.md)."""
  return _gather(cfg, mesh)(params)


def for_decoding(params: Params, cfg: ModelConfig, unstack: bool = True) -> tuple[Params, ModelConfig]:
  """Parameters and config for a decode loop, made once per rollout call: matrices in the compute dtype
  (`in_compute_dtype`) and, with `unstack`, scanned layer stacks split into per-layer parameters
  (`scan_layers=False`), so each layer's KV cache is its own buffer, updated in place.

  Do not unstack FSDP-sharded parameters: with the layers unrolled inside the token loop, XLA hoists every
  layer's all-gather out of the loop, i.e. holds all weights gathered (measured: 52 GiB of temporaries per
  device for the 7B VITA sampler on 8 devices, 9.6 GiB scanned)."""
  params = in_compute_dtype(params, cfg)
  if not (unstack and cfg.scan_layers):
    return params, cfg

  def split(tree):
    if not isinstance(tree, Mapping):
      return tree
    if "layers" in tree:
      n = jax.tree.leaves(tree["layers"])[0].shape[0]
      rest = {k: split(v) for k, v in tree.items() if k != "layers"}
      return {**rest, **{f"layer_{i}": jax.tree.map(lambda a: a[i], tree["layers"]) for i in range(n)}}
    return {k: split(v) for k, v in tree.items()}
  cfg = cfg.replace(scan_layers=False)
  # Keep each layer's slice sharded like its stack (inside sharding.use_rules; a no-op without a mesh).
  spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  return jax.tree.map(lambda axes, x: constrain(x, tuple(axes)), param_logical_axes(cfg),
                      split(params), is_leaf=spec), cfg


def head_logits(params: Params, cfg: ModelConfig, stream: str, h: Array) -> Array:
  """float32 logits of the head that predicts `stream`, from post-norm hidden states h [..., d]."""
  return _head_logits(h, params[HEADS[stream]], cfg)


def _cached_mask(cache_valid: Array, idx: Array, T: int) -> Array:
  """[B, 1, T, S]: new query i (slot idx + i) sees slot j iff j <= idx + i and the slot is valid."""
  slots = jnp.arange(cache_valid.shape[1])
  return ((slots[None, :] <= idx + jnp.arange(T)[:, None])[None] & cache_valid[:, None, :])[:, None]


def decode_hidden(params: Params, cfg: ModelConfig, inputs: Mapping[str, Array], positions: Array,
                  cache: dict[str, Any], valid: Array | None = None, features: Array | None = None,
                  feature_mask: Array | None = None) -> tuple[dict[str, Array], dict[str, Any]]:
  """`decode`, returning the post-norm hidden states {stream: [B, T, d]} of all T new positions."""
  B, T = positions.shape
  idx = cache["index"]
  if valid is None:
    valid = jnp.ones((B, T), bool)
  cache_valid = jax.lax.dynamic_update_slice(cache["valid"], valid.astype(bool), (0, idx))
  mask = _cached_mask(cache_valid, idx, T)
  if "prefix_valid" in cache:
    mask = _with_prefix(mask, cache["prefix_valid"])
  meta = ("index", "valid", "prefix_valid")
  stacks = {k: v for k, v in cache.items() if k not in meta}
  hidden, new = Transformer(cfg).apply({"params": params}, dict(inputs), positions, mask,
                                       stacks, idx, features=features, feature_mask=feature_mask)
  return hidden, {**{k: cache[k] for k in meta if k in cache}, "index": idx + T, "valid": cache_valid, **new}


def init_mtp_cache(cfg: ModelConfig, batch_size: int, max_len: int) -> dict[str, Array]:
  """An MCTP module's empty static KV cache {"k","v": [B, kv_heads, max_len, head_dim]}, indexed by anchor slot
  (every module's has this shape)."""
  shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
  return {n: _cache_buffer(shape, cfg.dtype) for n in ("k", "v")}


def share_mtp_prefix(cache: dict[str, Array], prefix_valid: Array, group_size: int,
                     max_len: int) -> dict[str, Array]:
  """Module k's cache after its first A anchors were run on the P prompts ({"k","v": [P, K, A, D]}; prefix_valid
  [P, A]) -> those anchors as a prefix shared by each prompt's `group_size` rows, and an empty block of
  `max_len` - A anchor slots per row for the rest (mtp_decode reads both)."""
  P, A = prefix_valid.shape
  return {**_shared_layer(cache, P * group_size, max_len - A), "prefix_valid": prefix_valid}


def mtp_decode(params: Params, cfg: ModelConfig, k: int, tokens: Array, hidden: Array, positions: Array,
               cache: dict[str, Array], slot_valid: Array, index: Array) -> tuple[Array, dict[str, Array]]:
  """MCTP module k on the T anchors [index, index + T) (static T): post-norm hidden [B, T, d] and its cache.

  tokens [B, T]: the token k+1 slots after each anchor; hidden [B, T, d]: the previous stage at the anchors
  (the main model's post-norm hidden for k = 0); positions [B, T]: RoPE positions of those tokens;
  slot_valid [B, S]: anchors that may be attended (prompt padding is not). With a shared prefix of A anchors
  (`share_mtp_prefix`), the cache's own block holds anchors A .. S - 1 and every new anchor sees the prefix."""
  T = tokens.shape[1]
  mask, own_index = _cached_mask(slot_valid, index, T), index
  if "prefix_valid" in cache:
    A = cache["prefix_valid"].shape[1]
    own_index = index - A
    mask = _with_prefix(_cached_mask(slot_valid[:, A:], own_index, T), cache["prefix_valid"])
  return Transformer(cfg).apply({"params": params}, k, tokens, hidden, positions, mask, cache, own_index,
                                method=Transformer.mtp_decode)
