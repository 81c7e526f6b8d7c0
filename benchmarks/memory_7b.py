r"""Ahead-of-time memory and FLOPs of the real 7B configs, per device, without weights or running anything.

  XLA_FLAGS=--xla_force_host_platform_device_count=64 python -m benchmarks.memory_7b [--devices=8,16,64]
      [--models=vita,kimi] [--parts=step,sampler] [--gather_weights]
  JAX_PLATFORMS=cpu,cuda JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 python -m benchmarks.memory_7b --target=a100_40gb

`--target=cpu` (default) compiles for fake CPU devices. The CPU compiler runs bfloat16 arithmetic in float32
and hoists those float32 copies out of loops (e.g. the layer-input stack that remat keeps, converted whole
before the backward loop), so its figures overstate an accelerator's. `--target=a100_40gb` / `h100_80gb`
compiles for that GPU without one (XLA's deviceless compilation; `pip install "jax[cuda12]"` of the same
version as jax, and the environment above, no GPU needed): what the device would really allocate.

For each model and device count, the hybrid step is built as `train.py` builds it from experiments/vita.py or
kimi.py (their model runtime settings: bf16 compute, fp32 params and AdamW moments, remat full, log-prob chunk;
their objective, optimizer, batch and lengths: 8 prompts x G 4, prompt 512, response 1024, i.e. 32 RL rows + 8 SFT
rows; the RL rows scored from their completions on) on an FSDP mesh (1, n, 1), activation rules on, the state
donated; the main-head sampler for 32 rows x (512 + 1024), and VITA's MCTP sampler (the experiment's schedule);
`--gather_weights`: the samplers read the weights gathered once per rollout call (`rollout.gather_weights`), a
compute-dtype copy held besides the train state (its size is printed with them).
On more than 8 devices the prompts grow to one per device (the rows per device stay those of 8 devices).
XLA's memory analysis gives per-device arguments + temporaries (+ outputs not aliased to donated inputs)
and its cost analysis per-device FLOPs (a loop body counts once: the step's layer scan is one layer, the
sampler's figure is one decode step of one layer; compare them across device counts, not as totals).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import jax
from absl import app, flags
from jax.experimental import topologies

from benchmarks.recipes_7b import experiment, hybrid_step, sampler_params, sampler_prompts
from wavalign_jax import sharding
from wavalign_jax.rollout import decode, mctp
from wavalign_jax.rollout import sampler as sampler_lib

flags.DEFINE_list("devices", ["8", "16", "64"], "Device counts (fake CPU devices; XLA_FLAGS must provide the most).")
flags.DEFINE_list("models", ["vita", "kimi"], "vita (VITA-Audio-Balance, 10 MCTP layers) and/or kimi (Kimi-Audio); "
                  "tiny: a quick check of the script.")
flags.DEFINE_list("parts", ["step", "sampler", "mctp"], "What to compile (mctp: VITA's MCTP sampler, models with "
                  "MCTP modules only).")
flags.DEFINE_enum("target", "cpu", ["cpu", "a100_40gb", "h100_80gb"],
                  "Compile for fake CPU devices, or for that GPU (deviceless; gpu_targets/<target>.txtpb).")
flags.DEFINE_bool("gather_weights", False, "The samplers with the weights gathered once per rollout call "
                  "(rollout.gather_weights) instead of FSDP-split.")
flags.DEFINE_integer("prompts", None, "Prompts per step (at least one per device; default: the experiment's).")
flags.DEFINE_integer("group", None, "Rollouts per prompt (default: the experiment's).")
flags.DEFINE_integer("prompt_len", None, "Prompt length (default: the experiment's data.max_prompt_len).")
flags.DEFINE_integer("response_len", None, "Response length (default: the experiment's rollout.max_new_tokens).")
FLAGS = flags.FLAGS

GiB = 2 ** 30


def _report(name, compiled, seconds):
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}   # a deviceless GPU compile reports none
  tflops = f"{cost['flops'] / 1e12:8.2f} TFLOP" if "flops" in cost else "   (no FLOPs)"
  total = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
  print(f"  {name:8s} per device: args {mem.argument_size_in_bytes / GiB:6.2f} GiB  temps {mem.temp_size_in_bytes / GiB:6.2f} "
        f"GiB  total {total / GiB:6.2f} GiB  {tflops}  "
        f"(compiled in {seconds:.0f}s)", flush=True)


def _devices(n: int) -> list:
  """n devices of the target: this process's (fake) CPU devices, or compile-only GPUs of one host."""
  if FLAGS.target == "cpu":
    if n > jax.device_count():
      raise app.UsageError(f"{n} devices requested, {jax.device_count()} present: set "
                           f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    return jax.devices()[:n]
  spec = (pathlib.Path(__file__).parent / "gpu_targets" / f"{FLAGS.target}.txtpb").read_text()
  return topologies.get_topology_desc(platform="cuda", target_config=spec, topology=f"1x1x{n}").devices


def bench(model: str, n: int) -> None:
  cfg, config = experiment(model)
  mesh = sharding.make_mesh((1, n, 1), devices=_devices(n))
  pick = lambda flag, default: default if flag is None else flag
  # Rows must divide over the data shards: the global batch grows with the devices (rows per device constant).
  P = max(pick(FLAGS.prompts, config.data.prompts_per_step), n)
  G, Lp = pick(FLAGS.group, config.rollout.group_size), pick(FLAGS.prompt_len, config.data.max_prompt_len)
  N = pick(FLAGS.response_len, config.rollout.max_new_tokens)
  step, state, batch = hybrid_step(cfg, config, mesh, P, G, Lp, N)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f"{model} ({n_params / 1e9:.2f}B params) on {n} {FLAGS.target} devices, mesh (1, {n}, 1), {P} prompts x "
        f"{G} rollouts", flush=True)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if "step" in FLAGS.parts:
    t = time.perf_counter()
    compiled = step.lower(state, batch, Lp - 1).compile()
    _report("step", compiled, time.perf_counter() - t)
  sc = decode.SamplingConfig(max_new_tokens=N, group_size=G, unstack_layers=False,   # as hosts.py
                             gather_weights=FLAGS.gather_weights)
  prompts = sampler_prompts(cfg, mesh, P, Lp)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  params = sampler_params(cfg, mesh, sc.gather_weights)   # placed as the step's are, or gathered
  if sc.gather_weights:
    resident = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
    print(f"  (besides the sampler: the train state's {resident / GiB:.2f} GiB per device)", flush=True)
  samplers = {"sampler": lambda: sampler_lib._sample.lower(params, cfg, prompts, rng, sc)}
  if cfg.num_mtp_modules:
    mctp_sc = dataclasses.replace(sc, decode="mctp", mctp_schedule=decode.mctp_schedule(config.rollout, config.layout))
    samplers["mctp"] = lambda: mctp._sample_mctp.lower(params, cfg, prompts, rng, mctp_sc)
  for part, lower in samplers.items():
    if part in FLAGS.parts:
      t = time.perf_counter()
      with sharding.use_rules(mesh, sc.gather_weights):
        compiled = lower().compile()
      _report(part, compiled, time.perf_counter() - t)


def main(argv):
  del argv
  for model in FLAGS.models:
    for n in (int(d) for d in FLAGS.devices):
      bench(model, n)


if __name__ == "__main__":
  app.run(main)
