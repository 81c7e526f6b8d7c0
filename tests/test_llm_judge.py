"""LLM judge against a real local HTTP server playing an OpenAI-compatible judge."""
import base64
import io
import json
import logging
import os
import re
import sys
import time
import wave

import numpy as np
import pytest

from fake_judge_server import FakeJudgeServer, Reply, chat_reply
from wavalign_jax.rewards import base
from wavalign_jax.rewards import llm_judge

KEY_ENV = "WAVALIGN_TEST_JUDGE_KEY"
SECRET = "sk-test-SECRET-3141592653"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv(KEY_ENV, SECRET)


def settings(server, **kw):
  kw = {"base_url": server.base_url, "model": "judge-x", "api_key_env": KEY_ENV, "timeout_s": 2.0,
        "max_retries": 2, "backoff_s": 0.001, "max_backoff_s": 0.01, **kw}
  return llm_judge.JudgeSettings(**kw)


def user_text(body):
  content = body["messages"][-1]["content"]
  return content if isinstance(content, str) else content[0]["text"]


def answer_of(body):
  return re.search(r"Transcript of answer: (.*)", user_text(body)).group(1)


def items(*answers):
  return [base.RewardItem({"question_text": f"q{i}"}, a, (1, 2, 3)) for i, a in enumerate(answers)]


def score_by_answer(body, index):
  """Answers look like 'ans-4': the judge gives 4 (or the 'n' choices 4, 4-1, ...)."""
  s = int(answer_of(body).split("-")[1])
  return chat_reply(*[f"Reasoning... <score>{max(1, s - j)}</score>" for j in range(body["n"])])


def test_scores_parsed_and_request_shape():
  with FakeJudgeServer(score_by_answer) as server:
    judge = llm_judge.LLMJudge(settings(server, temperature=0.3))
    result = judge(items("ans-4", "ans-1", "ans-5"))
  np.testing.assert_array_equal(result.scores, [4.0, 1.0, 5.0])
  assert not result.failed.any()
  body = server.requests[0]
  assert body["model"] == "judge-x" and body["temperature"] == 0.3 and body["n"] == 1
  assert "top_p" not in body
  texts = sorted(user_text(b) for b in server.requests)
  assert "Question: q0\nTranscript of answer: ans-4" in texts[0]
  assert all(h["Authorization"] == f"Bearer {SECRET}" for h in server.headers)


def test_n_choices_are_averaged():
  with FakeJudgeServer(score_by_answer) as server:
    result = llm_judge.LLMJudge(settings(server, n=3))(items("ans-5"))
  np.testing.assert_allclose(result.scores, [(5 + 4 + 3) / 3])


def test_the_last_score_tag_counts():
  """A judge that reasons about a score before giving its verdict: the last tag is the verdict."""
  assert llm_judge.parse_score_tag("Maybe <score>1</score>? No, on reflection <score>4</score>") == 4.0
  with FakeJudgeServer(lambda b, i: chat_reply("First <score>1</score>; final <score>4</score>")) as server:
    result = llm_judge.LLMJudge(settings(server))(items("ans-4"))
  assert result.scores[0] == 4.0 and not result.failed[0]


def test_unparsable_choices_are_skipped_and_the_rest_averaged(tmp_path):
  """n=3 choices, one without a tag: the score is the mean of the two parsed ones, (5 + 3) / 2 = 4 (not 3.5 from
  counting the fallback 2.5 in, nor a failed item); the parse error is recorded; the reply is usable, so cached."""
  cache = str(tmp_path / "cache")
  reply = chat_reply("<score>5</score>", "no tag", "<score>3</score>")
  with FakeJudgeServer(lambda b, i: reply) as server:
    result = llm_judge.LLMJudge(settings(server, n=3, cache_dir=cache))(items("ans-4"))
    again = llm_judge.LLMJudge(settings(server, n=3, cache_dir=cache))(items("ans-4"))
    assert len(server.requests) == 1
  assert result.scores[0] == 4.0 and not result.failed[0] and "reason" not in result.info[0]
  (error,) = result.info[0]["parse_errors"]
  assert "no <score></score> tag" in error and "'no tag'" in error
  assert again.scores[0] == 4.0 and not again.failed[0]


def test_requests_overlap():
  with FakeJudgeServer(lambda b, i: chat_reply("<score>3</score>", delay_s=0.15)) as server:
    judge = llm_judge.LLMJudge(settings(server, max_in_flight=8))
    t0 = time.monotonic()
    result = judge(items(*[f"ans-{i}" for i in range(8)]))
    elapsed = time.monotonic() - t0
  assert server.max_in_flight > 1
  assert elapsed < 8 * 0.15
  np.testing.assert_array_equal(result.scores, np.full(8, 3.0))


def test_identical_items_share_one_request():
  with FakeJudgeServer(score_by_answer) as server:
    r = llm_judge.LLMJudge(settings(server))([base.RewardItem({"question_text": "q"}, "ans-2")] * 4)
  np.testing.assert_array_equal(r.scores, [2, 2, 2, 2])
  assert len(server.requests) == 1


def test_429_is_retried_and_retry_after_honoured():
  def handler(body, index):
    if index == 0:
      return Reply(429, b'{"error": "rate limited"}', {"Retry-After": "0.3"})
    return chat_reply("<score>5</score>")
  with FakeJudgeServer(handler) as server:
    t0 = time.monotonic()
    result = llm_judge.LLMJudge(settings(server))(items("ans-5"))
    elapsed = time.monotonic() - t0
  assert len(server.requests) == 2
  assert elapsed >= 0.3  # own backoff is 1 ms: the wait came from Retry-After
  np.testing.assert_array_equal(result.scores, [5.0])
  assert not result.failed.any()


def _backoff_sleeps(max_retries, backoff_s, max_backoff_s):
  """The sleeps of a client whose every attempt gets a 503, after it gave up (max_retries + 1 requests)."""
  sleeps = []
  with FakeJudgeServer(lambda b, i: Reply(503, b"busy")) as server:
    client = llm_judge.ChatClient(settings(server, max_retries=max_retries, backoff_s=backoff_s,
                                           max_backoff_s=max_backoff_s), sleep=sleeps.append)
    with pytest.raises(llm_judge.JudgeError, match=f"HTTP 503.*gave up after {max_retries + 1} attempts"):
      client.complete([{"role": "user", "content": "hi"}])
  assert len(server.requests) == max_retries + 1 and len(sleeps) == max_retries
  return sleeps


def test_backoff_grows_exponentially():
  for attempt, d in enumerate(_backoff_sleeps(3, 0.01, 1.0)):  # base * 2^k times a jitter factor in [1, 1.5)
    assert 0.01 * 2 ** attempt <= d < 0.015 * 2 ** attempt


def test_backoff_is_capped_at_max_backoff():
  """Uncapped, the 4th delay would be 0.01 * 2^3 = 0.08 s; capped, each is min(0.02, 0.01 * 2^k) times the jitter
  factor in [1, 1.5), so below 0.03, and the later ones at least 0.02."""
  sleeps = _backoff_sleeps(4, 0.01, 0.02)
  assert max(sleeps) < 0.02 * 1.5
  assert all(0.02 <= d for d in sleeps[1:])


def test_retry_after_is_capped_at_max_retry_after():
  """A server asking for 1000 s: the client waits max_retry_after_s, exactly (its own backoff is far smaller)."""
  sleeps = []
  def handler(body, index):
    return Reply(429, b"slow down", {"Retry-After": "1000"}) if index == 0 else chat_reply("<score>4</score>")
  with FakeJudgeServer(handler) as server:
    client = llm_judge.ChatClient(settings(server, max_retry_after_s=0.05), sleep=sleeps.append)
    assert client.complete([{"role": "user", "content": "hi"}]) == ["<score>4</score>"]
  assert len(server.requests) == 2
  assert sleeps == [0.05]


@pytest.mark.parametrize("handler, reason", [
    (lambda b, i: chat_reply("<score>4</score>", delay_s=0.6), "timeout"),
    (lambda b, i: Reply(500, b"internal error"), "HTTP 500"),
    (lambda b, i: Reply(200, b"{not json", {"Content-Type": "application/json"}), "malformed reply"),
    (lambda b, i: Reply(200, b'{"choices": []}'), "malformed reply"),
    (lambda b, i: chat_reply("I would give it a four."), "no <score></score> tag"),
    (lambda b, i: chat_reply("<score>9</score>"), "outside [1, 5]"),
    (lambda b, i: Reply(400, b"bad request"), "HTTP 400"),
])
def test_failures_give_fallback_with_reason(handler, reason):
  with FakeJudgeServer(handler) as server:
    result = llm_judge.LLMJudge(settings(server, timeout_s=0.2, max_retries=1))(items("ans-4"))
  np.testing.assert_array_equal(result.scores, [llm_judge.FALLBACK_SCORE])
  np.testing.assert_array_equal(result.failed, [True])
  assert reason in result.info[0]["reason"]
  expected_requests = 2 if reason in ("timeout", "HTTP 500") else 1  # only transient errors retry
  assert len(server.requests) == expected_requests


def test_cache_avoids_requests_across_instances(tmp_path):
  cache = str(tmp_path / "cache")
  with FakeJudgeServer(score_by_answer) as server:
    first = llm_judge.LLMJudge(settings(server, cache_dir=cache))(items("ans-3", "ans-2"))
    assert len(server.requests) == 2
    second = llm_judge.LLMJudge(settings(server, cache_dir=cache))(items("ans-3", "ans-2"))
    assert len(server.requests) == 2
    np.testing.assert_array_equal(first.scores, second.scores)
    llm_judge.LLMJudge(settings(server, cache_dir=cache, temperature=0.9))(items("ans-3"))
    assert len(server.requests) == 3  # other judge settings: another cache entry


@pytest.mark.parametrize("damage, warning", [
    (lambda text: text[:10], "does not read as JSON"),              # truncated
    (lambda text: "{}", "does not hold what this cache stores"),    # JSON, not a reply
    (lambda text: '{"choices": [4]}', "does not hold what this cache stores"),
])
def test_a_corrupt_cache_entry_is_moved_aside_and_asked_again(tmp_path, caplog, damage, warning):
  """A damaged entry must not stop a run hours in: it is a miss, kept as <key>.json.corrupt, with a warning naming
  it; the judge is asked again and the new reply cached in its place."""
  cache = tmp_path / "cache"
  with FakeJudgeServer(score_by_answer) as server:
    llm_judge.LLMJudge(settings(server, cache_dir=str(cache)))(items("ans-3"))
    (entry,) = cache.glob("*/*.json")
    damaged = damage(entry.read_text())
    entry.write_text(damaged)
    with caplog.at_level(logging.WARNING):
      again = llm_judge.LLMJudge(settings(server, cache_dir=str(cache)))(items("ans-3"))
    assert len(server.requests) == 2 and not again.failed[0] and again.scores[0] == 3.0
    assert f"judge cache entry {entry} {warning}" in caplog.text
    assert json.loads(entry.read_text())["choices"]                  # re-cached
    assert entry.with_name(entry.name + ".corrupt").read_text() == damaged   # the damaged bytes, kept
    llm_judge.LLMJudge(settings(server, cache_dir=str(cache)))(items("ans-3"))
    assert len(server.requests) == 2                                  # and read from the cache from then on


def test_a_corrupt_entry_replaced_meanwhile_by_another_process_is_left_alone(tmp_path):
  """Reader A reads a damaged entry; before A moves it aside, writer B replaces it with a good reply: A leaves B's."""
  from wavalign_jax.rewards import judge_cache
  cache = judge_cache.JudgeCache(str(tmp_path))
  cache.put("ab" * 32, {"choices": ["<score>4</score>"]})
  path = cache._path("ab" * 32)
  cache._set_aside(path, b"{torn", "does not read as JSON")   # what A read, no longer on disk
  assert cache.get("ab" * 32) == {"choices": ["<score>4</score>"]} and not os.path.exists(path + ".corrupt")


def test_failed_calls_are_not_cached(tmp_path):
  cache = str(tmp_path / "cache")
  with FakeJudgeServer(lambda b, i: Reply(500, b"x") if i == 0 else chat_reply("<score>4</score>")) as server:
    a = llm_judge.LLMJudge(settings(server, cache_dir=cache, max_retries=0))(items("ans-4"))
    b = llm_judge.LLMJudge(settings(server, cache_dir=cache, max_retries=0))(items("ans-4"))
  assert a.failed[0] and not b.failed[0] and b.scores[0] == 4.0


def test_replies_without_a_score_are_not_cached(tmp_path):
  """A well-formed reply with no <score> tag fails the item and is asked again next time."""
  cache = str(tmp_path / "cache")
  replies = [chat_reply("I cannot rate this."), chat_reply("<score>3</score>")]
  with FakeJudgeServer(lambda b, i: replies[min(i, 1)]) as server:
    a = llm_judge.LLMJudge(settings(server, cache_dir=cache))(items("ans-3"))
    b = llm_judge.LLMJudge(settings(server, cache_dir=cache))(items("ans-3"))
    c = llm_judge.LLMJudge(settings(server, cache_dir=cache))(items("ans-3"))
  assert a.failed[0] and "no <score></score> tag" in a.info[0]["reason"]
  assert not b.failed[0] and b.scores[0] == 3.0 and c.scores[0] == 3.0
  assert len(server.requests) == 2   # the scored reply came from the cache the third time


def test_api_key_never_logged_or_saved(tmp_path, caplog):
  cache = tmp_path / "cache"
  caplog.set_level(logging.DEBUG)
  replies = [Reply(429, b"slow down"), chat_reply("<score>2</score>"), Reply(401, b"bad key")]
  with FakeJudgeServer(lambda b, i: replies[min(i, 2)]) as server:
    judge = llm_judge.LLMJudge(settings(server, cache_dir=str(cache), max_retries=1))
    ok = judge(items("ans-2"))
    bad = judge(items("ans-3"))
  assert ok.scores[0] == 2.0 and bad.failed[0]
  assert "retry" in caplog.text and "HTTP 401" in caplog.text  # the failure paths did log
  assert SECRET not in caplog.text
  assert SECRET not in repr(judge.client) and SECRET not in json.dumps(bad.info)
  files = [p for p in cache.rglob("*") if p.is_file()]
  assert files
  assert all(SECRET.encode() not in p.read_bytes() for p in files)


def test_missing_key_variable_is_a_clear_error(monkeypatch):
  monkeypatch.delenv(KEY_ENV)
  with pytest.raises(ValueError, match=KEY_ENV):
    llm_judge.ChatClient(llm_judge.JudgeSettings(api_key_env=KEY_ENV))


def test_missing_question_field_names_item_and_field():
  with FakeJudgeServer(score_by_answer) as server:
    judge = llm_judge.LLMJudge(settings(server))
    with pytest.raises(ValueError, match=r"item 1 has no field 'question_text'"):
      judge([base.RewardItem({"question_text": "q"}, "ans-1"), base.RewardItem({"q": "q"}, "ans-1")])


def _decoder_command(rate):
  script = ("import sys, json, wave; codes = json.load(sys.stdin)['codes']; w = wave.open(sys.stdout.buffer, 'wb'); "
            f"w.setnchannels(1); w.setsampwidth(2); w.setframerate({rate}); "
            "w.writeframes(bytes(2 * 10 * len(codes))); w.close()")
  return f"{sys.executable} -c \"{script}\""


def test_audio_attachment_as_input_audio_part():
  decoder = llm_judge.AudioDecoder(llm_judge.AudioDecoderSettings(command=_decoder_command(24000)))
  with FakeJudgeServer(lambda b, i: chat_reply("<score>4</score>")) as server:
    result = llm_judge.LLMJudge(settings(server), audio_decoder=decoder)(items("ans-4"))
  assert result.scores[0] == 4.0 and not result.failed[0]
  text_part, audio = server.requests[0]["messages"][-1]["content"]
  assert text_part["type"] == "text" and "audio of the answer is attached" in text_part["text"]
  assert audio["type"] == "input_audio" and audio["input_audio"]["format"] == "wav"
  with wave.open(io.BytesIO(base64.b64decode(audio["input_audio"]["data"]))) as w:
    assert w.getframerate() == 24000 and w.getnframes() == 10 * 3  # 3 codes -> 30 frames


def test_the_config_attaches_the_answer_audio(tmp_path):
  """`reward.decoder_command` reaches the training reward (run_setup.make_reward_fn): the judge gets the WAV; without
  a decoder, the transcript only; both a command and a URL are refused before the run starts."""
  from experiments import vita
  from wavalign_jax import config_check, errors, run_setup
  config = vita.get_config()
  with FakeJudgeServer(lambda b, i: chat_reply("<score>4</score>")) as server:
    config.reward.update(base_url=server.base_url, api_key_env=KEY_ENV, cache_dir=str(tmp_path / "cache"))
    assert run_setup.make_reward_fn(config, str(tmp_path))(items("ans-4")).scores[0] == 4.0
    config.reward.decoder_command = _decoder_command(24000)
    assert run_setup.make_reward_fn(config, str(tmp_path))(items("ans-4")).scores[0] == 4.0
  assert isinstance(server.requests[0]["messages"][-1]["content"], str)
  _, audio = server.requests[1]["messages"][-1]["content"]
  with wave.open(io.BytesIO(base64.b64decode(audio["input_audio"]["data"]))) as w:
    assert w.getframerate() == 24000 and w.getnframes() == 10 * 3
  config.reward.decoder_url = "http://127.0.0.1:9/decode"
  with pytest.raises(errors.ConfigError, match="decoder_command=.* and --config.reward.decoder_url=.*set one"):
    config_check.check_reward(config)
  config.reward.update(decoder_command="", kind="testbed")   # only the LLM judge hears audio: said, not refused
  assert config_check._reward_warnings(config) == [
      "--config.reward.decoder_url is set but --config.reward.kind=testbed: only the LLM judge hears the answer's "
      "audio, so the decoder is not used"]
  config.reward.kind = "llm_judge"
  assert config_check._reward_warnings(config) == []


def test_audio_decoder_wrong_rate_fails_item():
  decoder = llm_judge.AudioDecoder(llm_judge.AudioDecoderSettings(command=_decoder_command(16000)))
  with FakeJudgeServer(lambda b, i: chat_reply("<score>4</score>")) as server:
    result = llm_judge.LLMJudge(settings(server), audio_decoder=decoder)(items("ans-4"))
  assert result.failed[0] and "16000 Hz" in result.info[0]["reason"] and not server.requests


def test_failure_monitor(caplog):
  monitor = base.FailureMonitor(max_failed_fraction=0.5)
  ok = base.RewardResult([1, 2, 3, 4], [False, True, False, False], [{}, {"reason": "HTTP 500"}, {}, {}])
  metrics = monitor.update(ok, step=7)
  assert metrics == {"reward/failed": 1.0, "reward/failed_fraction": 0.25, "reward/failed_total": 1.0}
  assert "HTTP 500" in caplog.text
  timeouts = base.RewardResult([1, 2, 3, 4], [True, True, True, False], [{"reason": "timeout"}] * 3 + [{}])
  with pytest.raises(base.RewardFailureError, match=r"3/4 items failed at step 8.*'timeout', 3"):
    monitor.update(timeouts, step=8)
  assert monitor.total_failed == 4 and monitor.total_items == 8


def test_non_finite_reward_is_a_failed_item(caplog):
  """A reward function returning NaN / inf: those items are failed (reason named), hold the mean of the finite
  scores, and count in reward/failed; a batch of only such items stops the run."""
  monitor = base.FailureMonitor(max_failed_fraction=0.5)
  result = base.RewardResult([1.0, np.nan, 3.0, np.inf], [False, False, False, False], [{}, {}, {}, {}])
  np.testing.assert_array_equal(result.scores, [1.0, 2.0, 3.0, 2.0])
  np.testing.assert_array_equal(result.failed, [False, True, False, True])
  assert monitor.update(result, step=1)["reward/failed"] == 2.0 and "non-finite score" in caplog.text
  all_nan = base.RewardResult(np.full(2, np.nan), np.zeros(2, bool), [{}, {}])
  assert all_nan.failed.all() and np.isfinite(all_nan.scores).all()
  with pytest.raises(base.RewardFailureError, match="2/2 items failed.*non-finite score"):
    monitor.update(all_nan)
