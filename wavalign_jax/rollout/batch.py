"""The RL batch of a rollout: prompt + completion rows for the train step, their rewards and rollout metrics.

`rollout_batch` is one step's rollouts end to end (sample on the mesh, score, build the trimmed batch); training
and analyze.py share it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from wavalign_jax.analysis import judge_agreement, rollout_diversity
from wavalign_jax.batches import PromptBatch, RLBatch, SamplerPrompts
from wavalign_jax.data import layouts
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rewards.base import RewardFn, RewardResult, rollout_items
from wavalign_jax.rewards.base import FailureMonitor
from wavalign_jax.rollout import hosts
from wavalign_jax.rollout.constraints import Constraint, InterleavedConstraint, ParallelConstraint
from wavalign_jax.rollout.decode import Rollouts, SamplingConfig
from wavalign_jax.tokens import TokenType


@dataclasses.dataclass
class RolloutBatch:
  """One step's rollouts, scored, on this host's rows (host numpy)."""
  rl: RLBatch                    # the RL sequence batch [P*G, L] (`rl_batch`, trimmed), one length on every host
  rl_start: int                  # first completion target position (prompt length - 1): the step's `rl_start`
  rewards: np.ndarray            # f32[P, G]
  reward_valid: np.ndarray       # bool[P, G]: rewards that count (failed judge calls excluded if asked)
  contents: list[tuple[list[int], list[int]]]   # (text ids, audio codes) of every row
  scored: RewardResult
  metrics: dict[str, float]


def rollout_batch(params: Any, model_cfg: ModelConfig, sampling: SamplingConfig, raw: PromptBatch, rng: jax.Array,
                  reward_fn: RewardFn, decode_text: Callable[[Any], str], *, mesh: Mesh | None = None,
                  monitor: FailureMonitor | None = None, step: int = 0, exclude_failed: bool = False,
                  length_buckets: int = 8) -> RolloutBatch:
  """Samples G responses per prompt of this host's loader batch `raw` and scores them with `reward_fn`.

  `monitor` counts the judge's failures (and stops a run whose judge fails too often); `exclude_failed` leaves
  failed items out of the advantages and the gate. The metrics are the rollouts' lengths, truncation, forced and
  malformed shares, diversity and, on the testbed, the judge against its true scores."""
  prompts = hosts.same_prompt_length(raw.left_padded())
  rollouts = hosts.sample_rows(params, model_cfg, prompts, rng, sampling, mesh)
  contents = response_contents(rollouts, sampling.constraint)
  result = reward_fn(rollout_items(raw.meta, contents, decode_text))
  metrics = monitor.update(result, step) if monitor is not None else {}
  P, G = len(raw.meta), sampling.group_size
  rewards = result.scores.reshape(P, G)
  valid = (~result.failed if exclude_failed else np.ones_like(result.failed)).reshape(P, G)
  metrics.update(rollout_metrics(rollouts, sampling.constraint, rewards, contents, result, valid))
  batch = jax.device_get(rl_batch(prompts, rollouts, sampling.pad))
  prompt_len = prompts.valid.shape[1]
  batch = trim_rl_batch(batch, prompt_len, sampling.max_new_tokens, length_buckets)
  return RolloutBatch(hosts.same_length(batch, sampling.pad), prompt_len - 1, rewards, valid, contents, result,
                      metrics)


def rollout_metrics(rollouts: Rollouts, constraint: Constraint, rewards: np.ndarray,
                    contents: list[tuple[list[int], list[int]]], result: RewardResult,
                    valid: np.ndarray | None = None) -> dict[str, float]:
  """Diversity (`valid`: the rewards that count, as in the advantages), the testbed judge's agreement with the
  true scores, and the rollouts' shape (length, truncated, forced and malformed shares)."""
  P, G = rewards.shape
  mask = np.asarray(rollouts.mask)
  forced = sum(np.asarray(f)[mask].sum() for f in rollouts.forced.values()) / max(mask.sum() * len(rollouts.forced), 1)
  metrics = rollout_diversity.summary(rollout_diversity.content_stats(rewards, contents, valid=valid))
  metrics.update(judge_agreement.true_score_summary(result.scores, result.info))
  if judge_agreement.has_true_scores(result.info):   # the testbed judge: exact answers score semantic 5
    semantic = np.array([i["semantic"] for i in result.info]).reshape(P, G)
    metrics.update(rollout_diversity.pass_stats(semantic == 5))
    metrics["diversity/informative_semantic"] = float(rollout_diversity.informative(semantic).mean())
  metrics.update(rollout_length=float(np.asarray(rollouts.lengths).mean()),
                 rollout_truncated=float(np.mean(rollouts.truncated)), rollout_forced_fraction=float(forced),
                 rollout_malformed=1.0 - float(np.mean(well_formed(rollouts, constraint))))
  return metrics


def trim_rl_batch(batch: RLBatch, prompt_len: int, max_new_tokens: int, num_buckets: int) -> RLBatch:
  """Cuts the RL batch [B, Lp + N] (`rl_batch`) after the longest completion, rounded up to one of
  `num_buckets` lengths Lp + k·N/num_buckets (a few compiled shapes instead of always paying for Lp + N)."""
  longest = int(np.max(np.sum(np.asarray(batch.segment_ids)[:, prompt_len:] > 0, axis=1)))
  step = -(-max_new_tokens // num_buckets)
  length = prompt_len + min(max_new_tokens, step * -(-max(longest, 1) // step))
  return jax.tree.map(lambda x: x[:, :length] if np.ndim(x) >= 2 else x, batch)


@functools.partial(jax.jit, static_argnames=("pad_id",))
def rl_batch(prompts: SamplerPrompts, rollouts: Rollouts, pad_id: int) -> RLBatch:
  """The RL sequence batch (WORKSPACE.md contract) of prompt + completion, [B, Lp + N], as sampled: the
  prompt left-padded to Lp, every row's completion from position Lp on (right-padded after its stop token).

  The completions' targets therefore all lie in positions Lp - 1 .. Lp + N - 2, so the training forward runs
  the output head on those only (`models.target_logprobs(..., start=Lp - 1)`). Targets carry the completion's
  types and `sampler_logp` (the sampler's log-probs); prompt targets, forced positions and everything after
  the stop token are TokenType.NONE. The step adds what the rewards decide (`grpo.with_group_fields`).
  """
  B, N = rollouts.mask.shape
  G = B // prompts.valid.shape[0]
  rep = lambda a: jnp.repeat(jnp.asarray(a), G, axis=0)
  pvalid = rep(prompts.valid).astype(bool)
  valid = jnp.concatenate([pvalid, rollouts.mask], axis=1)
  nxt = lambda a, fill: jnp.concatenate([a[:, 1:], jnp.full_like(a[:, :1], fill)], axis=1)
  inputs, targets, types, sampler_logp = {}, {}, {}, {}
  for s, toks in rollouts.tokens.items():
    inputs[s] = jnp.where(valid, jnp.concatenate([rep(prompts.inputs[s]), toks], axis=1), pad_id)
    targets[s] = jnp.where(valid, nxt(inputs[s], pad_id), pad_id)
    chosen = jnp.where(rollouts.forced[s], int(TokenType.NONE), rollouts.types[s])
    types[s] = nxt(jnp.concatenate([jnp.zeros_like(pvalid, jnp.int32), chosen], axis=1), 0)
    sampler_logp[s] = nxt(jnp.concatenate([jnp.zeros(pvalid.shape, jnp.float32), rollouts.logp[s]], axis=1), 0.0)
  features = feature_mask = None
  if prompts.features is not None:
    f = rep(prompts.features)
    features = jnp.concatenate([f, jnp.zeros((B, N) + f.shape[2:], f.dtype)], axis=1)
    feature_mask = jnp.concatenate([rep(prompts.feature_mask).astype(bool), jnp.zeros((B, N), bool)],
                                   axis=1) & valid
  return RLBatch(inputs=inputs, targets=targets, types=types,
                 positions=jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32),
                 segment_ids=valid.astype(jnp.int32), features=features, feature_mask=feature_mask,
                 sampler_logp=sampler_logp)


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
  """bool [B]: the completion ends with its stop token and follows the architecture's layout exactly.
  Interleaved: the ratio schedule's chunks (always true under the constrained default, up to truncation).
  Parallel: text ids up to a text_eos, then blanks; audio blanks for the delay, then codes up to the stop. The
  constraint enforces all but one of those rules: the audio may stop before the text said text_eos (a cut-off
  answer, as in upstream decoding), which this reports."""
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
      v, delay = constraint.vocab, constraint.delay
      text, audio = toks["text"][b][mask[b]], toks["audio"][b][mask[b]]
      eos = np.flatnonzero(text == v.text_eos)
      out[b] = (len(eos) > 0 and v.is_text(text[:eos[0]]).all() and (text[eos[0] + 1:] == v.text_blank).all()
                and (audio[:delay] == v.text_blank).all() and v.is_audio(audio[delay:-1]).all())
  return out
