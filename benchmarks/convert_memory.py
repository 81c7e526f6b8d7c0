"""Peak host memory (RSS) and wall time of `python -m wavalign_jax.convert` and `wavalign_jax.export`.

Measures a fixture (tests/fixtures/<name>) and a synthetic Qwen2-shaped checkpoint of about
`--params` parameters that it writes itself (bfloat16, 2 GB shards with an index, like the releases),
each conversion in a fresh subprocess so `ru_maxrss` is that conversion's peak alone.

  python -m benchmarks.convert_memory [--params=1e9] [--dtype=bfloat16] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

from wavalign_jax.conversion import safetensors_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_qwen2(out_dir: str, n_params: float, seed: int = 0) -> int:
  """Writes a Qwen2ForCausalLM-format checkpoint of ~n_params bf16 parameters; returns the exact count."""
  d, heads, kv, mlp, vocab = 2048, 16, 2, 5504, 32000
  hd = d // heads
  per_layer = 2 * d + d * heads * hd + heads * hd + 2 * (d * kv * hd + kv * hd) + heads * hd * d + 3 * d * mlp
  layers = max(1, int(round((n_params - 2 * vocab * d - d) / per_layer)))
  cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": d, "intermediate_size": mlp,
         "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
         "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
         "hidden_act": "silu", "max_position_embeddings": 4096}
  shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
  for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                   p + "self_attn.q_proj.weight": (heads * hd, d), p + "self_attn.q_proj.bias": (heads * hd,),
                   p + "self_attn.k_proj.weight": (kv * hd, d), p + "self_attn.k_proj.bias": (kv * hd,),
                   p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.v_proj.bias": (kv * hd,),
                   p + "self_attn.o_proj.weight": (d, heads * hd), p + "mlp.gate_proj.weight": (mlp, d),
                   p + "mlp.up_proj.weight": (mlp, d), p + "mlp.down_proj.weight": (d, mlp)})
  rng = np.random.default_rng(seed)
  get = lambda name: (rng.standard_normal(shapes[name], np.float32) * 0.02).astype(ml_dtypes.bfloat16)
  specs = [(n, s, ml_dtypes.bfloat16) for n, s in shapes.items()]
  safetensors_io.write_checkpoint(out_dir, specs, get, max_shard_bytes=2 * 10**9)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
  return sum(int(np.prod(s)) for s in shapes.values())


def round_trip(source: str, exported: str) -> str:
  """'identical (N tensors)' when every tensor of `exported` equals `source`'s bit for bit; raises otherwise."""
  want = dict(safetensors_io.CheckpointReader(source).iter_tensors())
  got = dict(safetensors_io.CheckpointReader(exported).iter_tensors())
  if set(got) != set(want):
    raise AssertionError(f"exported tensors differ in names: {sorted(set(got) ^ set(want))[:5]}")
  for name, value in want.items():
    if got[name].dtype != value.dtype or not np.array_equal(got[name].view(np.uint16), value.view(np.uint16)):
      raise AssertionError(f"{name}: the exported tensor differs from the source")
  return f"identical ({len(want)} tensors)"


def run_measured(args: list[str]) -> tuple[float, float]:
  """Runs `python -m <args>` in a fresh process; returns (peak RSS GiB of that process, seconds)."""
  code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
          "rc = 0\ntry: runpy.run_module(sys.argv[0], run_name='__main__')\n"
          "except SystemExit as e: rc = e.code or 0\n"
          "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if proc.returncode:
    raise RuntimeError(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  kb = int(proc.stdout.split("MAXRSS_KB")[-1].split()[0])
  return kb / 2**20, time.time() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--params", type=float, default=1e9)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--fixture", default="vita_audio_mtp")
  parser.add_argument("--keep", action="store_true", help="keep the temp dir")
  a = parser.parse_args()
  tmp = tempfile.mkdtemp(prefix="convert_memory_")
  try:
    rows = []
    fixture = os.path.join(REPO, "tests", "fixtures", a.fixture)
    arch = {"qwen2": "qwen2", "vita_audio_mtp": "vita_audio", "kimi_audio": "kimi_audio"}[a.fixture]
    rss, sec = run_measured(["wavalign_jax.convert", f"--arch={arch}", f"--hf_dir={fixture}",
                             f"--out={tmp}/fixture_ckpt", f"--dtype={a.dtype}"])
    rows.append((f"fixture {a.fixture}", 0.0, rss, sec))
    hf = os.path.join(tmp, "hf")
    os.makedirs(hf)
    t0 = time.time()
    n = synthetic_qwen2(hf, a.params)
    print(f"wrote synthetic checkpoint: {n / 1e9:.3f}B params (bf16) in {time.time() - t0:.0f}s", flush=True)
    src_gib = n * 2 / 2**30
    rss, sec = run_measured(["wavalign_jax.convert", "--arch=qwen2", f"--hf_dir={hf}", f"--out={tmp}/ckpt",
                             f"--dtype={a.dtype}"])
    rows.append((f"convert {n / 1e9:.2f}B", src_gib, rss, sec))
    rss, sec = run_measured(["wavalign_jax.export", "--arch=qwen2", f"--checkpoint={tmp}/ckpt",
                             f"--out={tmp}/exported"])
    rows.append((f"export {n / 1e9:.2f}B", src_gib, rss, sec))
    if a.dtype == "bfloat16":   # the measured work was right: bf16 -> Orbax -> bf16 gives the source bit for bit
      print(f"round trip: {round_trip(hf, os.path.join(tmp, 'exported'))}", flush=True)
    target_gib = n * (2 if a.dtype == "bfloat16" else 4) / 2**30
    print(f"\n{'run':<22}{'bf16 source GiB':>16}{'peak RSS GiB':>14}{'seconds':>9}   (target params {a.dtype}: "
          f"{target_gib:.2f} GiB)")
    for name, src, rss, sec in rows:
      print(f"{name:<22}{src:>16.2f}{rss:>14.2f}{sec:>9.1f}")
  finally:
    if a.keep:
      print("kept", tmp)
    else:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
