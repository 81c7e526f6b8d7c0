"""A checkpoint's tokenizer and the special ids of its vocabulary, read from its files, never assumed.

Special ids are looked up by token name in `tokenizer.json` (the `tokenizers` package) and, where the
release ships a non-`tokenizers` tokenizer (Kimi-Audio's tiktoken model), in `tokenizer_config.json`'s
`added_tokens_decoder`; config.json keys (`speech_token_offset`, `kimia_*`) are cross-checked. When the
vocabulary is a released one (recognised by its size) every id is also checked against the published values
(docs/method.md §2), so a mismatched tokenizer / checkpoint pair fails loudly. A run on built datasets compares the
vocabulary a dataset was built with against the one its converted checkpoint's own files give (`differing_ids`,
run_setup), so a dataset built with another tokenizer is refused before it trains audio codes into other rows.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import tokenizers

from wavalign_jax.tokens import InterleavedVocab, ParallelVocab, text_id_mask

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# Token names (VITA-Audio / Qwen2.5 chat template).
VITA_TOKENS = {"begin_of_audio": "<|begin_of_audio|>", "end_of_audio": "<|end_of_audio|>", "eos": "<|im_end|>",
               "bos": "<|endoftext|>", "im_start": "<|im_start|>"}
AUDIO_CODE = re.compile(r"^<\|audio_(\d+)\|>$")
# Token names (Kimi-Audio, kimia_infer/utils/special_tokens.py); the kimia_* turn markers are the ones its
# data pipeline and prompt manager put in the audio stream.
KIMI_TOKENS = {"msg_end": "<|im_msg_end|>", "media_begin": "<|im_media_begin|>", "media_end": "<|im_media_end|>",
               "text_blank": "<|im_kimia_text_blank|>", "text_eos": "<|im_kimia_text_eos|>",
               "user_msg_start": "<|im_kimia_user_msg_start|>",
               "assistant_msg_start": "<|im_kimia_assistant_msg_start|>"}

# Published values, checked when the vocabulary is the released one (docs/method.md §2).
RELEASED_VITA = {"vocab_size": 168072, "bos": 151643, "eos": 151645, "begin_of_audio": 151674,
                 "end_of_audio": 151675, "num_audio_codes": 16384,
                 "first_audio_code": (151685, 151686)}  # Plus variants add one special before the codes
RELEASED_KIMI = {"vocab_size": 168448, "audio_offset": 152064, "msg_end": 151645, "media_begin": 151661,
                 "media_end": 151663, "text_blank": 151666, "text_eos": 151667, "user_msg_start": 151670,
                 "assistant_msg_start": 151671}
KIMI_NUM_AUDIO_CODES = RELEASED_KIMI["vocab_size"] - RELEASED_KIMI["audio_offset"]   # 16384, the last ids


def load_tokenizer(directory: str) -> tokenizers.Tokenizer:
  path = os.path.join(directory, TOKENIZER_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found (a Hugging Face `tokenizers` tokenizer.json is needed)")
  return tokenizers.Tokenizer.from_file(path)


def decode_text(tok: tokenizers.Tokenizer, text_ids: Sequence[int], *, collapse_whitespace: bool = False) -> str:
  """The text channel of a response as a string: special tokens (chat markers, audio codes) dropped, the ends
  stripped. Benchmarks keep the whitespace inside (IFEval checks line breaks); rewards read words, so
  `collapse_whitespace` turns every run of whitespace into one space (the testbed's word-level tokenizer puts
  spaces round its newline token)."""
  text = tok.decode([int(i) for i in text_ids], skip_special_tokens=True)
  return " ".join(text.split()) if collapse_whitespace else text.strip()


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def special_token_ids(directory: str) -> dict[str, int]:
  """Added/special token name -> id, from tokenizer.json and tokenizer_config.json (they must agree)."""
  ids: dict[str, int] = {}
  sources: dict[str, str] = {}

  def add(name: str, idx: int, source: str) -> None:
    if name in ids and ids[name] != idx:
      raise ValueError(f"{directory}: token {name!r} is {ids[name]} in {sources[name]} but {idx} in {source}")
    ids[name], sources[name] = idx, source

  tok_path = os.path.join(directory, TOKENIZER_FILE)
  if os.path.exists(tok_path):
    for t in _read_json(tok_path).get("added_tokens", []):
      add(t["content"], int(t["id"]), TOKENIZER_FILE)
  cfg_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
  if os.path.exists(cfg_path):
    for idx, t in _read_json(cfg_path).get("added_tokens_decoder", {}).items():
      add(t["content"], int(idx), TOKENIZER_CONFIG_FILE)
  if not ids:
    raise FileNotFoundError(f"{directory}: no {TOKENIZER_FILE} or {TOKENIZER_CONFIG_FILE} with added tokens")
  return ids


def _lookup(ids: dict[str, int], names: dict[str, str], directory: str) -> dict[str, int]:
  missing = [tok for tok in names.values() if tok not in ids]
  if missing:
    raise ValueError(f"{directory}: the tokenizer has no special token(s) {missing}")
  return {field: ids[tok] for field, tok in names.items()}


def _check(field: str, got: int, want: Any, source: str) -> None:
  ok = got in want if isinstance(want, tuple) else got == want
  if not ok:
    raise ValueError(f"{source}: {field} is {got}, expected {want}")


def _special_by_config(directory: str, hf_config: dict[str, Any], ids: dict[str, int], key: str) -> int | None:
  """A special token named by tokenizer_config.json (e.g. pad_token), falling back to config.json's `<key>_id`."""
  cfg_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
  if os.path.exists(cfg_path):
    tok = _read_json(cfg_path).get(key)
    tok = tok.get("content") if isinstance(tok, dict) else tok
    if tok is not None:
      if tok not in ids:
        raise ValueError(f"{cfg_path}: {key} {tok!r} is not a token of the tokenizer")
      return ids[tok]
  value = hf_config.get(f"{key}_id")
  return int(value) if isinstance(value, int) else None


def _tokenizer_size(directory: str, ids: dict[str, int]) -> int:
  """Number of ids the tokenizer defines: from tokenizer.json when there is one, else one past the last added
  token (Kimi-Audio's tiktoken model ends with its specials)."""
  if os.path.exists(os.path.join(directory, TOKENIZER_FILE)):
    return load_tokenizer(directory).get_vocab_size(with_added_tokens=True)
  return max(ids.values()) + 1


def added_token_ids(tok: tokenizers.Tokenizer) -> dict[str, int]:
  """Added / special token name -> id of a loaded tokenizer."""
  return {t.content: i for i, t in tok.get_added_tokens_decoder().items()}


def build_interleaved(ids: dict[str, int], *, tokenizer_size: int, vocab_size: int, newline: list[int],
                      pad: int | None, where: str) -> InterleavedVocab:
  """The VITA-Audio vocabulary of a tokenizer: `ids` its added tokens by name, `vocab_size` the embedding rows,
  `newline` what "\\n" encodes to, `pad` (default <|endoftext|>); errors name `where`. The one builder both the
  checkpoint reader (`interleaved_vocab`) and the dataset builder (wavalign_jax/data/vocab.py) use."""
  named = _lookup(ids, VITA_TOKENS, where)
  codes = sorted((int(m.group(1)), idx) for name, idx in ids.items() if (m := AUDIO_CODE.match(name)))
  if not codes or codes[0][0] != 0:
    raise ValueError(f"{where}: no <|audio_0|> token")
  first = codes[0][1]
  gaps = [f"<|audio_{c}|>={idx}" for c, idx in codes if idx != first + c]
  if gaps or [c for c, _ in codes] != list(range(len(codes))):
    raise ValueError(f"{where}: audio code tokens are not one contiguous block from {first}: {gaps[:5]}")
  if first + len(codes) > vocab_size:
    raise ValueError(f"{where}: audio codes end at {first + len(codes)} > config vocab_size {vocab_size}")
  if len(newline) != 1:
    raise ValueError(f"{where}: '\\n' encodes to {newline}, expected one token")
  audio = range(first, first + len(codes))
  return InterleavedVocab(
      vocab_size=vocab_size, tokenizer_size=tokenizer_size,
      special_ids=tuple(sorted(i for i in ids.values() if i not in audio)), first_audio_code=first,
      num_audio_codes=len(codes), begin_of_audio=named["begin_of_audio"], end_of_audio=named["end_of_audio"],
      eos=named["eos"], pad=named["bos"] if pad is None else pad, bos=named["bos"], newline=newline[0],
      im_start=named["im_start"])


def build_parallel(ids: dict[str, int], *, tokenizer_size: int, vocab_size: int, audio_offset: int,
                   num_audio_codes: int, pad: int, where: str) -> ParallelVocab:
  """The Kimi-Audio vocabulary of a tokenizer (`ids` its added tokens by name): audio codes from `audio_offset`
  on, every other added token special; errors name `where`. Shared like `build_interleaved`."""
  named = _lookup(ids, KIMI_TOKENS, where)
  audio = range(audio_offset, audio_offset + num_audio_codes)
  return ParallelVocab(vocab_size=vocab_size, tokenizer_size=min(tokenizer_size, audio_offset),
                       special_ids=tuple(sorted(i for i in ids.values() if i not in audio)), audio_offset=audio_offset,
                       num_audio_codes=num_audio_codes, pad=pad, **named)


def interleaved_vocab(directory: str, hf_config: dict[str, Any]) -> InterleavedVocab:
  """VITA-Audio vocabulary from `directory`/tokenizer.json and the model's config.json dict."""
  ids = special_token_ids(directory)
  vocab = build_interleaved(
      ids, tokenizer_size=_tokenizer_size(directory, ids), vocab_size=int(hf_config["vocab_size"]),
      newline=load_tokenizer(directory).encode("\n", add_special_tokens=False).ids,
      pad=_special_by_config(directory, hf_config, ids, "pad_token"), where=directory)
  offset = hf_config.get("speech_token_offset")
  if offset is not None and int(offset) != vocab.first_audio_code:
    raise ValueError(f"config.json speech_token_offset {offset} != id of <|audio_0|> {vocab.first_audio_code} in "
                     f"{directory}")
  if vocab.vocab_size == RELEASED_VITA["vocab_size"]:
    for field, want in RELEASED_VITA.items():
      _check(field, getattr(vocab, field), want, f"{directory} (released VITA-Audio vocabulary, docs/method.md §2)")
  return vocab


def parallel_vocab(directory: str, hf_config: dict[str, Any]) -> ParallelVocab:
  """Kimi-Audio vocabulary from `directory`'s tokenizer files and the model's config.json dict."""
  ids = special_token_ids(directory)
  for key in ("vocab_size", "kimia_token_offset"):
    if key not in hf_config:
      raise ValueError(f"config.json has no {key!r}: not a Kimi-Audio config")
  pad = _special_by_config(directory, hf_config, ids, "pad_token")
  if pad is None:
    raise ValueError(f"{directory}: no pad token (tokenizer_config.json pad_token or config.json pad_token_id)")
  vocab_size, offset = int(hf_config["vocab_size"]), int(hf_config["kimia_token_offset"])
  vocab = build_parallel(ids, tokenizer_size=_tokenizer_size(directory, ids), vocab_size=vocab_size,
                         audio_offset=offset, num_audio_codes=vocab_size - offset, pad=pad, where=directory)
  for field in ("media_begin", "media_end"):
    key = f"kimia_{field}"
    if key in hf_config and int(hf_config[key]) != getattr(vocab, field):
      raise ValueError(f"config.json {key} {hf_config[key]} != tokenizer id {getattr(vocab, field)} of "
                       f"{KIMI_TOKENS[field]} in {directory}")
  num_text = int(text_id_mask(vocab).sum())
  if "num_base_tokens" in hf_config and int(hf_config["num_base_tokens"]) != num_text:
    raise ValueError(f"config.json num_base_tokens {hf_config['num_base_tokens']} != the {num_text} text tokens "
                     f"(non-special ids below {vocab.tokenizer_size}) of the tokenizer in {directory}")
  if vocab_size == RELEASED_KIMI["vocab_size"]:
    for field, want in RELEASED_KIMI.items():
      _check(field, getattr(vocab, field), want, f"{directory} (released Kimi-Audio vocabulary, docs/method.md §2)")
  return vocab



# Ids a dataset and its model must agree on (the layout's tokens and the audio codes' rows); the vocabulary's size,
# its pad and the full list of specials may differ between a build's tokenizer and the checkpoint's config.
_NOT_COMPARED = ("vocab_size", "tokenizer_size", "pad", "special_ids")


def differing_ids(data: InterleavedVocab | ParallelVocab, model: InterleavedVocab | ParallelVocab) -> list[str]:
  """`field: data id != model id` of every layout id two vocabularies of one kind give differently."""
  return [f"{f}: {getattr(data, f)} != {getattr(model, f)}" for f in type(data).__dataclass_fields__
          if f not in _NOT_COMPARED and getattr(data, f) != getattr(model, f)]
