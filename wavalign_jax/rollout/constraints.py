"""Schedule-constrained decoding as per-row jnp state machines.

A constraint is a frozen (hashable) dataclass, so it can ride inside a static sampling config.
It exposes three pure functions over a small pytree of int32/bool [B] arrays:
  init(batch_size) -> state
  allowed(state) -> {stream: bool[B, V]}        ids the sampler may emit at the next step
  update(state, tokens) -> (state, types, stop)  types: {stream: int32[B]} TokenType of the emitted
                                                   tokens; stop: bool[B], the row's response is complete
`allowed` always leaves at least one id per row, so masked sampling is well defined; rows that
have stopped are handled by the sampler (it writes pad and TokenType.NONE), not here. A position where
`allowed` leaves exactly one id is *forced*: the policy did not choose it, so it gets no RL gradient.

`constrained=False` is upstream-faithful free decoding: the sampler applies no mask (nothing is forced),
while `update` still types the tokens by id class and stops at the stop tokens; a rollout that breaks
the layout is scored as far as it parses and counted (`batch.well_formed`).

Interleaved (VITA-Audio). Ratio list [T1, A1, T2, A2, ...], the last pair repeats. A chunk is
  text (<= T_k ids), <|begin_of_audio|>, codes, <|end_of_audio|>.
  * text phase: text ids or BOA; BOA is forced after T_k text ids; BOA before that means the text
    is finished, so this chunk is the final one. At the start of a chunk after the first,
    <|im_end|> may also end the response.
  * audio phase: codes only until A_k - 2 codes, then EOA or more codes; a further code makes the
    chunk final (the final chunk takes all leftover audio and runs until EOA). A chunk already
    known to be final (early BOA) may also end its audio earlier, after at least one code, because
    the data layout's final chunk holds whatever audio is left (a chunk is final when the remaining
    text fits in T_k or the remaining audio in A_k - 2).
  * after EOA: a final chunk forces <|im_end|> (stop); otherwise the next chunk's text phase.
  Types: codes SPEECH, BOA / EOA BOUNDARY, everything else (text ids, <|im_end|>) TEXT.
Parallel (Kimi-Audio). Both streams every step: audio is forced to blank for the first `delay`
  steps, then codes or msg_end / media_end (stop, included in the response); text is text ids or
  text_eos, then forced blank. Types: every text-stream position TEXT, every audio-stream one SPEECH.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from wavalign_jax.tokens import InterleavedVocab, ParallelVocab, TokenType, text_id_mask

# interleaved phases
TEXT_PHASE, AUDIO_PHASE, END_PHASE = 0, 1, 2


def _ids(vocab_size: int):
  return jnp.arange(vocab_size, dtype=jnp.int32)[None, :]


def _text_ids(vocab) -> jnp.ndarray:
  """bool[1, V]: ordinary text ids (the tokenizer's own classes, tokens.text_id_mask)."""
  return jnp.asarray(text_id_mask(vocab))[None, :]


class InterleavedState(NamedTuple):
  phase: Any   # int32[B]: TEXT_PHASE | AUDIO_PHASE | END_PHASE
  chunk: Any   # int32[B]: index of the current chunk
  count: Any   # int32[B]: text ids (text phase) or codes (audio phase) emitted in this phase
  final: Any   # bool[B]: the current chunk is the last one


@dataclasses.dataclass(frozen=True)
class InterleavedConstraint:
  vocab: InterleavedVocab
  ratios: tuple[int, ...]
  constrained: bool = True

  def __post_init__(self):
    r = tuple(int(x) for x in self.ratios)
    if not r or len(r) % 2:
      raise ValueError(f"interleave ratios {self.ratios!r}: need a non-empty even-length list [T1, A1, ...]")
    if any(t < 0 for t in r[0::2]) or any(a < 3 for a in r[1::2]):
      raise ValueError(f"interleave ratios {self.ratios!r}: need T >= 0 and A >= 3 "
                       "(A counts BOA and EOA, so A - 2 >= 1 codes)")
    object.__setattr__(self, "ratios", r)

  def _budgets(self, chunk):
    """(T_k, A_k - 2) of each row's chunk; the last pair repeats."""
    last = len(self.ratios) // 2 - 1
    k = jnp.minimum(chunk, last)
    return (jnp.asarray(self.ratios[0::2], jnp.int32)[k],
            jnp.asarray(self.ratios[1::2], jnp.int32)[k] - 2)

  def init(self, batch_size: int) -> InterleavedState:
    z = jnp.zeros((batch_size,), jnp.int32)
    return InterleavedState(z, z, z, jnp.zeros((batch_size,), bool))

  def allowed(self, state: InterleavedState) -> dict[str, Any]:
    v = self.vocab
    ids = _ids(v.vocab_size)
    t_max, codes = self._budgets(state.chunk)
    phase, n = state.phase[:, None], state.count[:, None]
    is_text = _text_ids(v)
    is_code = v.is_audio(ids)
    text_ok = (is_text & (n < t_max[:, None])) | (ids == v.begin_of_audio) | (
        (ids == v.eos) & (n == 0) & (state.chunk[:, None] > 0))
    eoa_ok = (n >= codes[:, None]) | (state.final[:, None] & (n >= 1))
    audio_ok = is_code | ((ids == v.end_of_audio) & eoa_ok)
    end_ok = ids == v.eos
    mask = jnp.where(phase == TEXT_PHASE, text_ok, jnp.where(phase == AUDIO_PHASE, audio_ok, end_ok))
    return {"tokens": mask}

  def update(self, state: InterleavedState, tokens: dict[str, Any]):
    v = self.vocab
    x = tokens["tokens"]
    t_max, codes = self._budgets(state.chunk)
    in_text, in_audio = state.phase == TEXT_PHASE, state.phase == AUDIO_PHASE
    boa, eoa, eos = x == v.begin_of_audio, x == v.end_of_audio, x == v.eos
    # text phase
    final = jnp.where(in_text & boa, state.count < t_max, state.final)
    # audio phase: a code beyond A - 2 makes the chunk final
    final = jnp.where(in_audio & ~eoa & (state.count >= codes), True, final)
    next_chunk = in_audio & eoa & ~final
    phase = jnp.where(in_text & boa, AUDIO_PHASE, state.phase)
    phase = jnp.where(in_audio & eoa, jnp.where(final, END_PHASE, TEXT_PHASE), phase)
    count = jnp.where((in_text & boa) | (in_audio & eoa), 0, state.count + 1)
    chunk = state.chunk + next_chunk.astype(jnp.int32)
    final = jnp.where(next_chunk, False, final)
    stop = eos
    is_code = v.is_audio(x)
    types = jnp.where(is_code, int(TokenType.SPEECH),
                      jnp.where(boa | eoa, int(TokenType.BOUNDARY), int(TokenType.TEXT))).astype(jnp.int32)
    return InterleavedState(phase, chunk, count, final), {"tokens": types}, stop


class ParallelState(NamedTuple):
  step: Any        # int32[B]: response positions emitted so far
  text_done: Any   # bool[B]: text_eos was emitted


@dataclasses.dataclass(frozen=True)
class ParallelConstraint:
  vocab: ParallelVocab
  delay: int = 6   # kimia_mimo_audiodelaytokens
  constrained: bool = True

  def init(self, batch_size: int) -> ParallelState:
    return ParallelState(jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), bool))

  def allowed(self, state: ParallelState) -> dict[str, Any]:
    v = self.vocab
    ids = _ids(v.vocab_size)
    blank = ids == v.text_blank
    is_code = v.is_audio(ids)
    audio = jnp.where(state.step[:, None] < self.delay, blank,
                      is_code | (ids == v.msg_end) | (ids == v.media_end))
    text = jnp.where(state.text_done[:, None], blank, _text_ids(v) | (ids == v.text_eos))
    return {"text": text, "audio": audio}

  def update(self, state: ParallelState, tokens: dict[str, Any]):
    v = self.vocab
    stop = (tokens["audio"] == v.msg_end) | (tokens["audio"] == v.media_end)
    state = ParallelState(state.step + 1, state.text_done | (tokens["text"] == v.text_eos))
    shape = stop.shape
    types = {"text": jnp.full(shape, int(TokenType.TEXT), jnp.int32),
             "audio": jnp.full(shape, int(TokenType.SPEECH), jnp.int32)}
    return state, types, stop


Constraint = InterleavedConstraint | ParallelConstraint
