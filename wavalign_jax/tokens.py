"""Token types and the special ids of each architecture's vocabulary.

Losses never look at token ids: they see a per-target `TokenType`, computed once when a
sequence is laid out (data pipeline, testbed, sampler). Which types count as "text" or
"speech" for the hybrid objective is decided here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import enum
import functools

import numpy as np


class TokenType(enum.IntEnum):
  NONE = 0      # no loss: prompt, padding, positions whose target lies outside the response
  TEXT = 1      # text tokens, text end markers (<|im_end|>, text_eos, text blanks of the parallel text stream)
  SPEECH = 2    # audio codes; every response position of the parallel audio stream
  BOUNDARY = 3  # <|begin_of_audio|> / <|end_of_audio|> (interleaved only); counted as speech


# Token sets selectable from configs (`rl.token_set`, `sft.token_set`).
TOKEN_SETS: dict[str, tuple[TokenType, ...]] = {
    "text": (TokenType.TEXT,),
    "speech": (TokenType.SPEECH, TokenType.BOUNDARY),
    "all": (TokenType.TEXT, TokenType.SPEECH, TokenType.BOUNDARY),
}


def token_set_mask(types, token_set: str):
  """Boolean mask of positions whose type belongs to `token_set` (works on numpy and jax arrays)."""
  if token_set not in TOKEN_SETS:
    raise ValueError(f"unknown token set {token_set!r}; choose one of {sorted(TOKEN_SETS)}")
  mask = types == int(TOKEN_SETS[token_set][0])
  for t in TOKEN_SETS[token_set][1:]:
    mask = mask | (types == int(t))
  return mask


class _TokenClasses:
  """Text / special / audio told apart by the tokenizer's own token classes, never by id ranges.

  A tokenizer trained from scratch puts its specials first (ids 0..k), Qwen puts them after the text:
  both work because an id is text iff it belongs to the tokenizer, is not one of its special (added)
  tokens and is not an audio code.
  """

  def __post_init__(self):
    named = {getattr(self, f) for f in self._NAMED_SPECIALS if getattr(self, f) is not None}
    object.__setattr__(self, "special_ids", tuple(sorted(set(int(i) for i in self.special_ids) | named)))

  def is_text(self, ids) -> np.ndarray:
    """Boolean mask of ordinary text ids (host numpy; ids outside the vocabulary are not text)."""
    ids = np.asarray(ids)
    inside = (ids >= 0) & (ids < self.vocab_size)
    return inside & text_id_mask(self)[np.where(inside, ids, 0)]


@functools.lru_cache(maxsize=16)
def text_id_mask(vocab) -> np.ndarray:
  """bool[vocab_size]: which ids are ordinary text tokens of `vocab`."""
  mask = np.zeros((vocab.vocab_size,), bool)
  mask[:min(vocab.tokenizer_size, vocab.vocab_size)] = True
  mask[list(vocab.special_ids)] = False
  mask &= ~vocab.is_audio(np.arange(vocab.vocab_size))
  mask.flags.writeable = False
  return mask


@dataclasses.dataclass(frozen=True)
class InterleavedVocab(_TokenClasses):
  """VITA-Audio style vocabulary: text ids, specials and a contiguous block of audio codes (any order)."""
  vocab_size: int          # rows of the embedding / lm_head (may include padding rows)
  tokenizer_size: int      # ids >= tokenizer_size have no token (embedding padding)
  special_ids: tuple[int, ...]  # the tokenizer's special / added tokens other than audio codes: never text
  first_audio_code: int    # id of <|audio_0|> (speech_token_offset)
  num_audio_codes: int
  begin_of_audio: int
  end_of_audio: int
  eos: int                 # <|im_end|>: ends the assistant turn
  pad: int
  bos: int
  newline: int             # token appended after <|im_end|> in chat layouts
  im_start: int | None = None  # <|im_start|>: opens a chat turn (needed to lay out chat prompts)

  _NAMED_SPECIALS = ("begin_of_audio", "end_of_audio", "eos", "im_start")

  def audio_id(self, code):
    return np.asarray(code) + self.first_audio_code

  def is_audio(self, ids):
    return (ids >= self.first_audio_code) & (ids < self.first_audio_code + self.num_audio_codes)


@dataclasses.dataclass(frozen=True)
class ParallelVocab(_TokenClasses):
  """Kimi-Audio style vocabulary shared by the text and audio streams (one embedding table)."""
  vocab_size: int          # rows of the shared embedding table and of both heads
  tokenizer_size: int      # ids >= tokenizer_size have no text token (audio codes, padding)
  special_ids: tuple[int, ...]  # the tokenizer's special / added tokens: never text
  audio_offset: int        # kimia_token_offset: audio code c has id audio_offset + c
  num_audio_codes: int
  text_blank: int          # filler in either stream
  text_eos: int            # ends the text stream of a response
  media_begin: int
  media_end: int
  msg_end: int
  pad: int
  user_msg_start: int
  assistant_msg_start: int

  _NAMED_SPECIALS = ("text_blank", "text_eos", "media_begin", "media_end", "msg_end", "user_msg_start",
                     "assistant_msg_start")

  def audio_id(self, code):
    return np.asarray(code) + self.audio_offset

  def is_audio(self, ids):
    return (ids >= self.audio_offset) & (ids < self.audio_offset + self.num_audio_codes)
