r"""A roofline of the 7B recipes on accelerators, from compiled programs, without an accelerator.

  XLA_FLAGS=--xla_force_host_platform_device_count=256 python -m benchmarks.roofline \
      [--models=vita,kimi] [--devices=8,64,256] [--gather_weights] [--json=roofline.json]

For each model and device count it compiles (for fake CPU devices, FSDP mesh (1, n, 1) as train.py builds it)
the hybrid step and the main-head sampler of experiments/<model>.py at the 7B shapes (8 prompts x G 4, prompt
512, completion 1024; one prompt per device beyond 8), reads XLA's cost analysis (FLOPs, bytes accessed) and
the collectives of the optimised program, and predicts on an H100 and a TPU v5p:

- the step: time at peak = max(FLOPs / peak FLOP/s, bytes / HBM bandwidth, collective traffic / link
  bandwidth) (perfect overlap: a lower bound), its FLOP/byte ratio, and the MFU bound = model FLOPs (the step
  without rematerialisation) / (peak x that time);
- the sampler: the same per decode token (averaged over the completion's cache sizes) and the decode
  tokens/s per device at the HBM limit (bytes only), plus the prefill. `--gather_weights`: with the weights
  gathered once per rollout call (`rollout.gather_weights`; the gather is counted with the prefill) instead of
  all-gathered by FSDP at every decode token.

Loops are counted with their trip counts by construction: XLA's cost analysis counts a loop body once, so
the programs are compiled without loops (layers unrolled, one log-prob chunk, unblocked attention) at 1 and 2
layers (Kimi also 1 and 2 audio-branch layers) and the per-layer difference is scaled to the real depth; one
decode token is the difference between a program with 2 and with 1 decode steps after the prefill, at the
smallest and the largest completion cache (linear in between). The CPU compiler's FLOPs are those of the
math; its bytes are those of its fusions (unfused attention scores included: a fused attention kernel would
not write them), so the memory side is an upper bound of what an accelerator's compiler reaches.
VITA's MCTP decoding (its 10 modules, the experiment's schedule) is predicted from its pieces
(benchmarks/mctp_pieces.py): a main step, the catch-up over the m + 1 tokens of a period [M, m] and a module step,
each compiled alone against caches filled to the middle of the completion; its speed-up over the main head is
that of one period at the roofline, and its decode tokens/s the main head's times that speed-up.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Callable

# The programs are compiled for their HLO only (cost analysis, collectives): skip LLVM's optimisation of the machine
# code, most of a 7B program's CPU compile time. Set before jax is imported.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import mctp_pieces  # noqa: E402
from benchmarks.recipes_7b import experiment, hybrid_step, sampler_params, sampler_prompts  # noqa: E402
from wavalign_jax import models, sharding  # noqa: E402
from wavalign_jax.rollout import decode  # noqa: E402
from wavalign_jax.rollout import sampler as sampler_lib  # noqa: E402

flags.DEFINE_list("models", ["vita", "kimi"], "vita and/or kimi (7B), or tiny (a quick check of the script).")
flags.DEFINE_list("devices", ["8", "64", "256"], "Device counts (XLA_FLAGS must provide the most).")
flags.DEFINE_integer("prompt_len", None, "Prompt length (default: the experiment's data.max_prompt_len).")
flags.DEFINE_integer("response_len", None, "Completion length (default: the experiment's rollout.max_new_tokens).")
flags.DEFINE_bool("gather_weights", False, "The sampler with the weights gathered once per rollout call "
                  "(rollout.gather_weights; the gather counts in the prefill) instead of at every decode token.")
flags.DEFINE_string("json", "", "Also write every figure to this file.")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  peak_flops: float      # dense bf16 FLOP/s per device
  hbm: float             # HBM bytes/s per device
  link: float            # collective bytes/s per device inside its fast domain
  domain: int            # devices in that domain (0: the whole slice)
  far_link: float        # bytes/s per device between domains


# Vendor figures: H100 SXM (989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 4 450 GB/s per direction inside
# an 8-GPU node, 400 Gb/s InfiniBand NDR per GPU between nodes); TPU v5p (459 TFLOP/s bf16, 2.765 TB/s HBM,
# 4,800 Gb/s ICI per chip in a 3D torus spanning the slice).
HARDWARE = (Hardware("H100 SXM", 989e12, 3.35e12, 450e9, 8, 50e9),
            Hardware("TPU v5p", 459e12, 2.765e12, 600e9, 0, 600e9))

# Bytes a device sends per byte of a collective's result, for a ring over g devices.
_TRAFFIC = {"all-gather": lambda g: (g - 1) / g, "reduce-scatter": lambda g: g - 1,
            "all-reduce": lambda g: 2 * (g - 1) / g, "all-to-all": lambda g: (g - 1) / g,
            "collective-permute": lambda g: 1.0}
_COLLECTIVE = re.compile(r"=\s*(.*?)\s(" + "|".join(_TRAFFIC) + r")(?:-start)?\((.*)$")
_ARRAY = re.compile(r"\b(pred|[su]8|[su]16|[su]32|[su]64|bf16|f16|f32|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}


def collective_traffic(hlo: str, num_devices: int) -> dict[int, float]:
  """{group size: bytes one device sends} over the collectives of an optimised HLO module (ring algorithms)."""
  out: dict[int, float] = {}
  for line in hlo.splitlines():
    m = _COLLECTIVE.search(line)
    if not m:
      continue
    result, kind, rest = m.groups()
    size = sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in _ARRAY.findall(result))
    groups = re.search(r"replica_groups=(\{\{[\d,]*\}|\[\d+,(\d+)\])", rest)
    if groups is None:
      g = num_devices
    elif groups.group(2):
      g = int(groups.group(2))
    else:
      g = groups.group(1).count(",") + 1
    if g > 1:
      out[g] = out.get(g, 0.0) + size * _TRAFFIC[kind](g)
  return out


Cost = dict[str, Any]   # {"flops": float, "bytes": float, "comm": {group size: bytes sent}}


def compiled_cost(compiled: Any, num_devices: int) -> Cost:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0)),
          "comm": collective_traffic(compiled.as_text(), num_devices)}


def combine(terms: list[tuple[float, Cost]]) -> Cost:
  """sum of weight * cost (weights may be negative: differences of programs)."""
  comm: dict[int, float] = {}
  for w, c in terms:
    for g, b in c["comm"].items():
      comm[g] = comm.get(g, 0.0) + w * b
  return {"flops": sum(w * c["flops"] for w, c in terms), "bytes": sum(w * c["bytes"] for w, c in terms),
          "comm": {g: max(b, 0.0) for g, b in comm.items()}}


def seconds(cost: Cost, hw: Hardware) -> dict[str, float]:
  """Compute, HBM and link time of `cost` on one device of `hw`, and their max (the roofline)."""
  link = sum(b / (hw.link if not hw.domain or g <= hw.domain else hw.far_link) for g, b in cost["comm"].items())
  out = {"compute": cost["flops"] / hw.peak_flops, "memory": cost["bytes"] / hw.hbm, "link": link}
  out["roofline"] = max(out.values())
  out["limit"] = max(("compute", "memory", "link"), key=out.get)
  return out


def depth_variants(cfg: models.ModelConfig) -> tuple[list[dict[str, int]], Callable[[list[Cost]], Cost]]:
  """Loop-free depths to compile and how their costs extrapolate to `cfg`'s (costs are linear in each
  kind of layer: trunk, and Kimi's audio branch)."""
  if cfg.arch == "parallel":   # the audio branch leaves the trunk before its last layer: 2 trunk layers at least
    variants = [dict(num_layers=2, mimo_from_layer=0, num_mimo_layers=1), dict(num_layers=3, mimo_from_layer=0,
                num_mimo_layers=1), dict(num_layers=2, mimo_from_layer=0, num_mimo_layers=2)]
    return variants, lambda c: combine([(1.0, c[0]), (cfg.num_layers - 2, combine([(1, c[1]), (-1, c[0])])),
                                        (cfg.num_mimo_layers - 1, combine([(1, c[2]), (-1, c[0])]))])
  return [dict(num_layers=1), dict(num_layers=2)], lambda c: combine(
      [(1.0, c[0]), (cfg.num_layers - 1, combine([(1, c[1]), (-1, c[0])]))])


def step_cost(cfg: models.ModelConfig, config: Any, mesh: Any, P: int, G: int, Lp: int, N: int) -> Cost:
  """Per-device cost of one hybrid step of `cfg` (loop-free: see the module docstring)."""
  step, state, batch = hybrid_step(cfg, config, mesh, P, G, Lp, N)
  return compiled_cost(step.lower(state, batch, Lp - 1).compile(), mesh.size)


def gather_cost(cfg: models.ModelConfig, mesh: Any) -> Cost:
  """Per-device cost of gathering the weights once per rollout call (`models.gather_for_decoding`)."""
  gather = jax.jit(lambda p: models.in_compute_dtype(p, cfg),
                   out_shardings=models.param_shardings(cfg, mesh, gathered=True))
  return compiled_cost(gather.lower(sampler_params(cfg, mesh)).compile(), mesh.size)


def sampler_cost(cfg: models.ModelConfig, mesh: Any, sc: decode.SamplingConfig, P: int, Lp: int,
                 cache_size: int, decode_steps: int) -> Cost:
  """Per-device cost of the sampler's prefill, a completion cache of `cache_size` slots and `decode_steps`
  decode-loop iterations (sampler.prefill / decode_step, as sampler._sample runs them); with
  `sc.gather_weights`, on weights gathered once per call (the gather itself is `gather_cost`)."""
  def program(params, prompts, rng):
    params, model_cfg = models.for_decoding(params, cfg, sc.unstack_layers)
    carry, prompt_len = sampler_lib.prefill(params, model_cfg, prompts, sc)
    carry = dict(carry, cache=models.extend_cache(carry["cache"], cache_size))
    for _ in range(decode_steps):
      carry = sampler_lib.decode_step(params, model_cfg, sc, rng, prompt_len, carry)
    return carry

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  prompts = sampler_prompts(cfg, mesh, P, Lp)
  params = sampler_params(cfg, mesh, sc.gather_weights)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  with sharding.use_rules(mesh, sc.gather_weights):
    return compiled_cost(jax.jit(program).lower(params, prompts, rng).compile(), mesh.size)


def _with_shardings(fn: Callable[[], Any], mesh: Any) -> Any:
  """Abstract values of what `fn()` returns, placed as the activation rules on `mesh` place them."""
  with sharding.use_rules(mesh):
    placed = jax.jit(fn).lower().compile().output_shardings
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), jax.eval_shape(fn), placed)


def mctp_costs(cfg: models.ModelConfig, mesh: Any, rows: int, filled: int, slots: int,
               catch_up: int, gathered: bool = False) -> dict[str, Cost]:
  """Per-device costs of MCTP decoding's pieces (mctp_pieces.py: "main", "catch_up" over `catch_up` tokens,
  "module") on `rows` rows against caches of `slots` slots filled to `filled`, with the parameters in the
  compute dtype as the sampler converts them once per call (`gathered`: and gathered, `rollout.gather_weights`)."""
  abstract = sampler_params(cfg, mesh, gathered)
  decoding = jax.eval_shape(lambda p: models.for_decoding(p, cfg, unstack=False)[0], abstract)
  params = jax.tree.map(lambda a, d: jax.ShapeDtypeStruct(a.shape, d.dtype, sharding=a.sharding), abstract, decoding)
  cache, mtp_cache = _with_shardings(lambda: mctp_pieces.caches(cfg, rows, filled, slots), mesh)
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  new = lambda t: jax.ShapeDtypeStruct((rows, t), np.int32, sharding=data)   # tokens or positions [rows, t]
  main = lambda p, c, t, pos: mctp_pieces.main_step(p, cfg, c, t, pos)
  module = lambda p, c, v, t, pos: mctp_pieces.module_step(p, cfg, c, v, filled, t, pos)
  with sharding.use_rules(mesh, gathered):
    cost = lambda fn, *args: compiled_cost(jax.jit(fn).lower(params, *args).compile(), mesh.size)
    return {"main": cost(main, cache, new(1), new(1)), "catch_up": cost(main, cache, new(catch_up), new(catch_up)),
            "module": cost(module, mtp_cache, cache["valid"], new(1), new(1))}


def bench(model: str, n: int) -> dict[str, Any]:
  cfg, config = experiment(model)
  mesh = sharding.make_mesh((1, n, 1), devices=jax.devices()[:n])
  P = max(config.data.prompts_per_step, n)   # rows must divide over the data shards (rows per device constant)
  G = config.rollout.group_size
  Lp = FLAGS.prompt_len or config.data.max_prompt_len
  N = FLAGS.response_len or config.rollout.max_new_tokens
  variants, extrapolate = depth_variants(cfg)
  loop_free = lambda **kw: cfg.replace(scan_layers=False, attention_block=0, logprob_chunk=Lp + N, **kw)
  t0 = time.perf_counter()
  step = extrapolate([step_cost(loop_free(**v), config, mesh, P, G, Lp, N) for v in variants])
  model_step = extrapolate([step_cost(loop_free(remat="none", **v), config, mesh, P, G, Lp, N) for v in variants])
  sc = decode.SamplingConfig(max_new_tokens=N, group_size=G, pad_id=0, unstack_layers=False,
                             cache_windows=config.rollout.cache_windows, gather_weights=FLAGS.gather_weights)
  ends = sampler_lib.windows(N, sc.cache_windows)
  per_size = {}
  for size in sorted({ends[0], ends[-1]}):
    one, two = ([sampler_cost(loop_free(**v), mesh, sc, P, Lp, size, k) for v in variants] for k in (1, 2))
    per_size[size] = (extrapolate(one), extrapolate([combine([(1, b), (-1, a)]) for a, b in zip(one, two)]))
  (lo, (prefill_lo, token_lo)), (hi, (_, token_hi)) = min(per_size.items()), max(per_size.items())
  prefill = combine([(1, prefill_lo), (-1, token_lo)])
  # Token i runs with the cache of its window: costs linear in the cache size between the two measured ones.
  at = lambda s: token_lo if hi == lo else combine([((hi - s) / (hi - lo), token_lo), ((s - lo) / (hi - lo), token_hi)])
  starts = [0, *ends[:-1]]
  token = combine([((end - start) / N, at(end)) for start, end in zip(starts, ends)])
  out = {"model": model, "devices": n, "prompts": P, "group": G, "prompt_len": Lp, "completion_len": N,
         "params": sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: models.init_params(
             cfg, jax.random.key(0))))), "compile_seconds": time.perf_counter() - t0,
         "step": step, "step_model_flops": model_step["flops"], "prefill": prefill, "decode_token": token,
         "gather_weights": sc.gather_weights, "hardware": {}}
  if sc.gather_weights:   # once per rollout call, before the prefill
    prefill = out["prefill"] = combine([(1, prefill), (1, gather_cost(cfg, mesh))])
  if cfg.num_mtp_modules:
    M, m = mctp_pieces.last_period(decode.mctp_schedule(config.rollout, config.layout), cfg.num_mtp_modules)
    pieces = [mctp_costs(loop_free(**v), mesh, P * G, Lp + N // 2, Lp + N, m + 1, sc.gather_weights)
              for v in variants]
    out["mctp"] = {"period": [M, m], **{k: extrapolate([p[k] for p in pieces]) for k in pieces[0]}}
  for hw in HARDWARE:
    st, tok, pre = seconds(step, hw), seconds(token, hw), seconds(prefill, hw)
    rows_per_device = P * G / n
    out["hardware"][hw.name] = {
        "step": st, "step_mfu_bound": model_step["flops"] / (hw.peak_flops * st["roofline"]),
        "decode_token": tok, "prefill": pre,
        "decode_tokens_per_s_hbm": rows_per_device / tok["memory"],
        "decode_tokens_per_s": rows_per_device / tok["roofline"],
        "sampler_seconds": pre["roofline"] + N * tok["roofline"]}
    if "mctp" in out:
      piece = {k: seconds(out["mctp"][k], hw)["roofline"] for k in ("main", "catch_up", "module")}
      speedup = mctp_pieces.period_speedup(piece, *out["mctp"]["period"])
      out["hardware"][hw.name]["mctp"] = {
          "catch_up_per_token_in_main_steps": piece["catch_up"] / (out["mctp"]["period"][1] + 1) / piece["main"],
          "module_in_main_steps": piece["module"] / piece["main"], "speedup": speedup,
          "decode_tokens_per_s": speedup * rows_per_device / tok["roofline"]}
  return out


def report(r: dict[str, Any]) -> None:
  step, tok = r["step"], r["decode_token"]
  print(f"{r['model']} ({r['params'] / 1e9:.2f}B params) on {r['devices']} devices, mesh (1, {r['devices']}, 1): "
        f"{r['prompts']} prompts x {r['group']}, prompt {r['prompt_len']}, completion {r['completion_len']}"
        f"{', weights gathered once per rollout call' if r['gather_weights'] else ''} "
        f"(compiled in {r['compile_seconds']:.0f}s)", flush=True)
  print(f"  step per device: {step['flops'] / 1e12:.1f} TFLOP ({r['step_model_flops'] / 1e12:.1f} without remat), "
        f"{step['bytes'] / 1e9:.1f} GB HBM, {sum(step['comm'].values()) / 1e9:.1f} GB sent; "
        f"{step['flops'] / step['bytes']:.0f} FLOP/byte")
  print(f"  decode token per device: {tok['flops'] / 1e9:.2f} GFLOP, {tok['bytes'] / 1e9:.2f} GB HBM, "
        f"{sum(tok['comm'].values()) / 1e9:.2f} GB sent; {tok['flops'] / tok['bytes']:.1f} FLOP/byte")
  for name, h in r["hardware"].items():
    st, tk = h["step"], h["decode_token"]
    print(f"  {name:9s} step {st['roofline']:.2f} s ({st['limit']}; compute {st['compute']:.2f}, memory "
          f"{st['memory']:.2f}, link {st['link']:.2f}), MFU bound {100 * h['step_mfu_bound']:.0f}% | decode "
          f"{1e3 * tk['roofline']:.1f} ms/token ({tk['limit']}), {h['decode_tokens_per_s_hbm']:.0f} tokens/s per "
          f"device at the HBM limit, {h['decode_tokens_per_s']:.0f} at the roofline | rollouts "
          f"{h['sampler_seconds']:.1f} s", flush=True)
    if "mctp" in h:
      mc, (M, m) = h["mctp"], r["mctp"]["period"]
      print(f"  {'':9s} MCTP period [{M}, {m}]: catch-up {mc['catch_up_per_token_in_main_steps']:.2f} main steps per "
            f"token, module step {mc['module_in_main_steps']:.2f} main steps -> {mc['speedup']:.2f}x the main head, "
            f"{mc['decode_tokens_per_s']:.0f} tokens/s per device", flush=True)


def main(argv):
  del argv
  results = []
  for model in FLAGS.models:
    for n in (int(d) for d in FLAGS.devices):
      if n > jax.device_count():
        raise app.UsageError(f"{n} devices requested, {jax.device_count()} present: set "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
      results.append(bench(model, n))
      report(results[-1])
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
