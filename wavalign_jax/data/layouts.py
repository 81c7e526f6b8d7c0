"""Sequence layouts of the two architectures and the sequence batch built from them.

A layout turns a dialogue (prompt turns + a response given as text ids and audio codes) into
token id streams plus the `TokenType` of every token *as a prediction target*. Everything
downstream (losses, gates, rewards) reads these types instead of re-parsing ids, so the rules
of docs/method.md §2 live here once:

* interleaved (VITA-Audio): one stream; the response alternates text chunks and audio chunks
  following a ratio list [T1, A1, T2, A2, ...] whose last pair repeats.
* parallel (Kimi-Audio): a text stream and an audio stream of equal length; the audio stream of
  the response is delayed by `delay` blanks.

`to_sequence_batch` / `packed_sequence_batch` turn laid-out examples into the `batches.SeqBatch` of the
WORKSPACE.md contract (inputs / targets / types per stream, positions, segment_ids): the loader's batches are typed
from here on.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import numpy as np

from wavalign_jax.batches import SeqBatch
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab, TokenType

INTERLEAVED_STREAMS = ("tokens",)
PARALLEL_STREAMS = ("text", "audio")
ROLES = ("system", "user", "assistant")
BOOST_RATIOS = (1, 10, 4, 10)
AUDIO_DELAY = 6   # Kimi-Audio: the audio stream starts this many blanks after the text

_NONE, _TEXT, _SPEECH, _BOUNDARY = (int(t) for t in TokenType)


@dataclasses.dataclass(frozen=True)
class Turn:
  """One chat turn of a prompt: a role and its content as ordered ("text", ids) / ("audio", codes) pieces."""
  role: str
  pieces: tuple[tuple[str, tuple[int, ...]], ...]

  @classmethod
  def make(cls, role: str, text: Sequence[int] = (), audio: Sequence[int] | None = None) -> "Turn":
    """A turn whose text (if any) comes first and whose audio (if given) follows it."""
    pieces = []
    if len(text):
      pieces.append(("text", tuple(int(i) for i in text)))
    if audio is not None:
      pieces.append(("audio", tuple(int(c) for c in audio)))
    return cls(role, tuple(pieces))


@dataclasses.dataclass(frozen=True)
class Example:
  """Laid-out token streams. `types[s][i]` is the TokenType of token i when it is a target.

  `prompt_len` tokens open every stream; the rest is the response (its tokens are the targets
  that carry a loss).
  """
  tokens: dict[str, np.ndarray]   # stream -> int32[N]
  types: dict[str, np.ndarray]    # stream -> int32[N]
  prompt_len: int = 0

  def __post_init__(self):
    if set(self.tokens) != set(self.types):
      raise ValueError(f"streams of tokens {sorted(self.tokens)} and types {sorted(self.types)} differ")
    lengths = {s: (len(self.tokens[s]), len(self.types[s])) for s in self.tokens}
    if len({n for pair in lengths.values() for n in pair}) != 1:
      raise ValueError(f"all streams and their types must have one length, got {lengths}")
    if not 0 <= self.prompt_len <= len(self):
      raise ValueError(f"prompt_len {self.prompt_len} outside [0, {len(self)}]")

  def __len__(self) -> int:
    return len(next(iter(self.tokens.values())))

  @property
  def streams(self) -> tuple[str, ...]:
    return tuple(self.tokens)

  def prompt(self) -> "Example":
    """The prompt part alone (what the sampler continues)."""
    n = self.prompt_len
    return Example({s: v[:n] for s, v in self.tokens.items()}, {s: v[:n] for s, v in self.types.items()}, n)

  def response(self) -> "Example":
    n = self.prompt_len
    return Example({s: v[n:] for s, v in self.tokens.items()}, {s: v[n:] for s, v in self.types.items()}, 0)


def _example(tokens: dict[str, list[int]], types: dict[str, list[int]], prompt_len: int = 0) -> Example:
  return Example({s: np.asarray(v, np.int32) for s, v in tokens.items()},
                 {s: np.asarray(v, np.int32) for s, v in types.items()}, prompt_len)


def join(prompt: Example, response: Example) -> Example:
  """Prompt followed by response; the result's prompt_len is the prompt's full length."""
  if prompt.streams != response.streams:
    raise ValueError(f"prompt streams {prompt.streams} != response streams {response.streams}")
  return Example({s: np.concatenate([prompt.tokens[s], response.tokens[s]]) for s in prompt.streams},
                 {s: np.concatenate([prompt.types[s], response.types[s]]) for s in prompt.streams},
                 len(prompt))


def _check_codes(codes: Sequence[int], num_audio_codes: int, what: str) -> list[int]:
  codes = [int(c) for c in codes]
  bad = [c for c in codes if not 0 <= c < num_audio_codes]
  if bad:
    raise ValueError(f"{what}: audio code {bad[0]} outside [0, {num_audio_codes}) ({len(bad)} bad codes)")
  return codes


def _check_text(ids: Sequence[int], vocab: InterleavedVocab | ParallelVocab, what: str) -> list[int]:
  ids = [int(i) for i in ids]
  bad = [i for i, ok in zip(ids, vocab.is_text(np.asarray(ids, np.int64))) if not ok]
  if bad:
    kind = ("an audio code" if vocab.is_audio(bad[0]) else "a special token" if bad[0] in vocab.special_ids
            else f"not a token of the tokenizer (size {vocab.tokenizer_size})")
    raise ValueError(f"{what}: id {bad[0]} is not a text token ({kind}); {len(bad)} such ids")
  return ids


def _check_nonempty(text: Sequence[int], codes: Sequence[int]) -> None:
  if not len(text) and not len(codes):
    raise ValueError("empty response: no text ids and no audio codes")


def _ratio_pairs(ratios: Sequence[int]) -> list[tuple[int, int]]:
  if not len(ratios) or len(ratios) % 2:
    raise ValueError(f"ratio list {list(ratios)} must be non-empty pairs [T1, A1, T2, A2, ...]")
  pairs = [(int(t), int(a)) for t, a in zip(ratios[::2], ratios[1::2])]
  for t, a in pairs:
    if t < 0 or a < 3:
      raise ValueError(f"ratio pair ({t}, {a}) in {list(ratios)}: need T >= 0 and A >= 3 (A counts the 2 markers)")
  return pairs


# ----------------------------------------------------------------------------- interleaved


def interleaved_prompt(turns: Sequence[Turn], vocab: InterleavedVocab,
                       role_ids: Mapping[str, Sequence[int]]) -> Example:
  """Qwen chat template: `<|im_start|>role\\n content <|im_end|>\\n` per turn, then the assistant header.

  `role_ids` maps each role name to the text ids of that name (e.g. "assistant" -> [77091]).
  Audio pieces become `<|begin_of_audio|> codes <|end_of_audio|>`. Every token has type NONE.
  """
  if vocab.im_start is None:
    raise ValueError("InterleavedVocab.im_start is not set; it is needed to lay out chat prompts")
  missing = sorted(({t.role for t in turns} | {"assistant"}) - set(role_ids))
  if missing:
    raise ValueError(f"role_ids has no ids for roles {missing}")

  def header(role):
    return [vocab.im_start, *role_ids[role], vocab.newline]

  ids: list[int] = []
  for k, turn in enumerate(turns):
    if turn.role not in ROLES:
      raise ValueError(f"turn {k}: unknown role {turn.role!r}; expected one of {ROLES}")
    ids += header(turn.role)
    for kind, piece in turn.pieces:
      if kind == "text":
        ids += _check_text(piece, vocab, f"turn {k} text")
      elif kind == "audio":
        codes = _check_codes(piece, vocab.num_audio_codes, f"turn {k} audio")
        ids += [vocab.begin_of_audio, *vocab.audio_id(codes).tolist(), vocab.end_of_audio]
      else:
        raise ValueError(f"turn {k}: unknown piece kind {kind!r}; expected 'text' or 'audio'")
    ids += [vocab.eos, vocab.newline]
  ids += header("assistant")
  return _example({"tokens": ids}, {"tokens": [_NONE] * len(ids)})


def interleaved_response(text: Sequence[int], codes: Sequence[int], vocab: InterleavedVocab,
                         ratios: Sequence[int] = BOOST_RATIOS) -> Example:
  """Chunks `text[T_k] <boa> codes[A_k - 2] <eoa>`, then `<|im_end|>` and newline.

  Chunk k uses pair k of `ratios` (the last pair repeats). A chunk is final when the remaining
  text fits in its T or the remaining audio fits in its A - 2; the final chunk takes all of both.
  Types: TEXT for text ids and the two end tokens, SPEECH for codes, BOUNDARY for the markers.
  """
  text = _check_text(text, vocab, "response text")
  codes = _check_codes(codes, vocab.num_audio_codes, "response audio")
  _check_nonempty(text, codes)
  pairs = _ratio_pairs(ratios)
  ids: list[int] = []
  types: list[int] = []

  def chunk(t, a):
    ids.extend(t + [vocab.begin_of_audio] + vocab.audio_id(a).tolist() + [vocab.end_of_audio])
    types.extend([_TEXT] * len(t) + [_BOUNDARY] + [_SPEECH] * len(a) + [_BOUNDARY])

  k = 0
  while True:
    t_len, a_len = pairs[min(k, len(pairs) - 1)]
    if len(text) <= t_len or len(codes) <= a_len - 2:
      chunk(text, codes)
      break
    chunk(text[:t_len], codes[:a_len - 2])
    text, codes = text[t_len:], codes[a_len - 2:]
    k += 1
  ids += [vocab.eos, vocab.newline]
  types += [_TEXT, _TEXT]
  return _example({"tokens": ids}, {"tokens": types})


def interleaved_split(ids: Sequence[int], vocab: InterleavedVocab) -> tuple[list[int], list[int]]:
  """Inverse of `interleaved_response` (up to chunking): (text ids, audio codes) of a response.

  Stops at the first `<|im_end|>`; markers are dropped.
  """
  ids = np.asarray(ids)
  end = np.flatnonzero(ids == vocab.eos)
  ids = ids[:end[0]] if len(end) else ids
  audio = vocab.is_audio(ids)
  markers = (ids == vocab.begin_of_audio) | (ids == vocab.end_of_audio)
  return ids[~audio & ~markers].tolist(), (ids[audio] - vocab.first_audio_code).tolist()


# ----------------------------------------------------------------------------- parallel


def parallel_prompt(turns: Sequence[Turn], vocab: ParallelVocab) -> Example:
  """Kimi-Audio template; the audio stream carries the structure, the text stream the words.

  Per turn: msg_start (user_msg_start / assistant_msg_start) over a text blank; text pieces in the
  text stream over audio blanks; audio pieces as media_begin, codes, media_end over text blanks;
  msg_end over a text blank. Then assistant_msg_start opens the response. All types NONE.
  Kimi has no system turn: merge system text into the user turn before calling this.
  """
  starts = {"user": vocab.user_msg_start, "assistant": vocab.assistant_msg_start}
  text: list[int] = []
  audio: list[int] = []

  def put(t, a):
    text.extend(t)
    audio.extend(a)

  blank = vocab.text_blank
  for k, turn in enumerate(turns):
    if turn.role not in starts:
      raise ValueError(f"turn {k}: role {turn.role!r} not supported by the parallel (Kimi-Audio) template; "
                       f"use {sorted(starts)} (merge a system prompt into the user turn)")
    put([blank], [starts[turn.role]])
    for kind, piece in turn.pieces:
      if kind == "text":
        ids = _check_text(piece, vocab, f"turn {k} text")
        put(ids, [blank] * len(ids))
      elif kind == "audio":
        codes = _check_codes(piece, vocab.num_audio_codes, f"turn {k} audio")
        a = [vocab.media_begin, *vocab.audio_id(codes).tolist(), vocab.media_end]
        put([blank] * len(a), a)
      else:
        raise ValueError(f"turn {k}: unknown piece kind {kind!r}; expected 'text' or 'audio'")
    put([blank], [vocab.msg_end])
  put([blank], [vocab.assistant_msg_start])
  return _example({"text": text, "audio": audio}, {"text": [_NONE] * len(text), "audio": [_NONE] * len(audio)})


def parallel_response(text: Sequence[int], codes: Sequence[int], vocab: ParallelVocab,
                      delay: int = AUDIO_DELAY) -> Example:
  """Audio stream: `delay` blanks, codes, msg_end; text stream: text, text_eos, blanks.

  The shorter stream is filled with blanks to the length of the longer one. Every response
  position is TEXT in the text stream and SPEECH in the audio stream.
  """
  text = _check_text(text, vocab, "response text")
  codes = _check_codes(codes, vocab.num_audio_codes, "response audio")
  _check_nonempty(text, codes)
  if delay < 0:
    raise ValueError(f"audio delay {delay} must be >= 0")
  t = text + [vocab.text_eos]
  a = [vocab.text_blank] * delay + vocab.audio_id(codes).tolist() + [vocab.msg_end]
  n = max(len(t), len(a))
  t += [vocab.text_blank] * (n - len(t))
  a += [vocab.text_blank] * (n - len(a))
  return _example({"text": t, "audio": a}, {"text": [_TEXT] * n, "audio": [_SPEECH] * n})


def parallel_split(text_stream: Sequence[int], audio_stream: Sequence[int],
                   vocab: ParallelVocab) -> tuple[list[int], list[int]]:
  """(text ids, audio codes) of a parallel response: text up to text_eos, audio codes up to msg_end."""
  t = np.asarray(text_stream)
  a = np.asarray(audio_stream)
  t_end = np.flatnonzero(t == vocab.text_eos)
  a_end = np.flatnonzero((a == vocab.msg_end) | (a == vocab.media_end))
  t = t[:t_end[0]] if len(t_end) else t
  a = a[:a_end[0]] if len(a_end) else a
  return t[t != vocab.text_blank].tolist(), (a[vocab.is_audio(a)] - vocab.audio_offset).tolist()


# ----------------------------------------------------------------------------- batches


def packed_sequence_batch(rows: Sequence[Sequence[Example]], length: int, pad_id: int = 0) -> SeqBatch:
  """The sequence batch (host numpy) whose row b holds the examples of rows[b] one after another.

  Example k of a row is segment k + 1 with positions restarting at 0; within a segment
  targets[t] = inputs[t + 1] with that token's type; the last position of a segment predicts
  nothing (target pad_id, type NONE). Padding: inputs/targets pad_id, type 0, segment 0, position 0.
  """
  if not rows:
    raise ValueError("packed_sequence_batch needs at least one row")
  streams = None
  for b, row in enumerate(rows):
    for ex in row:
      if streams is None:
        streams = ex.streams
      elif ex.streams != streams:
        raise ValueError(f"row {b}: streams {ex.streams} differ from {streams}")
  if streams is None:
    raise ValueError("packed_sequence_batch got only empty rows")
  shape = (len(rows), length)
  batch = SeqBatch(inputs={s: np.full(shape, pad_id, np.int32) for s in streams},
                   targets={s: np.full(shape, pad_id, np.int32) for s in streams},
                   types={s: np.zeros(shape, np.int32) for s in streams},
                   positions=np.zeros(shape, np.int32), segment_ids=np.zeros(shape, np.int32))
  for b, row in enumerate(rows):
    total = sum(len(ex) for ex in row)
    if total > length:
      raise ValueError(f"row {b}: {len(row)} example(s) of {total} tokens exceed the batch length {length}")
    start = 0
    for k, ex in enumerate(row):
      n = len(ex)
      end = start + n
      for s in streams:
        batch.inputs[s][b, start:end] = ex.tokens[s]
        batch.targets[s][b, start:end - 1] = ex.tokens[s][1:]
        batch.types[s][b, start:end - 1] = ex.types[s][1:]
      batch.positions[b, start:end] = np.arange(n)
      batch.segment_ids[b, start:end] = k + 1
      start = end
  return batch


def to_sequence_batch(examples: Sequence[Example], length: int, pad_id: int = 0) -> SeqBatch:
  """One example per row, right-padded to `length` (see `packed_sequence_batch`)."""
  return packed_sequence_batch([[ex] for ex in examples], length, pad_id)


def pad_sequence_batch(batch: SeqBatch, length: int, pad_id: int = 0) -> SeqBatch:
  """A sequence batch (or an `RLBatch`, kept as such: any [B, L, ...] fields) right-padded to `length` positions as
  `packed_sequence_batch` pads: inputs / targets with pad_id, every other field with 0 (type NONE, segment 0:
  outside every loss)."""
  def pad(x: np.ndarray, value: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[1] == length:
      return x
    if x.shape[1] > length:
      raise ValueError(f"cannot pad a batch of length {x.shape[1]} to {length}")
    return np.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2), constant_values=value)

  def field(name: str, value):
    fill = pad_id if name in ("inputs", "targets") else 0
    return jax.tree.map(lambda x: pad(x, fill), value)
  return batch.replace(**{f.name: field(f.name, getattr(batch, f.name)) for f in dataclasses.fields(batch)})
