"""JSONL -> ArrayRecord -> records round trip, chat templates from a tiny tokenizer, malformed records."""
import json
import re
import os
import shutil

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from wavalign_jax.config_lib import base_config
from wavalign_jax.data import build as B
from wavalign_jax.data import describe as I
from wavalign_jax.data import layouts as L
from wavalign_jax.data import loader
from wavalign_jax.data.loader import RecordSource, resolve_paths

WORDS = ["[UNK]", "\n", "system", "user", "assistant", "you", "are", "helpful", "what", "is", "two", "plus",
         "four", "it", "no"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|audio|>",
            "<|im_msg_end|>", "<|im_media_begin|>", "<|im_media_end|>", "<|im_kimia_text_blank|>",
            "<|im_kimia_text_eos|>", "<|im_kimia_user_msg_start|>", "<|im_kimia_assistant_msg_start|>"]
NUM_CODES = 8
FIRST_CODE = len(WORDS) + len(SPECIALS)  # 28; parallel audio offset used below: 40


def make_tokenizer(path):
  """Word-level tokenizer: words split on spaces, newline kept as a token; Qwen-like specials then audio codes."""
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(" +"), "removed"), pre_tokenizers.Split("\n", "isolated")])
  tok.add_special_tokens(SPECIALS)
  tok.add_special_tokens([f"<|audio_{i}|>" for i in range(NUM_CODES)])
  tok.save(str(path))
  return str(path)


def ids(*words):
  return [WORDS.index(w) for w in words]


def sp(name):
  return len(WORDS) + SPECIALS.index(name)


RECORD = {"messages": [{"role": "system", "content": "you are helpful"},
                       {"role": "user", "content": "<|audio|>"}],
          "audios": [[1, 2]], "question_text": "what is two plus two", "sft_target_text": "it is four",
          "sft_target_audio": [3, 4, 5, 6, 7], "answer": "four", "style": "calm"}


def write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


def build_dataset(tmp_path, records, arch="interleaved", kind="sft", num_shards=2, **kw):
  tok = make_tokenizer(tmp_path / "tokenizer.json")
  builder = B.Builder(tok, arch=arch, kind=kind, ratios=(1, 4), audio_delay=1, audio_offset=40,
                      num_audio_codes=NUM_CODES)
  out = str(tmp_path / f"{arch}_{kind}")
  info = B.build(builder, [write_jsonl(tmp_path / "in.jsonl", records)], out, num_shards=num_shards, **kw)
  return out, info, builder


def test_interleaved_sft_roundtrip(tmp_path):
  records = [dict(RECORD, sft_target_text=" ".join(["four"] * n)) for n in range(1, 6)]
  out, info, builder = build_dataset(tmp_path, records)
  assert info["num_records"] == 5 and info["pad_id"] == sp("<|endoftext|>")
  paths, _ = resolve_paths(out)
  source = RecordSource(paths)
  assert len(source) == 5
  rec = source[0]
  assert rec.meta["line"] == 1 and rec.meta["answer"] == "four"
  ex = rec.examples["example"]
  s, e, n = sp("<|im_start|>"), sp("<|im_end|>"), WORDS.index("\n")
  boa, eoa = sp("<|begin_of_audio|>"), sp("<|end_of_audio|>")
  prompt = ([s, *ids("system"), n, *ids("you", "are", "helpful"), e, n,
             s, *ids("user"), n, boa, FIRST_CODE + 1, FIRST_CODE + 2, eoa, e, n, s, *ids("assistant"), n])
  # ratios (1, 4): 1 text token + 2 codes per chunk; the text runs out after the first chunk
  response = [*ids("four"), boa, *[FIRST_CODE + c for c in (3, 4, 5, 6, 7)], eoa, e, n]
  np.testing.assert_array_equal(ex.tokens["tokens"], prompt + response)
  assert ex.prompt_len == len(prompt)
  np.testing.assert_array_equal(ex.types["tokens"], [0] * len(prompt) + [1, 3, 2, 2, 2, 2, 2, 3, 1, 1])
  # round-robin shards read back in shard order: lines 1, 3, 5 then 2, 4
  assert [source[i].meta["line"] for i in range(5)] == [1, 3, 5, 2, 4]
  assert source.where(4).endswith("data-00001-of-00002.array_record[1]")
  # Line 5 (five words, codes 3..7), by hand: chunks of 1 word and 2 codes while both last; the final chunk takes the
  # remaining 3 words and the last code.
  c = lambda *codes: [FIRST_CODE + k for k in codes]
  four = ids("four")[0]
  response = [four, boa, *c(3, 4), eoa, four, boa, *c(5, 6), eoa, four, four, four, boa, *c(7), eoa, e, n]
  np.testing.assert_array_equal(source[2].examples["example"].tokens["tokens"], prompt + response)


def test_parallel_rl_and_dpo(tmp_path):
  out, info, builder = build_dataset(tmp_path, [RECORD], arch="parallel", kind="rl", num_shards=1)
  ex = RecordSource(resolve_paths(out)[0])[0].examples["example"]
  blank, um, am, me = (sp(t) for t in ("<|im_kimia_text_blank|>", "<|im_kimia_user_msg_start|>",
                                       "<|im_kimia_assistant_msg_start|>", "<|im_msg_end|>"))
  mb, mend, eos = sp("<|im_media_begin|>"), sp("<|im_media_end|>"), sp("<|im_kimia_text_eos|>")
  # system text merged into the user turn, then the question audio
  text = [blank, *ids("you", "are", "helpful"), blank, blank, blank, blank, blank, blank]
  audio = [um, blank, blank, blank, mb, 41, 42, mend, me, am]
  np.testing.assert_array_equal(ex.tokens["text"][:10], text)
  np.testing.assert_array_equal(ex.tokens["audio"][:10], audio)
  np.testing.assert_array_equal(ex.tokens["text"][10:], [*ids("it", "is", "four"), eos, blank, blank, blank])
  np.testing.assert_array_equal(ex.tokens["audio"][10:], [blank, 43, 44, 45, 46, 47, me])
  dpo = dict(RECORD, rejected_text="no", rejected_audio=[0])
  out, _, _ = build_dataset(tmp_path, [dpo], arch="parallel", kind="dpo", num_shards=1)
  rec = RecordSource(resolve_paths(out)[0])[0]
  np.testing.assert_array_equal(rec.examples["rejected"].response().tokens["text"], [*ids("no"), eos, blank])
  np.testing.assert_array_equal(rec.examples["rejected"].response().tokens["audio"], [blank, 40, me])


def test_code_files_and_max_length(tmp_path):
  np.save(tmp_path / "q.npy", np.array([[1, 2]]))
  (tmp_path / "a.txt").write_text("3 4\n5")
  (tmp_path / "a.json").write_text("[6, 7]")
  recs = [dict(RECORD, audios=["q.npy"], sft_target_audio="a.txt"), dict(RECORD, sft_target_audio="a.json"),
          dict(RECORD, sft_target_audio=list(range(8)) * 10)]
  out, info, _ = build_dataset(tmp_path, recs, num_shards=1, max_length=60)
  assert info["num_records"] == 2 and info["skipped_too_long"] == 1
  src = RecordSource(resolve_paths(out)[0])
  assert L.interleaved_split(src[0].examples["example"].response().tokens["tokens"], _vocab(tmp_path)) == (
      ids("it", "is", "four"), [3, 4, 5])
  assert L.interleaved_split(src[1].examples["example"].response().tokens["tokens"], _vocab(tmp_path))[1] == [6, 7]
  report = I.report(out, decode_examples=1)
  assert "records: 2" in report and "kinds {'sft': 2}" in report and "<|begin_of_audio|>" in report
  prompts = sorted(src[i].examples["example"].prompt_len for i in range(2))   # the histogram counts both records
  line = next(l for l in report.splitlines() if l.split()[:2] == ["example", "prompt"])
  assert f"min {prompts[0]} mean {np.mean(prompts):.1f} max {prompts[1]}" in line, report


def test_unreadable_code_files_name_the_field_the_file_and_the_line(tmp_path):
  """An empty .npy (EOFError), a directory (OSError) and a word in a .txt (ValueError) are one error naming the
  record's line, the field and the file; a file of one code is a response of one code."""
  (tmp_path / "empty.npy").write_bytes(b"")
  (tmp_path / "dir.npy").mkdir()
  (tmp_path / "words.txt").write_text("1 2 x")
  for name, cause in (("empty.npy", "EOFError"), ("dir.npy", "IsADirectoryError"), ("words.txt", "ValueError")):
    with pytest.raises(ValueError, match=f"in.jsonl:2: field 'sft_target_audio': cannot read audio codes from "
                                         f".*{name} \\({cause}"):
      build_dataset(tmp_path, [RECORD, dict(RECORD, sft_target_audio=name)])
  np.save(tmp_path / "one.npy", np.array([5]))
  out, _, _ = build_dataset(tmp_path, [dict(RECORD, sft_target_audio="one.npy")], num_shards=1)
  response = RecordSource(resolve_paths(out)[0])[0].examples["example"].response().tokens["tokens"]
  assert L.interleaved_split(response, _vocab(tmp_path))[1] == [5]


def _vocab(tmp_path):
  return B.Builder(str(tmp_path / "tokenizer.json"), num_audio_codes=NUM_CODES).vocab


@pytest.mark.parametrize("record, kind, match", [
    ({k: v for k, v in RECORD.items() if k != "sft_target_text"}, "sft", "missing field 'sft_target_text'"),
    (dict(RECORD, sft_target_audio=[3, 99]), "sft", "sft_target: response audio: audio code 99 outside"),
    (dict(RECORD, rejected_text="no", rejected_audio=[3, 99]), "dpo", "rejected: response audio: audio code 99"),
    (dict(RECORD, sft_target_text="", sft_target_audio=[]), "sft", "empty response"),
    (dict(RECORD, sft_target_audio="x.wav"), "sft", "GLM-4-Voice"),
    (dict(RECORD, sft_target_audio="missing.npy"), "sft", "does not exist"),
    (dict(RECORD, sft_target_text=3), "sft", "'sft_target_text' must be str"),
    (dict(RECORD, sft_target_audio=[1.5]), "sft", "integer code ids"),
    (dict(RECORD, messages=[{"role": "user"}]), "sft", r"messages\[0\]"),
    (dict(RECORD, audios=[]), "sft", "more <|audio|> placeholders"),
    (dict(RECORD, audios="not a list"), "sft",
     "field 'audios' must be a list of code lists or code-file paths, got str"),
    (dict(RECORD, audios=[7]), "sft", r"audios\[0\].*expected a list of code ids or a path, got int"),
    (dict(RECORD, audios=""), "sft", r"field 'audios' must be a list .*got str"),
    (dict(RECORD, audios={}), "sft", r"field 'audios' must be a list .*got dict"),
    (dict(RECORD, audios=0), "sft", r"field 'audios' must be a list .*got int"),
    (dict(RECORD, audios=[[]]), "sft", r"field 'audios\[0\]': no audio codes"),
    ({k: v for k, v in RECORD.items() if k != "question_text"}, "rl", "missing field 'question_text'"),
    (RECORD, "dpo", "missing field 'rejected_text'"),
    ("{not json", "sft", "Expecting property name"),
])
def test_malformed_records_name_file_and_line(tmp_path, record, kind, match):
  with pytest.raises(ValueError, match=match) as e:
    build_dataset(tmp_path, [dict(RECORD, rejected_text="no", rejected_audio=[0]), record], kind=kind)
  assert "in.jsonl:2:" in str(e.value)


def test_failed_rebuild_leaves_the_old_dataset_and_no_partial_one(tmp_path):
  out, info, _ = build_dataset(tmp_path, [RECORD] * 6, num_shards=3)
  before = sorted(os.listdir(out))
  with pytest.raises(FileExistsError, match="--overwrite"):
    build_dataset(tmp_path, [RECORD] * 2, num_shards=1)
  bad = [RECORD] * 4 + [dict(RECORD, sft_target_audio="missing.npy")]
  with pytest.raises(ValueError, match="in.jsonl:5:"):
    build_dataset(tmp_path, bad, num_shards=1, overwrite=True)
  assert sorted(os.listdir(out)) == before
  assert sorted(os.listdir(tmp_path)) == sorted(["in.jsonl", "tokenizer.json", os.path.basename(out)])
  assert len(RecordSource(resolve_paths(out)[0])) == 6
  # --overwrite with good input replaces it whole.
  out, info, _ = build_dataset(tmp_path, [RECORD] * 2, num_shards=1, overwrite=True)
  assert info["num_records"] == 2 and sorted(os.listdir(out)) == ["data-00000-of-00001.array_record", B.INFO_FILE,
                                                                    B.TOKENIZER_FILE]


def test_a_truncated_shard_is_named(tmp_path):
  """A shard cut short (a copy interrupted, a full disk) is a one-line error naming it, not a bare RuntimeError."""
  out, info, _ = build_dataset(tmp_path, [RECORD] * 6, num_shards=2)
  paths, _ = resolve_paths(out)
  os.truncate(paths[0], os.path.getsize(paths[0]) // 2)
  with pytest.raises(ValueError, match=rf"ArrayRecord shard {re.escape(paths[0])} cannot be read .*damaged"):
    RecordSource(paths)


def test_overwrite_replaces_only_a_built_dataset(tmp_path):
  """--overwrite must not delete a folder of other files: the build's own inputs, audio codes, a checkout."""
  tok = make_tokenizer(tmp_path / "tokenizer.json")
  builder = B.Builder(tok, arch="interleaved", kind="sft", ratios=(1, 4), audio_delay=1, audio_offset=40,
                      num_audio_codes=NUM_CODES)
  data = tmp_path / "data"
  data.mkdir()
  inp = write_jsonl(data / "train.jsonl", [RECORD] * 2)
  with pytest.raises(FileExistsError, match=r"is not a built dataset \(no readable dataset_info.json\)"):
    B.build(builder, [inp], str(data), overwrite=True)
  assert os.listdir(data) == ["train.jsonl"]
  out = tmp_path / "built"
  B.build(builder, [inp], str(out))
  (out / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match=r"holds files a build did not write \(notes.txt\)"):
    B.build(builder, [inp], str(out), overwrite=True)
  assert (out / "notes.txt").read_text() == "mine" and (out / B.INFO_FILE).exists()
  with pytest.raises(ValueError, match="--num_shards=0: must be >= 1"):
    B.build(builder, [inp], str(tmp_path / "none"), num_shards=0)
  assert not os.path.exists(tmp_path / "none")


def test_content_checksum_is_the_records_and_their_shards(tmp_path):
  """dataset_info's `content_sha256` identifies what a run reads (config_history refuses a resume over a dataset
  rebuilt in place with another one): rebuilt from the same records it is the same; one more record, another record
  or another shard count give another. (A record keeps its source file's path: built from a moved JSONL, it differs.)"""
  sha = lambda records, shards=2: build_dataset(tmp_path, records, num_shards=shards, overwrite=True)[1][
      "content_sha256"]
  first = sha([RECORD] * 3)
  assert sha([RECORD] * 3) == first
  assert len({first, sha([RECORD] * 4), sha([RECORD] * 3, shards=3),
              sha([RECORD] * 2 + [dict(RECORD, sft_target_text="it is five")])}) == 4


def test_a_moved_dataset_decodes_with_the_tokenizer_it_was_built_with(tmp_path):
  """The dataset carries a copy of its tokenizer, named relative to itself: moved to another place, with the
  tokenizer it was built from gone, it still resolves to a tokenizer with the same ids."""
  here = tmp_path / "here"
  here.mkdir()
  built, _, _ = build_dataset(here, [RECORD] * 2)
  original = tokenizers.Tokenizer.from_file(str(here / "tokenizer.json")).get_vocab()
  moved = str(tmp_path / "elsewhere")
  os.replace(built, moved)
  shutil.rmtree(here)
  _, info = resolve_paths(moved)
  assert info["tokenizer"] == os.path.join(moved, B.TOKENIZER_FILE)
  assert info["tokenizer_source"] == str(here / "tokenizer.json")
  copy = tokenizers.Tokenizer.from_file(info["tokenizer"]).get_vocab()
  assert copy == original and len(copy) == len(WORDS) + len(SPECIALS) + NUM_CODES
  assert "'it is four'" in I.report(moved)   # the response decoded with the copy


def test_inspect_recomputes_the_content_checksum_from_the_shards(tmp_path):
  """What the build hashed while writing (record j to shard j % 3) is what inspect reads back from 7 records in 3
  uneven shards; two shards of equal size swapped (the loader's record counts still agree) are reported."""
  records = [dict(RECORD, sft_target_text=" ".join(["four"] * n)) for n in range(1, 8)]
  out, info, _ = build_dataset(tmp_path, records, num_shards=3)
  assert B.verify_content(out) == (info["content_sha256"], info["content_sha256"])
  assert f"content: the records match dataset_info.json's content_sha256 {info['content_sha256'][:16]}" in I.report(out)
  a, b = (os.path.join(out, f"data-0000{i}-of-00003.array_record") for i in (1, 2))
  os.replace(a, a + ".x")
  os.replace(b, a)
  os.replace(a + ".x", b)
  assert "content: DIFFERS from dataset_info.json's content_sha256" in I.report(out)


def test_loader_refuses_a_dataset_whose_shards_disagree_with_its_info(tmp_path):
  out, _, builder = build_dataset(tmp_path, [RECORD] * 6, num_shards=3)
  # A shard from another build (1 record) in place of one of this build's (2 records).
  other = str(tmp_path / "other")
  B.build(builder, [write_jsonl(tmp_path / "one.jsonl", [RECORD])], other)
  os.replace(os.path.join(other, "data-00000-of-00001.array_record"),
             os.path.join(out, "data-00001-of-00003.array_record"))
  with pytest.raises(ValueError, match="shards hold 5 records but dataset_info.json says 6"):
    loader.make_loader(out, global_batch_size=1, buckets=(256,))


SPECIALS_FIRST = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|audio|>"]


@pytest.mark.parametrize("arch", ["interleaved", "parallel"])
def test_specials_first_tokenizer(tmp_path, arch):
  """A tokenizer trained from scratch has its specials at ids 0..k: text is told apart by token class."""
  specials = SPECIALS_FIRST if arch == "interleaved" else SPECIALS
  vocab = {t: i for i, t in enumerate(specials)}
  vocab.update({w: len(specials) + i for i, w in enumerate(WORDS)})
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(" +"), "removed"), pre_tokenizers.Split("\n", "isolated")])
  tok.add_special_tokens(specials)
  tok.add_special_tokens([f"<|audio_{i}|>" for i in range(NUM_CODES)])
  path = str(tmp_path / "tokenizer.json")
  tok.save(path)
  builder = B.Builder(path, arch=arch, kind="rl", ratios=(1, 4), audio_delay=1, audio_offset=40,
                      num_audio_codes=NUM_CODES)
  assert builder.vocab.special_ids[:len(specials)] == tuple(range(len(specials)))
  out = str(tmp_path / "ds")
  info = B.build(builder, [write_jsonl(tmp_path / "in.jsonl", [RECORD] * 3)], out)
  assert info["num_records"] == 3
  ex = RecordSource(resolve_paths(out)[0])[0].examples["example"].response()
  text_stream = "tokens" if arch == "interleaved" else "text"
  four = len(specials) + WORDS.index("four")
  assert four in ex.tokens[text_stream].tolist()
  # The sampler's constraint allows exactly the word ids as text.
  from wavalign_jax.rollout import decode
  layout = {"kind": arch, "ratios": (1, 4)} if arch == "interleaved" else {"kind": arch, "audio_delay": 1}
  rollout_cfg = dict(base_config().rollout, group_size=1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8)
  constraint = decode.sampling_config(rollout_cfg, layout, builder.vocab).constraint
  allowed = np.asarray(constraint.allowed(constraint.init(1))[text_stream][0])
  word_ids = set(range(len(specials), len(specials) + len(WORDS)))
  assert {int(i) for i in np.flatnonzero(allowed)} - {builder.vocab.begin_of_audio if arch == "interleaved"
                                                       else builder.vocab.text_eos} == word_ids


# ----------------------------------------------------------------------------- what a run could not load


def _cli_build(tmp_path, *args):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, "-m", "data_pipeline.build", f"--tokenizer={tmp_path / 'tokenizer.json'}",
                         "--ratios=1,4", *args], cwd=repo, capture_output=True, text=True, timeout=120)


def test_empty_input_never_replaces_a_dataset(tmp_path):
  out, _, _ = build_dataset(tmp_path, [RECORD] * 3, num_shards=1)
  before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
  for lines in ([], ["", "   ", "\t"]):
    with pytest.raises(ValueError, match=r"nothing to write from .*in.jsonl: they hold no records"):
      build_dataset(tmp_path, lines, num_shards=1, overwrite=True)
  # the command line: a one-line error, exit 1, the dataset byte for byte as it was
  (tmp_path / "blank.jsonl").write_text("\n \n")
  cli = _cli_build(tmp_path, f"--input={tmp_path / 'blank.jsonl'}", f"--output_dir={out}", "--overwrite")
  assert cli.returncode == 1 and cli.stderr.startswith("error: nothing to write") and "Traceback" not in cli.stderr
  assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before
  assert sorted(os.listdir(tmp_path)) == sorted(["in.jsonl", "blank.jsonl", "tokenizer.json", os.path.basename(out)])


def test_default_max_length_is_the_configs_largest_bucket():
  from experiments import kimi, vita
  largest = {c.data.max_prompt_len + c.data.max_response_len for c in (vita.get_config(), kimi.get_config())}
  assert largest == {B.DEFAULT_MAX_LENGTH} == {1536}


def test_too_long_records_are_settled_at_build_time(tmp_path):
  # prompt 20 + response 2011: 3 text tokens, 2000 codes, 3 chunks' markers (ratios 1,4: 2 codes per chunk until the
  # text runs out), <|im_end|> and newline
  records = [RECORD, dict(RECORD, sft_target_audio=[1] * 2000), RECORD]
  out, info, _ = build_dataset(tmp_path, records, num_shards=1)
  assert info["num_records"] == 2 and info["skipped_too_long"] == 1 and info["max_length"] == 1536
  assert info["skipped_too_long_first"][0].endswith("in.jsonl:2 (2031 tokens)")
  assert info["longest"] == max(len(RecordSource(resolve_paths(out)[0])[i].examples["example"]) for i in range(2))
  with pytest.raises(ValueError, match=r"in.jsonl:2: 2031 tokens, longer than --max_length=1536 \(--strict\)"):
    build_dataset(tmp_path, records, num_shards=1, overwrite=True, strict=True)
  with pytest.raises(ValueError, match=r"all 1 records are longer than --max_length=60"):
    build_dataset(tmp_path, [dict(RECORD, sft_target_audio=[1] * 80)], num_shards=1, overwrite=True, max_length=60)
  # kept with max_length=0: a run whose buckets are shorter refuses it at start (config_check), not at the record
  out, info, _ = build_dataset(tmp_path, records, num_shards=1, overwrite=True, max_length=0)
  assert info["num_records"] == 3 and info["longest"] == 2031
  loader.check_lengths(resolve_paths(out)[1], (512, 2031))
  with pytest.raises(ValueError, match="examples of up to 2031 tokens exceed the largest length bucket 1536"):
    loader.check_lengths(resolve_paths(out)[1], (512, 1536))


def test_invalid_utf8_names_file_and_line(tmp_path):
  path = tmp_path / "in.jsonl"
  latin1 = json.dumps(dict(RECORD, answer="caf\xe9"), ensure_ascii=False).encode("latin-1")
  path.write_bytes(json.dumps(RECORD).encode() + b"\n" + latin1 + b"\n")
  builder = B.Builder(make_tokenizer(tmp_path / "tokenizer.json"), ratios=(1, 4), num_audio_codes=NUM_CODES)
  with pytest.raises(ValueError, match=r"in.jsonl:2: not valid UTF-8 \(byte 0xe9 at column \d+\)"):
    B.build(builder, [str(path)], str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "tokenizer.json"]


def test_unknown_words_are_counted_and_strict_refuses_them(tmp_path):
  records = [RECORD, dict(RECORD, question_text="what is five", sft_target_text="it is five five"),
             dict(RECORD, messages=[{"role": "user", "content": "six <|audio|>"}])]
  out, info, _ = build_dataset(tmp_path, records, num_shards=1)
  # question_text is metadata (the judge's), not tokenized: two 'five' in one response, 'six' in one prompt
  assert (info["unknown_words"], info["records_with_unknown_words"]) == (3, 2)
  assert info["most_common_unknown_words"] == {"five": 2, "six": 1}
  assert "3 words in 2 records are outside the tokenizer's vocabulary" in B.summary(info, out)
  with pytest.raises(ValueError, match=r"in.jsonl:2: words outside the tokenizer's vocabulary \(--strict\): \['five'"):
    build_dataset(tmp_path, records, num_shards=1, overwrite=True, strict=True)
  byte_level = tokenizers.Tokenizer(models.BPE())
  assert B.vocab_lib.unknown_id(byte_level) is None   # Qwen-style tokenizers encode any text
