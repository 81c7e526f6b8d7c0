"""Configs and the command line a new user meets first."""
import os
import subprocess
import sys

import pytest

from experiments import kimi, vita
from wavalign_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_configs_keep_each_method_s_relative_learning_rate():
  for module in (vita, kimi):
    hybrid, dpo = module.get_config("tiny,hybrid"), module.get_config("tiny,dpo_text")
    assert hybrid.optim.learning_rate == pytest.approx(1e-4)
    assert dpo.optim.learning_rate == pytest.approx(5 * hybrid.optim.learning_rate)   # 5e-6 : 1e-6 in the recipe


def test_misspelled_fields_name_the_flag_and_the_nearest_fields():
  msgs = config_lib.unknown_overrides(["--config=experiments/vita.py:tiny", "--config.rl.gruop_size=8",
                                       "--config.rollout.group_size=8", "--config.optim.lerning_rate", "1e-5"])
  assert len(msgs) == 2
  assert msgs[0].startswith("--config.rl.gruop_size: experiments/vita.py:tiny has no field 'rl.gruop_size'")
  assert "did you mean --config.rollout.group_size" in msgs[0]
  assert "--config.optim.learning_rate" in msgs[1]


def test_cli_refuses_a_misspelled_field_without_a_traceback_and_prints_the_config():
  run = lambda *a: subprocess.run([sys.executable, "-m", "wavalign_jax.train", "--config=experiments/vita.py:tiny", *a],
                                  cwd=REPO, capture_output=True, text=True, timeout=120)
  bad = run("--workdir=/nonexistent", "--config.rl.gruop_size=8")
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "did you mean --config.rollout.group_size" in bad.stderr
  shown = run("--print_config", "--config.rollout.group_size=8")
  assert shown.returncode == 0 and "group_size: 8" in shown.stdout
