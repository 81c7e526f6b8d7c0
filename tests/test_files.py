"""Atomic writes and strict JSON (wavalign_jax/files.py)."""
import gzip
import json
import os

import numpy as np
import pytest

from wavalign_jax import files


def test_non_finite_values_become_null_and_the_text_is_strict_json():
  obj = {"a": float("nan"), "b": [1.0, float("inf"), np.float32("-inf")], "c": {"d": np.float64(2.5)}, "e": "x"}
  text = files.dumps(obj)
  assert json.loads(text) == {"a": None, "b": [1.0, None, None], "c": {"d": 2.5}, "e": "x"}
  assert "NaN" not in text and "Infinity" not in text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "x.json")
  files.write_json(path, {"v": 1})
  with pytest.raises(TypeError):
    files.write_json(path, {"v": object()})   # not serialisable: fails before the rename
  assert json.load(open(path)) == {"v": 1}
  assert os.listdir(tmp_path) == ["x.json"]


def test_jsonl_rows(tmp_path):
  path = str(tmp_path / "rows.jsonl")
  files.write_jsonl(path, [{"a": 1}, {"a": float("nan")}])
  assert [json.loads(line) for line in open(path)] == [{"a": 1}, {"a": None}]


def test_compressed_jsonl_reads_back_and_is_the_same_bytes_each_time(tmp_path):
  """A `.gz` name writes gzip (a study export's form): the rows read back, the decompressed text is the plain
  file's, and rewriting the same rows gives the same bytes (no time stamp), so committed exports do not churn."""
  rows = [{"id": "a", "iq": 1.0}, {"id": "b", "iq": 0.0}]
  plain, packed = str(tmp_path / "r.jsonl"), str(tmp_path / "r.jsonl.gz")
  files.write_jsonl(plain, rows)
  files.write_jsonl(packed, rows)
  first = open(packed, "rb").read()
  assert gzip.decompress(first) == open(plain, "rb").read()
  assert files.read_jsonl(packed) == files.read_jsonl(plain) == rows
  files.write_jsonl(packed, rows)
  assert open(packed, "rb").read() == first
  assert files.existing_jsonl(plain) == plain   # the plain file wins where both exist
  os.remove(plain)
  assert files.existing_jsonl(plain) == packed
  os.remove(packed)
  assert files.existing_jsonl(plain) is None


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
  """Atomic writes go through a temporary file that mkstemp makes 0600; the file in place must be readable as one
  written by open() would be (the process umask), for the other users of a shared cluster."""
  plain = tmp_path / "plain.txt"
  plain.write_text("x")
  files.write_json(str(tmp_path / "a.json"), {"v": 1})
  assert os.stat(tmp_path / "a.json").st_mode & 0o777 == os.stat(plain).st_mode & 0o777
