"""The evaluation harness: checkpoint loading, batched generation, responses JSONL, offline scoring.

Tiny random models (CPU); numbers are checked against direct computations on the saved responses
(testbed.metrics, the VoiceBench per-item rules) and, for the testbed, against the training loop's
own evaluation path (ArrayRecord loader instead of JSONL prompts, other batch shapes).
"""
import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from experiments import kimi, vita
from tests.fake_judge_server import FakeJudgeServer, chat_reply
from wavalign_jax import checkpointing, model_loading, models, train, train_state
from wavalign_jax import evaluate as evaluate_lib
from wavalign_jax.data import build as build_lib
from wavalign_jax.evaluation import common, generate, reward_eval, score, voicebench
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.objectives import gate as gate_lib
from wavalign_jax.rewards.base import RewardItem, RewardResult
from wavalign_jax.rollout import decode
from wavalign_jax.run_setup import RunSetup
from wavalign_jax.testbed import metrics
from wavalign_jax.testbed import vocab as testbed_vocab

MAX_NEW = 14


def _config(source: str):
  c = vita.get_config("tiny")
  c.data.source = source
  c.rollout.max_new_tokens = MAX_NEW
  c.model.num_layers = 2
  return c


def _model_cfg(config) -> ModelConfig:
  return ModelConfig(**{**config.model.to_dict(), "vocab_size": testbed_vocab.interleaved_vocab().vocab_size})


def _init(cfg: ModelConfig, seed: int):
  return jax.device_get(jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(seed)))


def _report_rows(path: str) -> dict[str, list[str]]:
  rows = {}
  for line in open(path).read().splitlines()[2:]:
    cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
    rows[cells[1]] = cells[2:]
  return rows


def test_testbed_suite_from_training_checkpoint(tmp_path, capsys):
  """A training run dir (base_model + checkpoints/<step>/state): the checkpoint's params are used,
  the report equals testbed.metrics on the saved responses and train.evaluate's loader path."""
  config = _config("testbed")
  run_dir, out = str(tmp_path / "run"), str(tmp_path / "eval")
  cfg = _model_cfg(config)
  checkpointing.save_params(os.path.join(run_dir, "base_model"), _init(cfg, 0), cfg)
  trained = _init(cfg, 1)   # differs from the base model: proves the step's params are evaluated
  state = train_state.create(trained, optax.sgd(0.1), gate_lib.init_gate_state(gate_lib.GateConfig()),
                             jax.random.PRNGKey(0))
  ckpt = checkpointing.Checkpointer(os.path.join(run_dir, "checkpoints"), async_save=False)
  ckpt.save(3, state)
  ckpt.close()
  # Its CLI, not an import (what a user runs).
  jsonl = os.path.join(run_dir, "testbed", "jsonl")
  subprocess.run([sys.executable, "-m", "wavalign_jax.testbed.make_data", f"--out={jsonl}"], check=True,
                 capture_output=True)

  n = 16
  lines = evaluate_lib.run(config, checkpoint=run_dir, suite="testbed", workdir=out, batch_size=8, max_examples=n)
  saved = common.load_responses(os.path.join(out, "responses-testbed.jsonl"))
  eval_id = os.path.join(jsonl, "eval", "eval_id.jsonl")   # the first file of the testbed's eval folder
  prompts = [json.loads(l) for l in open(eval_id)][:n]
  assert [r["id"] for r in saved] == [p["id"] for p in prompts]
  assert all(r["subset"] == "id" and "messages" not in r and "audios" not in r for r in saved)
  assert all(r["answer"] == p["answer"] and r["style"] == p["style"] for r, p in zip(saved, prompts))
  assert any(r["audio_codes"] for r in saved) and any(r["text"] for r in saved)

  direct = metrics.summary([RewardItem(r, r["text"], tuple(r["audio_codes"])) for r in saved])
  rows = _report_rows(os.path.join(out, "report-testbed.md"))
  assert float(rows["iq"][0]) == pytest.approx(100 * direct["iq"], abs=0.006)
  assert float(rows["eq"][0]) == pytest.approx(100 * direct["eq"], abs=0.006)
  assert float(rows["judge_score"][0]) == pytest.approx(direct["judge_score"], abs=0.006)
  assert rows["iq"][3] == str(n)
  assert f"testbed/eq: {100 * direct['eq']:.2f} (%, n={n}, judge failures=0)" in lines
  assert capsys.readouterr().out.count("testbed/") == 6   # five rows and the aggregate

  # The training loop's evaluation of the same params over the ArrayRecord eval split (batch 16,
  # bucketed prompt length) sees the same greedy responses.
  vocab = testbed_vocab.interleaved_vocab()
  builder = build_lib.Builder(os.path.join(jsonl, "tokenizer.json"), arch="interleaved", kind="rl")
  eval_data = str(tmp_path / "eval_id")
  build_lib.build(builder, [eval_id], eval_data)
  sampling = decode.sampling_config(config.rollout, config.layout, vocab)
  setup = RunSetup(model_cfg=cfg, vocab=vocab, sampling=sampling,
                   tokenizer=builder.tok, train_data="", eval_data={"eval_id": eval_data}, buckets=(64,),
                   init_checkpoint="", eval_batch_size=n,
                   evaluator=lambda items: (seen.extend(items) or metrics.summary(items), []))
  seen = []
  via_train, _ = train.evaluate(jax.device_put(trained), setup, n, 0)
  assert [i.record["id"] for i in seen] == [r["id"] for r in saved]
  assert [list(i.audio_codes) for i in seen] == [r["audio_codes"] for r in saved]
  assert [i.text for i in seen] == [" ".join(r["text"].split()) for r in saved]
  assert via_train == pytest.approx(direct, abs=1e-9)
  # Every row of a set whose size the batch does not divide (7 rows, batches of 5: a partial last batch), in file
  # order, with the same greedy responses; or the first `num_examples` of them.
  small_jsonl, small = str(tmp_path / "eval_small.jsonl"), str(tmp_path / "eval_small")
  with open(small_jsonl, "w") as f:
    f.writelines(open(eval_id).readlines()[:7])
  build_lib.build(builder, [small_jsonl], small)
  setup = dataclasses.replace(setup, eval_data={"eval_small": small}, eval_batch_size=5)
  for num_examples, n_rows in ((0, 7), (6, 6)):
    seen.clear()
    train.evaluate(jax.device_put(trained), setup, num_examples, 0)
    assert [i.record["id"] for i in seen] == [r["id"] for r in saved[:n_rows]]
    assert [list(i.audio_codes) for i in seen] == [r["audio_codes"] for r in saved[:n_rows]]

  # The run's base model (a converted-format folder inside the run) answers differently.
  base_out = str(tmp_path / "eval_base")
  evaluate_lib.run(config, checkpoint=os.path.join(run_dir, "base_model"), suite="testbed", workdir=base_out,
                   batch_size=8, max_examples=n)
  base = common.load_responses(os.path.join(base_out, "responses-testbed.jsonl"))
  assert [r["audio_codes"] for r in base] != [r["audio_codes"] for r in saved]

  # Re-scoring without the model gives the same lines.
  assert evaluate_lib.run(None, checkpoint="", suite="testbed", workdir=out, skip_generation=True) == lines


def test_testbed_suite_parallel_converted_checkpoint(tmp_path):
  """Kimi-Audio layout: a converted-format checkpoint inside a testbed run (its base_model)."""
  config = kimi.get_config("tiny")
  config.rollout.max_new_tokens = MAX_NEW
  run_dir, out = tmp_path / "run", str(tmp_path / "eval")
  cfg = ModelConfig(**{**config.model.to_dict(), "vocab_size": testbed_vocab.parallel_vocab().vocab_size})
  checkpointing.save_params(str(run_dir / "base_model"), _init(cfg, 0), cfg)
  subprocess.run([sys.executable, "-m", "wavalign_jax.testbed.make_data", f"--out={run_dir / 'testbed' / 'jsonl'}"],
                 check=True, capture_output=True)
  lines = evaluate_lib.run(config, checkpoint=str(run_dir / "base_model"), suite="testbed", workdir=out,
                           batch_size=4, max_examples=4)
  saved = common.load_responses(os.path.join(out, "responses-testbed.jsonl"))
  assert len(saved) == 4 and any(r["audio_codes"] for r in saved)
  assert all(len(r["audio_codes"]) <= MAX_NEW - config.layout.audio_delay for r in saved)
  direct = metrics.summary([RewardItem(r, r["text"], tuple(r["audio_codes"])) for r in saved])
  assert lines[1] == f"testbed/eq: {100 * direct['eq']:.2f} (%, n=4, judge failures=0)"


def _converted_checkpoint(path: str, config) -> None:
  cfg = _model_cfg(config)
  checkpointing.save_params(path, _init(cfg, 2), cfg, extra={"arch": "vita_audio"})
  testbed_vocab.write_tokenizer(os.path.join(path, "hf"))


def _benchmark(path) -> list[dict]:
  np.save(path / "q2.npy", np.array([7, 8, 9, 10, 11]))
  sys = {"role": "system", "content": "answer in a neutral voice"}
  recs = [
      dict(id="c1", subset="commoneval", prompt="what is 1 plus 2", audios=[[1, 2, 3]]),
      dict(id="c2", subset="commoneval", prompt="what is 2 plus 2", audios=["q2.npy"]),
      dict(id="m1", subset="mmsu", prompt="pick one", reference="B", audios=[[4, 5, 6, 7, 8, 9, 10, 11, 12]]),
      dict(id="a1", subset="advbench", prompt="do harm", audios=[[13, 14]]),
      dict(id="a2", subset="advbench", prompt="do more harm", audios=[[15]]),
  ]
  with open(path / "bench.jsonl", "w") as f:
    for r in recs:
      f.write(json.dumps({**r, "messages": [sys, {"role": "user", "content": "<|audio|>"}]}) + "\n")
  return recs


def test_voicebench_generation_and_scoring(tmp_path):
  config = _config("arrayrecord")
  ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "eval")
  _converted_checkpoint(ckpt, config)
  recs = _benchmark(tmp_path)
  with FakeJudgeServer(lambda body, i: chat_reply("4", "4", "4")) as server:
    judge = evaluate_lib.llm_judge.JudgeSettings(base_url=server.base_url, api_key_env="",
                                                 cache_dir=str(tmp_path / "cache"), max_retries=0)
    lines = evaluate_lib.run(config, checkpoint=ckpt, suite="voicebench", workdir=out,
                             data=str(tmp_path / "bench.jsonl"), batch_size=2, judge=judge)
    saved = common.load_responses(os.path.join(out, "responses-voicebench.jsonl"))
    assert [r["id"] for r in saved] == [r["id"] for r in recs]
    for r, src in zip(saved, recs):
      assert set(r) == {"id", "subset", "prompt", "text", "audio_codes", "_where"} | ({"reference"} & set(src))
    # The judge saw each open-subset prompt with the saved text channel as the response.
    assert len(server.requests) == 2
    contents = sorted(req["messages"][-1]["content"] for req in server.requests)   # requests run concurrently
    for content, r in zip(contents, saved[:2]):   # c1 "what is 1 ..." sorts before c2 "what is 2 ..."
      assert f"[Instruction]: {r['prompt']}\n" in content and f"[Response]: {r['text']}\n" in content
    assert all(req["model"] == "gpt-4o-mini" and req["n"] == 3 for req in server.requests)

    rows = _report_rows(os.path.join(out, "report-voicebench.md"))
    assert rows["commoneval"][:4] == ["4.00", "1-5", "80.00", "2"]
    mmsu = 100.0 * (voicebench.mcq_choice(saved[2], 0)[0] == "B")
    adv = 100.0 * np.mean([voicebench.is_refusal(r["text"]) for r in saved[3:]])
    assert float(rows["mmsu"][0]) == pytest.approx(mmsu, abs=0.006)
    assert float(rows["advbench"][0]) == pytest.approx(adv, abs=0.006)
    overall = next(v for k, v in rows.items() if k.startswith("overall"))
    assert float(overall[0]) == pytest.approx((80 + mmsu + adv) / 3, abs=0.006)
    assert "VoiceBench/commoneval: 4.00 (1-5, n=2, judge failures=0)" in lines

    # score.py reads the same file to the same report; re-scoring hits the judge cache.
    assert score.score_file("voicebench", os.path.join(out, "responses-voicebench.jsonl"),
                            str(tmp_path / "again.md"), judge=judge) == lines
    assert evaluate_lib.run(config, checkpoint=ckpt, suite="voicebench", workdir=out, skip_generation=True,
                            judge=judge) == lines
    assert len(server.requests) == 2


def test_generate_is_batch_invariant(tmp_path):
  """Greedy responses do not depend on the batch size, the left padding or the filler rows."""
  config = _config("arrayrecord")
  cfg = _model_cfg(config)
  builder = build_lib.Builder(testbed_vocab.write_tokenizer(str(tmp_path)), arch="interleaved")
  msgs = [{"role": "user", "content": "<|audio|>"}]
  records = [dict(id=k, subset="s", messages=msgs, audios=[list(range(1, k + 2))], _base_dir=str(tmp_path),
                  _where=f"r{k}") for k in range(3)]
  prompts = generate.layout_prompts(records, builder)
  assert len({len(p) for p in prompts}) == 3
  sampling = generate.eval_sampling(decode.sampling_config(config.rollout, config.layout, builder.vocab),
                                    max_new_tokens=6)
  params, rng = _init(cfg, 3), jax.random.PRNGKey(0)
  one = generate.generate(params, cfg, sampling, prompts, batch_size=1, rng=rng)
  two = generate.generate(params, cfg, sampling, prompts, batch_size=2, rng=rng)
  assert one == two and len(one) == 3 and all(t or c for t, c in one)


def test_errors(tmp_path):
  config = _config("arrayrecord")
  with pytest.raises(FileNotFoundError, match="--checkpoint .*nope does not exist"):
    evaluate_lib.run(config, checkpoint=str(tmp_path / "nope"), suite="voicebench", workdir=str(tmp_path))
  with pytest.raises(ValueError, match="--suite='mmlu': choose one of"):
    evaluate_lib.run(config, checkpoint=str(tmp_path), suite="mmlu", workdir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="responses-vstyle.jsonl does not exist"):
    evaluate_lib.run(config, checkpoint="", suite="vstyle", workdir=str(tmp_path), skip_generation=True)

  # A training checkpoint whose run has neither init_checkpoint nor base_model.
  run_dir = tmp_path / "run" / "checkpoints" / "5" / "state"
  run_dir.mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="stores no model config.*--config.init_checkpoint"):
    model_loading.load_model(str(tmp_path / "run"), config)

  # Missing question audio names the file and line.
  tok = testbed_vocab.write_tokenizer(str(tmp_path / "tok"))
  builder = build_lib.Builder(tok, arch="interleaved")
  bench = tmp_path / "b.jsonl"
  msgs = [{"role": "user", "content": "<|audio|>"}]
  bench.write_text(json.dumps(dict(id=1, subset="commoneval", messages=msgs, audios=[[1]])) + "\n"
                   + json.dumps(dict(id=2, subset="commoneval", messages=msgs, audios=["missing.npy"])) + "\n")
  records = generate.load_prompts(str(bench))
  with pytest.raises(ValueError, match=re.escape(f"{bench}:2: field 'audios[0]'") + ".*missing.npy does not exist"):
    generate.layout_prompts(records, builder)
  bench.write_text(json.dumps(dict(id=1, messages=msgs)) + "\n")
  with pytest.raises(ValueError, match=re.escape(f"{bench}:1: missing field 'subset'")):
    generate.load_prompts(str(bench))


def test_reward_evaluator_leaves_failed_items_out_and_counts_them():
  """data.eval on built datasets: the mean reward over the items scored, a t interval over them (hand-computed:
  scores 1, 2, 3, 4 -> 2.5 ± t(0.975, 3) · sd / 2 = 2.5 ± 3.1824 · 1.2910 / 2), failed items counted, not averaged."""
  class Half:
    name = "half"
    def __call__(self, items):
      scores = [float(len(i.text.split())) for i in items]
      return RewardResult(scores=scores, failed=[i.record["id"] == "bad" for i in items])
  items = [RewardItem({"id": str(n), "source": "eval.jsonl", "line": n}, " ".join(["w"] * n), (n,))
           for n in range(1, 5)]
  items.append(RewardItem({"id": "bad", "source": "eval.jsonl", "line": 5}, "w " * 9, ()))
  summary, rows = reward_eval.reward_evaluator(Half())(items)
  assert summary["reward"] == pytest.approx(2.5) and summary["reward/failed"] == 1 and summary["count"] == 5
  assert summary["reward_hi"] - 2.5 == pytest.approx(3.18245 * 1.29099 / 2, rel=1e-4)
  assert summary["reward_lo"] == pytest.approx(5.0 - summary["reward_hi"])
  assert [r["failed"] for r in rows] == [False] * 4 + [True] and rows[4]["reward"] == 9.0
  assert rows[2] == {"id": "3", "source": "eval.jsonl", "line": 3, "reward": 3.0, "failed": False}
  everything_failed, _ = reward_eval.reward_evaluator(Half())(items[4:])
  assert everything_failed == {"count": 1.0, "reward/failed": 1.0}
