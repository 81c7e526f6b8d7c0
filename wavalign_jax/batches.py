"""The batches the losses and steps read, as typed pytrees (WORKSPACE.md "Contracts between modules").

Batches were dicts with up to seven optional keys, so a misspelt or missing field only surfaced deep inside a
jitted step. Each kind is declared once here as a `flax.struct` dataclass: a pytree (jax.tree, jit and the batch
sharding see its arrays; an absent optional part is None, which is no leaf), with every field named and typed.
They are built where batches are made: `data.layouts` and `data.loader` (the loader's batches of each record kind),
`rollout.batch.rl_batch` and the train loop; the losses take them as Tunix's take a `TrainExample`. Arrays are host
numpy or jax arrays.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from flax import struct

Array = Any                   # jax.Array, or host numpy before `sharding.device_put_batch`
Streams = dict[str, Array]    # {stream: [B, L]} (`ModelConfig.streams`)


@struct.dataclass
class SeqBatch:
  """What a model forward reads, [B, L] rows (packed rows hold several segments): `models.target_logprobs`."""
  inputs: Streams               # int32 ids fed to the model
  targets: Streams              # int32 next-token targets (within a segment)
  types: Streams                # int32 TokenType of each target (0 = no loss)
  positions: Array              # int32 [B, L] RoPE positions (restart at 0 in each segment)
  segment_ids: Array            # int32 [B, L]; 0 = padding
  features: Array | None = None       # float [B, L, D_in] continuous features (parallel models)
  feature_mask: Array | None = None   # bool [B, L] positions that carry a feature


@struct.dataclass
class TargetLogprobs:
  """What a forward gives the objectives (`models.target_logprobs`, any `logprob_fn`): log p of each target and
  the entropy of the distribution it was drawn from, float32 {stream: [B, L]} (0 before the forward's `start`)."""
  logp: Streams
  entropy: Streams


# (params, SeqBatch, start: int = 0) -> TargetLogprobs: the model's `target_logprobs` with its config bound, the
# only way the objectives see a model (`models.logprob_fn`)
LogprobFn = Callable[..., TargetLogprobs]


@struct.dataclass
class RLBatch(SeqBatch):
  """Prompt + completion rows of a rollout batch (`rollout.batch.rl_batch`) and what the loop and the step add."""
  sampler_logp: Streams | None = None   # the sampler's log-probs of the targets (metrics only)
  ref_logp: Streams | None = None       # frozen reference's log-probs (KL, β > 0)
  old_logp: Streams | None = None       # π_old of a later PPO iteration (absent: on-policy)
  advantages: Array | None = None       # f32 [B], added by the step
  seq_weight: Array | None = None       # f32 [B], 0 drops a row (added by the step)
  fallback: Array | None = None         # bool [B], the row trains on its whole completion (`grpo.group_fallback`)


@struct.dataclass
class SamplerPrompts:
  """Prompts as the sampler reads them (`rollout.sample`): left-padded to one length Lp, so every row's last prompt
  token sits at Lp - 1 and all completions start at Lp. Made by `PromptBatch.left_padded` (the loader's prompts)
  or `rollout.left_pad_prompts` (laid-out examples)."""
  inputs: Streams                     # int32 [P, Lp]
  valid: Array                        # bool [P, Lp]: prompt tokens (False: the left padding)
  features: Array | None = None       # float [P, Lp, D_in] continuous features (parallel models)
  feature_mask: Array | None = None   # bool [P, Lp]


@struct.dataclass
class DPOBatch:
  """Preference pairs: row b of `chosen` against row b of `rejected` (same shapes), with the frozen reference's
  per-position log-probs of each."""
  chosen: SeqBatch
  rejected: SeqBatch
  chosen_ref_logp: Streams
  rejected_ref_logp: Streams


@struct.dataclass
class HybridBatch:
  """One hybrid step: reference responses (SFT) [P] and rollouts (RL) [P*G] with their rewards [P, G]. A part
  whose weight is structurally 0 (SFT-only or RL-only methods, the SFT stage) is None."""
  sft: SeqBatch | None = None
  rl: RLBatch | None = None
  rewards: Array | None = None          # f32 [P, G]; rows p*G .. p*G+G-1 of `rl` are prompt p's group
  reward_valid: Array | None = None     # bool [P, G]: rewards that count


# ----------------------------------------------------------------------------- what the loader yields
# (sft records: a SeqBatch; rl and dpo records: these, host numpy, one host's rows)

Meta = list[dict[str, Any]]   # per row: the record's id, source file and line, and what rewards read (answer, ...)


@struct.dataclass
class PromptBatch:
  """RL records: the prompts (right-padded, `prompt_lengths` tokens each) for the sampler, the reference responses
  (prompt + response rows: the SFT anchor's batch) and each record's metadata (what the reward is given)."""
  prompt: SeqBatch
  prompt_lengths: Array         # int32 [B]
  reference: SeqBatch
  meta: Meta

  def left_padded(self) -> SamplerPrompts:
    """The prompts moved to the right end of their rows (host numpy), as the sampler reads them."""
    L = self.prompt.segment_ids.shape[1]
    shift = L - np.asarray(self.prompt_lengths)
    idx = (np.arange(L)[None, :] - shift[:, None]) % L
    roll = lambda x: None if x is None else np.take_along_axis(
        np.asarray(x), idx.reshape(idx.shape + (1,) * (np.ndim(x) - 2)), axis=1)
    valid = np.arange(L)[None, :] >= shift[:, None]
    return SamplerPrompts(inputs={s: roll(v) for s, v in self.prompt.inputs.items()}, valid=valid,
                          features=roll(self.prompt.features),
                          feature_mask=None if self.prompt.feature_mask is None
                          else roll(self.prompt.feature_mask) & valid)


@struct.dataclass
class PairBatch:
  """DPO records: chosen and rejected prompt + response rows (one padded length) and each record's metadata."""
  chosen: SeqBatch
  rejected: SeqBatch
  meta: Meta
