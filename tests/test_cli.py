"""The command lines' common frame: console scripts, `error: ...` for user errors; the library without data_pipeline."""
import ast
import importlib.util
import os
import pathlib
import subprocess
import sys
import tomllib

from wavalign_jax import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(argv0: str, *args: str, module: str | None = None) -> subprocess.CompletedProcess:
  """A command as its console script starts it (argv[0] = the script) or as `python -m module`."""
  if module:
    cmd = [sys.executable, "-m", module, *args]
  else:
    cmd = [sys.executable, "-c", "import sys; from wavalign_jax import cli; sys.argv[0] = sys.argv[1]; "
           "del sys.argv[1]; cli.console_script()", argv0, *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "PYTHONPATH": str(REPO)})


def test_console_scripts_are_the_commands_and_each_module_exists():
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  assert scripts == {name: "wavalign_jax.cli:console_script" for name in cli.COMMANDS}
  for module in cli.COMMANDS.values():
    assert importlib.util.find_spec(module) is not None, module


def test_console_script_runs_its_module_with_the_same_flags_and_status(tmp_path):
  args = (f"--input={tmp_path / 'missing.jsonl'}", f"--output_dir={tmp_path / 'out'}",
          f"--tokenizer={tmp_path / 'tokenizer.json'}")
  script = _run(str(tmp_path / "bin" / "wavalign-build-data"), *args)
  module = _run("", *args, module="data_pipeline.build")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the file path form, from anywhere
  path = subprocess.run([sys.executable, str(REPO / "data_pipeline" / "build.py"), *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert script.returncode == module.returncode == path.returncode == 1
  assert script.stderr == module.stderr == path.stderr
  assert script.stderr == f"error: tokenizer {tmp_path / 'tokenizer.json'} does not exist\n"
  unknown = _run(str(tmp_path / "wavalign-nothing"))
  assert unknown.returncode == 1 and unknown.stderr.startswith("error: wavalign-nothing is not one of the commands")


def test_user_errors_are_one_line_and_a_non_zero_status(tmp_path):
  suite = _run("", "--suite=bogus", f"--workdir={tmp_path}", "--skip_generation", module="wavalign_jax.evaluate")
  assert suite.returncode == 1 and suite.stderr.startswith("error: --suite='bogus': choose one of"), suite.stderr
  missing = _run("", module="wavalign_jax.analyze")
  assert missing.returncode == 2 and "Traceback" not in missing.stderr
  assert missing.stderr.startswith("error: --config, --checkpoint and --workdir are required"), missing.stderr


def test_the_library_does_not_import_the_command_line_folder():
  for path in (REPO / "wavalign_jax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.split(".")[0] == "data_pipeline" for n in names), path
