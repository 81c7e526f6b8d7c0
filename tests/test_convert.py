"""HF <-> Orbax conversion: upstream-logit parity on every fixture, bit-exact export round trip, every
error case, bf16 vs f32, --verify failure, restore straight onto an 8-device mesh, training-checkpoint export,
no host copy of the model while writing."""
import glob
import json
import os
import pathlib
import shutil
import tracemalloc

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file, save_file

from wavalign_jax import checkpointing, convert, export, models, sharding, train_state
from wavalign_jax.conversion import safetensors_io
from wavalign_jax.conversion import verify as verify_lib

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
ARCH = {"qwen2": "qwen2", "vita_audio_mtp": "vita_audio", "kimi_audio": "kimi_audio"}
# Outputs each fixture must be compared on (text and audio heads, every MCTP module).
HEADS = {"qwen2": {"logits"}, "vita_audio_mtp": {"main_logits", "mtp_logits_0", "mtp_logits_1"},
         "kimi_audio": {"text_logits", "audio_logits", "text_logits_nofeat", "audio_logits_nofeat"}}
BF16_ATOL = verify_lib.DEFAULT_ATOL["bfloat16"]


def _hf_tensors(folder):
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
    out.update(load_file(path))
  return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """Each fixture converted once through the CLI entry function (float32)."""
  root = tmp_path_factory.mktemp("converted")
  out = {}
  for name, arch in ARCH.items():
    dst = str(root / name)
    assert convert.main([f"--arch={arch}", f"--hf_dir={FIXTURES / name}", f"--out={dst}"]) == 0
    out[name] = dst
  return out


@pytest.mark.parametrize("name", sorted(ARCH))
def test_parity_with_upstream_logits(converted, name):
  cfg, meta = checkpointing.load_model_config(converted[name])
  assert meta["arch"] == ARCH[name] and cfg.param_dtype == "float32"
  params = checkpointing.load_host_params(os.path.join(converted[name], "params"))
  diffs = verify_lib.verify(params, cfg, str(FIXTURES / name))
  assert HEADS[name] <= set(diffs), diffs
  assert max(diffs.values()) <= 1e-4, diffs   # the fixtures' stated tolerance: PyTorch's float32 against ours


@pytest.mark.parametrize("name", sorted(ARCH))
def test_export_round_trip_bit_exact(converted, tmp_path, name):
  out = tmp_path / "exported"
  # A small shard size forces several shards + an index, like the 7B releases.
  assert export.main([f"--arch={ARCH[name]}", f"--checkpoint={converted[name]}", f"--out={out}",
                      "--max_shard_size=200KB"]) == 0
  assert (out / "model.safetensors.index.json").exists() and len(glob.glob(str(out / "*.safetensors"))) > 1
  src, dst = _hf_tensors(FIXTURES / name), _hf_tensors(out)
  assert sorted(src) == sorted(dst)
  for k in src:
    assert dst[k].dtype == src[k].dtype and dst[k].shape == src[k].shape, k
    assert np.array_equal(dst[k].view(np.uint32), src[k].view(np.uint32)), k
  assert json.loads((out / "config.json").read_text()) == json.loads((FIXTURES / name / "config.json").read_text())
  # The sharded export converts again (index path) to the same parameters.
  again = tmp_path / "again"
  assert convert.main([f"--arch={ARCH[name]}", f"--hf_dir={out}", f"--out={again}"]) == 0
  a = checkpointing.load_host_params(os.path.join(converted[name], "params"))
  b = checkpointing.load_host_params(str(again / "params"))
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


def _qwen2_copy(tmp_path):
  """Folder with the qwen2 fixture's config.json (weights written by each test); returns (dir, tensors)."""
  d = tmp_path / "hf"
  d.mkdir()
  shutil.copyfile(FIXTURES / "qwen2" / "config.json", d / "config.json")
  tensors = load_file(str(FIXTURES / "qwen2" / "model.safetensors"))
  return d, tensors


def _save_split(d, tensors, second=()):
  names = sorted(tensors)
  first = {k: tensors[k] for k in names if k not in second}
  save_file(first, str(d / "model-00001-of-00002.safetensors"))
  save_file({k: tensors[k] for k in second}, str(d / "model-00002-of-00002.safetensors"))


def _expect_error(tmp_path, capsys, hf_dir, *needles, arch="qwen2"):
  out = tmp_path / "out"
  assert convert.main([f"--arch={arch}", f"--hf_dir={hf_dir}", f"--out={out}"]) == 1
  err = capsys.readouterr().err
  for needle in needles:
    assert needle in err, (needle, err)
  assert not out.exists() and not glob.glob(f"{out}.tmp-*")  # nothing left behind


def test_error_unknown_tensor(tmp_path, capsys):
  d, t = _qwen2_copy(tmp_path)
  t["model.layers.0.self_attn.rotary.weight"] = np.zeros(3, np.float32)
  t["mimo_output.weight"] = np.zeros((512, 64), np.float32)
  save_file(t, str(d / "model.safetensors"))
  _expect_error(tmp_path, capsys, d, "unknown tensors", "model.layers.0.self_attn.rotary.weight", "mimo_output.weight")


def test_error_missing_tensor(tmp_path, capsys):
  d, t = _qwen2_copy(tmp_path)
  del t["model.norm.weight"], t["model.layers.1.self_attn.k_proj.bias"]
  save_file(t, str(d / "model.safetensors"))
  _expect_error(tmp_path, capsys, d, "missing tensors", "model.norm.weight", "model.layers.1.self_attn.k_proj.bias")


def test_error_shape_mismatch_config_vs_shards(tmp_path, capsys):
  d, t = _qwen2_copy(tmp_path)
  save_file(t, str(d / "model.safetensors"))
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))  # another model's config
  _expect_error(tmp_path, capsys, d, "shape/dtype mismatch", "model.layers.0.mlp.gate_proj.weight [128, 64]",
                "[96, 64]")


def test_error_duplicate_across_shards(tmp_path, capsys):
  d, t = _qwen2_copy(tmp_path)
  save_file(t, str(d / "model-00001-of-00002.safetensors"))
  save_file({"lm_head.weight": t["lm_head.weight"]}, str(d / "model-00002-of-00002.safetensors"))
  _expect_error(tmp_path, capsys, d, "more than one shard", "lm_head.weight")


def test_error_index_disagrees(tmp_path, capsys):
  d, t = _qwen2_copy(tmp_path)
  _save_split(d, t, second=["lm_head.weight"])
  weight_map = {k: "model-00001-of-00002.safetensors" for k in t}  # wrong shard for lm_head.weight
  (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  _expect_error(tmp_path, capsys, d, "lm_head.weight: index says model-00001-of-00002.safetensors",
                "not referenced by the index")


def test_error_shards_of_two_checkpoints(tmp_path, capsys):
  d, t = _qwen2_copy(tmp_path)
  second = [k for k in t if k.startswith("model.layers.1.")]
  t.update({k: t[k].astype(ml_dtypes.bfloat16) for k in second})
  _save_split(d, t, second=second)
  _expect_error(tmp_path, capsys, d, "shards store different dtypes")


def test_error_wrong_arch(tmp_path, capsys):
  _expect_error(tmp_path, capsys, FIXTURES / "qwen2", "--arch=kimi_audio", arch="kimi_audio")


def test_bf16_forward_close_to_f32(converted, tmp_path):
  out = tmp_path / "bf16"
  assert convert.main(["--arch=qwen2", f"--hf_dir={FIXTURES / 'qwen2'}", f"--out={out}", "--dtype=bfloat16"]) == 0
  cfg16, _ = checkpointing.load_model_config(str(out))
  p16 = checkpointing.load_host_params(str(out / "params"))
  p32 = checkpointing.load_host_params(os.path.join(converted["qwen2"], "params"))
  # Stored parameters are exactly the round-to-nearest bf16 of the float32 ones.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b.astype(ml_dtypes.bfloat16)), p16, p32)
  cfg32, _ = checkpointing.load_model_config(converted["qwen2"])
  inputs = dict(np.load(FIXTURES / "qwen2" / "inputs.npz"))
  with jax.default_matmul_precision("highest"):
    o16 = verify_lib.model_outputs(p16, cfg16, inputs)
    o32 = verify_lib.model_outputs(p32, cfg32, inputs)
  diffs = {k: float(np.abs(o16[k] - o32[k]).max()) for k in o32}
  assert max(diffs.values()) <= BF16_ATOL, diffs
  assert min(diffs.values()) > 1e-4, diffs  # bf16 really was used


def test_verify_fails_on_corrupted_expected(tmp_path, capsys):
  fx = tmp_path / "fixture"
  shutil.copytree(FIXTURES / "qwen2", fx)
  (fx / "expected.npz").chmod(0o644)
  expected = dict(np.load(fx / "expected.npz"))
  expected["logits"][0, 3, 7] += 1e-3
  np.savez(fx / "expected.npz", **expected)
  out = tmp_path / "out"
  assert convert.main(["--arch=qwen2", f"--hf_dir={FIXTURES / 'qwen2'}", f"--out={out}", f"--verify={fx}"]) == 1
  captured = capsys.readouterr()
  assert "verify logits" in captured.out and "FAIL" in captured.out and "above atol" in captured.err
  assert not out.exists() and not glob.glob(f"{out}.tmp-*")
  assert convert.main(["--arch=qwen2", f"--hf_dir={FIXTURES / 'qwen2'}", f"--out={out}",
                       f"--verify={FIXTURES / 'qwen2'}"]) == 0


def test_save_params_writes_leaves_without_copying(tmp_path):
  """Orbax's default NumpyHandler deep-copies every leaf before writing (peak = 2 models while converting);
  save_params writes in place. numpy buffers are tracemalloc-visible, so any host copy shows up in the peak."""
  cfg = convert.model_config("qwen2", json.loads((FIXTURES / "qwen2" / "config.json").read_text()), "bfloat16")
  rng = np.random.default_rng(0)
  params = {"a": {"w": rng.standard_normal((512, 2048), np.float32)},
            "b": rng.standard_normal((1024, 1024), np.float32).astype(ml_dtypes.bfloat16),
            "c": np.arange(7, dtype=np.float32)}
  size = sum(x.nbytes for x in jax.tree.leaves(params))
  global_handler = ocp.type_handlers.get_type_handler(np.ndarray)
  tracemalloc.start()
  try:
    checkpointing.save_params(str(tmp_path / "ckpt"), params, cfg)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 0.1 * size, (peak, size)
  # Only this save skips the copy: async training-state saves keep Orbax's guard.
  assert ocp.type_handlers.get_type_handler(np.ndarray) is global_handler
  restored = checkpointing.load_host_params(str(tmp_path / "ckpt" / "params"))
  assert jax.tree.structure(restored) == jax.tree.structure(params)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  assert checkpointing.load_model_config(str(tmp_path / "ckpt"))[0] == cfg


def test_write_checkpoint_streams_one_tensor_at_a_time(tmp_path):
  """Export writes each tensor as `get` produces it: peak host memory is one tensor, not a shard (the old
  writer held a whole 5 GB shard = a second model copy). The files read back bit-exact with safetensors."""
  rng = np.random.default_rng(0)
  src = {f"w{i}": rng.standard_normal((256, 1024), np.float32) for i in range(6)}
  src["b"], src["s"] = np.arange(5, dtype=np.float32), np.float32(3.5)
  tensor = 256 * 1024 * 4
  # Transposed views and one float32 -> bfloat16 cast, as export's hf_mapping.to_hf produces them.
  want = {k: (v.T if k.startswith("w") else v) for k, v in src.items()}
  want["w5"] = want["w5"].astype(ml_dtypes.bfloat16)
  specs = [(k, np.shape(v), v.dtype) for k, v in sorted(want.items())]
  get = lambda name: src[name].T if name.startswith("w") else src[name]
  tracemalloc.start()
  try:
    files = safetensors_io.write_checkpoint(str(tmp_path), specs, get, max_shard_bytes=10**9)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert files == ["model.safetensors"]
  assert peak < 1.5 * tensor, (peak, tensor)  # a one-shard writer that keeps tensors would need 6 * tensor
  got = load_file(str(tmp_path / "model.safetensors"))
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert got[k].dtype == v.dtype and got[k].shape == np.shape(v), k
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  # Sharded: the index agrees with the shards (the reader checks names, files and total_size).
  shards = tmp_path / "sharded"
  shards.mkdir()
  files = safetensors_io.write_checkpoint(str(shards), specs, get, max_shard_bytes=2 * tensor)
  assert len(files) == 4
  reader = safetensors_io.CheckpointReader(str(shards))
  assert reader.total_bytes() == sum(np.asarray(v).nbytes for v in want.values())
  for k, v in reader.iter_tensors():
    np.testing.assert_array_equal(v, want[k], err_msg=k)
  with pytest.raises(ValueError, match="w0: got shape"):
    safetensors_io.write_checkpoint(str(tmp_path), specs, lambda name: src[name], max_shard_bytes=10**9)


def test_restore_onto_mesh_shards_each_leaf(converted):
  assert len(jax.devices()) == 8, "tests/conftest.py sets 8 fake CPU devices before jax is imported"
  ckpt = converted["kimi_audio"]
  cfg, _ = checkpointing.load_model_config(ckpt)
  mesh = sharding.make_mesh((2, 2, 2))
  shardings = models.param_shardings(cfg, mesh)
  shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
  restored = checkpointing.load_params(ckpt, train_state.abstract_with_shardings(shapes, shardings))
  host = checkpointing.load_host_params(os.path.join(ckpt, "params"))
  n_split = 0
  for (path, leaf), want, ref in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(shardings),
                                     jax.tree.leaves(host)):
    assert leaf.sharding == want, path
    shard_shape = want.shard_shape(leaf.shape)
    assert all(s.data.shape == shard_shape for s in leaf.addressable_shards), path
    n_split += shard_shape != leaf.shape
    np.testing.assert_array_equal(np.asarray(leaf), ref)
  assert n_split > 10  # the embedding, heads, attention and MLP kernels really are split


def test_shard_sizes_and_dtypes():
  assert [safetensors_io.parse_size(t) for t in ("5GB", "500mb", "2GiB", "1.5KiB", "1024")] == [
      5 * 10**9, 5 * 10**8, 2 * 2**30, 1536, 1024]
  with pytest.raises(ValueError, match="--max_shard_size='5 gigs'"):
    safetensors_io.parse_size("5 gigs")
  with pytest.raises(ValueError, match="dtype 'U16' is not supported"):
    safetensors_io.TensorInfo(file="x", shape=(2,), dtype="U16").nbytes


def test_export_training_checkpoint(converted, tmp_path, capsys):
  ckpt = converted["vita_audio_mtp"]
  params = jax.tree.map(jnp.asarray, checkpointing.load_host_params(os.path.join(ckpt, "params")))
  # "post-trained": steps 9 and 10 hold lm_head + 9 and + 10 (the latest is 10, not "9" > "10" as strings)
  workdir = tmp_path / "work"
  ckptr = checkpointing.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  for step in (9, 10):
    trained = {**params, "lm_head": params["lm_head"] + float(step)}
    ckptr.save(step, train_state.create(trained, optax.adamw(1e-3), gate={"lam": jnp.zeros(())},
                                        rng=jax.random.PRNGKey(0)))
  ckptr.close()
  out = tmp_path / "exported"
  assert export.main(["--arch=vita_audio", f"--checkpoint={workdir}", f"--out={out}"]) == 1
  assert "--base" in capsys.readouterr().err
  src = _hf_tensors(FIXTURES / "vita_audio_mtp")
  for step, flags in ((10, []), (9, ["--step=9"])):
    assert export.main(["--arch=vita_audio", f"--checkpoint={workdir}", f"--base={ckpt}", f"--out={out}",
                        "--overwrite", *flags]) == 0
    dst = _hf_tensors(out)
    assert sorted(src) == sorted(dst)
    for k in src:
      want = src[k] + np.float32(step) if k == "lm_head.weight" else src[k]
      np.testing.assert_array_equal(dst[k], want, err_msg=f"{k} of step {step}")
