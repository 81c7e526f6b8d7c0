"""The train loop with the LLM-judge reward against a real HTTP judge on 127.0.0.1, including its failures."""
import json

import pytest

from fake_judge_server import FakeJudgeServer, Reply, chat_reply
from conftest import tiny_config
from wavalign_jax import train
from wavalign_jax.rewards.base import RewardFailureError


def _judge_config(tiny_base, url: str, **reward):
  config = tiny_config("interleaved", tiny_base("interleaved"))
  config.reward.update(dict(kind="llm_judge", base_url=url, api_key_env="", max_retries=0, timeout_s=10.0,
                            max_in_flight=4, **reward))
  config.train.update(dict(total_steps=2, checkpoint_every=2))
  return config


def test_failed_judge_calls_are_counted_and_excluded(tmp_path, tiny_base):
  # Every third request fails with a 500; the others score 4 or 2 alternately.
  handler = lambda body, i: Reply(500, b"boom") if i % 3 == 2 else chat_reply(f"<score>{4 if i % 2 else 2}</score>")
  with FakeJudgeServer(handler) as server:
    train.train(_judge_config(tiny_base, server.base_url, exclude_failed=True, max_failed_fraction=0.5),
                str(tmp_path))
    rows = 4 * 2 * 2   # prompts x group x steps
    assert len(server.requests) == rows
    sent = [m["content"] for r in server.requests for m in r["messages"] if isinstance(m["content"], str)]
    assert any("transcript" in c.lower() for c in sent)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if '"train"' in l]
  assert [l["step"] for l in lines] == [1, 2]
  assert sum(l["reward/failed"] for l in lines) == pytest.approx(rows // 3, abs=1)
  for l in lines:
    # failed items (fallback 2.5) are kept out of the gate: the mean is over the 2s and 4s only
    assert 2.0 <= l["reward_mean"] <= 4.0 and l["reward_mean"] != 2.5


def test_too_many_judge_failures_stop_the_run(tmp_path, tiny_base):
  with FakeJudgeServer(lambda body, i: Reply(503, b"unavailable")) as server:
    with pytest.raises(RewardFailureError, match="failed"):
      train.train(_judge_config(tiny_base, server.base_url, max_failed_fraction=0.25), str(tmp_path))
