"""Testbed: unit-TTS, noise, records and splits, dataset files, rule judge, IQ/EQ, tokenizer."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wavalign_jax import tokenizer as ckpt_tokenizer
from wavalign_jax.data import layouts
from wavalign_jax.rewards.base import RewardItem
from wavalign_jax.testbed import generate, judge, metrics, tasks, unit_tts, vocab

R = unit_tts.UNITS_PER_REGISTER


@pytest.fixture(scope="module")
def splits():
  return tasks.build_splits(seed=3, noise_rate=0.2)


# ----------------------------------------------------------------------------- unit-TTS


def test_unit_tts_styles_follow_register_and_duration_rules():
  text = "what is 7 plus 5"
  neutral = np.asarray(unit_tts.synthesize(text, "neutral")).reshape(5, 3)
  assert neutral.min() >= R and neutral.max() < 2 * R   # neutral register
  np.testing.assert_array_equal(unit_tts.synthesize(text, "high"), (neutral + R).ravel())
  np.testing.assert_array_equal(unit_tts.synthesize(text, "low"), (neutral - R).ravel())
  np.testing.assert_array_equal(unit_tts.synthesize(text, "fast"), neutral[:, [0, 2]].ravel())
  np.testing.assert_array_equal(unit_tts.synthesize(text, "slow"), neutral[:, [0, 1, 1, 2]].ravel())
  # Per-word and context-free: the codes of a text are the concatenated codes of its words.
  assert unit_tts.synthesize("7 plus", "slow") == (unit_tts.synthesize("7", "slow")
                                                   + unit_tts.synthesize("plus", "slow"))
  assert unit_tts.synthesize("", "high") == []
  with pytest.raises(ValueError, match="whisper"):
    unit_tts.synthesize("hi", "whisper")


def test_unit_tts_words_are_distinguishable_and_codes_in_range():
  words = tasks.lexicon()
  assert len({unit_tts.word_units(w) for w in words}) == len(words)
  for style in unit_tts.STYLES:
    codes = unit_tts.synthesize(" ".join(words), style)
    assert 0 <= min(codes) and max(codes) < unit_tts.NUM_AUDIO_CODES


def test_unit_tts_is_deterministic_across_processes():
  text = "count from 3 to 6"
  code = ("from wavalign_jax.testbed import unit_tts; "
          f"print(unit_tts.synthesize({text!r}, 'slow'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONHASHSEED="12345"))
  assert json.loads(out.stdout) == unit_tts.synthesize(text, "slow")


def test_noise_rate_as_configured():
  codes = np.random.default_rng(0).integers(0, unit_tts.NUM_AUDIO_CODES, 20000).tolist()
  assert unit_tts.add_noise(codes, 0.0, np.random.default_rng(1)) == codes
  assert all(a != b for a, b in zip(unit_tts.add_noise(codes, 1.0, np.random.default_rng(1)), codes))
  noisy = unit_tts.add_noise(codes, 0.3, np.random.default_rng(1))
  changed = np.mean(np.asarray(noisy) != np.asarray(codes))
  assert abs(changed - 0.3) < 0.015   # binomial std is 0.0032
  assert 0 <= min(noisy) and max(noisy) < unit_tts.NUM_AUDIO_CODES
  assert noisy == unit_tts.add_noise(codes, 0.3, np.random.default_rng(1))
  with pytest.raises(ValueError, match="noise rate"):
    unit_tts.add_noise(codes, 1.5, np.random.default_rng(1))


# ----------------------------------------------------------------------------- records and splits


def _expected_answer(task, question, facts):
  """The answer recomputed from the question words alone (and the fact table for lookups)."""
  w = question.split()
  if task == "add":
    return str(int(w[2]) + int(w[4]))
  if task == "sub":
    return str(int(w[2]) - int(w[4]))
  if task == "count":
    return " ".join(str(n) for n in range(int(w[2]), int(w[4]) + 1))
  name = {"color": w[3], "home": w[2], "pet": w[3]}[task]
  return facts[name][task]


def test_records_valid_serialisable_and_correct(splits):
  facts = tasks.fact_table(3)
  records = splits["train"] + splits["eval"]
  assert {r["task"] for r in records} == set(tasks.TEMPLATES)
  assert {r["style"] for r in records} == set(unit_tts.STYLES)
  for r in records:
    tasks.check_record(r, r["id"])
    assert json.loads(json.dumps(r)) == r
    assert r["answer"] == r["sft_target_text"] == _expected_answer(r["task"], r["question_text"], facts)
    assert 1 <= len(r["answer"].split()) <= 4
    assert r["sft_target_audio"] == unit_tts.synthesize(r["answer"], r["style"])
    assert r["messages"][0]["content"].split()[-2] == r["style"]
  noisy = np.concatenate([r["audios"][0] for r in records])
  clean = np.concatenate([unit_tts.synthesize(r["question_text"]) for r in records])
  assert abs(np.mean(noisy != clean) - 0.2) < 0.02
  for r in splits["dpo"]:
    tasks.check_record(r, r["id"])
    assert judge.score(r["rejected_text"], r["answer"])[0] < 5
    assert r["rejected_audio"] == unit_tts.synthesize(r["rejected_text"], r["style"])


def test_splits_disjoint_and_lookups_learnable(splits):
  key = lambda r: (r["question_text"], r["style"])
  train = {key(r) for r in splits["train"]}
  evals = {key(r) for r in splits["eval"]}
  assert len(train) == len(splits["train"]) and len(evals) == len(splits["eval"])
  assert not train & evals
  assert len(train | evals) == len(tasks.questions(tasks.fact_table(3))) * len(unit_tts.STYLES)
  train_questions = {q for q, _ in train}
  for r in splits["eval"]:
    if r["task"] in tasks.LOOKUPS:   # a fact is only learnable if training asks it too
      assert r["question_text"] in train_questions
  heldout = {r["question_text"] for r in splits["eval"]} - train_questions
  assert heldout and all(q.startswith(("what is", "count")) for q in heldout)
  assert [r["id"] for r in splits["dpo"]] == [r["id"] for r in splits["train"]]


def test_splits_deterministic_per_seed(splits):
  assert tasks.build_splits(seed=3, noise_rate=0.2) == splits
  other = tasks.build_splits(seed=4, noise_rate=0.2)
  assert tasks.fact_table(4) != tasks.fact_table(3)
  assert [r["id"] for r in other["train"]] != [r["id"] for r in splits["train"]]


def test_check_record_names_the_field(splits):
  bad = dict(splits["train"][0], sft_target_audio=[0, unit_tts.NUM_AUDIO_CODES])
  with pytest.raises(ValueError, match=r"rec7: field 'sft_target_audio'"):
    tasks.check_record(bad, "rec7")
  with pytest.raises(ValueError, match="field 'messages' has 0"):
    tasks.check_record(dict(splits["train"][0], messages=[{"role": "system", "content": "x"},
                                                          {"role": "user", "content": "hi"}]))


def test_records_fit_both_layouts(splits):
  """Every record lays out (data.layouts) under 96 tokens per stream for both architectures."""
  tok = vocab.build_tokenizer()
  enc = lambda s: tok.encode(s, add_special_tokens=False).ids
  iv, pv = vocab.interleaved_vocab(), vocab.parallel_vocab()
  roles = {r: enc(r) for r in vocab.ROLE_WORDS}
  for r in splits["train"] + splits["eval"]:
    system, question, answer = enc(r["messages"][0]["content"]), r["audios"][0], enc(r["answer"])
    prompt = layouts.interleaved_prompt(
        [layouts.Turn.make("system", system), layouts.Turn.make("user", audio=question)], iv, roles)
    for ratios in (layouts.BOOST_RATIOS, layouts.BALANCE_RATIOS):
      response = layouts.interleaved_response(answer, r["sft_target_audio"], iv, ratios)
      assert len(layouts.join(prompt, response)) < 96
      assert layouts.interleaved_split(response.tokens["tokens"], iv) == (answer, r["sft_target_audio"])
    prompt = layouts.parallel_prompt([layouts.Turn.make("user", system, question)], pv)
    response = layouts.parallel_response(answer, r["sft_target_audio"], pv)
    assert len(layouts.join(prompt, response)) < 96


def test_generate_writes_readable_dataset(tmp_path, splits):
  paths = generate.generate(str(tmp_path), seed=3, noise_rate=0.2)
  for name in ("train", "eval", "dpo"):
    assert generate.read_records(paths[name]) == splits[name]
  meta = json.loads(open(paths["meta"]).read())
  assert meta["counts"] == {k: len(v) for k, v in splits.items()}
  assert meta["facts"] == tasks.fact_table(3)
  with open(paths["eval"], "a") as f:
    f.write('{"id": 1}\n')
  n = len(splits["eval"]) + 1
  with pytest.raises(ValueError, match=rf"eval.jsonl:{n}: field 'id'"):
    generate.read_records(paths["eval"])


# ----------------------------------------------------------------------------- judge and metrics


@pytest.mark.parametrize("text,answer,expected", [
    ("7", "7", 5), (" Big  Forest. ", "big forest", 5),
    ("8", "7", 4), ("5", "7", 3), ("10", "7", 1), ("0", "1", 4),
    ("forest big", "big forest", 3), ("big forest now", "big forest", 3), ("3 4 5 6 7", "3 4 5 6", 3),
    ("a red dog", "a red cat", 2), ("3 4 5", "3 4 5 6", 2), ("big", "big forest", 2),
    ("blue", "red", 1), ("", "red", 1), ("?!", "7", 1), ("cat 7 dog fish", "7", 1),
    ("6 7 8", "7", 1), ("7 8", "7", 2),
])
def test_judge_scores(text, answer, expected):
  assert judge.score(text, answer)[0] == expected


def test_judge_reward_fn():
  fn = judge.RuleJudge()
  items = [RewardItem({"answer": "12"}, "12"), RewardItem({"answer": "12"}, "13"),
           RewardItem({"answer": "12"}, ""), RewardItem({"answer": "a red cat"}, "cat red a", (1, 2))]
  result = fn(items)
  np.testing.assert_array_equal(result.scores, [5, 4, 1, 3])
  assert not result.failed.any() and result.scores.dtype == np.float32
  assert [i["reason"] for i in result.info] == ["exact", "off by 1", "empty", "wrong order"]
  with pytest.raises(ValueError, match="item 1 has no string 'answer'"):
    fn([items[0], RewardItem({"question_text": "q"}, "12")])


def test_edit_distance_hand_cases():
  assert metrics.edit_distance([1, 2, 3], [1, 2, 3]) == 0
  assert metrics.edit_distance([], [4, 5]) == 2
  assert metrics.edit_distance(list("kitten"), list("sitting")) == 3
  assert metrics.edit_distance([1, 2, 3, 4], [2, 3, 4, 1]) == 2


def test_iq_eq_hand_computed():
  rec = {"answer": "big forest", "style": "high"}
  speech = unit_tts.synthesize("big forest", "high")   # 6 codes
  wrong_sub = list(speech)
  wrong_sub[4] = (wrong_sub[4] + 1) % unit_tts.NUM_AUDIO_CODES
  items = [
      (rec, "big forest", speech),                                  # correct, EQ 1
      (rec, "Big forest.", wrong_sub),                              # correct, 1 of 6 substituted
      (rec, "old castle", unit_tts.synthesize("old castle", "high")),  # wrong answer, spoken well: EQ 1
      (rec, "big forest", unit_tts.synthesize("big forest", "low")),   # wrong register: all 6 differ
      (rec, "big forest", speech[:3]),                              # half the speech missing
      (rec, "", []),                                                # no text: EQ 0
  ]
  eqs = [1, 5 / 6, 1, 0, 0.5, 0]
  for (r, text, codes), want in zip(items, eqs):
    assert metrics.speech_agreement(text, codes, r["style"]) == pytest.approx(want)
  assert metrics.iq(items) == pytest.approx(4 / 6)
  assert metrics.eq(items) == pytest.approx(np.mean(eqs))
  summary = metrics.summary(items)
  assert summary["judge_score"] == pytest.approx((5 + 5 + 1 + 5 + 5 + 1) / 6)
  with pytest.raises(ValueError, match="at least one"):
    metrics.iq([])


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_special_ids(tmp_path):
  path = vocab.write_tokenizer(str(tmp_path))
  tok = vocab.load_tokenizer(str(tmp_path))
  iv, pv = vocab.interleaved_vocab(), vocab.parallel_vocab()
  words = tasks.lexicon()
  ids = tok.encode(" ".join(words), add_special_tokens=False).ids
  assert len(ids) == len(words) and iv.is_text(ids).all() and pv.is_text(ids).all()
  assert tok.decode(ids) == " ".join(words)
  assert tok.encode("zebra", add_special_tokens=False).ids == [tok.token_to_id(vocab.UNK)]
  # The chat template's pieces come out as the vocab dataclasses' ids.
  chat = "<|im_start|>user\n<|begin_of_audio|><|audio_5|><|end_of_audio|><|im_end|>\n"
  assert tok.encode(chat, add_special_tokens=False).ids == [
      iv.im_start, tok.token_to_id("user"), iv.newline, iv.begin_of_audio, int(iv.audio_id(5)),
      iv.end_of_audio, iv.eos, iv.newline]
  kimi = {f: tok.token_to_id(n) for f, n in vocab.KIMI_SPECIALS.items() if hasattr(pv, f)}
  assert kimi == {f: getattr(pv, f) for f in kimi} and len(kimi) == 7
  last = unit_tts.NUM_AUDIO_CODES - 1
  assert tok.id_to_token(pv.audio_offset + last) == vocab.audio_token(last)
  assert tok.get_vocab_size() == iv.vocab_size == pv.vocab_size == pv.audio_offset + unit_tts.NUM_AUDIO_CODES
  assert iv.first_audio_code == pv.audio_offset and iv.special_ids == pv.special_ids
  specials = (*vocab.VITA_SPECIALS.values(), *vocab.KIMI_SPECIALS.values())
  assert not iv.is_text([tok.token_to_id(n) for n in specials]).any()
  resp = [iv.eos, *ids[:2], iv.begin_of_audio, int(iv.audio_id(3))]
  assert vocab.decode_text(tok, resp) == " ".join(words[:2])
  # The checkpoint tokenizer reader resolves the same ids from the written files.
  cfg = vocab.hf_config_fields()
  assert os.path.dirname(path) == str(tmp_path)
  assert ckpt_tokenizer.vocab_for("vita_audio", str(tmp_path), cfg) == iv
  assert ckpt_tokenizer.vocab_for("kimi_audio", str(tmp_path), cfg) == pv
