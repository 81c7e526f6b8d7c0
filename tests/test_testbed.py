"""Testbed: unit-TTS (realisations, scores), noise, records and splits, dataset files, judge (rules and
calibration of its acoustic noise), IQ/EQ and their intervals, tokenizer."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wavalign_jax import tokenizer as ckpt_tokenizer
from wavalign_jax.data import layouts
from wavalign_jax.data import vocab as data_vocab
from wavalign_jax.rewards.base import RewardItem
from wavalign_jax.testbed import answers, judge, make_data, metrics, tasks, unit_tts, vocab

R = unit_tts.UNITS_PER_REGISTER


SPEC = tasks.Spec(seed=3, noise_rate=0.2)


@pytest.fixture(scope="module")
def splits():
  return tasks.build_splits(SPEC)


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


def test_realisations_are_valid_and_style_statistics_differ():
  """Drawn realisations are variants of each word, score 1 on intelligibility, and follow the style's prosody
  (each variant frequency within 4 binomial standard deviations of p(variant | style))."""
  rng = np.random.default_rng(0)
  n = 3000
  freqs = {}
  for style in unit_tts.STYLES:
    for expressiveness in (1.0, 0.25):
      counts = dict.fromkeys(unit_tts.VARIANTS, 0)
      for _ in range(n):
        word = str(rng.choice(tasks.lexicon()))
        codes = tuple(unit_tts.synthesize(word, style, rng, expressiveness))
        variant = [v for v in unit_tts.VARIANTS if unit_tts.realise_word(word, style, v) == codes]
        assert len(variant) == 1, (word, style, codes)
        counts[variant[0]] += 1
        assert unit_tts.intelligibility(codes, word, style) == 1.0
      p = unit_tts.prosody(style, expressiveness)
      got = np.array([counts[v] for v in unit_tts.VARIANTS]) / n
      assert np.all(np.abs(got - p) <= 4 * np.sqrt(p * (1 - p) / n)), (style, expressiveness, got, p)
      freqs[style, expressiveness] = got
  np.testing.assert_allclose(unit_tts.prosody("high", 0.25), 0.25 * np.array(unit_tts.STYLE_PROSODY["high"])
                             + 0.75 * np.array(unit_tts.STYLE_PROSODY["neutral"]))
  # Styles differ in distribution: high voices hold words, low voices pause, compared with neutral.
  assert freqs["high", 1.0][1] > freqs["neutral", 1.0][1] + 0.4
  assert freqs["low", 1.0][2] > freqs["neutral", 1.0][2] + 0.4
  # A sentence has many realisations.
  assert len({tuple(unit_tts.synthesize("count from 3 to 6", "slow", rng)) for _ in range(50)}) > 20


def test_intelligibility_and_style_hand_computed():
  w = lambda word, v, style="high": list(unit_tts.realise_word(word, style, v))
  text = "big forest"
  long_both = w("big", "long") + w("forest", "long")   # the most typical high realisation: 1.0
  assert unit_tts.style_match(long_both, text, "high") == 1.0
  assert unit_tts.style_match(w("big", "plain") + w("forest", "plain"), text, "high") == pytest.approx(0.5)
  assert unit_tts.style_match(w("big", "pause") + w("forest", "long"), text, "high") == pytest.approx((1 / 6 + 1) / 2)
  assert unit_tts.style_match(w("big", "plain", "low") + w("forest", "long"), text, "high") == pytest.approx(0.5)
  assert unit_tts.style_match(long_both + [5], text, "high") == pytest.approx(2 / 3)   # trailing codes: a 0-word
  assert unit_tts.style_match([], "", "high") == 0.0
  # "small" ends with the unit "village" starts with: "small" read as `long` would take village's first code and
  # misalign it. The words are aligned as a whole: all-plain neutral speech is perfect, plain in high speech is 0.5
  # (plain's typicality there), and the long reading is taken where it is what was said.
  assert unit_tts.word_units("small")[-1] == unit_tts.word_units("village")[0]   # the premise
  pair = "small village"
  assert unit_tts.style_match(w("small", "plain", "neutral") + w("village", "plain", "neutral"), pair,
                              "neutral") == 1.0
  assert unit_tts.style_match(w("small", "plain") + w("village", "plain"), pair, "high") == pytest.approx(0.5)
  assert unit_tts.style_match(w("small", "long") + w("village", "long"), pair, "high") == 1.0
  # Intelligibility ignores register, pauses and held units, not the duration pattern of the style.
  for codes in (long_both, w("big", "pause", "low") + w("forest", "plain", "neutral")):
    assert unit_tts.intelligibility(codes, text, "high") == 1.0
  text = "big castle"   # six distinct units (22, 11, 5), (4, 13, 31): nothing collapses
  sub = list(unit_tts.synthesize(text, "high"))
  sub[4] = unit_tts.STYLE_REGISTER["high"] * R + (sub[4] + 1) % R
  assert unit_tts.intelligibility(sub, text, "high") == pytest.approx(5 / 6)
  assert unit_tts.intelligibility(unit_tts.synthesize(text, "fast"), text, "high") == pytest.approx(4 / 6)
  assert unit_tts.intelligibility([], "", "high") == 0.0


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


_FIELDS = {"id": str, "task": str, "style": str, "question_text": str, "answer": str,
           "messages": list, "audios": list, "sft_target_text": str, "sft_target_audio": list}


def _assert_codes(codes, where: str) -> None:
  assert isinstance(codes, list) and all(isinstance(c, int) and not isinstance(c, bool)
                                         and 0 <= c < unit_tts.NUM_AUDIO_CODES for c in codes), where


def _assert_record(record: dict) -> None:
  """The testbed record schema (WORKSPACE.md): every field of its type, a known task and style, one
  <|audio|> placeholder per prompt audio, codes in range, rejected_text / rejected_audio together."""
  where = record.get("id", "record")
  for field, kind in _FIELDS.items():
    assert isinstance(record.get(field), kind), f"{where}: {field}"
  assert record["task"] in tasks.TEMPLATES and record["style"] in unit_tts.STYLES, where
  assert [m["role"] for m in record["messages"]] == ["system", "user"], where
  assert record["messages"][1]["content"].count(tasks.AUDIO_PLACEHOLDER) == len(record["audios"]), where
  for codes in [*record["audios"], record["sft_target_audio"]]:
    _assert_codes(codes, where)
  assert ("rejected_text" in record) == ("rejected_audio" in record), where
  if "rejected_audio" in record:
    assert isinstance(record["rejected_text"], str), where
    _assert_codes(record["rejected_audio"], where)


def test_records_valid_serialisable_and_correct(splits):
  facts = tasks.fact_table(3)
  records = [r for name in ("base", "train", "eval_id", "eval_ood") for r in splits[name]]
  assert {r["task"] for r in records} == set(tasks.TEMPLATES)
  assert {r["style"] for r in records} == set(unit_tts.STYLES)
  for r in records:
    _assert_record(r)
    assert json.loads(json.dumps(r)) == r
    assert r["answer"] == _expected_answer(r["task"], r["question_text"], facts)
    assert 1 <= len(r["answer"].split()) <= 4
    text, codes = r["sft_target_text"], r["sft_target_audio"]   # a valid realisation of the reference
    assert unit_tts.intelligibility(codes, text, r["style"]) == 1.0 and unit_tts.style_match(codes, text, r["style"]) > 0
    assert r["messages"][0]["content"].split()[-2] == r["style"]
  noisy = np.concatenate([r["audios"][0] for r in records])
  clean = np.concatenate([unit_tts.synthesize(r["question_text"]) for r in records])
  assert abs(np.mean(noisy != clean) - 0.2) < 0.02
  # Base references are correct; post-training references are imperfect at the configured rate.
  assert all(r["sft_target_text"] == r["answer"] and r["reference_kind"] == "correct" for r in splits["base"])
  kinds = [r["reference_kind"] for r in splits["train"]]
  n, p = len(kinds), SPEC.sft_wrong_fraction
  assert abs(np.mean([k != "correct" for k in kinds]) - p) <= 4 * np.sqrt(p * (1 - p) / n)
  for r in splits["train"]:
    expected = {"correct": 5, "wrong": None, "hedged": None}[r["reference_kind"]]
    score = answers.score(r["sft_target_text"], r["answer"])[0]
    assert score == 5 if expected else score < 5
    if r["reference_kind"] == "hedged":
      assert r["sft_target_text"] == f"{tasks.HEDGE} {r['answer']}"
  for r in splits["dpo"]:
    _assert_record(r)
    assert r["sft_target_text"] == r["answer"] and answers.score(r["rejected_text"], r["answer"])[0] < 5
    assert unit_tts.intelligibility(r["rejected_audio"], r["rejected_text"], r["style"]) == 1.0


def test_splits_disjoint_and_lookups_learnable(splits):
  key = lambda r: (r["question_text"], r["style"])
  keys = {name: [key(r) for r in records] for name, records in splits.items()}
  train, ood = set(keys["train"]), set(keys["eval_ood"])
  assert len(train) == len(keys["train"]) and len(ood) == len(keys["eval_ood"])
  assert set(keys["base"]) == set(keys["dpo"]) == set(keys["eval_id"]) == train and not train & ood
  assert len(train | ood) == len(tasks.questions(tasks.fact_table(3))) * len(unit_tts.STYLES)
  assert {r["subset"] for r in splits["eval_id"]} == {"id"}
  assert {r["subset"] for r in splits["eval_ood"]} == {"ood_style", "ood_question"}
  train_questions = {q for q, _ in train}
  for r in splits["eval_ood"]:
    if r["task"] in tasks.LOOKUPS:   # a fact is only learnable if training asks it too
      assert r["question_text"] in train_questions
    assert (r["question_text"] in train_questions) == (r["subset"] == "ood_style")
  heldout = {r["question_text"] for r in splits["eval_ood"]} - train_questions
  assert heldout and all(q.startswith(("what is", "count")) for q in heldout)
  # eval_id asks the training questions with fresh question audio
  by_key = {key(r): r for r in splits["train"]}
  assert all(r["audios"] != by_key[key(r)]["audios"] for r in splits["eval_id"][:50])


def test_splits_deterministic_per_seed(splits):
  assert tasks.build_splits(SPEC) == splits
  other = tasks.build_splits(tasks.Spec(seed=4, noise_rate=0.2))
  assert tasks.fact_table(4) != tasks.fact_table(3)
  assert [r["id"] for r in other["train"]] != [r["id"] for r in splits["train"]]


def test_records_fit_both_layouts(splits):
  """Every record lays out (data.layouts) under 96 tokens per stream for both architectures."""
  tok = vocab.build_tokenizer()
  enc = lambda s: tok.encode(s, add_special_tokens=False).ids
  iv, pv = vocab.interleaved_vocab(), vocab.parallel_vocab()
  roles = {r: enc(r) for r in vocab.ROLE_WORDS}
  for r in splits["train"] + splits["eval_ood"]:
    system, question, answer = enc(r["messages"][0]["content"]), r["audios"][0], enc(r["sft_target_text"])
    prompt = layouts.interleaved_prompt(
        [layouts.Turn.make("system", system), layouts.Turn.make("user", audio=question)], iv, roles)
    for ratios in (layouts.BOOST_RATIOS, (1, 4, 3, 8, 4, 10)):   # Boost, Balance
      response = layouts.interleaved_response(answer, r["sft_target_audio"], iv, ratios)
      assert len(layouts.join(prompt, response)) < 96
      assert layouts.interleaved_split(response.tokens["tokens"], iv) == (answer, r["sft_target_audio"])
    prompt = layouts.parallel_prompt([layouts.Turn.make("user", system, question)], pv)
    response = layouts.parallel_response(answer, r["sft_target_audio"], pv)
    assert len(layouts.join(prompt, response)) < 96


def test_longest_response_fits_the_tiny_configs(splits):
  """The longest response the testbed can ask for (a hedged 4-number count, slow voice, every word held) and
  every prompt fit the tiny configs' length buckets, so no seed of the testbed trips the loader."""
  from experiments import kimi, vita
  tok = vocab.build_tokenizer()
  enc = lambda s: tok.encode(s, add_special_tokens=False).ids
  text = f"{tasks.HEDGE} {' '.join(str(n) for n in range(tasks.MAX_COUNT - 3, tasks.MAX_COUNT + 1))}"
  codes = [c for w in text.split() for c in unit_tts.realise_word(w, "slow", "long")]
  assert len(codes) == 25
  iv, pv = vocab.interleaved_vocab(), vocab.parallel_vocab()
  for config in (vita.get_config("tiny"), vita.get_config("boost,tiny")):
    response = layouts.interleaved_response(enc(text), codes, iv, tuple(config.layout.ratios))
    assert len(response) <= config.data.max_response_len <= config.rollout.max_new_tokens, len(response)
  config = kimi.get_config("tiny")
  response = layouts.parallel_response(enc(text), codes, pv, config.layout.audio_delay)
  assert len(response) <= config.data.max_response_len <= config.rollout.max_new_tokens, len(response)
  roles = {r: enc(r) for r in vocab.ROLE_WORDS}
  for r in splits["train"] + splits["eval_ood"]:
    turns = [layouts.Turn.make("system", enc(r["messages"][0]["content"])),
             layouts.Turn.make("user", audio=r["audios"][0])]
    assert len(layouts.interleaved_prompt(turns, iv, roles)) <= config.data.max_prompt_len


def test_generate_writes_readable_dataset(tmp_path, splits):
  paths = make_data.write_splits(str(tmp_path), SPEC)
  for name in splits:
    assert [json.loads(line) for line in open(paths[name])] == splits[name]
  assert os.path.dirname(paths["eval_ood"]) == str(tmp_path / "eval")
  meta = json.loads(open(paths["meta"]).read())
  assert meta["counts"] == {k: len(v) for k, v in splits.items()}
  assert meta["facts"] == tasks.fact_table(3) and meta["spec"]["noise_rate"] == 0.2


def test_failed_regeneration_leaves_whole_files_and_no_completion_marker(tmp_path, splits, monkeypatch):
  """A reader (a second job, a resumed run) meets either the old or the new file, never half of one; testbed.json,
  which prepare() reads as "these files are complete", is gone until a generation has finished."""
  paths = make_data.write_splits(str(tmp_path), SPEC)
  before = open(paths["train"], "rb").read()
  broken = dict(splits, train=splits["train"] + [{"id": object()}])   # fails to serialise after 1000+ good rows
  monkeypatch.setattr(tasks, "build_splits", lambda spec: broken)
  with pytest.raises(TypeError):
    make_data.write_splits(str(tmp_path), SPEC)
  assert open(paths["train"], "rb").read() == before
  assert not os.path.exists(paths["meta"])
  assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []   # no temporary files left


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
  assert answers.score(text, answer)[0] == expected


def test_judge_reward_fn_semantic_part():
  """With acoustic weight 0 the judge is the rule score; its info carries the true scores."""
  fn = judge.TestbedJudge(acoustic_weight=0.0)
  rec = lambda answer: {"answer": answer, "style": "neutral", "id": "q"}
  speech = tuple(unit_tts.synthesize("12", "neutral"))
  items = [RewardItem(rec("12"), "12", speech), RewardItem(rec("12"), "13"),
           RewardItem(rec("12"), ""), RewardItem(rec("a red cat"), "cat red a", (1, 2))]
  result = fn(items)
  np.testing.assert_array_equal(result.scores, [5, 4, 1, 3])
  assert not result.failed.any() and result.scores.dtype == np.float32
  assert [i["reason"] for i in result.info] == ["exact", "off by 1", "empty", "wrong order"]
  assert [i["semantic"] for i in result.info] == [5, 4, 1, 3]
  assert result.info[0]["acoustic"] == metrics.item_scores(rec("12"), "12", speech)["eq"]
  with pytest.raises(ValueError, match="item 1 needs string 'answer' and 'style'"):
    fn([items[0], RewardItem({"question_text": "q"}, "12")])
  with pytest.raises(ValueError, match="acoustic_weight"):
    judge.TestbedJudge(acoustic_weight=1.5)


@pytest.mark.parametrize("sigma", [0.0, 0.2, 0.5])
def test_judge_acoustic_noise_calibration(sigma):
  """The judge's acoustic observation correlates with the true acoustic quality as configured:
  corr = sd(a) / sqrt(sd(a)^2 + sigma^2), and the score moves by 4w per unit of observation (semantic fixed at
  3; clipping binds only beyond about 2.3 sigma). Tolerance: 4 Fisher-z standard errors at n = 4000."""
  rng = np.random.default_rng(0)
  w, items = 0.3, []
  for i in range(4000):   # responses of varying speech quality: a random number of codes replaced
    codes = unit_tts.add_noise(unit_tts.synthesize("cat red a", "high"), rng.uniform(0, 1), rng)
    items.append(RewardItem({"answer": "a red cat", "style": "high", "id": f"q{i}"}, "cat red a", tuple(codes)))
  result = judge.TestbedJudge(acoustic_weight=w, acoustic_noise=sigma, seed=1)(items)
  true = np.array([i["acoustic"] for i in result.info])
  observed = np.array([i["acoustic_observed"] for i in result.info])
  assert all(i["semantic"] == 3 for i in result.info)
  np.testing.assert_allclose(result.scores, np.clip((1 - w) * 3 + w * (1 + 4 * observed), 1, 5), rtol=1e-6)
  noise = observed - true
  assert abs(noise.mean()) < 4 * max(sigma, 1e-9) / np.sqrt(len(noise)) + 1e-12
  assert abs(noise.std() - sigma) < 4 * sigma / np.sqrt(2 * len(noise)) + 1e-12
  want = true.std() / np.sqrt(true.std() ** 2 + sigma ** 2)
  got = np.corrcoef(result.scores, true)[0, 1]
  assert abs(np.arctanh(min(got, 1 - 1e-12)) - np.arctanh(min(want, 1 - 1e-12))) < 4 / np.sqrt(len(items) - 3) or \
      (sigma == 0 and got > 0.999)
  # Deterministic per response (a temperature-0 judge): the same items score the same again.
  again = judge.TestbedJudge(acoustic_weight=w, acoustic_noise=sigma, seed=1)(items[:50]).scores
  np.testing.assert_array_equal(again, result.scores[:50])


def test_iq_eq_hand_computed():
  rec = {"answer": "big forest", "style": "high", "task": "home", "id": "x", "subset": "id"}
  speech = unit_tts.synthesize("big forest", "high")   # canonical: plain words, style 0.5
  w = lambda word, v: list(unit_tts.realise_word(word, "high", v))
  typical = w("big", "long") + w("forest", "long")       # style 1
  items = [RewardItem(rec, text, tuple(codes)) for text, codes in [
      ("big forest", typical),                                  # correct, EQ 1
      ("Big forest.", speech),                                  # correct, intelligible, style 0.5
      ("old castle", unit_tts.synthesize("old castle", "high")),  # wrong answer, spoken plainly
      ("big forest", unit_tts.synthesize("big forest", "low")),   # wrong register: style 0
      ("", []),                                                 # no text: EQ 0
  ]]
  want_intel, want_style = [1, 1, 1, 1, 0], [1, 0.5, 0.5, 0, 0]
  rows = metrics.per_item(items)
  for row, i, st in zip(rows, want_intel, want_style):
    assert row["intelligibility"] == pytest.approx(i) and row["style"] == pytest.approx(st)
    assert row["eq"] == pytest.approx((i + st) / 2)
  assert [r["iq"] for r in rows] == [1, 1, 0, 1, 0]
  assert all(r["requested_style"] == "high" for r in rows)   # the style asked for, beside the style score
  summary = metrics.summary(items)
  assert summary["iq"] == pytest.approx(3 / 5)
  assert summary["eq"] == pytest.approx(np.mean([(i + st) / 2 for i, st in zip(want_intel, want_style)]))
  assert summary["judge_score"] == pytest.approx((5 + 5 + 1 + 5 + 1) / 5)
  assert summary["id/count"] == 5 and summary["lookup/iq"] == summary["iq"] == summary["home/iq"]
  # t over the 5 items (4 degrees of freedom): IQ values 1, 1, 0, 1, 0 have sd sqrt(0.3), t_0.975,4 = 2.7764451
  half = 2.7764451051977987 * np.sqrt(0.3 / 5)
  assert (summary["iq_lo"], summary["iq_hi"]) == pytest.approx((0.6 - half, 0.6 + half), rel=1e-12)
  with pytest.raises(ValueError, match="at least one"):
    metrics.summary([])


def test_edit_distance_hand_cases():
  assert unit_tts.edit_distance([1, 2, 3], [1, 2, 3]) == 0
  assert unit_tts.edit_distance([], [4, 5]) == 2
  assert unit_tts.edit_distance(list("kitten"), list("sitting")) == 3
  assert unit_tts.edit_distance([1, 2, 3, 4], [2, 3, 4, 1]) == 2


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_special_ids(tmp_path):
  path = vocab.write_tokenizer(str(tmp_path))
  tok = ckpt_tokenizer.load_tokenizer(str(tmp_path))
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
  assert ckpt_tokenizer.decode_text(tok, resp, collapse_whitespace=True) == " ".join(words[:2])
  # The checkpoint tokenizer reader resolves the same ids from the written files.
  cfg = vocab.hf_config_fields()
  assert os.path.dirname(path) == str(tmp_path)
  assert ckpt_tokenizer.interleaved_vocab(str(tmp_path), cfg) == iv
  assert ckpt_tokenizer.parallel_vocab(str(tmp_path), cfg) == pv
  # So does the data pipeline's (a built dataset's dataset_info vocab, what runs on built datasets decode with): the
  # testbed's runs use the hand-built vocab, so the two paths see one vocabulary.
  assert data_vocab.interleaved_vocab(tok, path) == iv
  assert data_vocab.parallel_vocab(tok, path, pv.audio_offset, unit_tts.NUM_AUDIO_CODES) == pv


def test_a_dataset_built_with_another_vocabulary_than_the_checkpoint_is_refused(tmp_path):
  """A converted checkpoint keeps its tokenizer and config.json (DIR/hf): a training set whose ids differ from what
  those give (audio codes one id later, as VITA-Audio-Plus's tokenizer has them against Boost's; a Kimi build with
  another --audio_offset) is refused, naming each id; the same vocabulary, or a checkpoint without those files (the
  testbed's base model), passes."""
  import dataclasses
  import ml_collections as mlc
  from wavalign_jax import checkpointing, errors, run_setup
  ckpt = tmp_path / "converted"
  hf = ckpt / checkpointing.HF_FILES_DIR
  vocab.write_tokenizer(str(hf))
  (hf / "config.json").write_text(json.dumps(vocab.hf_config_fields()))
  meta = {"hf_config": vocab.hf_config_fields()}
  config = mlc.ConfigDict({"init_checkpoint": str(ckpt), "data": {"train": "/data/train"}})
  iv, pv = vocab.interleaved_vocab(), vocab.parallel_vocab()
  run_setup._check_checkpoint_vocab(config, iv, "interleaved", meta)
  run_setup._check_checkpoint_vocab(config, pv, "parallel", meta)
  shifted = dataclasses.replace(iv, first_audio_code=iv.first_audio_code + 1)
  with pytest.raises(errors.RunError, match=f"/data/train was built with another vocabulary .*first_audio_code: "
                                            f"{iv.first_audio_code + 1} != {iv.first_audio_code}"):
    run_setup._check_checkpoint_vocab(config, shifted, "interleaved", meta)
  with pytest.raises(errors.RunError, match="audio_offset: .* --audio_offset"):
    run_setup._check_checkpoint_vocab(config, dataclasses.replace(pv, audio_offset=pv.audio_offset - 2), "parallel",
                                      meta)
  run_setup._check_checkpoint_vocab(config, shifted, "interleaved", {})   # no hf_config recorded: not compared
  # Kimi-Audio ships a tiktoken model: its ids come from tokenizer_config.json alone, and are compared the same way.
  added = json.loads((hf / "tokenizer.json").read_text())["added_tokens"]
  (hf / "tokenizer_config.json").write_text(json.dumps(
      {"added_tokens_decoder": {str(t["id"]): {"content": t["content"]} for t in added}}))
  (hf / "tokenizer.json").unlink()
  run_setup._check_checkpoint_vocab(config, pv, "parallel", meta)
  with pytest.raises(errors.RunError, match="audio_offset: .* --audio_offset"):
    run_setup._check_checkpoint_vocab(config, dataclasses.replace(pv, audio_offset=pv.audio_offset - 2), "parallel",
                                      meta)
  run_setup._check_checkpoint_vocab(config, shifted, "interleaved", meta)   # VITA's reader needs tokenizer.json
