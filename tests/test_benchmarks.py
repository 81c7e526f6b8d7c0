"""Quick versions of the benchmark scripts whose figures the README and docs/performance.md quote: they still run
end to end."""
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str, devices: int = 1) -> str:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def test_grpo_step_quick():
  """The step against TRL: generation, reward, RL batch and the update at a small shape (the script itself
  checks that every completion token is scored)."""
  out = _run("benchmarks.grpo_step", "--steps=1", "--warmup=0", "--prompts=2", "--group=2", "--prompt_len=8",
             "--completion_len=8")
  row = json.loads(out.strip().splitlines()[-1])
  assert row["impl"] == "wavalign_jax" and row["steps"] == 1
  assert 0 < row["gen_s_median"] < row["step_s_median"]


def test_memory_7b_quick():
  """The ahead-of-time memory report of the step and the sampler, on the unit-test model over 8 CPU devices."""
  out = _run("benchmarks.memory_7b", "--models=tiny", "--devices=8", "--prompt_len=16", "--response_len=16",
             devices=8)
  for part in ("step", "sampler"):
    m = re.search(rf"{part}\s+per device: args\s+([\d.]+) GiB\s+temps\s+([\d.]+) GiB\s+total\s+([\d.]+) GiB", out)
    assert m, out
    args, temps, total = map(float, m.groups())
    assert total >= args and total >= temps
