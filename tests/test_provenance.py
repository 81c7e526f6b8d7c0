"""Which code made a run (wavalign_jax/provenance.py): the git commit of the package's checkout, per launch."""
import os
import subprocess

from wavalign_jax import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(cwd, *args):
  return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                        capture_output=True, text=True, check=True).stdout.strip()


def test_code_version_of_this_checkout():
  """The commit git itself reports for the repository the package is imported from (None outside a checkout,
  e.g. a copy of the tree without .git)."""
  head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
  want = head.stdout.strip() if head.returncode == 0 else None
  assert provenance.code_version()["commit"] == want


def test_commit_and_dirty_flag_of_a_checkout(tmp_path, monkeypatch):
  """A changed tracked file makes the checkout dirty, an untracked one does not; a package outside any checkout
  (installed from a wheel) has no commit."""
  repo = tmp_path / "repo"
  repo.mkdir()
  _git(repo, "init", "-q")
  (repo / "a.py").write_text("x = 1\n")
  _git(repo, "add", "a.py")
  _git(repo, "commit", "-q", "-m", "one")
  monkeypatch.setattr(provenance, "_REPO", str(repo))
  sha = _git(repo, "rev-parse", "HEAD")
  assert provenance.code_version() == {"commit": sha, "dirty": False}
  (repo / "new.py").write_text("y = 2\n")
  assert provenance.code_version() == {"commit": sha, "dirty": False}
  (repo / "a.py").write_text("x = 2\n")
  assert provenance.code_version() == {"commit": sha, "dirty": True}
  monkeypatch.setattr(provenance, "_REPO", str(tmp_path / "repo" / "sub_without_checkout"))
  os.makedirs(provenance._REPO)   # inside the checkout, but not its top level: not this package's checkout
  assert provenance.code_version() == {"commit": None, "dirty": None}


def test_launches_append_and_name_their_code(tmp_path, monkeypatch):
  monkeypatch.setattr(provenance, "code_version", lambda: {"commit": "a" * 40, "dirty": False})
  provenance.record_launch(str(tmp_path), 0, new_run=True)
  monkeypatch.setattr(provenance, "code_version", lambda: {"commit": "b" * 40, "dirty": True})
  provenance.record_launch(str(tmp_path), 7, new_run=False)
  provenance.record_launch(str(tmp_path), 9, new_run=False)
  launches = provenance.read(str(tmp_path))
  assert [l["start_step"] for l in launches] == [0, 7, 9]
  assert {"time", "libraries", "backend", "device_kind", "devices", "processes", "host"} <= set(launches[0])
  assert launches[0]["libraries"]["jax"] is not None
  assert provenance.commits(launches) == ["a" * 40, "b" * 40 + "+dirty"]
  assert provenance.commits([{"commit": None, "dirty": None}]) == ["unknown"]
  assert provenance.read(str(tmp_path / "nothing")) == []
  provenance.record_launch(str(tmp_path), 0, new_run=True)   # a fresh start: an abandoned attempt's are gone
  assert [l["start_step"] for l in provenance.read(str(tmp_path))] == [0]
