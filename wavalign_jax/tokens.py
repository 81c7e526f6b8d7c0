"""Token types and the special ids of each architecture's vocabulary.

Losses never look at token ids: they see a per-target `TokenType`, computed once when a
sequence is laid out (data pipeline, testbed, sampler). Which types count as "text" or
"speech" for the hybrid objective is decided here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import enum

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


@dataclasses.dataclass(frozen=True)
class InterleavedVocab:
  """VITA-Audio style vocabulary: text ids, specials, then a contiguous block of audio codes."""
  vocab_size: int          # rows of the embedding / lm_head (may include padding rows)
  text_vocab_size: int     # ids < text_vocab_size are ordinary text tokens
  first_audio_code: int    # id of <|audio_0|> (speech_token_offset)
  num_audio_codes: int
  begin_of_audio: int
  end_of_audio: int
  eos: int                 # <|im_end|>: ends the assistant turn
  pad: int
  bos: int
  newline: int             # token appended after <|im_end|> in chat layouts
  im_start: int | None = None  # <|im_start|>: opens a chat turn (needed to lay out chat prompts)

  def audio_id(self, code):
    return np.asarray(code) + self.first_audio_code

  def is_audio(self, ids):
    return (ids >= self.first_audio_code) & (ids < self.first_audio_code + self.num_audio_codes)


@dataclasses.dataclass(frozen=True)
class ParallelVocab:
  """Kimi-Audio style vocabulary shared by the text and audio streams (one embedding table)."""
  vocab_size: int          # rows of the shared embedding table and of both heads
  text_vocab_size: int     # ids < text_vocab_size are ordinary text tokens (num_base_tokens)
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

  def audio_id(self, code):
    return np.asarray(code) + self.audio_offset

  def is_audio(self, ids):
    return (ids >= self.audio_offset) & (ids < self.audio_offset + self.num_audio_codes)
