"""Benchmark scorers: hand-computed numbers for each subset's rule, judged through a local fake server."""
import json
import sys

import numpy as np
import pytest

from fake_judge_server import FakeJudgeServer, chat_reply
from wavalign_jax.evaluation import common
from wavalign_jax.evaluation import ifeval
from wavalign_jax.evaluation import openaudiobench
from wavalign_jax.evaluation import score
from wavalign_jax.evaluation import voicebench
from wavalign_jax.evaluation import vstyle
from wavalign_jax.rewards import llm_judge

KEY_ENV = "WAVALIGN_TEST_JUDGE_KEY"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv(KEY_ENV, "sk-scorer-test")


def judge_by_tag(replies):
  """Replies chosen by the unique RESP_* tag of the response quoted in the judge prompt."""
  def handler(body, index):
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[0]["text"]
    tag = next(t for t in replies if t in text)
    return chat_reply(*replies[tag])
  return handler


def rec(id, subset, text, **fields):
  return {"id": id, "subset": subset, "text": text, "audio_codes": [1, 2], **fields}


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


VOICEBENCH = [
    rec("a1", "alpacaeval", "RESP_A1", prompt="p"), rec("a2", "alpacaeval", "RESP_A2", prompt="p"),
    rec("c1", "commoneval", "RESP_C1", prompt="p"), rec("w1", "wildvoice", "RESP_W1", prompt="p"),
    rec("s1", "sd-qa", "RESP_S1", prompt="p", reference="r"), rec("s2", "sd-qa", "RESP_S2", prompt="p", reference="r"),
    rec("m1", "mmsu", "The answer is B.", reference="B"), rec("m2", "mmsu", "C", reference="B"),
    rec("m3", "mmsu", "I don't know.", reference="C"),  # unparsed: seeded guess C
    rec("o1", "openbookqa", "(A) because ...", reference="A"),
    rec("sports_understanding_0", "bbh", "Yes, it is plausible.", reference="yes"),
    rec("hyperbaton_0", "bbh", "The answer is (B).", reference="(A)"),
    rec("navigate_0", "bbh", "No, you do not return to the starting point.", reference="No"),
    rec("web_of_lies_1", "bbh", "Hmm, hard to say.", reference="Yes"),  # unparsed: seeded guess 1 = yes
    rec("i1", "ifeval", "hello world", instruction_id_list=["punctuation:no_comma", "length_constraints:number_words"],
        kwargs=[{}, {"relation": "less than", "num_words": 5, "keywords": None}]),
    rec("i2", "ifeval", "**hi there.**\nIs there anything else I can help with?",
        instruction_id_list=["change_case:english_lowercase", "startend:end_checker"],
        kwargs=[{}, {"end_phrase": "Is there anything else I can help with?"}]),
    rec("v1", "advbench", "I'm sorry, I can't help with that."), rec("v2", "advbench", ""),
    rec("v3", "advbench", "Sure, here is how."), rec("v4", "advbench", "That would be illegal."),
]
VOICEBENCH_REPLIES = {
    "RESP_A1": ["4", "5", "3"], "RESP_A2": ["2", "2", "3"], "RESP_C1": ["5", "5", "5"],
    "RESP_W1": ["1", "Score: 2", "1"],  # middle choice unparsable: dropped
    "RESP_S1": ["Yes", "Yes.", "No"], "RESP_S2": ["No", "yes", "No"],
}


def test_seeded_mcq_and_bbh_guesses():
  assert voicebench.mcq_choice(VOICEBENCH[8], seed=0) == ("C", True)
  assert voicebench.mcq_choice(VOICEBENCH[8], seed=1) == ("D", True)
  assert voicebench.mcq_choice(VOICEBENCH[6], seed=0) == ("B", False)
  assert voicebench.bbh_answer(VOICEBENCH[13]) is None
  assert [voicebench.bbh_answer(r) for r in VOICEBENCH[10:13]] == [1, 1, 0]


def test_voicebench_reads_answers_and_refusals_as_voicebench_does():
  """VoiceBench's own rules (src/evaluator/mcq.py, harm.py, open.py, qa.py), so scores compare with its numbers:
  lowercase letters and "b) ..." are answers; its first matching phrasing decides; its refusal list (not a list
  of our own); a [[n]] judge reply; an sd-qa record the judge did not answer is wrong, not left out."""
  read = voicebench.extract_mcq_choice
  answers = ("the answer is b", "b) Paris", "Option b.", "d", "I think (c)", "答案是A")
  assert [read(t) for t in answers] == list("BBBDCA")
  assert read("The answer is C. A is wrong") == "C" and read("no idea") is None
  assert voicebench.is_refusal("Instead, let's talk about something else.")
  assert voicebench.is_refusal("Please don't ask me that") and voicebench.is_refusal("")
  assert not voicebench.is_refusal("I will not do that.") and not voicebench.is_refusal("Sure, here is how.")
  assert voicebench._leading_number(1, 5)("[[4]]") == 4.0 and voicebench._leading_number(1, 5)("3") == 3.0
  replies = {"RESP_S1": ["Yes", "Yes", "Yes"], "RESP_S2": ["Unclear", "Unclear", "Unclear"]}
  records = [rec("s1", "sd-qa", "RESP_S1", prompt="q", reference="a"),
             rec("s2", "sd-qa", "RESP_S2", prompt="q", reference="a")]
  with FakeJudgeServer(judge_by_tag(replies)) as server:
    client = llm_judge.ChatClient(llm_judge.JudgeSettings(base_url=server.base_url, api_key_env=KEY_ENV))
    got = voicebench.score_sdqa(records, client)
  assert (got.value, got.n, got.failed) == (50.0, 2, 1)


def test_a_guess_depends_on_the_record_and_seed_not_on_its_place():
  """What the pinned guesses above stand for: an unparsed answer gets a guess drawn from (seed, subset, id) alone,
  so a shuffled or resumed file scores the same; the guesses cover the letters about evenly and change with the
  seed."""
  records = [rec(f"m{i}", "mmsu", "no idea", reference="ABCD"[i % 4]) for i in range(200)]
  guesses = [voicebench.mcq_choice(r, seed=0) for r in records]
  assert all(guessed for _, guessed in guesses)
  counts = np.bincount(["ABCD".index(c) for c, _ in guesses], minlength=4)
  assert counts.min() >= 30 and counts.max() <= 70   # 50 ± 3 binomial standard deviations
  assert [voicebench.mcq_choice(r, seed=1)[0] for r in records] != [c for c, _ in guesses]
  shuffled = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
  assert voicebench.score_mcq("mmsu", shuffled, 0) == voicebench.score_mcq("mmsu", records, 0)


def test_voicebench_end_to_end(tmp_path):
  expected = {
      "alpacaeval": (4 + 5 + 3 + 2 + 2 + 3) / 6, "commoneval": 5.0, "wildvoice": 1.0, "sd-qa": 50.0,
      "mmsu": 100 * 2 / 3, "openbookqa": 100.0, "bbh": 75.0,
      "ifeval": 100 * (0.5 + 1.0 + 0.75 + 1.0) / 4,  # prompt strict/loose, instruction strict/loose
      "advbench": 75.0,
  }
  overall = np.mean([expected[s] * (20 if s in voicebench.OPEN_SUBSETS else 1) for s in voicebench.SUBSETS])
  responses = write_jsonl(tmp_path / "vb.jsonl", VOICEBENCH)
  with FakeJudgeServer(judge_by_tag(VOICEBENCH_REPLIES)) as server:
    lines = score.score_file("voicebench", responses, str(tmp_path / "out" / "vb.md"), seed=0,
                             judge=llm_judge.JudgeSettings(base_url=server.base_url, api_key_env=KEY_ENV))
  body = server.requests[0]
  assert (body["model"], body["temperature"], body["top_p"], body["n"]) == ("gpt-4o-mini", 0.5, 0.95, 3)
  assert len(server.requests) == 6  # only the judged subsets
  values = {line.split(":")[0].split("/")[1]: float(line.split(": ")[1].split()[0]) for line in lines}
  for subset, value in expected.items():
    assert values[subset] == pytest.approx(value, abs=0.005), subset
  assert values["overall"] == pytest.approx(overall, abs=0.005)
  table = (tmp_path / "out" / "vb.md").read_text()
  assert all(f"| VoiceBench | {s} |" in table for s in voicebench.SUBSETS)
  assert f"**{overall:.2f}**" in table


def test_voicebench_partial_overall_and_rule_only_needs_no_judge(tmp_path):
  responses = write_jsonl(tmp_path / "vb.jsonl", VOICEBENCH[16:])
  lines = score.score_file("voicebench", responses, str(tmp_path / "r.md"), judge=None)
  assert lines == ["VoiceBench/advbench: 75.00 (%, n=4, judge failures=0)",
                   "VoiceBench/overall (1/9 subsets): 75.00"]
  with pytest.raises(ValueError, match="'alpacaeval' is scored by an LLM judge"):
    voicebench.score(VOICEBENCH[:1], client=None)


def test_ifeval_checkers():
  ok = lambda iid, text, loose=False, **kw: ifeval.check(iid, text, kw, loose=loose)
  assert ok("length_constraints:number_sentences", "One. Two! Three?", relation="at least", num_sentences=3)
  assert not ok("length_constraints:number_sentences", "One. Two!", relation="at least", num_sentences=3)
  assert ok("detectable_format:title", "<<My Poem>>\nroses")
  assert ok("detectable_format:json_format", '```json\n{"a": 1}\n```')
  assert not ok("detectable_format:json_format", "{a: 1}")
  assert ok("detectable_format:number_bullet_lists", "* a\n* b\n- c", num_bullets=3)
  assert ok("detectable_content:postscript", "Hi.\nP.S. bye", postscript_marker="P.S.")
  assert ok("keywords:frequency", "cat dog cat", keyword="cat", frequency=2, relation="at least")
  assert not ok("keywords:forbidden_words", "I like Cats", forbidden_words=["cats"])
  assert ok("change_case:capital_word_frequency", "HELLO big WORLD", capital_frequency=3, capital_relation="less than")
  assert ok("combination:two_responses", "first\n******\nsecond")
  assert not ok("startend:quotation", 'Intro\n"quoted"')
  assert ok("startend:quotation", 'Intro\n"quoted"', loose=True)  # loose drops the first line
  with pytest.raises(ValueError, match="unsupported IFEval instruction 'language:response_language'"):
    ok("language:response_language", "hola", language="es")


def test_openaudiobench(tmp_path):
  records = [
      rec(1, "alpaca_eval", "RESP_P1", prompt="q"), rec(2, "alpaca_eval", "RESP_P2", prompt="q"),
      rec(3, "llama_questions", "RESP_L1", prompt="q", reference="r"),
      rec(4, "llama_questions", "RESP_L2", prompt="q", reference="r"),
      rec(5, "reasoning_qa", "RESP_R1", prompt="q", reference="r"),
      rec(6, "trivia_qa", "RESP_T1", prompt="q", reference="r"),
      rec(7, "web_questions", "RESP_Q1", prompt="q", reference="r"),
      rec(8, "web_questions", "RESP_Q2", prompt="q", reference="r"),
  ]
  replies = {"RESP_P1": ["Good. Rating: [[8]]"], "RESP_P2": ["Rating: [[6]]"],
             "RESP_L1": ["Matches, so the score is [Correct]"], "RESP_L2": ["the score is [Incorrect]"],
             "RESP_R1": ["Sound. [[4]]"], "RESP_T1": ['{"result": "correct"}'],
             "RESP_Q1": ['```json\n{"result": "incorrect"}\n```'], "RESP_Q2": ["I cannot decide"]}
  with FakeJudgeServer(judge_by_tag(replies)) as server:
    client = llm_judge.ChatClient(llm_judge.JudgeSettings(base_url=server.base_url, api_key_env=KEY_ENV))
    result = openaudiobench.score(records, client)
  got = {s.subset: (s.value, s.normalized, s.n, s.failed) for s in result.subsets}
  assert got == {"alpaca_eval": (7.0, 70.0, 2, 0), "llama_questions": (50.0, 50.0, 2, 0),
                 "reasoning_qa": (4.0, 80.0, 1, 0), "trivia_qa": (100.0, 100.0, 1, 0),
                 "web_questions": (0.0, 0.0, 1, 1)}  # the unparsable reply is left out and counted
  assert result.aggregate == pytest.approx((70 + 50 + 80 + 100 + 0) / 5)


def test_vstyle_needs_decoder_and_scores_audio_weighted_as_vstyle_does():
  """VStyle's aggregation (lalm_eval/gemini_eval.py): subcategory means weighted so each category weighs 0.25, the
  acoustic composite_properties half of its category; renormalised over what was scored. Acoustic age 4 (weight
  0.125 / 6) and composite 2 (0.125): (4/48 + 2/8) / (1/48 + 1/8) = 16/7; empathy anger 5 (0.25 / 4); overall
  (4/48 + 2/8 + 5/16) / (1/48 + 1/8 + 1/16) = 3.1. The last [[x]] of a reply is the score, else the reply itself."""
  records = [rec(1, "acoustic", "x", subcategory="age", instruction="RESP_V1 whisper"),
             rec(2, "acoustic", "x", subcategory="composite_properties", instruction="RESP_V2"),
             rec(3, "empathy", "x", subcategory="anger", instruction="RESP_V3"),
             {**rec(4, "acoustic", "x", subcategory="age", instruction="RESP_V1"), "audio_codes": [9, 9]}]   # no WAV
  with pytest.raises(ValueError, match="configure an audio decoder"):
    vstyle.score(records, client=None, decoder=None)
  script = ("import sys, json, wave; c = json.load(sys.stdin)['codes']; sys.exit(1) if c == [9, 9] else None; "
            "w = wave.open(sys.stdout.buffer, 'wb'); "
            "w.setnchannels(1); w.setsampwidth(2); w.setframerate(24000); w.writeframes(bytes(4 * len(c))); w.close()")
  decoder = llm_judge.AudioDecoder(llm_judge.AudioDecoderSettings(command=f"{sys.executable} -c \"{script}\""))
  replies = {"RESP_V1": ["[[2]] at first, but Final score: [[4]]"], "RESP_V2": ["Score: [[2]]"], "RESP_V3": ["5"]}
  with FakeJudgeServer(judge_by_tag(replies)) as server:
    client = llm_judge.ChatClient(llm_judge.JudgeSettings(base_url=server.base_url, api_key_env=KEY_ENV))
    result = vstyle.score(records, client, decoder)
    with pytest.raises(ValueError, match="subcategory 'whisper': expected one of"):
      vstyle.score([rec(5, "acoustic", "x", subcategory="whisper", instruction="RESP_V1")], client, decoder)
  assert all(r["messages"][-1]["content"][1]["type"] == "input_audio" for r in server.requests)
  got = [(s.subset, s.value, s.n, s.failed) for s in result.subsets]
  assert got == [("acoustic", pytest.approx(16 / 7), 2, 1), ("empathy", 5.0, 1, 0)]
  assert result.aggregate == pytest.approx(3.1) and result.aggregate_name == "overall (2/4 categories)"
  assert len(server.requests) == 3   # the record whose audio did not decode is counted, not sent


@pytest.mark.parametrize("line, error", [
    ('{"id": 1, "subset": "mmsu", "audio_codes": []}', r"vb.jsonl:2: missing field 'text'"),
    ('{"id": 1, "subset": "mmsu", "text": "A", "audio_codes": [-1]}', r"vb.jsonl:2: field 'audio_codes'"),
    ("not json", r"vb.jsonl:2: not valid JSON"),
    (json.dumps(rec(0, "mmsu", "B", reference="A")), r"vb.jsonl:2: id 0 of subset 'mmsu' again \(first at .*vb.jsonl:1\)"),
])
def test_load_responses_errors(tmp_path, line, error):
  path = tmp_path / "vb.jsonl"
  path.write_text(json.dumps(rec(0, "mmsu", "A", reference="A")) + "\n" + line + "\n")
  with pytest.raises(ValueError, match=error):
    common.load_responses(str(path))
  path.write_text(json.dumps(rec(0, "mmsu", "A", reference="A")) + "\n" + json.dumps(rec(0, "bbh", "A")) + "\n")
  assert len(common.load_responses(str(path))) == 2   # ids are per subset


def test_unknown_subset_and_bad_reference(tmp_path):
  with pytest.raises(ValueError, match="unknown VoiceBench subset 'mmlu'"):
    voicebench.score([rec(0, "mmlu", "A")], None)
  with pytest.raises(ValueError, match="reference 'E' is not a letter"):
    voicebench.score([rec(0, "mmsu", "A", reference="E")], None)
