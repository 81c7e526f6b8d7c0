"""The train loop with the LLM-judge reward against a real HTTP judge on 127.0.0.1, including its failures."""
import json
import os

import pytest

from fake_judge_server import FakeJudgeServer, Reply, chat_reply
from conftest import built_testbed_datasets, tiny_config
from wavalign_jax import run_setup, train
from wavalign_jax.rewards.base import RewardFailureError


def user_text(body) -> str:
  content = body["messages"][-1]["content"]
  return content if isinstance(content, str) else content[0]["text"]


def _judge_config(tiny_base, url: str, **reward):
  config = tiny_config("interleaved", tiny_base("interleaved"))
  config.reward.update(dict(kind="llm_judge", base_url=url, api_key_env="", max_retries=0, timeout_s=10.0,
                            max_in_flight=4, **reward))
  config.train.update(dict(total_steps=2, checkpoint_every=2))
  return config


def test_failed_judge_calls_are_counted_and_excluded(tmp_path, tiny_base):
  """Request i fails with a 500 when i % 3 == 2 and otherwise scores 4 (odd i) or 2. Step 1 sends requests 0..7
  (fails 2, 5; scores 2 4 4 2 2 4: mean 3.0), step 2 requests 8..15 (fails 8, 11, 14; scores 4 2 2 4 4: mean 3.2)
  whatever row each one scores; a failed call's fallback (2.5) counted in would give 2.875 and 2.9375."""
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
  assert [l["reward/failed"] for l in lines] == [2, 3]
  assert [l["reward_mean"] for l in lines] == pytest.approx([3.0, 3.2], rel=1e-6)


def test_too_many_judge_failures_stop_the_run(tmp_path, tiny_base):
  with FakeJudgeServer(lambda body, i: Reply(503, b"unavailable")) as server:
    with pytest.raises(RewardFailureError, match="failed"):
      train.train(_judge_config(tiny_base, server.base_url, max_failed_fraction=0.25), str(tmp_path))


def test_data_eval_on_built_datasets_is_scored_by_the_same_judge_with_its_failures_counted(tmp_path, tiny_base,
                                                                                           monkeypatch):
  """A run on built datasets (`data.source=arrayrecord`) with `data.eval`: rollouts and the evaluation of the greedy
  responses go to one LLM judge. The judge fails every request about one question (as an overloaded judge fails
  some items): those eval items are counted in `reward/failed` and left out of the mean, the others score 4."""
  base = tiny_base("interleaved")
  config = _judge_config(tiny_base, "")
  config.data.source = "arrayrecord"
  config.data.train, config.data.eval = built_testbed_datasets(base, "interleaved", config, tmp_path)
  config.train.eval_examples = 8   # the eval set's first two questions, in four voice styles each
  eval_records = [json.loads(l) for l in open(os.path.join(base, "testbed", "jsonl", "eval", "eval_id.jsonl"))]
  failing = eval_records[0]["question_text"]
  handler = lambda body, i: (Reply(500, b"overloaded") if f"Question: {failing}\n" in user_text(body)
                             else chat_reply("<score>4</score>"))
  judges = []
  class CountedJudge(run_setup.LLMJudge):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      judges.append(self)
  monkeypatch.setattr(run_setup, "LLMJudge", CountedJudge)
  with FakeJudgeServer(handler) as server:
    config.reward.base_url = server.base_url
    train.train(config, str(tmp_path / "run"))
  assert len(judges) == 1   # one client for rollouts and evaluation: one in-flight limit, one cache
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl") if '"train"' in l]
  assert [l["reward/failed"] for l in lines] == [0, 0]   # no training prompt asks the failing question
  question = {r["id"]: r["question_text"] for r in eval_records}
  rows = [json.loads(l) for l in open(tmp_path / "run" / "eval" / "after.jsonl")]
  assert len(rows) == config.train.eval_examples
  assert [r["failed"] for r in rows] == [question[r["id"]] == failing for r in rows]
  assert 0 < sum(r["failed"] for r in rows) < len(rows)
  after = json.load(open(tmp_path / "run" / "eval_summary.json"))["after"]
  assert after["reward/failed"] == sum(r["failed"] for r in rows) and after["count"] == len(rows)
  assert after["reward"] == 4.0   # the failed items' fallback (2.5) is not averaged in
