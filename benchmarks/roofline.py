r"""A roofline of the 7B recipes on accelerators, from compiled programs, without an accelerator.

  XLA_FLAGS=--xla_force_host_platform_device_count=256 python -m benchmarks.roofline \
      [--models=vita,kimi] [--devices=8,64,256] [--fsdp=8] [--gather_weights] [--json=roofline.json]

For each model and device count it compiles (for fake CPU devices, FSDP mesh (1, n, 1) as train.py builds it;
`--fsdp=8`: (n / 8, 8, 1), FSDP inside each group of 8 and data parallel across them)
the hybrid step and the main-head sampler of experiments/<model>.py at the 7B shapes (8 prompts x G 4, prompt
512, completion 1024; one prompt per device beyond 8), reads XLA's cost analysis (FLOPs, bytes accessed) and
the collectives of the optimised program, and predicts on an H100, an H200 and a TPU v5p:

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
(benchmarks/mctp_pieces.py): a main step, the catch-up over the m + 1 tokens of a period [M, m] and a module call
over the period's M + m anchors,
each compiled alone against caches filled to the middle of the completion; its speed-up over the main head is
that of one period at the roofline, and its decode tokens/s the main head's times that speed-up.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
from absl import app, flags

from benchmarks import mctp_pieces
from benchmarks.costs import (HARDWARE, combine, depth_variants, extrapolated_step_cost, gather_cost, loop_free,
                              mctp_costs, sampler_cost, seconds)
from benchmarks.recipes_7b import experiment
from wavalign_jax import models, sharding
from wavalign_jax.rollout import decode
from wavalign_jax.rollout import sampler as sampler_lib

flags.DEFINE_list("models", ["vita", "kimi"], "vita and/or kimi (7B), or tiny (a quick check of the script).")
flags.DEFINE_list("devices", ["8", "64", "256"], "Device counts (XLA_FLAGS must provide the most).")
flags.DEFINE_integer("num_layers", None, "Trunk layers (default: the released model's; benchmarks/measure_7b.py "
                     "measures shallower steps on one device).")
flags.DEFINE_integer("mtp_modules", None, "MCTP modules (default: the released model's).")
flags.DEFINE_integer("fsdp", 0, "FSDP group size: mesh (n / fsdp, fsdp, 1), data parallel across the groups "
                     "(e.g. 8: FSDP inside an 8-GPU node); 0: FSDP over all n devices.")
flags.DEFINE_integer("prompt_len", None, "Prompt length (default: the experiment's data.max_prompt_len).")
flags.DEFINE_integer("response_len", None, "Completion length (default: the experiment's rollout.max_new_tokens).")
flags.DEFINE_bool("gather_weights", False, "The sampler with the weights gathered once per rollout call "
                  "(rollout.gather_weights; the gather counts in the prefill) instead of at every decode token.")
flags.DEFINE_string("json", "", "Also write every figure to this file.")
FLAGS = flags.FLAGS


def bench(model: str, n: int) -> dict[str, Any]:
  cfg, config = experiment(model)
  cfg = cfg.replace(num_layers=FLAGS.num_layers or cfg.num_layers,
                    num_mtp_modules=cfg.num_mtp_modules if FLAGS.mtp_modules is None else FLAGS.mtp_modules)
  fsdp = FLAGS.fsdp or n
  mesh = sharding.make_mesh((n // fsdp, fsdp, 1), devices=jax.devices()[:n])
  P = max(config.data.prompts_per_step, n)   # rows must divide over the data shards (rows per device constant)
  G = config.rollout.group_size
  Lp = FLAGS.prompt_len or config.data.max_prompt_len
  N = FLAGS.response_len or config.rollout.max_new_tokens
  variants, extrapolate = depth_variants(cfg)
  t0 = time.perf_counter()
  step = extrapolated_step_cost(cfg, config, mesh, P, G, Lp, N)
  model_step = extrapolated_step_cost(cfg, config, mesh, P, G, Lp, N, remat="none")
  sc = decode.SamplingConfig(max_new_tokens=N, group_size=G, unstack_layers=False,
                             cache_windows=config.rollout.cache_windows, gather_weights=FLAGS.gather_weights)
  ends = sampler_lib.windows(N, sc.cache_windows)
  per_size = {}
  for size in sorted({ends[0], ends[-1]}):
    one, two = ([sampler_cost(loop_free(cfg, Lp + N, **v), mesh, sc, P, Lp, size, k) for v in variants] for k in (1, 2))
    per_size[size] = (extrapolate(one), extrapolate([combine([(1, b), (-1, a)]) for a, b in zip(one, two)]))
  (lo, (prefill_lo, token_lo)), (hi, (_, token_hi)) = min(per_size.items()), max(per_size.items())
  prefill = combine([(1, prefill_lo), (-1, token_lo)])
  # Token i runs with the cache of its window: costs linear in the cache size between the two measured ones.
  at = lambda s: token_lo if hi == lo else combine([((hi - s) / (hi - lo), token_lo), ((s - lo) / (hi - lo), token_hi)])
  starts = [0, *ends[:-1]]
  token = combine([((end - start) / N, at(end)) for start, end in zip(starts, ends)])
  out = {"model": model, "devices": n, "mesh": tuple(mesh.devices.shape), "prompts": P, "group": G,
         "prompt_len": Lp, "completion_len": N,
         "params": sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: models.init_params(
             cfg, jax.random.key(0))))), "compile_seconds": time.perf_counter() - t0,
         "step": step, "step_model_flops": model_step["flops"], "prefill": prefill, "decode_token": token,
         "gather_weights": sc.gather_weights, "hardware": {}}
  if sc.gather_weights:   # once per rollout call, before the prefill
    prefill = out["prefill"] = combine([(1, prefill), (1, gather_cost(cfg, mesh))])
  if cfg.num_mtp_modules:
    M, m = mctp_pieces.last_period(decode.mctp_schedule(config.rollout, config.layout), cfg.num_mtp_modules)
    pieces = [mctp_costs(loop_free(cfg, Lp + N, **v), mesh, P * G, Lp + N // 2, Lp + N, m + 1,
                         mctp_pieces.period_anchors(M, m), sc.gather_weights) for v in variants]
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
  print(f"{r['model']} ({r['params'] / 1e9:.2f}B params) on {r['devices']} devices, mesh {r['mesh']}: "
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
            f"token, module call {mc['module_in_main_steps']:.2f} main steps -> {mc['speedup']:.2f}x the main head, "
            f"{mc['decode_tokens_per_s']:.0f} tokens/s per device", flush=True)


def main(argv):
  del argv
  # The programs are compiled for their HLO only (cost analysis, collectives): skip LLVM's optimisation of the
  # machine code, most of a 7B program's CPU compile time. Set before jax starts its backend.
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
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
