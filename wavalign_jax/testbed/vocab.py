"""The testbed vocabulary: a real word-level `tokenizer.json` plus its InterleavedVocab / ParallelVocab.

Id layout (the order the real checkpoints use): ordinary text tokens (`<unk>`, newline, words),
then the special tokens of both chat templates, then the audio codes `<|audio_0|>` ... as one
contiguous block ending the vocabulary (no padding rows, so vocab_size = first code + #codes).
Special tokens carry their upstream names (Qwen / VITA-Audio chat markers, Kimi-Audio `<|im_...|>`
markers), so readers that resolve ids by name (wavalign_jax/tokenizer.py, wavalign_jax/data/vocab.py)
treat the testbed like the real checkpoints. The newline is an ordinary token: the pre-tokenizer
splits on other whitespace and isolates "\\n", as the chat templates need it after role names.
"""
from __future__ import annotations

import os

from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

from wavalign_jax import files, tokens
from wavalign_jax.testbed import tasks, unit_tts

UNK = "<unk>"
NEWLINE = "\n"
ROLE_WORDS = ("system", "user", "assistant")
VITA_SPECIALS = {"bos": "<|endoftext|>", "im_start": "<|im_start|>", "eos": "<|im_end|>",
                 "begin_of_audio": "<|begin_of_audio|>", "end_of_audio": "<|end_of_audio|>",
                 "audio_placeholder": tasks.AUDIO_PLACEHOLDER}
KIMI_SPECIALS = {"msg_end": "<|im_msg_end|>", "user_msg_start": "<|im_kimia_user_msg_start|>",
                 "assistant_msg_start": "<|im_kimia_assistant_msg_start|>",
                 "media_begin": "<|im_media_begin|>", "media_end": "<|im_media_end|>",
                 "text_blank": "<|im_kimia_text_blank|>", "text_eos": "<|im_kimia_text_eos|>",
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
  path = os.path.join(out_dir, "tokenizer.json")
  files.write_text(path, build_tokenizer(num_audio_codes).to_str(pretty=True))
  return path


def load_tokenizer(path: str) -> Tokenizer:
  """Loads a tokenizer from a `tokenizer.json` file or a directory holding one."""
  if os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no tokenizer.json at {path}")
  return Tokenizer.from_file(path)


def _ids(num_audio_codes: int) -> dict[str, int]:
  return {n: i for i, n in enumerate(token_names(num_audio_codes))}


def _special_ids(num_audio_codes: int) -> tuple[int, ...]:
  ids = _ids(num_audio_codes)
  return tuple(ids[n] for n in (*VITA_SPECIALS.values(), *KIMI_SPECIALS.values()))


def interleaved_vocab(num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> tokens.InterleavedVocab:
  ids = _ids(num_audio_codes)
  first = ids[audio_token(0)]
  named = {f: ids[n] for f, n in VITA_SPECIALS.items() if f != "audio_placeholder"}
  return tokens.InterleavedVocab(
      vocab_size=first + num_audio_codes, tokenizer_size=first + num_audio_codes,
      special_ids=_special_ids(num_audio_codes), first_audio_code=first,
      num_audio_codes=num_audio_codes, pad=named["bos"], newline=ids[NEWLINE], **named)


def parallel_vocab(num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> tokens.ParallelVocab:
  ids = _ids(num_audio_codes)
  first = ids[audio_token(0)]
  named = {f: ids[n] for f, n in KIMI_SPECIALS.items() if not f.startswith("speech_")}
  return tokens.ParallelVocab(
      vocab_size=first + num_audio_codes, tokenizer_size=first, special_ids=_special_ids(num_audio_codes),
      audio_offset=first,
      num_audio_codes=num_audio_codes, pad=ids[VITA_SPECIALS["bos"]], **named)


def hf_config_fields(num_audio_codes: int = unit_tts.NUM_AUDIO_CODES) -> dict[str, int]:
  """The config.json keys checkpoint readers cross-check against the tokenizer (see tokenizer.py)."""
  v = parallel_vocab(num_audio_codes)
  return {"vocab_size": v.vocab_size, "speech_token_offset": v.audio_offset,
          "kimia_token_offset": v.audio_offset, "num_base_tokens": len(text_tokens()),
          "kimia_media_begin": v.media_begin, "kimia_media_end": v.media_end, "pad_token_id": v.pad}
