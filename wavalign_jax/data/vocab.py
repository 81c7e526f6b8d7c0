"""Special ids of each architecture, resolved by name from the checkpoint's tokenizer.json.

Looking ids up by token string (not hard-coding numbers) keeps the pipeline right for variants
whose ids shift (VITA-Audio Plus has one more special, so its first audio code moves by one).
"""
from __future__ import annotations

import tokenizers

from wavalign_jax import tokenizer as tokenizer_lib
from wavalign_jax.data.layouts import ROLES
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab



def encode(tok: tokenizers.Tokenizer, text: str) -> list[int]:
  return tok.encode(text, add_special_tokens=False).ids


def unknown_id(tok: tokenizers.Tokenizer) -> int | None:
  """Id of the token that words outside the vocabulary become (word-level, WordPiece, BPE without byte fallback);
  None for byte-level tokenizers (Qwen's), which encode any text."""
  unk = getattr(tok.model, "unk_token", None)
  return tok.token_to_id(unk) if unk else None


def interleaved_vocab(tok: tokenizers.Tokenizer, path: str) -> InterleavedVocab:
  """The VITA-Audio vocabulary of the tokenizer at `path`, as large as the tokenizer (tokenizer.build_interleaved)."""
  size = tok.get_vocab_size(with_added_tokens=True)
  return tokenizer_lib.build_interleaved(tokenizer_lib.added_token_ids(tok), tokenizer_size=size, vocab_size=size,
                                         newline=encode(tok, "\n"), pad=None, where=path)


def role_ids(tok: tokenizers.Tokenizer) -> dict[str, list[int]]:
  """Text ids of each role name as the Qwen chat template writes it after <|im_start|>."""
  return {r: encode(tok, r) for r in ROLES}


def parallel_vocab(tok: tokenizers.Tokenizer, path: str,
                   audio_offset: int = tokenizer_lib.RELEASED_KIMI["audio_offset"],
                   num_audio_codes: int = tokenizer_lib.KIMI_NUM_AUDIO_CODES) -> ParallelVocab:
  """The Kimi-Audio vocabulary of the tokenizer at `path` with `num_audio_codes` codes from `audio_offset` on
  (tokenizer.build_parallel); pad is <|endoftext|>, else the text blank."""
  ids = tokenizer_lib.added_token_ids(tok)
  pad = tok.token_to_id("<|endoftext|>")
  size = tok.get_vocab_size(with_added_tokens=True)
  return tokenizer_lib.build_parallel(
      ids, tokenizer_size=size, vocab_size=max(size, audio_offset + num_audio_codes), audio_offset=audio_offset,
      num_audio_codes=num_audio_codes, pad=ids.get(tokenizer_lib.KIMI_TOKENS["text_blank"]) if pad is None else pad,
      where=path)
