"""Group rollouts with a static KV cache: one prefill, then single-token steps in a `lax.while_loop`.

`sample` repeats each of the P left-padded prompts G times (rows p*G .. p*G+G-1 are prompt p's
group), prefills the cache with the whole prompt and decodes until every row has stopped or
`max_new_tokens` steps ran. The cache is allocated inside the compiled program and carried by the
loop, so XLA updates it in place (what donating a cache argument would buy, without a second copy).

Sampling per stream: constraint mask -> temperature -> top-k -> top-p -> categorical; temperature 0
is greedy. The returned `logp` of a sampled token is its log-probability under the model's own
distribution (temperature 1, no top-k/top-p, no constraint mask): exactly what `target_logprobs`
recomputes from the same parameters, so it serves as pi_old in GRPO / PPO ratios.

A row's response ends with its stop token (<|im_end|> / msg_end / media_end), which is part of
the completion; rows that hit `max_new_tokens` first are marked truncated. Positions after the
stop hold the constraint vocabulary's pad id, TokenType.NONE and log-prob 0. Positions whose token the
constraint forced (one allowed id) are marked in `forced`; `rl_batch` gives them TokenType.NONE, so the
policy gradient and its denominators see only tokens the policy chose.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wavalign_jax import models
from wavalign_jax.data import layouts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rollout.constraints import Constraint, InterleavedConstraint, ParallelConstraint
from wavalign_jax.tokens import TokenType


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
  pad_id: int = 0                        # filler after the stop when there is no constraint
  decode: str = "main"                   # "main": every token from the main head; "mctp": rollout/mctp.py
  mctp_schedule: tuple[int, ...] = ()    # [M1, m1, M2, m2, ...] for decode="mctp"
  unstack_layers: bool = True            # per-layer decode (fast); hosts.sample_rows turns it off under FSDP

  def __post_init__(self):
    if self.decode not in DECODERS:
      raise ValueError(f"rollout.decode={self.decode!r}: choose one of {DECODERS} (or 'auto' in the config)")
    if self.decode == "mctp" and not self.mctp_schedule:
      raise ValueError("rollout.decode='mctp' needs a schedule (rollout.mctp_schedule, default the layout ratios)")

  def for_stream(self, stream: str) -> StreamSampling:
    return dict(self.per_stream).get(stream, self.sampling)

  @property
  def pad(self) -> int:
    return self.pad_id if self.constraint is None else self.constraint.vocab.pad


def kimi_upstream_sampling(**kw: Any) -> SamplingConfig:
  """Kimi-Audio's own decoding: audio temperature 0.8 / top-k 10, text greedy."""
  return SamplingConfig(per_stream=(("audio", StreamSampling(0.8, 1.0, 10)),
                                    ("text", StreamSampling(0.0, 1.0, 0))), **kw)


def sampling_config(rollout_cfg: Any, layout_cfg: Any, vocab: Any, num_mtp_modules: int = 0) -> SamplingConfig:
  """SamplingConfig from the experiment config: `rollout` (group_size, max_new_tokens, temperature,
  top_p, top_k, optional per-stream `text_*` / `audio_*` overrides whose missing fields fall back to
  the global ones, `constrained` (default True: the layout's constraint mask), `decode` ("auto": MCTP
  when the model has MCTP modules, as upstream; "main"; "mctp") and `mctp_schedule` (default: the layout's
  ratio list, as upstream sets its inference mode)) and `layout` (kind "interleaved" with `ratios`, or "parallel" with `audio_delay`)."""
  fields = ("temperature", "top_p", "top_k")
  base = StreamSampling(**{f: rollout_cfg[f] for f in fields})
  per_stream = tuple(
      (s, StreamSampling(**{f: rollout_cfg.get(f"{s}_{f}", rollout_cfg[f]) for f in fields}))
      for s in ("text", "audio") if any(f"{s}_{f}" in rollout_cfg for f in fields))
  constrained = bool(rollout_cfg.get("constrained", True))
  if layout_cfg["kind"] == "interleaved":
    constraint = InterleavedConstraint(vocab, tuple(layout_cfg["ratios"]), constrained)
  elif layout_cfg["kind"] == "parallel":
    constraint = ParallelConstraint(vocab, int(layout_cfg["audio_delay"]), constrained)
  else:
    raise ValueError(f"layout.kind={layout_cfg['kind']!r}: expected 'interleaved' or 'parallel'")
  decode = rollout_cfg.get("decode", "main")
  if decode == "auto":
    decode = "mctp" if layout_cfg["kind"] == "interleaved" and num_mtp_modules > 0 else "main"
  schedule = tuple(rollout_cfg.get("mctp_schedule") or layout_cfg.get("ratios") or ()) if decode == "mctp" else ()
  return SamplingConfig(max_new_tokens=int(rollout_cfg["max_new_tokens"]), group_size=int(rollout_cfg["group_size"]),
                        sampling=base, per_stream=per_stream, constraint=constraint, decode=decode,
                        mctp_schedule=schedule)


class Rollouts(NamedTuple):
  tokens: dict[str, Any]   # {stream: int32[B, N]}
  logp: dict[str, Any]     # {stream: float32[B, N]} untempered, unmasked model log-prob of each token
  types: dict[str, Any]    # {stream: int32[B, N]} TokenType; NONE after the stop
  mask: Any                # bool[B, N] completion positions (up to and including the stop token)
  lengths: Any             # int32[B]
  truncated: Any           # bool[B] reached max_new_tokens without a stop token
  group_ids: Any           # int32[B] prompt index of each row
  forced: dict[str, Any]   # {stream: bool[B, N]} the constraint allowed only this token
  head: Any = None         # int32[B, N] which head made each token: -1 main model, k MCTP module k (mctp only)


def _top_p_threshold(sorted_desc, top_p: float):
  """Smallest logit kept by nucleus sampling, from logits sorted in descending order [B, K]."""
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p       # the top token is always kept
  return jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)


def nucleus_mask(x, top_p: float):
  """bool [B, V]: the nucleus of logits `x` without sorting the vocabulary.

  Token i is kept iff the probability mass of the tokens strictly more likely than i is < top_p (the
  sort-based definition: the top token is always kept, ties share a fate). That set is {p >= t} for the
  smallest float t with mass(p > t) < top_p; t is found exactly by bisection over the bit patterns of
  non-negative float32 numbers (ordered like the numbers), 32 masked sums over [B, V] instead of a sort.
  """
  p = jax.nn.softmax(x.astype(jnp.float32), axis=-1)
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


def categorical(key, logits):
  """One draw per row from softmax(logits) [B, K] (-inf = excluded) by inverting the CDF with one uniform per
  row. Exact like `jax.random.categorical`, which draws K Gumbel variates per row: on a CPU the random bits
  for a whole vocabulary cost as much as the model's decode step."""
  cdf = jnp.cumsum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
  u = jax.random.uniform(key, cdf.shape[:-1] + (1,), jnp.float32) * cdf[..., -1:]
  return jnp.minimum(jnp.sum(cdf <= u, axis=-1), logits.shape[-1] - 1)


def sample_token(logits, allowed, sp: StreamSampling, key):
  """One id per row from logits [B, V] under mask `allowed` (or None); returns (ids, model logp)."""
  model_logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  x = logits.astype(jnp.float32)
  if allowed is not None:
    x = jnp.where(allowed, x, -jnp.inf)
  if sp.temperature == 0:
    ids = jnp.argmax(x, axis=-1)
  elif sp.top_k > 0:
    vals, idx = jax.lax.top_k(x / sp.temperature, min(sp.top_k, x.shape[-1]))
    if sp.top_p < 1:
      vals = jnp.where(vals >= _top_p_threshold(vals, sp.top_p), vals, -jnp.inf)
    pick = categorical(key, vals)
    ids = jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
  else:
    x = x / sp.temperature
    if sp.top_p < 1:
      x = jnp.where(nucleus_mask(x, sp.top_p), x, -jnp.inf)
    ids = categorical(key, x)
  ids = ids.astype(jnp.int32)
  return ids, jnp.take_along_axis(model_logp, ids[:, None], axis=-1)[:, 0]


def _free_types(streams: Sequence[str], batch: int) -> dict[str, Any]:
  """Types without a constraint: the audio stream is speech, everything else text."""
  return {s: jnp.full((batch,), int(TokenType.SPEECH if s == "audio" else TokenType.TEXT), jnp.int32)
          for s in streams}


@functools.partial(jax.jit, static_argnames=("model_cfg", "cfg"))
def _sample(params, model_cfg: ModelConfig, prompts, rng, cfg: SamplingConfig) -> Rollouts:
  streams = model_cfg.streams
  G, N = cfg.group_size, cfg.max_new_tokens
  params, model_cfg = models.for_decoding(params, model_cfg, cfg.unstack_layers)   # once per call, not per token
  rep = lambda a: jnp.repeat(a, G, axis=0)
  valid = rep(prompts["valid"].astype(bool))
  B, Lp = valid.shape
  prompt_len = valid.sum(axis=1).astype(jnp.int32)
  cache = models.init_cache(model_cfg, B, Lp + N)
  logits, cache = models.decode(
      params, model_cfg, {s: rep(prompts["inputs"][s]) for s in streams},
      jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32), cache, valid=valid,
      features=None if "features" not in prompts else rep(prompts["features"]),
      feature_mask=None if "feature_mask" not in prompts else rep(prompts["feature_mask"]))
  def cond(c):
    return (c["i"] < N) & ~jnp.all(c["done"])

  def body(c):
    new, toks = emit(c, c.pop("logits"), cfg, rng, streams)
    new["logits"], new["cache"] = models.decode(
        params, model_cfg, {s: t[:, None] for s, t in toks.items()}, (prompt_len + c["i"])[:, None], c["cache"])
    return new

  out = jax.lax.while_loop(cond, body, dict(init_carry(cfg, streams, B, N), logits=logits, cache=cache))
  return finish(out, cfg, N, G)


def init_carry(cfg: SamplingConfig, streams: Sequence[str], B: int, N: int) -> dict[str, Any]:
  """Loop state of a sampler: step, constraint state, stop flags and the [B, N] output buffers."""
  con = cfg.constraint
  return dict(
      i=jnp.zeros((), jnp.int32), state=con.init(B) if con is not None else (),
      done=jnp.zeros((B,), bool), lengths=jnp.zeros((B,), jnp.int32),
      tokens={s: jnp.full((B, N), cfg.pad, jnp.int32) for s in streams},
      logp={s: jnp.zeros((B, N), jnp.float32) for s in streams},
      types={s: jnp.zeros((B, N), jnp.int32) for s in streams},
      forced={s: jnp.zeros((B, N), bool) for s in streams})


def emit(c: dict[str, Any], logits: dict[str, Any], cfg: SamplingConfig, rng, streams: Sequence[str]):
  """Samples token i of every row from `logits` {stream: [B, V]} under the constraint and records it.

  Returns the new carry (i + 1) and the emitted tokens {stream: [B]} (pad for rows that have stopped).
  Row randomness depends on (rng, i) only, so any decoder that calls this once per token reproduces it."""
  con = cfg.constraint
  masked = con is not None and con.constrained
  B = c["done"].shape[0]
  i, active = c["i"], ~c["done"] & (c["i"] < c["tokens"][streams[0]].shape[1])
  allowed = con.allowed(c["state"]) if masked else {s: None for s in streams}
  forced = {s: (jnp.sum(allowed[s], axis=-1) == 1) if masked else jnp.zeros((B,), bool) for s in streams}
  keys = jax.random.split(jax.random.fold_in(rng, i), len(streams))
  toks, logp = {}, {}
  for s, key in zip(streams, keys):
    toks[s], logp[s] = sample_token(logits[s], allowed[s], cfg.for_stream(s), key)
  if con is not None:
    state, types, stop = con.update(c["state"], toks)
  else:
    state, types, stop = (), _free_types(streams, B), jnp.zeros((B,), bool)
  toks = {s: jnp.where(active, t, cfg.pad) for s, t in toks.items()}
  put = lambda buf, col: {s: buf[s].at[:, i].set(col[s], mode="drop") for s in streams}
  new = dict(
      c, i=i + 1, state=state, done=c["done"] | stop, lengths=c["lengths"] + active,
      tokens=put(c["tokens"], toks),
      logp=put(c["logp"], {s: jnp.where(active, v, 0.0) for s, v in logp.items()}),
      types=put(c["types"], {s: jnp.where(active, v, int(TokenType.NONE)) for s, v in types.items()}),
      forced=put(c["forced"], {s: active & f for s, f in forced.items()}))
  return new, toks


def finish(out: dict[str, Any], cfg: SamplingConfig, N: int, G: int, **extra: Any) -> Rollouts:
  B = out["done"].shape[0]
  return Rollouts(tokens=out["tokens"], logp=out["logp"], types=out["types"],
                  mask=jnp.arange(N)[None, :] < out["lengths"][:, None], lengths=out["lengths"],
                  truncated=~out["done"], group_ids=jnp.arange(B, dtype=jnp.int32) // G, forced=out["forced"],
                  **extra)


def validate_prompts(model_cfg: ModelConfig, prompts: dict[str, Any], sampling_cfg: SamplingConfig) -> None:
  """Host-side checks of a prompt batch for `sample`. The left-padding check reads `valid` only where
  this process holds all of it: callers with arrays spread over several processes check their numpy
  rows first (train.sample_rows)."""
  missing = set(model_cfg.streams) - set(prompts.get("inputs", {}))
  if missing or "valid" not in prompts:
    raise ValueError(f"prompts need 'valid' and inputs for streams {model_cfg.streams}; missing {sorted(missing)}")
  valid = prompts["valid"]
  local = not isinstance(valid, jax.core.Tracer) and (not isinstance(valid, jax.Array) or valid.is_fully_addressable)
  if local and not np.asarray(valid)[:, -1].all():
    raise ValueError("prompts must be left-padded: the last position of every prompt row must be valid")
  con = sampling_cfg.constraint
  expected = {InterleavedConstraint: ("tokens",), ParallelConstraint: ("text", "audio")}.get(type(con))
  if expected is not None and expected != model_cfg.streams:
    raise ValueError(f"{type(con).__name__} does not fit arch {model_cfg.arch!r} (streams {model_cfg.streams})")


def sample(params, model_cfg: ModelConfig, prompts: dict[str, Any], rng, sampling_cfg: SamplingConfig) -> Rollouts:
  """G rollouts per prompt. `prompts`: {"inputs": {stream: int32[P, Lp]}, "valid": bool[P, Lp]} left-padded
  (see `left_pad_prompts`), optional "features" [P, Lp, D] / "feature_mask" [P, Lp] (parallel); numpy, or
  global arrays on the mesh (several hosts). Row r's random numbers do not depend on the sharding.
  `sampling_cfg.decode == "mctp"` decodes with VITA-Audio's MCTP modules (rollout/mctp.py)."""
  if sampling_cfg.decode == "mctp":
    from wavalign_jax.rollout import mctp   # mctp builds on this module's emit step
    return mctp.sample_mctp(params, model_cfg, prompts, rng, sampling_cfg, sampling_cfg.mctp_schedule)
  validate_prompts(model_cfg, prompts, sampling_cfg)
  return _sample(params, model_cfg, prompts, rng, sampling_cfg)


def left_pad_prompts(examples: Sequence[layouts.Example], pad_id: int, length: int | None = None) -> dict:
  """numpy prompt batch for `sample` from laid-out prompts (`Example.prompt()`), left-padded to `length`."""
  if not examples:
    raise ValueError("left_pad_prompts needs at least one prompt")
  length = max(len(e) for e in examples) if length is None else length
  streams = examples[0].streams
  inputs = {s: np.full((len(examples), length), pad_id, np.int32) for s in streams}
  valid = np.zeros((len(examples), length), bool)
  for b, e in enumerate(examples):
    if len(e) > length or len(e) == 0 or e.streams != streams:
      raise ValueError(f"prompt {b}: length {len(e)} (must be 1..{length}), streams {e.streams} (want {streams})")
    for s in streams:
      inputs[s][b, length - len(e):] = e.tokens[s]
    valid[b, length - len(e):] = True
  return {"inputs": inputs, "valid": valid}


def left_pad(prompt_batch: dict, lengths: np.ndarray) -> dict:
  """Right-padded prompt rows (the loader's layout) -> the left-padded layout the sampler needs."""
  inputs = prompt_batch["inputs"]
  L = next(iter(inputs.values())).shape[1]
  shift = L - np.asarray(lengths)
  idx = (np.arange(L)[None, :] - shift[:, None]) % L
  return {"inputs": {s: np.take_along_axis(np.asarray(v), idx, axis=1) for s, v in inputs.items()},
          "valid": np.arange(L)[None, :] >= shift[:, None]}


@functools.partial(jax.jit, static_argnames=("pad_id",))
def rl_batch(prompts: dict[str, Any], rollouts: Rollouts, pad_id: int) -> dict[str, Any]:
  """The RL sequence batch (WORKSPACE.md contract) of prompt + completion, [B, Lp + N], as sampled: the
  prompt left-padded to Lp, every row's completion from position Lp on (right-padded after its stop token).

  The completions' targets therefore all lie in positions Lp - 1 .. Lp + N - 2, so the training forward runs
  the output head on those only (`models.target_logprobs(..., start=Lp - 1)`). Targets carry the completion's
  types and `sampler_logp` (the sampler's log-probs); prompt targets, forced positions and everything after
  the stop token are TokenType.NONE. Advantages are added by the caller.
  """
  B, N = rollouts.mask.shape
  G = B // prompts["valid"].shape[0]
  rep = lambda a: jnp.repeat(jnp.asarray(a), G, axis=0)
  pvalid = rep(prompts["valid"]).astype(bool)
  valid = jnp.concatenate([pvalid, rollouts.mask], axis=1)
  nxt = lambda a, fill: jnp.concatenate([a[:, 1:], jnp.full_like(a[:, :1], fill)], axis=1)
  inputs, targets, types, sampler_logp = {}, {}, {}, {}
  for s, toks in rollouts.tokens.items():
    inputs[s] = jnp.where(valid, jnp.concatenate([rep(prompts["inputs"][s]), toks], axis=1), pad_id)
    targets[s] = jnp.where(valid, nxt(inputs[s], pad_id), pad_id)
    chosen = jnp.where(rollouts.forced[s], int(TokenType.NONE), rollouts.types[s])
    types[s] = nxt(jnp.concatenate([jnp.zeros_like(pvalid, jnp.int32), chosen], axis=1), 0)
    sampler_logp[s] = nxt(jnp.concatenate([jnp.zeros(pvalid.shape, jnp.float32), rollouts.logp[s]], axis=1), 0.0)
  batch = dict(inputs=inputs, targets=targets, types=types, sampler_logp=sampler_logp,
               positions=jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32),
               segment_ids=valid.astype(jnp.int32), group_ids=rollouts.group_ids)
  if "features" in prompts:
    f = rep(prompts["features"])
    batch["features"] = jnp.concatenate([f, jnp.zeros((B, N) + f.shape[2:], f.dtype)], axis=1)
    batch["feature_mask"] = jnp.concatenate([rep(prompts["feature_mask"]).astype(bool), jnp.zeros((B, N), bool)],
                                            axis=1) & valid
  return batch


def response_contents(rollouts: Rollouts, constraint: Constraint) -> list[tuple[list[int], list[int]]]:
  """(text ids, 0-based audio codes) of every row's completion, for rewards and metrics."""
  mask = np.asarray(rollouts.mask)
  toks = {s: np.asarray(t) for s, t in rollouts.tokens.items()}
  if isinstance(constraint, InterleavedConstraint):
    return [layouts.interleaved_split(toks["tokens"][b][mask[b]], constraint.vocab) for b in range(len(mask))]
  if isinstance(constraint, ParallelConstraint):
    return [layouts.parallel_split(toks["text"][b][mask[b]], toks["audio"][b][mask[b]], constraint.vocab)
            for b in range(len(mask))]
  raise ValueError(f"response_contents needs an interleaved or parallel constraint, got {constraint!r}")


def well_formed(rollouts: Rollouts, constraint: Constraint) -> np.ndarray:
  """bool [B]: the completion ends with its stop token and follows the architecture's layout exactly
  (interleaved: the ratio schedule's chunks; parallel: text ends with text_eos). Always true under the
  constrained default (up to truncation); counted as a metric with `rollout.constrained=False`."""
  mask = np.asarray(rollouts.mask)
  toks = {s: np.asarray(t) for s, t in rollouts.tokens.items()}
  done = ~np.asarray(rollouts.truncated)
  out = np.zeros(len(mask), bool)
  for b, (text, codes) in enumerate(response_contents(rollouts, constraint)):
    if not done[b]:
      continue
    if isinstance(constraint, InterleavedConstraint):
      try:
        want = layouts.interleaved_response(text, codes, constraint.vocab, constraint.ratios).tokens["tokens"]
      except ValueError:
        continue
      got = toks["tokens"][b][mask[b]]
      out[b] = len(got) <= len(want) and np.array_equal(got, want[:len(got)]) and got[-1] == constraint.vocab.eos
    else:
      out[b] = bool(np.any(toks["text"][b][mask[b]] == constraint.vocab.text_eos))
  return out
