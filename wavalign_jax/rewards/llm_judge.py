"""LLM-judge reward: an OpenAI-compatible chat-completions client plus the reference scoring prompt.

A rollout batch is G x prompts answers, so requests run in a thread pool (`max_in_flight`), retry
429 / 5xx / connection errors with exponential backoff (jitter, Retry-After honoured), and go
through an on-disk cache so re-scoring and resumed runs cost nothing. A call that still fails
scores the reference fallback (2.5) and is marked failed with its reason; `FailureMonitor` turns
too many failures in one batch into a clear error instead of silently training on fallbacks.

The API key is read from the environment variable named in the settings and kept only in the
request header: it is never logged, cached or put in an error message.
"""
from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import http.client
import json
import logging
import os
import random
import re
import shlex
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence

import numpy as np

from wavalign_jax.rewards import base
from wavalign_jax.rewards import judge_cache

log = logging.getLogger(__name__)

FALLBACK_SCORE = 2.5  # reference score of a failed judge call: the middle of 1-5
WAV_SAMPLE_RATE = 24000

JUDGE_SYSTEM_PROMPT = "You are a strict, fair evaluator of answers given by a spoken dialogue assistant."
JUDGE_PROMPT = """Evaluate how well a spoken assistant answered a user's question.

Question: {question}
Transcript of answer: {answer}
{audio_note}
Judge the answer holistically: is it correct, helpful and relevant to the question, and is it \
suitable to be spoken aloud (natural, concise, no markup)? Give one overall score from 1 (very poor) \
to 5 (excellent), and write only that number inside <score></score> tags, for example <score>4</score>."""
AUDIO_NOTE = ("\nThe audio of the answer is attached: also judge whether the speech is natural and "
              "says the same thing as the transcript.\n")


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
  """Where and how to ask the judge. The cache is keyed by base_url and the request (model, n, temperature, top_p,
  max_tokens, the conversation); the other fields change how a request is made, not its answer."""
  base_url: str = "https://api.openai.com/v1"
  model: str = "gpt-4o"
  api_key_env: str = "OPENAI_API_KEY"   # name of the env variable; "" sends no Authorization header
  temperature: float | None = None      # None: leave the server default
  top_p: float | None = None
  n: int = 1                            # choices per request (VoiceBench uses 3)
  max_tokens: int | None = None
  timeout_s: float = 60.0
  max_retries: int = 5                  # retries after the first attempt
  backoff_s: float = 1.0                # first retry delay; doubles each retry
  max_backoff_s: float = 60.0
  max_retry_after_s: float = 120.0      # a server's Retry-After is honoured up to this
  max_in_flight: int = 32
  cache_dir: str | None = None


def _is_cached_reply(value: Any) -> bool:
  """What `LLMJudge.complete` caches: {"model": ..., "choices": [reply text, ...]}."""
  return (isinstance(value, dict) and isinstance(value.get("choices"), list)
          and all(isinstance(c, str) for c in value["choices"]))


class JudgeError(Exception):
  """A request that failed for good; `str(e)` is the reason recorded with the item."""


class _Retryable(Exception):
  def __init__(self, reason: str, retry_after: float | None = None):
    super().__init__(reason)
    self.retry_after = retry_after


def _retry_after(headers) -> float | None:
  value = headers.get("Retry-After") if headers is not None else None
  try:
    return max(0.0, float(value)) if value is not None else None
  except ValueError:  # an HTTP date: fall back to our own backoff
    return None


class ChatClient:
  """Thread-safe chat-completions client with retries, backoff and an optional disk cache."""

  def __init__(self, settings: JudgeSettings, *, sleep: Callable[[float], None] = time.sleep):
    self.settings = settings
    self._api_key = ""
    if settings.api_key_env:
      if settings.api_key_env not in os.environ:
        raise ValueError(f"judge API key environment variable {settings.api_key_env!r} is not set "
                         "(set it, or use api_key_env='' for a server without authentication)")
      self._api_key = os.environ[settings.api_key_env]
    self._cache = judge_cache.JudgeCache(settings.cache_dir) if settings.cache_dir else None
    self._sleep = sleep
    self._rng = random.Random()
    self._rng_lock = threading.Lock()

  def __repr__(self) -> str:  # never show the key
    return f"ChatClient(base_url={self.settings.base_url!r}, model={self.settings.model!r})"

  def request_body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
    s = self.settings
    body: dict[str, Any] = {"model": s.model, "messages": messages, "n": s.n}
    for k in ("temperature", "top_p", "max_tokens"):
      if getattr(s, k) is not None:
        body[k] = getattr(s, k)
    return body

  def _key(self, body: dict[str, Any]) -> str:
    return judge_cache.cache_key({"base_url": self.settings.base_url.rstrip("/"), "body": body})

  def complete(self, messages: list[dict[str, Any]], usable: Callable[[str], bool] | None = None) -> list[str]:
    """The `n` reply texts for one conversation; raises JudgeError once retries are exhausted.

    `usable(choice)`: whether the caller can use a reply (e.g. it holds a score tag). Replies with no usable
    choice are returned but never cached, so a later re-score asks again; such cached replies are ignored.
    """
    body = self.request_body(messages)
    key = self._key(body)
    ok = lambda choices: usable is None or any(usable(c) for c in choices)
    if self._cache is not None:
      hit = self._cache.get(key, valid=_is_cached_reply)
      if hit is not None and ok(hit["choices"]):
        return list(hit["choices"])
    choices = self._post_with_retries(body)
    if self._cache is not None and ok(choices):
      self._cache.put(key, {"model": self.settings.model, "choices": choices})
    return choices

  def complete_many(self, conversations: Sequence[list[dict[str, Any]]],
                    usable: Callable[[str], bool] | None = None) -> list[list[str] | JudgeError]:
    """`complete` over many conversations, at most `max_in_flight` at once; identical ones share a call."""
    keys = [self._key(self.request_body(m)) for m in conversations]
    first = {}
    for i, k in enumerate(keys):
      first.setdefault(k, i)

    def run(i):
      try:
        return self.complete(conversations[i], usable)
      except JudgeError as e:
        return e

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.settings.max_in_flight)) as pool:
      done = dict(zip(first, pool.map(run, first.values())))
    return [done[k] for k in keys]

  def _post_with_retries(self, body: dict[str, Any]) -> list[str]:
    s = self.settings
    for attempt in range(s.max_retries + 1):
      try:
        return self._post(body)
      except _Retryable as e:
        if attempt == s.max_retries:
          raise JudgeError(f"{e} (gave up after {attempt + 1} attempts)") from None
        delay = min(s.max_backoff_s, s.backoff_s * 2 ** attempt)
        with self._rng_lock:
          delay *= 1.0 + 0.5 * self._rng.random()
        if e.retry_after is not None:
          delay = max(delay, min(e.retry_after, s.max_retry_after_s))
        log.info("judge request retry %d/%d in %.2fs: %s", attempt + 1, s.max_retries, delay, e)
        self._sleep(delay)
    raise AssertionError("unreachable")

  def _post(self, body: dict[str, Any]) -> list[str]:
    url = self.settings.base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if self._api_key:
      headers["Authorization"] = f"Bearer {self._api_key}"
    req = urllib.request.Request(url, json.dumps(body).encode("utf-8"), headers, method="POST")
    try:
      with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
        raw = resp.read()
    except urllib.error.HTTPError as e:
      detail = e.read()[:200].decode("utf-8", "replace")
      if e.code == 429 or e.code >= 500:
        raise _Retryable(f"HTTP {e.code}: {detail}", _retry_after(e.headers)) from None
      raise JudgeError(f"HTTP {e.code}: {detail}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as e:
      reason = getattr(e, "reason", e)
      kind = "timeout" if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError) else "connection error"
      raise _Retryable(f"{kind}: {reason}") from None
    try:
      choices = [c["message"]["content"] for c in json.loads(raw)["choices"]]
      if not choices or not all(isinstance(c, str) for c in choices):
        raise ValueError("no text choices")
    except (ValueError, KeyError, TypeError) as e:
      raise JudgeError(f"malformed reply ({type(e).__name__}: {e}): {raw[:200]!r}") from None
    return choices


@dataclasses.dataclass(frozen=True)
class AudioDecoderSettings:
  """Turns audio codes into a 24 kHz WAV outside the project (the decoder is PyTorch).

  command: a shell-style command that reads the codes as JSON (`{"codes": [...]}`) on stdin and
    writes WAV bytes to stdout. url: an HTTP endpoint that takes the same JSON in a POST and answers
    with WAV bytes. Exactly one must be set.
  """
  command: str = ""
  url: str = ""
  timeout_s: float = 120.0


def wav_sample_rate(wav: bytes) -> int:
  """Sample rate from a RIFF/WAVE header; raises on anything that is not a WAV file."""
  if len(wav) < 28 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE" or wav[12:16] != b"fmt ":
    raise ValueError(f"audio decoder output is not a WAV file (starts with {wav[:16]!r})")
  return struct.unpack("<I", wav[24:28])[0]


class AudioDecoder:
  def __init__(self, settings: AudioDecoderSettings):
    if bool(settings.command) == bool(settings.url):
      raise ValueError("AudioDecoderSettings needs exactly one of `command` or `url`")
    self.settings = settings

  def __call__(self, codes: Sequence[int]) -> bytes:
    payload = json.dumps({"codes": [int(c) for c in codes]}).encode("utf-8")
    s = self.settings
    if s.command:
      proc = subprocess.run(shlex.split(s.command), input=payload, capture_output=True, timeout=s.timeout_s)
      if proc.returncode != 0:
        raise RuntimeError(f"audio decoder command exited {proc.returncode}: "
                           f"{proc.stderr[-300:].decode('utf-8', 'replace')}")
      wav = proc.stdout
    else:
      req = urllib.request.Request(s.url, payload, {"Content-Type": "application/json"}, method="POST")
      with urllib.request.urlopen(req, timeout=s.timeout_s) as resp:
        wav = resp.read()
    rate = wav_sample_rate(wav)
    if rate != WAV_SAMPLE_RATE:
      raise ValueError(f"audio decoder returned {rate} Hz audio; the judge expects {WAV_SAMPLE_RATE} Hz")
    return wav


# How an AudioDecoder call fails (the command's exit status or time-out, the server, a WAV of another rate): one
# item's failure, counted, never the whole batch's.
DECODER_ERRORS = (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired)


def audio_part(wav: bytes) -> dict[str, Any]:
  """An `input_audio` content part for chat-completions."""
  return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode("ascii"), "format": "wav"}}


_SCORE_TAG = re.compile(r"<score>\s*([-+]?\d+(?:\.\d+)?)\s*</score>", re.IGNORECASE)


def parse_score_tag(reply: str) -> float:
  """The last `<score>x</score>` of a reply (a judge may reason about a score before its verdict); ValueError when
  absent or outside the prompt's 1-5."""
  found = _SCORE_TAG.findall(reply)
  if not found:
    raise ValueError(f"no <score></score> tag in reply {reply[:120]!r}")
  score = float(found[-1])
  if not 1.0 <= score <= 5.0:
    raise ValueError(f"score {score} outside [1, 5]")
  return score


def parses(parse: Callable[[str], Any]) -> Callable[[str], bool]:
  """`usable` predicate for ChatClient.complete: the reply parses without error."""
  def usable(reply: str) -> bool:
    try:
      parse(reply)
      return True
    except ValueError:
      return False
  return usable


@dataclasses.dataclass
class Judged:
  """One conversation's verdict (`judge_all`): the reply's choices, the values of those that parsed and why the
  others did not; `failure` says why there is no value at all (the request failed, or no choice parsed)."""
  replies: list[str]
  values: list[float]
  parse_errors: list[str]
  failure: str | None


def judge_all(client: ChatClient, conversations: Sequence[list[dict[str, Any]]],
              parse: Callable[[str], float]) -> list[Judged]:
  """Asks the judge about every conversation (concurrently, cached) and parses each reply choice: the one judging
  loop of the training reward (`LLMJudge`) and the benchmark scorers (evaluation/common.judge)."""
  out = []
  for reply in client.complete_many(conversations, usable=parses(parse)):
    if isinstance(reply, JudgeError):
      out.append(Judged([], [], [], f"request failed: {reply}"))
      continue
    values, errors = [], []
    for choice in reply:
      try:
        values.append(parse(choice))
      except ValueError as e:
        errors.append(str(e))
    failure = None if values else f"unparsable reply: {errors[0]}" if errors else "the reply held no choices"
    out.append(Judged(list(reply), values, errors, failure))
  return out


class LLMJudge:
  """RewardFn: holistic 1-5 judge of (question text, answer text channel[, answer audio])."""

  name = "llm_judge"
  question_field = "question_text"   # the record's question (data/build.py keeps it with every prompt)

  def __init__(self, settings: JudgeSettings, *, audio_decoder: AudioDecoder | None = None,
               fallback_score: float = FALLBACK_SCORE):
    """`audio_decoder`: the answer's audio codes go to the judge as a 24 kHz WAV beside the transcript
    (`reward.decoder_command` / `reward.decoder_url`); without it the judge reads the transcript only."""
    self.client = ChatClient(settings)
    self.audio_decoder = audio_decoder
    self.fallback_score = fallback_score

  def _messages(self, item: base.RewardItem) -> list[dict[str, Any]]:
    text = JUDGE_PROMPT.format(question=item.record[self.question_field], answer=item.text,
                               audio_note=AUDIO_NOTE if self.audio_decoder else "")
    content: Any = text
    if self.audio_decoder is not None:
      content = [{"type": "text", "text": text}, audio_part(self.audio_decoder(item.audio_codes))]
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": content}]

  def __call__(self, items: Sequence[base.RewardItem]) -> base.RewardResult:
    n = len(items)
    scores = np.full(n, self.fallback_score, np.float32)
    failed = np.zeros(n, bool)
    info: list[dict[str, Any]] = [{} for _ in items]
    conversations, todo = [], []
    for i, item in enumerate(items):
      if self.question_field not in item.record:
        raise ValueError(f"{self.name}: item {i} has no field {self.question_field!r} "
                         f"(fields: {sorted(item.record)})")
      try:
        conversations.append(self._messages(item))
        todo.append(i)
      except DECODER_ERRORS as e:
        failed[i], info[i]["reason"] = True, f"audio decoder: {e}"
    for i, judged in zip(todo, judge_all(self.client, conversations, parse_score_tag)):
      if judged.replies:
        info[i]["replies"] = judged.replies
      if judged.parse_errors:
        info[i]["parse_errors"] = judged.parse_errors
      if judged.failure:
        failed[i], info[i]["reason"] = True, judged.failure
      else:
        scores[i] = np.mean(judged.values)
    for i in np.flatnonzero(failed):
      log.warning("%s: item %d failed, scored %.1f: %s", self.name, i, self.fallback_score, info[i]["reason"])
    return base.RewardResult(scores, failed, info)

