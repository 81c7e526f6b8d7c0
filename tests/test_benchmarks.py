"""Quick versions of the benchmark scripts whose figures the README and docs/performance.md quote: they still run
end to end."""
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str, devices: int = 1) -> str:
  # Compiled without LLVM's optimisation passes, like every test program (tests/conftest.py): figures are checked
  # for consistency here, not measured.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0")
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
  """The ahead-of-time memory report of the step, the sampler and the MCTP sampler, on the unit-test model over 8
  CPU devices; the samplers with the weights gathered once per call (the FSDP-split ones are test_roofline's)."""
  out = _run("benchmarks.memory_7b", "--models=tiny", "--devices=8", "--prompt_len=8", "--response_len=4",
             "--gather_weights", devices=8)
  assert re.search(r"besides the sampler: the train state's [\d.]+ GiB per device", out), out
  for part in ("step", "sampler", "mctp"):
    m = re.search(rf"{part}\s+per device: args\s+([\d.]+) GiB\s+temps\s+([\d.]+) GiB\s+total\s+([\d.]+) GiB", out)
    assert m, out
    args, temps, total = map(float, m.groups())
    assert total >= args and total >= temps


def test_mctp_decode_quick():
  """Both decoders, then the per-call costs and the bound they give for the schedule's last period [4, 10] (a
  module call covers the period's 14 anchors)."""
  out = _run("benchmarks.mctp_decode", "--shape=tiny", "--prompts=1", "--group=2", "--prompt_len=8",
             "--new_tokens=4", "--repeats=1")
  costs = re.search(r"main step ([\d.]+) ms, catch-up over 11 tokens ([\d.]+) ms .* MCTP module call over 14 anchors "
                    r"([\d.]+) ms", out)
  bound = re.search(r"for the period \[4, 10\]: ([\d.]+)x", out)
  assert costs and bound and "mctp / main =" in out, out
  main, catch_up, module = map(float, costs.groups())
  # The costs are printed to 0.1 ms and the bound to 0.01; the bound, 14·main / (catch_up + 3·main + 10·module),
  # rises with main and falls with the other two, so the unrounded costs put it between these two values.
  h = 0.05
  lo = 14 * (main - h) / ((catch_up + h) + 3 * (main - h) + 10 * (module + h))
  hi = 14 * (main + h) / ((catch_up - h) + 3 * (main + h) + 10 * (module - h))
  assert lo - 0.005 <= float(bound.group(1)) <= hi + 0.005, (lo, hi, out)


def test_train_step_quick():
  """The tiny testbed's step and rollouts: the figures agree with each other (tokens per second are the step's
  tokens over its time; a rollout is at most max_new tokens long)."""
  out = _run("benchmarks.train_step", "--configs=vita", "--repeats=1")
  head = re.search(r"P=(\d+) G=(\d+) prompt=(\d+) new=(\d+)", out)
  step = re.search(r"step\s+([\d.]+) ms\s+\(([\d,]+) tokens/s", out)
  roll = re.search(r"call\s+([\d.]+) ms\s+([\d,]+) generated tokens/s\s+\(mean ([\d.]+) tokens per rollout", out)
  assert head and step and roll, out
  P, G, prompt, new = map(int, head.groups())
  num = lambda text: float(text.replace(",", ""))
  assert 0 < num(roll.group(3)) <= new
  # Printed to 0.1 ms and 0.1 tokens: the rates follow from the other figures within their rounding.
  call_s, mean = num(roll.group(1)) / 1e3, num(roll.group(3))
  assert num(roll.group(2)) == pytest.approx(P * G * mean / call_s, rel=0.05e-3 / call_s + 0.05 / mean + 1e-3)
  assert num(step.group(2)) * num(step.group(1)) / 1e3 > P * G * (prompt + new)   # the RL part and the SFT part


def test_rollout_throughput_quick():
  out = _run("benchmarks.rollout_throughput", "--arch=interleaved,parallel", "--prompts=1", "--group=2",
             "--prompt_len=8", "--new_tokens=4", "--repeats=1")
  rows = re.findall(r"(\w+)\s+rows=2 .* (\d+) tokens/s\s+(\d+) steps/s\s+mean length ([\d.]+)", out)
  assert [r[0] for r in rows] == ["interleaved", "parallel"], out
  for _, tokens, steps, mean in rows:
    assert 0 < float(mean) <= 4 and int(tokens) <= 2 * int(steps) + 1   # at most one token per row and step


def test_loader_throughput_quick():
  """The loader over the synthetic records: batches of 4 padded to one of its buckets, partly filled."""
  out = _run("benchmarks.loader_throughput", "--records=16", "--batch=4", "--batches=2")
  (length, fill), = re.findall(r"batch \(4, (\d+)\).* fill ([\d.]+)", out)
  assert int(length) in (1024, 1536, 2048, 4096), out
  assert 0 < float(fill) < 1, out   # examples of 1000-1500 tokens never fill a bucket exactly


def test_convert_memory_quick():
  """Converter and exporter peak memory on the smallest synthetic checkpoint; the benchmark checks that the export
  reproduces the source tensors bit for bit."""
  out = _run("benchmarks.convert_memory", "--params=1")
  assert re.search(r"round trip: identical \(\d+ tensors\)", out), out
  rows = dict((name, float(rss)) for name, rss in re.findall(r"^(fixture|convert|export) .*?\s([\d.]+)\s+[\d.]+$",
                                                               out, re.M))
  assert set(rows) == {"fixture", "convert", "export"} and all(v > 0 for v in rows.values()), out


# ----------------------------------------------------------------------------- costs.py (roofline.py's pieces)
# (the whole script compiles a dozen programs per model and device count: too long for the default test run)

def _costs():
  sys.path.insert(0, REPO)
  from benchmarks import costs
  return costs


def test_collective_traffic_by_group():
  """Bytes a device sends, from the result shapes and replica groups of an optimised module (ring algorithms),
  by the device ids of the first group (iota groups expanded by hand, transposed ones too)."""
  hlo = "\n".join([
      "  %ag = bf16[1024,512]{1,0} all-gather(bf16[128,512]{1,0} %p), channel_id=1, replica_groups=[1,8]<=[8], "
      "dimensions={0}",
      "  %rs = f32[64]{0} reduce-scatter(f32[256]{0} %x), channel_id=2, replica_groups={{0,1,2,3},{4,5,6,7}}, "
      "dimensions={0}, to_apply=%add",
      "  %ar = (f32[10]{0}, f32[6]{0}) all-reduce(f32[10]{0} %a, f32[6]{0} %b), replica_groups={{0,1},{2,3}}, "
      "to_apply=%add",
      "  %ars = f32[8]{0} all-reduce-start(f32[8]{0} %c), replica_groups=[4,2]<=[8], to_apply=%add",
      "  %ard = f32[8]{0} all-reduce-done(f32[8]{0} %ars)",
      "  %one = f32[8]{0} all-reduce(f32[8]{0} %d), replica_groups={{0},{1}}, to_apply=%add",
      "  %add.1 = f32[8]{0} add(f32[8]{0} %e, f32[8]{0} %f)",
      "  %ag2 = f32[16]{0} all-gather(f32[4]{0} %g), replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}",
      # mesh-axes groups (XLA's newer form): a mesh (data 2, fsdp 4) listed as axes [4, 1, 2] over devices
      # arange(8).reshape(2, 4).T; the fsdp axis is 'axis_0' -> devices 0..3, the data axis 'axis_2' -> 0 and 4
      "  %ag3 = f32[32]{0} all-gather(f32[8]{0} %h), channel_id=3, replica_groups=mesh['axis_0'=4,'axis_1'=1,"
      "'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}, use_global_device_ids=true",
      "  %ar3 = f32[100]{0} all-reduce(f32[100]{0} %i), channel_id=4, replica_groups=mesh['axis_0'=4,'axis_1'=1,"
      "'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_2'}, use_global_device_ids=true, to_apply=%add"])
  traffic = _costs().collective_traffic(hlo, num_devices=8)
  assert traffic == {"0,1,2,3,4,5,6,7": 1024 * 512 * 2 * 7 / 8, "0,1,2,3": 64 * 4 * 3 + 32 * 4 * 3 / 4,
                     "0,1": (16 * 4 + 8 * 4) * 2 * 1 / 2, "0,2,4,6": 16 * 4 * 3 / 4, "0,4": 100 * 4 * 2 * 1 / 2}


def test_roofline_time_and_depth_extrapolation():
  costs = _costs()
  hw = costs.Hardware("test", peak_flops=100.0, hbm=10.0, link=4.0, domain=8, far_link=1.0)
  # Inside one domain of 8 (ids 8..15) at the link's rate; across domains (0, 8, 16) at the far link's.
  t = costs.seconds({"flops": 200.0, "bytes": 30.0, "comm": {"8,9,10,11,12,13,14,15": 4.0, "0,8,16": 2.0}}, hw)
  assert (t["compute"], t["memory"], t["link"]) == (2.0, 3.0, 1.0 + 2.0) and (t["roofline"], t["limit"]) == (3.0, "memory")
  # Costs linear in each kind of layer (a + b * trunk + c * audio branch) extrapolate to the real depth.
  from wavalign_jax.models.config import kimi_audio_7b, vita_audio_7b
  for cfg in (vita_audio_7b(), kimi_audio_7b()):
    variants, extrapolate = costs.depth_variants(cfg)
    cost = lambda v: {"flops": 5.0 + 7.0 * v["num_layers"] + 11.0 * v.get("num_mimo_layers", 0),
                      "bytes": 1.0 + 2.0 * v["num_layers"], "comm": {"0,1": 3.0 * v["num_layers"]}}
    want = cost(dict(num_layers=cfg.num_layers, num_mimo_layers=cfg.num_mimo_layers))
    got = extrapolate([cost(v) for v in variants])
    assert got["flops"] == pytest.approx(want["flops"]) and got["bytes"] == pytest.approx(want["bytes"])
    assert got["comm"]["0,1"] == pytest.approx(want["comm"]["0,1"])


def test_roofline_loop_free_depths_extrapolate_exactly():
  """The sampler's compiled FLOPs and bytes at 3 layers equal those extrapolated from 1 and 2 layers (what the
  script does for the 7B depths), on one device."""
  import jax
  from wavalign_jax import models, sharding
  from wavalign_jax.rollout import decode
  costs = _costs()
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  sc = decode.SamplingConfig(max_new_tokens=8, group_size=2, unstack_layers=False, cache_windows=1)
  cfg = models.tiny_config("interleaved", scan_layers=False, attention_block=0)
  variants, extrapolate = costs.depth_variants(cfg.replace(num_layers=3))
  got = extrapolate([costs.sampler_cost(cfg.replace(**v), mesh, sc, 2, 8, 8, 1) for v in variants])
  want = costs.sampler_cost(cfg.replace(num_layers=3), mesh, sc, 2, 8, 8, 1)
  assert got["flops"] == pytest.approx(want["flops"], rel=1e-9) and got["bytes"] == pytest.approx(want["bytes"], rel=1e-9)


def test_roofline_weights_gathered_once_per_call():
  """rollout.gather_weights on an FSDP mesh of 8: a decode token no longer all-gathers the weights (what it still
  sends is the activations'), and the gather once per call sends (n - 1) / n of every weight that FSDP splits and
  the gathered layout does not, in the compute dtype (counted by hand from the two layouts)."""
  import dataclasses
  import jax
  from wavalign_jax import models, sharding
  from wavalign_jax.rollout import decode
  costs = _costs()
  mesh = sharding.make_mesh((1, 8, 1))
  cfg = models.tiny_config("interleaved", scan_layers=False, attention_block=0, hidden_size=64, intermediate_size=128)
  sc = decode.SamplingConfig(max_new_tokens=8, group_size=2, unstack_layers=False, cache_windows=1)
  sent = {}
  for gathered in (False, True):
    one, two = (costs.sampler_cost(cfg, mesh, dataclasses.replace(sc, gather_weights=gathered), 8, 8, 8, k)
                for k in (1, 2))
    sent[gathered] = sum(two["comm"].values()) - sum(one["comm"].values())   # one decode token
  assert 0 < sent[True] < sent[False] / 10

  uses_fsdp = lambda s: any(e == "fsdp" or (isinstance(e, tuple) and "fsdp" in e) for e in s.spec)
  abstract = jax.eval_shape(lambda: models.in_compute_dtype(models.init_params(cfg, jax.random.key(0)), cfg))
  split, whole = (jax.tree.leaves(models.param_shardings(cfg, mesh, g)) for g in (False, True))
  want = sum(a.size * a.dtype.itemsize * 7 / 8 for a, s, w in zip(jax.tree.leaves(abstract), split, whole)
             if uses_fsdp(s) and not uses_fsdp(w))
  assert want > 0 and costs.gather_cost(cfg, mesh)["comm"] == {"0,1,2,3,4,5,6,7": pytest.approx(want)}


def test_roofline_mctp_pieces():
  """The catch-up's FLOPs grow by the same amount per token it re-reads (one token's trunk work; the head runs on
  the last token only), a module call's FLOPs by one layer's per anchor, a module call (one layer) reads less than
  a main step (three), and one period's speed-up follows from the pieces' times by hand."""
  import jax
  from wavalign_jax import models, sharding
  from benchmarks import mctp_pieces
  costs = _costs()
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  cfg = models.tiny_config("interleaved", num_layers=3, scan_layers=False, attention_block=0)
  one, two, three = (costs.mctp_costs(cfg, mesh, rows=2, filled=8, slots=12, catch_up=t, anchors=t)
                     for t in (2, 3, 4))   # several tokens each (one takes the single-query attention)
  assert one["main"]["flops"] == three["main"]["flops"]
  for piece in ("catch_up", "module"):
    per_token = three[piece]["flops"] - two[piece]["flops"]
    assert per_token > 0 and two[piece]["flops"] - one[piece]["flops"] == pytest.approx(per_token, rel=1e-9), piece
  assert one["module"]["bytes"] < one["main"]["bytes"] < one["catch_up"]["bytes"]
  assert mctp_pieces.period_speedup({"main": 1.0, "catch_up": 2.0, "module": 0.25}, 4, 10) == \
      pytest.approx(14 / (2.0 + 3 * 1.0 + 10 * 0.25))
  assert mctp_pieces.last_period((1, 10, 4, 10), 2) == (4, 2) and mctp_pieces.period_anchors(4, 10) == 14


def test_measure_7b_quick():
  """The on-accelerator script on the unit-test model on the CPU: every part's figures, the step's MFU from its
  model FLOPs and time, and the decode bytes per token counted by hand from the config (every trunk and head
  weight once, the KV cache up to the prompt plus the completion: one cache window)."""
  out = _run("benchmarks.measure_7b", "--model=tiny", "--step_layers=1", "--prompt_len=4", "--response_len=4",
             "--repeats=1", "--parts=ceilings,step,decode")
  rows = {r["part"]: r for r in map(json.loads, (line for line in out.splitlines() if line.startswith("{")))}
  assert set(rows) == {"ceilings", "step", "decode"} and not any("error" in r for r in rows.values()), out
  step = rows["step"]
  assert step["mfu"] == pytest.approx(step["model_flops"] / step["step_s"] / step["peak_flops"], rel=1e-9)
  assert step["model_flops"] > 6 * step["params"] * 8 * 4 * 4   # at least 6 N per RL completion token
  sys.path.insert(0, REPO)
  from benchmarks import measure_7b
  from wavalign_jax import models
  from wavalign_jax.rollout import decode
  cfg = models.tiny_config("interleaved")
  h, i, hd, nq, nkv = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
  layer = h * hd * (2 * nq + 2 * nkv) + hd * (nq + 2 * nkv) + 3 * h * i + 2 * h
  weights = cfg.num_layers * layer + h + h * cfg.vocab_size
  cache = 2 * cfg.num_layers * 32 * nkv * hd * (4 + 4)
  sc = decode.SamplingConfig(max_new_tokens=4, group_size=4, cache_windows=1)
  assert measure_7b.decode_bytes_per_token(cfg, 32, 4, sc) == 4 * (weights + cache)   # float32 unit-test model
  assert rows["decode"]["mctp_speedup"] > 0 and rows["decode"]["min_bytes_per_token"] > weights
