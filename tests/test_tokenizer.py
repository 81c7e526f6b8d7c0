"""tokenizer.py: special ids read from small tokenizer.json files built here with the `tokenizers` package."""
import json
import os

import numpy as np
import pytest
import tokenizers
from tokenizers import models

from wavalign_jax import tokenizer as tok_lib


def _write(tmp_path, base: int, specials: list[str], audio_codes: int = 0, tokenizer_config=None):
  """Base vocab of `base` plain tokens (the last one is "\\n"), then specials, then <|audio_k|> codes."""
  vocab = {f"w{i}": i for i in range(base - 1)}
  vocab["\n"] = base - 1
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="w0"))
  tok.add_special_tokens(specials)
  if audio_codes:
    tok.add_special_tokens([f"<|audio_{i}|>" for i in range(audio_codes)])
  tok.save(os.path.join(tmp_path, "tokenizer.json"))
  if tokenizer_config is not None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
  return {t: tok.token_to_id(t) for t in specials}


VITA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_audio|>", "<|end_of_audio|>",
                 "<|audio|>"]


def test_interleaved_vocab_reads_ids(tmp_path):
  ids = _write(tmp_path, 40, VITA_SPECIALS, audio_codes=12)
  v = tok_lib.interleaved_vocab(str(tmp_path), {"vocab_size": 64, "speech_token_offset": 46})
  # 40 base tokens, 6 specials -> specials 40..45, codes 46..57 (hand-computed).
  assert (v.tokenizer_size, v.first_audio_code, v.num_audio_codes) == (58, 46, 12)
  assert v.special_ids == tuple(range(40, 46))
  assert list(v.is_text(np.array([0, 39, 40, 45, 46, 58, 63]))) == [True, True, False, False, False, False, False]
  assert (v.bos, v.pad, v.im_start, v.eos, v.begin_of_audio, v.end_of_audio) == (40, 40, 41, 42, 43, 44)
  assert ids["<|begin_of_audio|>"] == 43 and v.newline == 39 and v.vocab_size == 64
  assert list(v.is_audio(np.array([45, 46, 57, 58]))) == [False, True, True, False]


def test_interleaved_offset_disagreement_and_missing_token(tmp_path):
  _write(tmp_path, 40, VITA_SPECIALS, audio_codes=12)
  with pytest.raises(ValueError, match="speech_token_offset 47"):
    tok_lib.interleaved_vocab(str(tmp_path), {"vocab_size": 64, "speech_token_offset": 47})
  with pytest.raises(ValueError, match="vocab_size 50"):
    tok_lib.interleaved_vocab(str(tmp_path), {"vocab_size": 50})
  _write(tmp_path, 40, VITA_SPECIALS[:-3], audio_codes=4)
  with pytest.raises(ValueError, match="begin_of_audio"):
    tok_lib.interleaved_vocab(str(tmp_path), {"vocab_size": 64})


def test_interleaved_noncontiguous_codes(tmp_path):
  specials = VITA_SPECIALS + ["<|audio_0|>", "<|audio_1|>", "<|x|>", "<|audio_2|>"]
  _write(tmp_path, 40, specials)
  with pytest.raises(ValueError, match="contiguous"):
    tok_lib.interleaved_vocab(str(tmp_path), {"vocab_size": 64})


@pytest.mark.parametrize("extra, first", [(0, 151685), (1, 151686)])
def test_released_vita_vocab(tmp_path, extra, first):
  # Qwen2.5 base 151643 tokens, 31 specials up to <|begin_of_audio|> = 151674 (docs/method.md §2).
  fill = [f"<|s{i}|>" for i in range(29)]
  specials = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + fill[:28] + ["<|begin_of_audio|>", "<|end_of_audio|>"]
              + fill[28:] + [f"<|t{i}|>" for i in range(7 + extra)] + ["<|audio|>"])
  _write(tmp_path, 151643, specials, audio_codes=16384)
  v = tok_lib.interleaved_vocab(str(tmp_path), {"vocab_size": 168072})
  assert (v.bos, v.eos, v.begin_of_audio, v.end_of_audio, v.first_audio_code) == (
      151643, 151645, 151674, 151675, first)


def test_released_vita_size_with_wrong_ids_raises(tmp_path):
  _write(tmp_path, 40, VITA_SPECIALS, audio_codes=12)
  with pytest.raises(ValueError, match="released VITA-Audio"):
    tok_lib.interleaved_vocab(str(tmp_path), {"vocab_size": 168072})


KIMI_SPECIALS = ["<|im_end|>", "<|im_user|>", "<|im_msg_end|>", "<|im_media_begin|>", "<|im_x|>",
                 "<|im_media_end|>", "<|im_kimia_text_blank|>", "<|im_kimia_text_eos|>",
                 "<|im_kimia_user_msg_start|>", "<|im_kimia_assistant_msg_start|>", "<|im_pad|>"]


def _kimi_config(**kw):
  cfg = {"vocab_size": 96, "kimia_token_offset": 64, "num_base_tokens": 50, "kimia_media_begin": 53,
         "kimia_media_end": 55}
  cfg.update(kw)
  return cfg


def test_parallel_vocab_reads_ids(tmp_path):
  _write(tmp_path, 50, KIMI_SPECIALS, tokenizer_config={"pad_token": "<|im_pad|>"})
  v = tok_lib.parallel_vocab(str(tmp_path), _kimi_config())
  assert (v.msg_end, v.media_begin, v.media_end, v.text_blank, v.text_eos) == (52, 53, 55, 56, 57)
  assert (v.user_msg_start, v.assistant_msg_start, v.pad) == (58, 59, 60)
  assert (v.tokenizer_size, v.audio_offset, v.num_audio_codes) == (61, 64, 32)
  assert v.special_ids == tuple(range(50, 61))
  assert v.is_text(np.arange(50)).all() and not v.is_text(np.arange(50, 96)).any()


def test_parallel_vocab_errors(tmp_path):
  _write(tmp_path, 50, KIMI_SPECIALS, tokenizer_config={"pad_token": "<|im_pad|>"})
  with pytest.raises(ValueError, match="kimia_media_begin 54"):
    tok_lib.parallel_vocab(str(tmp_path), _kimi_config(kimia_media_begin=54))
  with pytest.raises(ValueError, match="num_base_tokens 51"):
    tok_lib.parallel_vocab(str(tmp_path), _kimi_config(num_base_tokens=51))
  with pytest.raises(ValueError, match="released Kimi-Audio"):
    tok_lib.parallel_vocab(str(tmp_path), _kimi_config(vocab_size=168448))
  _write(tmp_path, 50, KIMI_SPECIALS)
  os.remove(tmp_path / "tokenizer_config.json")
  with pytest.raises(ValueError, match="no pad token"):
    tok_lib.parallel_vocab(str(tmp_path), _kimi_config())


def test_tokenizer_config_only_and_disagreement(tmp_path):
  """Kimi ships a tiktoken model: special ids then come from tokenizer_config.json's added_tokens_decoder."""
  ids = {50 + i: t for i, t in enumerate(KIMI_SPECIALS)}
  cfg = {"pad_token": "<|im_pad|>", "added_tokens_decoder": {str(i): {"content": t} for i, t in ids.items()}}
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
  assert tok_lib.parallel_vocab(str(tmp_path), _kimi_config()).text_eos == 57
  _write(tmp_path, 51, KIMI_SPECIALS)  # tokenizer.json now says every special is one id later
  with pytest.raises(ValueError, match="tokenizer_config.json"):
    tok_lib.special_token_ids(str(tmp_path))


def test_decode_text_keeps_inner_whitespace_for_benchmarks_and_collapses_it_for_rewards():
  """Byte-level BPE (Qwen-style) decodes to the exact text: benchmarks (IFEval) see its line breaks, rewards words."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.add_special_tokens(["<|im_end|>"])
  text = "  Two lines:\n\nsecond  line\tend \n"
  tok.train_from_iterator([text], tokenizers.trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  end = tok.token_to_id("<|im_end|>")
  ids = [end, *tok.encode(text, add_special_tokens=False).ids, end]
  assert tok_lib.decode_text(tok, ids) == "Two lines:\n\nsecond  line\tend"
  assert tok_lib.decode_text(tok, ids, collapse_whitespace=True) == "Two lines: second line end"
