"""VITA-Audio MCTP-accelerated decoding (upstream `mtp_inference_mode`), inside one jitted program.

The schedule [M1, m1, M2, m2, ...] expands into one character per generated token: M_k times 'M' (the
main model) then m_k times 'm' (MCTP modules), the last pair repeating (docs/method.md §2). The k-th
consecutive 'm' uses module k; an 'm' past the last module runs the main model and restarts the count.
MCTP tokens are never verified: the main model catches up on every token made since its last step in
one multi-token forward at its next 'M'. Module k keeps its own KV cache over "anchor" slots t (it reads
the previous stage's hidden state at t and embeds the token at t + k + 1); on its first call it processes
the whole history. As in the main-head sampler, the P prompts are prefilled once and the G rows of a group read
one copy of their prompt's keys and values (`models.share_prefix`); each row's main cache holds its completion.
Likewise each module's prompt anchors (those whose token t + k + 1 is a prompt token) run once per prompt in
the prefill and are read by the group as a shared prefix of the module's cache (`models.share_mtp_prefix`), so
a module's first call covers only the anchors after them (`share_prompt_anchors`).

Who runs at step j, and on how many new rows, is fixed by the schedule and the prompt length, so every
shape is static: the steps before the schedule becomes periodic are unrolled, the periodic part is one
`lax.while_loop` over rounds whose body is the unrolled round. Tokens are sampled with the same
constraint, RNG stream and bookkeeping as the main-only sampler (`decode.emit`), and each token records
the head that produced it (`Rollouts.head`). The policy that training scores is the main head: tokens made
by MCTP modules are off-policy for it (see `rollout.decode` in the README).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from wavalign_jax import models
from wavalign_jax.batches import SamplerPrompts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rollout import decode
from wavalign_jax.rollout.decode import (Rollouts, SamplingConfig, check_mctp_schedule, emit, finish,
                                        validate_prompts)

MAIN = -1


@dataclasses.dataclass(frozen=True)
class Step:
  head: int   # MAIN or the MCTP module index
  rows: int   # new rows this head runs on (prefill / catch-up for MAIN, anchors for a module)


def expand(schedule: Sequence[int], n: int) -> str:
  """'M'/'m' per generated token: pairs in order, the last pair repeating, cut to n characters."""
  check_mctp_schedule(schedule)
  s = tuple(int(x) for x in schedule)
  out, pair = "", 0
  while len(out) < n:
    a, b = s[2 * pair], s[2 * pair + 1]
    out += "M" * a + "m" * b
    pair = min(pair + 1, len(s) // 2 - 1)
  return out[:n]


def plan(schedule: Sequence[int], num_modules: int, prompt_len: int, n: int) -> list[Step]:
  """The head and new-row count of each of the n steps (step 0 is the prefill)."""
  steps, main_done, done_anchors, k = [], 0, [0] * num_modules, 0
  for j, ch in enumerate(expand(schedule, n)):
    L = prompt_len + j                       # tokens in the sequence when step j runs
    if ch == "m" and k < num_modules:
      steps.append(Step(k, L - k - 1 - done_anchors[k]))
      done_anchors[k] = L - k - 1
      k += 1
    else:
      steps.append(Step(MAIN, L - main_done))
      main_done, k = L, 0
  return steps


def share_prompt_anchors(steps: list[Step], prompt_len: int) -> list[Step]:
  """`steps` with each module's first call cut to the anchors after the prompt's: module k's anchors t whose token
  t + k + 1 is a prompt token are the same for a group's G rows, so the prefill runs them once per prompt."""
  out, seen = [], set()
  for step in steps:
    if step.head != MAIN and step.head not in seen:
      seen.add(step.head)
      step = Step(step.head, step.rows - max(prompt_len - step.head - 1, 0))
    out.append(step)
  return out


def periodic_split(steps: list[Step], period: int) -> int:
  """Smallest p such that steps[p:] repeats with `period` (len(steps) if it never does)."""
  p = len(steps)
  while p > 0 and (p - 1 + period >= len(steps) or steps[p - 1] == steps[p - 1 + period]):
    p -= 1
  return p


@functools.partial(jax.jit, static_argnames=("model_cfg", "cfg"))
def _sample_mctp(params: Any, model_cfg: ModelConfig, prompts: SamplerPrompts, rng: jax.Array,
                 cfg: SamplingConfig) -> Rollouts:
  G, N, schedule = cfg.group_size, cfg.max_new_tokens, tuple(int(x) for x in cfg.mctp_schedule)
  params, model_cfg = models.for_decoding(params, model_cfg, cfg.unstack_layers)   # once per call, not per token
  rep = lambda a: jnp.repeat(a, G, axis=0)
  prompt_valid = prompts.valid.astype(bool)
  valid = rep(prompt_valid)
  B, Lp = valid.shape
  period = sum(schedule[-2:])
  full_plan = share_prompt_anchors(plan(schedule, model_cfg.num_mtp_modules, Lp, N + 2 * period), Lp)
  p = max(1, min(periodic_split(full_plan, period), N))   # step 0, the prefill, is always unrolled
  S = Lp + N + period                        # slots: the loop's last round may run past N (outputs dropped)
  pad_left = Lp - valid.sum(axis=1).astype(jnp.int32)
  slot_valid = jnp.concatenate([valid, jnp.ones((B, S - Lp), bool)], axis=1)
  seq = jnp.concatenate([rep(prompts.inputs["tokens"]), jnp.full((B, S - Lp), cfg.pad, jnp.int32)], axis=1)
  d = model_cfg.hidden_size
  carry = dict(out=decode.start(cfg, ("tokens",), B), seq=seq,
               hidden=[jnp.zeros((B, S, d), model_cfg.dtype) for _ in range(max(model_cfg.num_mtp_modules, 1))],
               head=jnp.full((B, N), MAIN, jnp.int32))
  slice_ = lambda x, start, size: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
  put_rows = lambda buf, start, rows: jax.lax.dynamic_update_slice_in_dim(buf, rows.astype(buf.dtype), start, axis=1)

  def prompt_anchors(c, h):
    """Each module's prompt anchors (`share_prompt_anchors`) on the P prompts, in module order (module k reads
    module k - 1's output), kept as prefixes of their caches shared by each group; h: the prompts' main hidden."""
    caches = []
    for k in range(model_cfg.num_mtp_modules):
      A = Lp - k - 1
      if A < 1:   # a prompt shorter than the module's offset: nothing to share
        caches.append(models.init_mtp_cache(model_cfg, B, S))
        continue
      h, cache = models.mtp_decode(params, model_cfg, k, prompts.inputs["tokens"][:, k + 1:k + 1 + A], h[:, :A],
                                   k + 1 + jnp.arange(A)[None] - pad_left[::G, None],
                                   models.init_mtp_cache(model_cfg, B // G, A), prompt_valid[:, :A], 0)
      caches.append(models.share_mtp_prefix(cache, prompt_valid[:, :A], G, S))
      if k + 1 < model_cfg.num_mtp_modules:   # its last prompt anchor is module k + 1's first own one
        c["hidden"][k + 1] = put_rows(c["hidden"][k + 1], 0, rep(h))
    c["mtp_cache"] = caches

  def run(c, step: Step, prefill: bool = False):
    """Step c["out"].i = j with the static `step`: the head's logits for token j, then sample and record it. The
    prefill (step 0) runs the main model and the modules' prompt anchors on the P prompts and makes their caches
    prefixes shared by each group."""
    j = c["out"].i
    L, T = Lp + j, step.rows
    if prefill:
      start = 0
      hidden, cache = models.decode_hidden(
          params, model_cfg, prompts.inputs, jnp.arange(Lp)[None] - pad_left[::G, None],
          models.init_cache(model_cfg, B // G, Lp), valid=prompt_valid)
      c["cache"] = models.share_prefix(cache, G, S - Lp)   # the completion block: slots Lp .. S - 1
      prompt_anchors(c, hidden["tokens"])
      h = rep(hidden["tokens"])
    elif step.head == MAIN:
      start = L - T
      hidden, c["cache"] = models.decode_hidden(
          params, model_cfg, {"tokens": slice_(c["seq"], start, T)}, start + jnp.arange(T)[None] - pad_left[:, None],
          c["cache"], valid=slice_(slot_valid, start, T))
      h = hidden["tokens"]
    if step.head == MAIN:
      if model_cfg.num_mtp_modules:
        c["hidden"][0] = put_rows(c["hidden"][0], start, h)
    else:
      k, start = step.head, L - step.head - 1 - T          # anchors [start, start + T)
      h, c["mtp_cache"][k] = models.mtp_decode(
          params, model_cfg, k, slice_(c["seq"], start + k + 1, T), slice_(c["hidden"][k], start, T),
          start + k + 1 + jnp.arange(T)[None] - pad_left[:, None], c["mtp_cache"][k], slot_valid, start)
      if k + 1 < model_cfg.num_mtp_modules:
        c["hidden"][k + 1] = put_rows(c["hidden"][k + 1], start, h)
    logits = {"tokens": models.head_logits(params, model_cfg, "tokens", h[:, -1])}
    c["head"] = c["head"].at[:, j].set(step.head, mode="drop")
    c["out"], toks = emit(c["out"], logits, cfg, rng, ("tokens",))
    c["seq"] = put_rows(c["seq"], L, toks["tokens"][:, None])
    return c

  carry = run(dict(carry), full_plan[0], prefill=True)
  for step in full_plan[1:p]:               # unrolled prefix: the schedule's first rounds
    carry = run(carry, step)
  body_steps = full_plan[p:p + period]

  def body(c):
    c = dict(c, hidden=list(c["hidden"]), mtp_cache=list(c["mtp_cache"]))
    for step in body_steps:
      c = run(c, step)
    return c

  if p < N:
    carry = jax.lax.while_loop(lambda c: c["out"].running(N), body, carry)
  return finish(carry["out"], head=carry["head"])


def sample_mctp(params: Any, model_cfg: ModelConfig, prompts: SamplerPrompts, rng: jax.Array,
                sampling_cfg: SamplingConfig) -> Rollouts:
  """G rollouts per prompt with MCTP decoding on `sampling_cfg.mctp_schedule` (`sampler.sample`'s contract, plus
  `Rollouts.head`)."""
  if model_cfg.arch != "interleaved" or model_cfg.num_mtp_modules < 1:
    raise ValueError(f"MCTP decoding needs an interleaved model with MCTP modules (arch {model_cfg.arch!r}, "
                     f"{model_cfg.num_mtp_modules} modules); use rollout.decode='main'")
  check_mctp_schedule(sampling_cfg.mctp_schedule)
  validate_prompts(model_cfg, prompts, sampling_cfg)
  return _sample_mctp(params, model_cfg, prompts, rng, sampling_cfg)
