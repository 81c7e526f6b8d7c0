"""The pieces every decoder shares: sampling settings, token choice and the loop's carry / emit / finish.

Sampling per stream: constraint mask -> temperature -> top-k -> top-p -> categorical; temperature 0
is greedy. The recorded `logp` of a sampled token is its log-probability under the model's own
distribution (temperature 1, no top-k/top-p, no constraint mask): exactly what `target_logprobs`
recomputes from the same parameters, so it serves as pi_old in GRPO / PPO ratios.

A row's response ends with its stop token (<|im_end|> / msg_end / media_end), which is part of
the completion; rows that hit `max_new_tokens` first are marked truncated. Positions after the
stop hold the constraint vocabulary's pad id, TokenType.NONE and log-prob 0. Positions whose token the
constraint forced (one allowed id) are marked in `forced`; `batch.rl_batch` gives them TokenType.NONE, so
the policy gradient sees only tokens the policy chose. The main-head loop (sampler.py) and the MCTP
loop (mctp.py) both build on this module, which imports neither.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wavalign_jax.batches import SamplerPrompts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rollout.constraints import Constraint, InterleavedConstraint, ParallelConstraint
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab, TokenType


@dataclasses.dataclass(frozen=True)
class StreamSampling:
  temperature: float = 0.7   # 0 = greedy
  top_p: float = 0.9         # 1 = off
  top_k: int = 0             # 0 = off

  def __post_init__(self):
    if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      raise ValueError(f"bad sampling parameters {self}: need temperature >= 0, 0 < top_p <= 1, top_k >= 0")


DECODERS = ("main", "mctp")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static (hashable) rollout settings; defaults are the WavAlign reference (docs/method.md §1)."""
  max_new_tokens: int = 1024
  group_size: int = 4
  sampling: StreamSampling = StreamSampling()
  per_stream: tuple[tuple[str, StreamSampling], ...] = ()   # overrides, e.g. (("audio", ...),)
  constraint: Constraint | None = None   # None: free decoding, no stop token (plain LMs, tests)
  decode: str = "main"                   # "main": every token from the main head; "mctp": rollout/mctp.py
  mctp_schedule: tuple[int, ...] = ()    # [M1, m1, M2, m2, ...] for decode="mctp"
  unstack_layers: bool = True            # per-layer decode (fast); hosts.sample_rows turns it off under FSDP
  # The main-head loop grows its completion cache in this many steps (each one more compiled loop body): a
  # token attends to the prompt and to about the completion written so far, not a whole static cache.
  cache_windows: int = 4
  # On a mesh with FSDP: gather the weights once per rollout call (hosts.sample_rows) instead of all-gathering each
  # layer's weights at every token; costs a compute-dtype copy of the weights per device for the call.
  gather_weights: bool = False

  def __post_init__(self):
    if self.cache_windows < 1:
      raise ValueError(f"rollout cache_windows={self.cache_windows}: need >= 1")
    if self.decode not in DECODERS:
      raise ValueError(f"rollout.decode={self.decode!r}: choose one of {DECODERS} (or 'auto' in the config)")
    if self.decode == "mctp":
      check_mctp_schedule(self.mctp_schedule)

  def for_stream(self, stream: str) -> StreamSampling:
    return dict(self.per_stream).get(stream, self.sampling)

  @property
  def pad(self) -> int:
    return 0 if self.constraint is None else self.constraint.vocab.pad


def check_mctp_schedule(schedule: Sequence[int]) -> None:
  """An MCTP schedule [M1, m1, M2, m2, ...] (rollout/mctp.py): pairs of counts >= 0, M1 >= 1, the last (repeating)
  pair not empty."""
  s = tuple(int(x) for x in schedule)
  if not s:
    raise ValueError("rollout.decode='mctp' needs a schedule (rollout.mctp_schedule, default the layout ratios)")
  if len(s) < 2 or len(s) % 2 or any(x < 0 for x in s) or s[0] < 1 or sum(s[-2:]) < 1:
    raise ValueError(f"MCTP schedule {list(s)}: need pairs [M1, m1, ...] of counts >= 0, M1 >= 1 and a last "
                     "pair that is not empty")


def mctp_schedule(rollout_cfg: Any, layout_cfg: Any) -> tuple[int, ...]:
  """The MCTP schedule [M1, m1, ...] a config decodes with: rollout.mctp_schedule, else the layout's ratio list
  (as upstream sets its inference mode)."""
  return tuple(rollout_cfg["mctp_schedule"] or layout_cfg.get("ratios") or ())


def sampling_config(rollout_cfg: Any, layout_cfg: Any, vocab: Any, num_mtp_modules: int = 0) -> SamplingConfig:
  """SamplingConfig from the experiment config's `rollout` and `layout` sections (config_lib.base_config documents
  their fields; every one is required but the optional per-stream `text_*` / `audio_*` sampling overrides, whose
  missing fields fall back to the global ones). `decode="auto"` picks MCTP when the model has MCTP modules
  (`num_mtp_modules`), as upstream, else the main head."""
  fields = ("temperature", "top_p", "top_k")
  base = StreamSampling(**{f: rollout_cfg[f] for f in fields})
  per_stream = tuple(
      (s, StreamSampling(**{f: rollout_cfg.get(f"{s}_{f}", rollout_cfg[f]) for f in fields}))
      for s in ("text", "audio") if any(f"{s}_{f}" in rollout_cfg for f in fields))
  constrained = bool(rollout_cfg["constrained"])
  interleaved = isinstance(vocab, InterleavedVocab)   # the vocabulary's kind is the layout's (model.arch)
  if interleaved:
    constraint = InterleavedConstraint(vocab, tuple(layout_cfg["ratios"]), constrained)
  elif isinstance(vocab, ParallelVocab):
    constraint = ParallelConstraint(vocab, int(layout_cfg["audio_delay"]), constrained)
  else:
    raise ValueError(f"a vocabulary of {type(vocab).__name__}: expected an InterleavedVocab or a ParallelVocab")
  decode = rollout_cfg["decode"]
  if decode == "auto":
    decode = "mctp" if interleaved and num_mtp_modules > 0 else "main"
  schedule = mctp_schedule(rollout_cfg, layout_cfg) if decode == "mctp" else ()
  return SamplingConfig(max_new_tokens=int(rollout_cfg["max_new_tokens"]), group_size=int(rollout_cfg["group_size"]),
                        sampling=base, per_stream=per_stream, constraint=constraint, decode=decode,
                        mctp_schedule=schedule,
                        cache_windows=int(rollout_cfg["cache_windows"]),
                        gather_weights=bool(rollout_cfg["gather_weights"]))


class Rollouts(NamedTuple):
  """G rollouts per prompt, [B = P·G] rows in prompt order (rows p·G .. p·G + G − 1 answer prompt p)."""
  tokens: dict[str, Any]   # {stream: int32[B, N]}
  logp: dict[str, Any]     # {stream: float32[B, N]} untempered, unmasked model log-prob of each token
  types: dict[str, Any]    # {stream: int32[B, N]} TokenType; NONE after the stop
  mask: Any                # bool[B, N] completion positions (up to and including the stop token)
  lengths: Any             # int32[B]
  truncated: Any           # bool[B] reached max_new_tokens without a stop token
  forced: dict[str, Any]   # {stream: bool[B, N]} the constraint allowed only this token
  head: Any = None         # int32[B, N] which head made each token: -1 main model, k MCTP module k (mctp only)


def nucleus(p: jax.Array, top_p: float) -> jax.Array:
  """bool [B, V]: the nucleus of probabilities p, without sorting the vocabulary.

  Token i is kept iff the probability mass of the tokens strictly more likely than i is < top_p (the
  sort-based definition: the top token is always kept, ties share a fate). That set is {p >= t} for the
  smallest float t with mass(p > t) < top_p; t is found exactly by bisection over the bit patterns of
  non-negative float32 numbers (ordered like the numbers), 32 masked sums over [B, V] instead of a sort.
  """
  lo = jnp.zeros(p.shape[:-1] + (1,), jnp.int32)
  hi = jnp.max(jax.lax.bitcast_convert_type(p, jnp.int32), axis=-1, keepdims=True)   # mass above max p is 0

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    t = jax.lax.bitcast_convert_type(mid, jnp.float32)
    ok = jnp.sum(jnp.where(p > t, p, 0.0), axis=-1, keepdims=True) < top_p
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi), unroll=True)   # no inner loop in the decode loop
  return p >= jax.lax.bitcast_convert_type(hi, jnp.float32)


def _last_true(m):
  """Index of the last True along the last axis (0 where there is none)."""
  return m.shape[-1] - 1 - jnp.argmax(m[..., ::-1], axis=-1)


def categorical(key, probs, block: int = 64):
  """One draw per row from unnormalised probabilities probs [B, K] (0 = excluded) by inverting the CDF with one
  uniform per row. Exact like `jax.random.categorical`, which draws K Gumbel variates per row: on a CPU the
  random bits for a whole vocabulary cost as much as the model's decode step. The CDF is taken in two levels
  (the sums of blocks of `block` ids, then the chosen block), since a cumulative sum over the whole vocabulary
  costs several times a reduction on CPU; a draw never lands on an excluded id."""
  B, K = probs.shape
  blocks = jnp.pad(probs.astype(jnp.float32), ((0, 0), (0, -K % block))).reshape(B, -1, block)
  sums = jnp.sum(blocks, axis=-1)                                        # [B, K / block]
  cdf = jnp.cumsum(sums, axis=-1)
  u = jax.random.uniform(key, (B,), jnp.float32) * cdf[:, -1]
  j = jnp.minimum(jnp.sum(cdf <= u[:, None], axis=-1), _last_true(sums > 0))
  chosen = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]   # [B, block]
  u = u - jnp.take_along_axis(cdf - sums, j[:, None], axis=1)[:, 0]
  i = jnp.minimum(jnp.sum(jnp.cumsum(chosen, axis=-1) <= u[:, None], axis=-1), _last_true(chosen > 0))
  return j * block + i


def sample_token(logits, allowed, sp: StreamSampling, key):
  """One id per row from logits [B, V] under mask `allowed` (or None); returns (ids, model logp)."""
  raw = logits.astype(jnp.float32)
  x = raw if allowed is None else jnp.where(allowed, raw, -jnp.inf)
  if sp.temperature == 0:
    ids = jnp.argmax(x, axis=-1)
  elif sp.top_k > 0:
    vals, idx = jax.lax.top_k(x / sp.temperature, min(sp.top_k, x.shape[-1]))
    if sp.top_p < 1:
      vals = jnp.where(nucleus(jax.nn.softmax(vals, axis=-1), sp.top_p), vals, -jnp.inf)
    pick = categorical(key, jax.nn.softmax(vals, axis=-1))
    ids = jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
  else:
    p = jax.nn.softmax(x / sp.temperature, axis=-1)
    ids = categorical(key, jnp.where(nucleus(p, sp.top_p), p, 0.0) if sp.top_p < 1 else p)
  ids = ids.astype(jnp.int32)
  # The model's own log-prob of the token (temperature 1, no mask): its logit minus the log-sum-exp.
  logp = jnp.take_along_axis(raw, ids[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(raw, axis=-1)
  return ids, logp


def _free_types(streams: Sequence[str], batch: int) -> dict[str, Any]:
  """Types without a constraint: the audio stream is speech, everything else text."""
  return {s: jnp.full((batch,), int(TokenType.SPEECH if s == "audio" else TokenType.TEXT), jnp.int32)
          for s in streams}



class Emitted(NamedTuple):
  """What a decode loop has emitted so far: the state `emit` advances by one token per call, shared by the main
  sampler (sampler.py) and MCTP decoding (mctp.py), each of which keeps its own model state beside it."""
  i: jax.Array                  # int32: the next token's index
  state: Any                    # the constraint's state (() without a constraint)
  done: jax.Array               # bool[B]: the row emitted its stop token
  lengths: jax.Array            # int32[B]: tokens emitted (up to and including the stop token)
  tokens: dict[str, jax.Array]  # {stream: int32[B, N]} (pad after the stop)
  logp: dict[str, jax.Array]    # {stream: float32[B, N]}
  types: dict[str, jax.Array]   # {stream: int32[B, N]}
  forced: dict[str, jax.Array]  # {stream: bool[B, N]}

  def running(self, end: int | jax.Array) -> jax.Array:
    """The loop condition: tokens before `end` remain and some row has not stopped."""
    return (self.i < end) & ~jnp.all(self.done)


def start(cfg: SamplingConfig, streams: Sequence[str], B: int) -> Emitted:
  """Nothing emitted yet: [B, max_new_tokens] output buffers, the constraint's initial state."""
  con, N = cfg.constraint, cfg.max_new_tokens
  return Emitted(
      i=jnp.zeros((), jnp.int32), state=con.init(B) if con is not None else (),
      done=jnp.zeros((B,), bool), lengths=jnp.zeros((B,), jnp.int32),
      tokens={s: jnp.full((B, N), cfg.pad, jnp.int32) for s in streams},
      logp={s: jnp.zeros((B, N), jnp.float32) for s in streams},
      types={s: jnp.zeros((B, N), jnp.int32) for s in streams},
      forced={s: jnp.zeros((B, N), bool) for s in streams})


def emit(out: Emitted, logits: dict[str, jax.Array], cfg: SamplingConfig, rng: jax.Array,
         streams: Sequence[str]) -> tuple[Emitted, dict[str, jax.Array]]:
  """Samples token `out.i` of every row from `logits` {stream: [B, V]} under the constraint and records it.

  Returns what is emitted with it (i + 1) and the emitted tokens {stream: [B]} (pad for rows that have stopped).
  Row randomness depends on (rng, i) only, so any decoder that calls this once per token reproduces it."""
  con = cfg.constraint
  masked = con is not None and con.constrained
  B = out.done.shape[0]
  i, active = out.i, ~out.done & (out.i < cfg.max_new_tokens)
  allowed = con.allowed(out.state) if masked else {s: None for s in streams}
  forced = {s: (jnp.sum(allowed[s], axis=-1) == 1) if masked else jnp.zeros((B,), bool) for s in streams}
  keys = jax.random.split(jax.random.fold_in(rng, i), len(streams))
  toks, logp = {}, {}
  for s, key in zip(streams, keys):
    toks[s], logp[s] = sample_token(logits[s], allowed[s], cfg.for_stream(s), key)
  if con is not None:
    state, types, stop = con.update(out.state, toks)
  else:
    state, types, stop = (), _free_types(streams, B), jnp.zeros((B,), bool)
  toks = {s: jnp.where(active, t, cfg.pad) for s, t in toks.items()}
  put = lambda buf, col: {s: buf[s].at[:, i].set(col[s], mode="drop") for s in streams}
  new = Emitted(
      i=i + 1, state=state, done=out.done | stop, lengths=out.lengths + active,
      tokens=put(out.tokens, toks),
      logp=put(out.logp, {s: jnp.where(active, v, 0.0) for s, v in logp.items()}),
      types=put(out.types, {s: jnp.where(active, v, int(TokenType.NONE)) for s, v in types.items()}),
      forced=put(out.forced, {s: active & f for s, f in forced.items()}))
  return new, toks


def finish(out: Emitted, **extra: Any) -> Rollouts:
  """The rollouts of a finished loop (`extra`: a decoder's own fields, e.g. MCTP's `head`)."""
  N = out.tokens[next(iter(out.tokens))].shape[1]
  return Rollouts(tokens=out.tokens, logp=out.logp, types=out.types,
                  mask=jnp.arange(N)[None, :] < out.lengths[:, None], lengths=out.lengths,
                  truncated=~out.done, forced=out.forced, **extra)


def validate_prompts(model_cfg: ModelConfig, prompts: SamplerPrompts, sampling_cfg: SamplingConfig) -> None:
  """Host-side checks of a prompt batch for `sample`. The left-padding check reads `valid` only where
  this process holds all of it: callers with arrays spread over several processes check their numpy
  rows first (hosts.sample_rows)."""
  missing = set(model_cfg.streams) - set(prompts.inputs)
  if missing:
    raise ValueError(f"prompts need inputs for streams {model_cfg.streams}; missing {sorted(missing)}")
  valid = prompts.valid
  local = not isinstance(valid, jax.core.Tracer) and (not isinstance(valid, jax.Array) or valid.is_fully_addressable)
  if local and not np.asarray(valid)[:, -1].all():
    raise ValueError("prompts must be left-padded: the last position of every prompt row must be valid")
  con = sampling_cfg.constraint
  expected = {InterleavedConstraint: ("tokens",), ParallelConstraint: ("text", "audio")}.get(type(con))
  if expected is not None and expected != model_cfg.streams:
    raise ValueError(f"{type(con).__name__} does not fit arch {model_cfg.arch!r} (streams {model_cfg.streams})")

