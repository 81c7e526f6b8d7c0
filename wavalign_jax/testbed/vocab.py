"""The testbed vocabulary: a real word-level `tokenizer.json` plus its InterleavedVocab / ParallelVocab.

Id layout (the order the real checkpoints use): ordinary text tokens (`<unk>`, newline, words),
then the special tokens of both chat templates, then the audio codes `<|audio_0|>` ... as one
contiguous block ending the vocabulary (no padding rows, so vocab_size = first code + #codes).
Special tokens carry their upstream names (Qwen / VITA-Audio chat markers, Kimi-Audio `<|im_...|>`
markers), so readers that resolve ids by name (wavalign_jax/tokenizer.py, wavalign_jax/data/vocab.py)
treat the testbed like the real checkpoints; its vocabulary dataclasses come from the readers' builders. The newline is an ordinary token: the pre-tokenizer
splits on other whitespace and isolates "\\n", as the chat templates need it after role names.
"""
from __future__ import annotations

import os

from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

from wavalign_jax import files, tokenizer, tokens
from wavalign_jax.testbed import tasks, unit_tts

UNK = "<unk>"
NEWLINE = "\n"
ROLE_WORDS = ("system", "user", "assistant")
# The specials in id order (the names are the readers' tables, wavalign_jax/tokenizer.py), plus the testbed's audio
# placeholder and Kimi-Audio's two speech-control tokens, which no reader resolves.
VITA_SPECIALS = {**{f: tokenizer.VITA_TOKENS[f] for f in ("bos", "im_start", "eos", "begin_of_audio", "end_of_audio")},
                 "audio_placeholder": tasks.AUDIO_PLACEHOLDER}
KIMI_SPECIALS = {**{f: tokenizer.KIMI_TOKENS[f] for f in ("msg_end", "user_msg_start", "assistant_msg_start",
                                                          "media_begin", "media_end", "text_blank", "text_eos")},
                 "speech_ct": "<|im_kimia_speech_ct_id|>", "speech_ctd": "<|im_kimia_speech_ctd_id|>"}


def audio_token(code: int) -> str:
  return f"<|audio_{code}|>"


def text_tokens() -> tuple[str, ...]:
  return (UNK, NEWLINE, *ROLE_WORDS, *tasks.lexicon())


def token_names(num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> tuple[str, ...]:
  """All tokens in id order: text, specials, audio codes."""
  return (*text_tokens(), *VITA_SPECIALS.values(), *KIMI_SPECIALS.values(),
          *(audio_token(c) for c in range(num_audio_codes)))


def build_tokenizer(num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> Tokenizer:
  """Word-level tokenizer over the testbed lexicon with both chat templates' specials and audio codes."""
  names = token_names(num_audio_codes)
  tok = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
      pre_tokenizers.Split(NEWLINE, behavior="isolated")])
  # Registered as added tokens they keep the ids above and are matched before pre-tokenization,
  # so they may touch words ("<|im_start|>user").
  tok.add_special_tokens([AddedToken(n, special=True, normalized=False)
                          for n in names[len(text_tokens()):]])
  return tok


def write_tokenizer(out_dir: str, num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> str:
  """Writes `out_dir/tokenizer.json` and returns its path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, tokenizer.TOKENIZER_FILE)
  files.write_text(path, build_tokenizer(num_audio_codes).to_str(pretty=True))
  return path


def interleaved_vocab(num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> tokens.InterleavedVocab:
  """The VITA-Audio vocabulary of the testbed tokenizer, from the readers' builder (no padding rows)."""
  tok = build_tokenizer(num_audio_codes)
  size = tok.get_vocab_size(with_added_tokens=True)
  return tokenizer.build_interleaved(tokenizer.added_token_ids(tok), tokenizer_size=size, vocab_size=size,
                                     newline=tok.encode(NEWLINE, add_special_tokens=False).ids, pad=None,
                                     where="the testbed tokenizer")


def parallel_vocab(num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> tokens.ParallelVocab:
  """The Kimi-Audio vocabulary of the testbed tokenizer, from the readers' builder (pad: <|endoftext|>)."""
  tok = build_tokenizer(num_audio_codes)
  ids = tokenizer.added_token_ids(tok)
  first = ids[audio_token(0)]
  return tokenizer.build_parallel(ids, tokenizer_size=tok.get_vocab_size(with_added_tokens=True),
                                  vocab_size=first + num_audio_codes, audio_offset=first,
                                  num_audio_codes=num_audio_codes, pad=ids[VITA_SPECIALS["bos"]],
                                  where="the testbed tokenizer")


def hf_config_fields(num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> dict[str, int]:
  """The config.json keys checkpoint readers cross-check against the tokenizer (see tokenizer.py)."""
  v = parallel_vocab(num_audio_codes)
  return {"vocab_size": v.vocab_size, "speech_token_offset": v.audio_offset,
          "kimia_token_offset": v.audio_offset, "num_base_tokens": len(text_tokens()),
          "kimia_media_begin": v.media_begin, "kimia_media_end": v.media_end, "pad_token_id": v.pad}
