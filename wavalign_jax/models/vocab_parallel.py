"""Head logits on vocabulary-split heads (the rules: `sharding.py`).

A 168k-entry head is the largest parameter of a spoken-dialogue model (2.2 GiB in float32 at d = 3584), so it
is never gathered onto one device. The rows move instead: logits are computed for all rows of a data shard
against each device's slice of the vocabulary ("activation_logits_batch" x "activation_vocab"), and reductions
over the vocabulary (log-sum-exp, the target's logit, entropy) become small all-reduces. A vocabulary that the
devices do not divide (VITA's 168072 on 16) is padded to a multiple of the split for the computation, the
padding's logits masked out. Without a mesh every constraint here is a no-op.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from wavalign_jax.sharding import constrain, shards

Array = jax.Array
_PAD_LOGIT = -1e30   # exp() of it is exactly 0: padded entries get no probability, and 0 * it is 0 (entropy)


def _rows_axes(ndim: int, last: str) -> tuple[str | None, ...]:
  return ("activation_logits_batch",) + (None,) * (ndim - 2) + (last,)


def _padded_logits(h: Array, kernel: Array, dtype: Any) -> Array:
  """float32 logits [..., V'] over the vocabulary padded to V' (a multiple of its split), padding masked."""
  V = kernel.shape[-1]
  pad = -V % shards("activation_vocab")
  kernel = constrain(jnp.pad(kernel.astype(dtype), ((0, 0), (0, pad))), (None, "activation_vocab"))
  h = constrain(h.astype(dtype), _rows_axes(h.ndim, "activation_embed"))
  lg = constrain(jnp.einsum("...d,dv->...v", h, kernel, preferred_element_type=jnp.float32),
                 _rows_axes(h.ndim, "activation_vocab"))
  return jnp.where(jnp.arange(V + pad) < V, lg, _PAD_LOGIT) if pad else lg


def head_logits(h: Array, kernel: Array, dtype: Any) -> Array:
  """float32 logits [..., V] of h [..., d] (leading axis = rows) through kernel [d, V], split over the vocabulary."""
  return _padded_logits(h, kernel, dtype)[..., :kernel.shape[-1]]


def _stats(lg: Array, targets: Array) -> tuple[Array, Array, Array, Array]:
  """(log p(targets), entropy, softmax, is_target) of float32 logits [..., V], with one exp over the vocabulary."""
  peak = jnp.max(lg, axis=-1, keepdims=True)
  shifted = lg - peak   # <= 0: the log-sum-exp and E_p[logit] would both carry the peak and cancel in float32
  e = jnp.exp(shifted)
  total = jnp.sum(e, axis=-1, keepdims=True)
  log_total = jnp.log(total)[..., 0]
  p = e / total
  # A 1-D iota broadcast in the comparison, and the target's logit as a product rather than a select against a
  # constant 0: XLA hoists a full-shape loop-invariant iota or broadcast out of the chunk loop as a materialised
  # [rows, chunk, V] array.
  is_target = jnp.arange(lg.shape[-1], dtype=jnp.int32) == targets[..., None]
  target_logit = jnp.sum(shifted * is_target, axis=-1)
  return target_logit - log_total, log_total - jnp.sum(p * shifted, axis=-1), p, is_target


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def target_logprob_entropy(h: Array, kernel: Array, targets: Array, dtype: Any,
                           keep_logits: bool = False) -> tuple[Array, Array]:
  """log p(targets) and the entropy of the head's distribution, float32 [...], for h [..., d], targets [...].

  The target's logit is a masked sum over the vocabulary rather than a gather: a local reduction on each
  vocabulary slice plus one all-reduce. The backward pass writes d logits in closed form from the logits, which it
  recomputes from (h, kernel) so that no [..., V] array outlives a call (this replaces a rematerialised autodiff,
  which kept the vocabulary-sized comparison mask and several float32 logits copies alive); `keep_logits` keeps
  the forward's float32 logits for it instead (one head product less, at [..., V] float32 of memory)."""
  logp, entropy, _, _ = _stats(_padded_logits(h, kernel, dtype), targets)
  return logp, entropy


def _fwd(h, kernel, targets, dtype, keep_logits):
  h, kernel, targets = h.value, kernel.value, targets.value   # (symbolic_zeros=True wraps the primals)
  lg = _padded_logits(h, kernel, dtype)
  logp, entropy, _, _ = _stats(lg, targets)
  return (logp, entropy), (h, kernel, targets, lg if keep_logits else None)


def _bwd(dtype, keep_logits, res, g):
  """d logp/d lg = onehot - p;  d entropy/d lg = -p (lg - E_p[lg]). An output nobody differentiates (the entropy,
  unless an entropy term is in the loss) arrives as a symbolic zero and costs nothing."""
  h, kernel, targets, kept = res
  g_logp, g_entropy = (None if isinstance(x, jax.custom_derivatives.SymbolicZero) else x for x in g)
  lg = kept if keep_logits else _padded_logits(h, kernel, dtype)
  _, _, p, is_target = _stats(lg, targets)
  terms = []
  if g_logp is not None:
    terms.append(g_logp[..., None] * (is_target - p))
  if g_entropy is not None:
    shifted = lg - jnp.max(lg, axis=-1, keepdims=True)   # as in _stats: the logits' level cancels in float32
    terms.append(-g_entropy[..., None] * p * (shifted - jnp.sum(p * shifted, axis=-1, keepdims=True)))
  d_lg = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(lg)
  d_lg = constrain(d_lg.astype(dtype), _rows_axes(d_lg.ndim, "activation_vocab"))
  d_h = jnp.einsum("...v,dv->...d", d_lg[..., :kernel.shape[-1]], kernel.astype(dtype),
                   preferred_element_type=jnp.float32)
  d_h = constrain(d_h, ("activation_batch",) + (None,) * (d_h.ndim - 1))
  d_kernel = jnp.einsum("...d,...v->dv", h.astype(dtype), d_lg, preferred_element_type=jnp.float32)
  d_kernel = constrain(d_kernel, (None, "activation_vocab"))[:, :kernel.shape[-1]]
  return d_h.astype(h.dtype), d_kernel.astype(kernel.dtype), None


target_logprob_entropy.defvjp(_fwd, _bwd, symbolic_zeros=True)
