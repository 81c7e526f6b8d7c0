"""Special ids of each architecture, resolved by name from the checkpoint's tokenizer.json.

Looking ids up by token string (not hard-coding numbers) keeps the pipeline right for variants
whose ids shift (VITA-Audio Plus has one more special, so its first audio code moves by one).
"""
from __future__ import annotations

import tokenizers

from wavalign_jax.tokens import InterleavedVocab, ParallelVocab

ROLES = ("system", "user", "assistant")


def _id(tok: tokenizers.Tokenizer, token: str, path: str) -> int:
  i = tok.token_to_id(token)
  if i is None:
    raise ValueError(f"{path}: tokenizer has no token {token!r} needed by this layout")
  return i


def special_ids(tok: tokenizers.Tokenizer, audio: range = range(0)) -> tuple[int, ...]:
  """The tokenizer's added tokens (chat markers, blanks, ...) except audio codes: never text, wherever they sit."""
  return tuple(sorted(i for i in tok.get_added_tokens_decoder() if i not in audio))


def encode(tok: tokenizers.Tokenizer, text: str) -> list[int]:
  return tok.encode(text, add_special_tokens=False).ids


def unknown_id(tok: tokenizers.Tokenizer) -> int | None:
  """Id of the token that words outside the vocabulary become (word-level, WordPiece, BPE without byte fallback);
  None for byte-level tokenizers (Qwen's), which encode any text."""
  unk = getattr(tok.model, "unk_token", None)
  return tok.token_to_id(unk) if unk else None


def interleaved_vocab(tok: tokenizers.Tokenizer, path: str) -> InterleavedVocab:
  first = _id(tok, "<|audio_0|>", path)
  n = 1
  while tok.token_to_id(f"<|audio_{n}|>") == first + n:
    n += 1
  newline = encode(tok, "\n")
  if len(newline) != 1:
    raise ValueError(f"{path}: '\\n' must encode to one token, got {newline}")
  eot = _id(tok, "<|endoftext|>", path)
  size = tok.get_vocab_size(with_added_tokens=True)
  return InterleavedVocab(
      vocab_size=size, tokenizer_size=size, special_ids=special_ids(tok, range(first, first + n)),
      first_audio_code=first, num_audio_codes=n, begin_of_audio=_id(tok, "<|begin_of_audio|>", path),
      end_of_audio=_id(tok, "<|end_of_audio|>", path), eos=_id(tok, "<|im_end|>", path), pad=eot, bos=eot,
      newline=newline[0], im_start=_id(tok, "<|im_start|>", path))


def role_ids(tok: tokenizers.Tokenizer) -> dict[str, list[int]]:
  """Text ids of each role name as the Qwen chat template writes it after <|im_start|>."""
  return {r: encode(tok, r) for r in ROLES}


def parallel_vocab(tok: tokenizers.Tokenizer, path: str, audio_offset: int = 152064,
                   num_audio_codes: int = 16384) -> ParallelVocab:
  blank = _id(tok, "<|im_kimia_text_blank|>", path)
  pad = tok.token_to_id("<|endoftext|>")
  return ParallelVocab(
      vocab_size=max(tok.get_vocab_size(with_added_tokens=True), audio_offset + num_audio_codes),
      tokenizer_size=min(tok.get_vocab_size(with_added_tokens=True), audio_offset),
      special_ids=special_ids(tok, range(audio_offset, audio_offset + num_audio_codes)), audio_offset=audio_offset,
      num_audio_codes=num_audio_codes,
      text_blank=blank, text_eos=_id(tok, "<|im_kimia_text_eos|>", path),
      media_begin=_id(tok, "<|im_media_begin|>", path), media_end=_id(tok, "<|im_media_end|>", path),
      msg_end=_id(tok, "<|im_msg_end|>", path), pad=blank if pad is None else pad,
      user_msg_start=_id(tok, "<|im_kimia_user_msg_start|>", path),
      assistant_msg_start=_id(tok, "<|im_kimia_assistant_msg_start|>", path))
