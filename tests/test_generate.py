"""`python -m wavalign_jax.generate` on a testbed run: text prompts and dataset records, greedy and sampled."""
import os
import subprocess
import sys

import jax
import optax
import pytest

from tests.test_evaluate import _config, _init, _model_cfg
from wavalign_jax import checkpointing, objectives, train_state
from wavalign_jax import evaluate as evaluate_lib
from wavalign_jax import generate as generate_cmd
from wavalign_jax.evaluation import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A testbed run as training leaves it: base_model, checkpoints/3 (other params), testbed/jsonl."""
  run = str(tmp_path_factory.mktemp("run"))
  cfg = _model_cfg(_config("testbed"))
  checkpointing.save_params(os.path.join(run, "base_model"), _init(cfg, 0), cfg)
  state = train_state.create(_init(cfg, 1), optax.sgd(0.1), objectives.init_gate_state(objectives.GateConfig()),
                             jax.random.PRNGKey(0))
  ckpt = checkpointing.Checkpointer(os.path.join(run, "checkpoints"), async_save=False)
  ckpt.save(3, state)
  ckpt.close()
  subprocess.run([sys.executable, "-m", "wavalign_jax.testbed.make_data",
                  f"--out={os.path.join(run, 'testbed', 'jsonl')}"], check=True, capture_output=True)
  return run


def test_dataset_records_get_the_evaluation_s_responses(run_dir, tmp_path, capsys):
  """The run's latest checkpoint answers the testbed records as `evaluate` does, and prints them."""
  config, n = _config("testbed"), 3
  eval_id = os.path.join(run_dir, "testbed", "jsonl", "eval", "eval_id.jsonl")
  got = generate_cmd.run(config, checkpoint=run_dir, data=eval_id, max_examples=n, batch_size=2,
                         out=str(tmp_path / "responses.jsonl"))
  out = capsys.readouterr().out
  evaluate_lib.run(config, checkpoint=run_dir, suite="testbed", workdir=str(tmp_path / "eval"), batch_size=8,
                   max_examples=n)
  want = common.load_responses(str(tmp_path / "eval" / "responses-testbed.jsonl"))
  assert [(r["id"], r["text"], r["audio_codes"]) for r in got] == [(r["id"], r["text"], r["audio_codes"])
                                                                   for r in want]
  assert [{k: v for k, v in r.items() if k != "_where"} for r in common.load_responses(
      str(tmp_path / "responses.jsonl"))] == got
  assert out.startswith(f"{run_dir}: main head, greedy, at most {config.rollout.max_new_tokens} new tokens")
  for i, r in enumerate(got):
    assert (f"[{r['id']}] {eval_id}:{i + 1}\n  text : {r['text']}\n"
            f"  audio: {len(r['audio_codes'])} codes {' '.join(map(str, r['audio_codes']))}") in out


def test_text_prompts_greedy_sampled_and_mctp(run_dir, capsys):
  config = _config("testbed")
  prompts = ["what is 2 plus 3", "what is 2 plus 3 ?"]
  run = lambda **kw: generate_cmd.run(config, checkpoint=run_dir, max_new_tokens=8, **{"prompts": prompts, **kw})
  greedy = run(batch_size=4)
  assert [r["id"] for r in greedy] == ["prompt_0", "prompt_1"]
  assert all(set(r) == {"id", "subset", "text", "audio_codes"} for r in greedy)
  assert run(prompts=prompts[:1], batch_size=1) == greedy[:1]   # greedy: independent of batch and batch mates
  sampled = [run(temperature=1.0, seed=s) for s in (0, 1)]
  assert sampled[0] != sampled[1] and greedy not in sampled
  config.rollout.decode = "mctp"   # the tiny VITA model has one MCTP module
  mctp = run()
  assert mctp != greedy and mctp[0]["audio_codes"]
  out = capsys.readouterr().out
  assert out.count("main head, greedy") == 2 and "mctp head, greedy" in out
  assert "main head, temperature 1, top_p 1, seed 1" in out


def test_command_line(run_dir):
  cmd = [sys.executable, "-m", "wavalign_jax.generate", "--config=experiments/vita.py:tiny",
         "--config.model.num_layers=2", f"--checkpoint={run_dir}", "--prompt=what is 2 plus 3", "--max_new_tokens=6"]
  ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "[prompt_0] --prompt #1\n  text : " in ok.stdout and "  audio: " in ok.stdout
  none = subprocess.run(cmd[:6], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert none.returncode == 2 and none.stderr.startswith("error: nothing to answer"), none.stderr
