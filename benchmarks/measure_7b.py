r"""The 7B recipe measured on one real accelerator, beside what benchmarks/roofline.py predicts for it.

  python -m benchmarks.measure_7b [--model=vita] [--step_layers=8] [--decode_layers=28] [--json=measured.json]
  python -m benchmarks.measure_7b --model=tiny          # a quick check of the script on the CPU (tests)

Run it when a GPU or TPU is at hand (the project's GPU check runs it on one H200: docs/performance.md). On one
device, in this order, each part printed (and appended to --json) as soon as it is measured:

- ceilings: a bf16 matrix product of 8192^3 on random data, and an elementwise pass over a 2 GiB array
  (bytes read + written): the FLOP/s and HBM bandwidth this device reaches, against its datasheet;
- the hybrid train step of experiments/<model>.py at the released width with `--step_layers` trunk layers (the
  whole 7B with its float32 Adam state does not fit one device) and no MCTP modules, at the experiment's batch
  (8 prompts x G 4, prompt 512, completion 1024; random tokens, as train.py builds it): median step time, and
  MFU = the step's model FLOPs (without rematerialisation, counted as roofline.py counts them) / (time x
  datasheet peak);
- the main-head sampler at `--decode_layers` (the recipe's depth) on the same 32 rows, every row exactly the
  completion length (free decoding, no stop token): ms per decode token, and the HBM bandwidth it reaches
  from the fewest bytes a token must read (the weights a main step uses, in bf16, and the KV cache up to its
  window, as sampler.py grows it);
  VITA also with MCTP decoding (its 10 modules, the experiment's schedule): its speed-up over the main head;
- the train step with `attention_impl="cudnn"` (GPUs): its loss against the "xla" step's on the same state
  and batch (the fused kernel must compute the same function) and its time.

Compare with `python -m benchmarks.roofline --devices=1 --num_layers=<the same> --mtp_modules=0` (its H200 row:
the prediction from a CPU compile of the same programs).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import costs
from benchmarks.recipes_7b import experiment, jitted_hybrid_step, random_seq_batch
from wavalign_jax import models, sharding
from wavalign_jax.batches import HybridBatch, RLBatch, SamplerPrompts
from wavalign_jax.rollout import decode
from wavalign_jax.rollout import sampler as sampler_lib

flags.DEFINE_enum("model", "vita", ["vita", "kimi", "tiny"], "The 7B recipe, or tiny (the unit-test model).")
flags.DEFINE_integer("step_layers", 8, "Trunk layers of the train step's model (its width is the 7B's).")
flags.DEFINE_integer("decode_layers", None, "Trunk layers of the sampler's model (default: the recipe's).")
flags.DEFINE_integer("prompt_len", None, "Prompt length (default: the experiment's data.max_prompt_len).")
flags.DEFINE_integer("response_len", None, "Completion length (default: the experiment's rollout.max_new_tokens).")
flags.DEFINE_integer("repeats", 3, "Timed calls of each program after the compiling one.")
flags.DEFINE_list("parts", ["ceilings", "step", "decode", "cudnn"], "What to measure, in this order.")
flags.DEFINE_string("json", "", "Append each part's figures to this file (one JSON object a line).")
FLAGS = flags.FLAGS


def timed(fn: Callable[[int], Any], repeats: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of the next `repeats`); fn(i) returns something to block on."""
  t = time.perf_counter()
  jax.block_until_ready(fn(0))
  first = time.perf_counter() - t
  print(f"    first call {first:.2f} s", flush=True)
  times = []
  for i in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(i + 1))
    times.append(time.perf_counter() - t)
    print(f"    call {i + 1} {times[-1]:.3f} s", flush=True)
  return first, statistics.median(times)


def emit(part: str, figures: dict[str, Any]) -> None:
  figures = {"part": part, "device": jax.devices()[0].device_kind, "jax": jax.__version__, **figures}
  print(json.dumps(figures), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "a") as f:
      f.write(json.dumps(figures) + "\n")


def ceilings() -> None:
  """The device's bf16 matrix rate and HBM bandwidth, each timed over about a second of back-to-back calls after
  as long a warm-up (an idle GPU's clocks take that long to rise: a first run timed 20 ms and read 2/3 of both)."""
  accelerator = jax.default_backend() != "cpu"
  n = 8192 if accelerator else 512
  a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in (1, 2))
  x = jax.random.normal(jax.random.key(3), ((1 << 30) if accelerator else (1 << 20),), jnp.bfloat16)  # 2 GiB
  matmul, axpy = jax.jit(lambda u, v: u @ v), jax.jit(lambda v, s: v * s + 1)

  def rate(fn: Callable[[], Any], work: float) -> float:
    jax.block_until_ready(fn())
    for _ in range(2):   # warm-up, then the timed pass
      t, calls = time.perf_counter(), 0
      while time.perf_counter() - t < (1.0 if accelerator else 0.05):   # each call waited for: bounded memory
        jax.block_until_ready(fn())
        calls += 1
      seconds = time.perf_counter() - t
    return work * calls / seconds

  emit("ceilings", {"matmul_tflops": rate(lambda: matmul(a, b), 2 * n ** 3) / 1e12,
                    "hbm_tb_per_s": rate(lambda: axpy(x, jnp.bfloat16(2)), 2 * x.nbytes) / 1e12,
                    "matmul_n": n, "copy_bytes": 2 * x.nbytes})


def _shapes() -> tuple[models.ModelConfig, Any, int, int, int, int]:
  cfg, config = experiment(FLAGS.model)
  P, G = config.data.prompts_per_step, config.rollout.group_size
  return (cfg, config, P, G, FLAGS.prompt_len or config.data.max_prompt_len,
          FLAGS.response_len or config.rollout.max_new_tokens)


def _step_setup(cfg: models.ModelConfig, config: Any, P: int, G: int, Lp: int, N: int):
  """The hybrid step (recipes_7b.jitted_hybrid_step), a fresh state and a random batch on one device."""
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  step, create, state_sharding = jitted_hybrid_step(cfg, config, mesh)
  state = jax.jit(create, out_shardings=state_sharding)()
  rng = np.random.default_rng(0)
  batch = sharding.device_put_batch(HybridBatch(
      sft=random_seq_batch(rng, cfg, P, Lp + N, Lp), rl=random_seq_batch(rng, cfg, P * G, Lp + N, Lp, RLBatch),
      rewards=rng.integers(1, 6, (P, G)).astype(np.float32), reward_valid=np.ones((P, G), bool)), mesh)
  return step, state, batch, mesh


def _time_step(step, state, batch, Lp: int) -> tuple[float, float, float]:
  """(first call s, median s, loss of the first call) of `step` run repeatedly from `state` (donated)."""
  holder, losses = [state], []

  def call(_):
    holder[0], metrics = step(holder[0], batch, Lp - 1)
    losses.append(metrics["loss"])
    return metrics["loss"]
  first, median = timed(call, FLAGS.repeats)
  return first, median, float(losses[0])


def train_step(attention_impl: str = "xla", reference_loss: float | None = None) -> float:
  cfg, config, P, G, Lp, N = _shapes()
  cfg = cfg.replace(num_layers=min(FLAGS.step_layers, cfg.num_layers), num_mtp_modules=0,
                    attention_impl=attention_impl)
  if cfg.arch == "parallel":   # Kimi's audio branch leaves the trunk after mimo_from_layer
    cfg = cfg.replace(mimo_from_layer=min(cfg.mimo_from_layer, cfg.num_layers - 1))
  step, state, batch, mesh = _step_setup(cfg, config, P, G, Lp, N)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  first, median, loss = _time_step(step, state, batch, Lp)
  figures = {"attention_impl": attention_impl, "layers": cfg.num_layers, "params": params, "prompts": P, "group": G,
             "prompt_len": Lp, "completion_len": N, "compile_and_first_s": first, "step_s": median, "loss": loss,
             "tokens_per_s": (P + P * G) * (Lp + N) / median}
  if reference_loss is not None:
    figures["loss_rel_diff_vs_xla"] = abs(loss - reference_loss) / abs(reference_loss)
  else:
    flops = model_flops(cfg, config, P, G, Lp, N)
    figures.update(model_flops=flops, model_tflops_per_s=flops / median / 1e12, mfu=flops / median / _hardware().peak_flops,
                   peak_flops=_hardware().peak_flops)
  emit("step", figures)
  return loss


def model_flops(cfg: models.ModelConfig, config: Any, P: int, G: int, Lp: int, N: int) -> float:
  """FLOPs of one step without rematerialisation, as roofline.py counts them: the loop-free programs at 1 and 2
  layers extrapolated to `cfg`'s depth, compiled for the host's CPU (the FLOPs are the math's, the same on every
  backend; an accelerator's client may not analyse a program it did not run)."""
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices("cpu")[:1])
  return costs.extrapolated_step_cost(cfg, config, mesh, P, G, Lp, N, remat="none")["flops"]


def _hardware() -> costs.Hardware:
  """The datasheet of the device this runs on (costs.HARDWARE), or the first one on an unknown device."""
  kind = jax.devices()[0].device_kind.lower()
  return next((hw for hw in costs.HARDWARE if hw.match and hw.match in kind), costs.HARDWARE[0])


def decode_bytes_per_token(cfg: models.ModelConfig, rows: int, Lp: int, sc: decode.SamplingConfig) -> float:
  """The fewest HBM bytes a main-head decode token reads, averaged over the completion: every weight of the trunk
  and output heads once (compute dtype; the embedding table and MCTP modules are not read) and the KV cache up to
  the window the token runs in (sampler.windows)."""
  abstract = jax.eval_shape(lambda: models.in_compute_dtype(models.init_params(cfg, jax.random.key(0)), cfg))
  weights = sum(x.size * x.dtype.itemsize for path, x in jax.tree_util.tree_flatten_with_path(abstract)[0]
                if not str(getattr(path[0], "key", "")).startswith(("embedding", "mtp_")))
  layers = cfg.num_layers + (cfg.num_mimo_layers if cfg.arch == "parallel" else 0)
  per_slot = 2 * layers * rows * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
  N, ends = sc.max_new_tokens, sampler_lib.windows(sc.max_new_tokens, sc.cache_windows)
  slots = sum((end - start) * (Lp + end) for start, end in zip([0, *ends[:-1]], ends)) / N
  return weights + per_slot * slots


def decoding() -> None:
  cfg, config, P, G, Lp, N = _shapes()
  cfg = cfg.replace(num_layers=FLAGS.decode_layers or cfg.num_layers)
  params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))
  rng = np.random.default_rng(1)
  prompts = SamplerPrompts(inputs={s: rng.integers(0, cfg.vocab_size, (P, Lp)).astype(np.int32) for s in cfg.streams},
                           valid=np.ones((P, Lp), bool))
  if cfg.arch == "parallel" and cfg.adaptor_input_dim:
    prompts = prompts.replace(features=rng.normal(size=(P, Lp, cfg.adaptor_input_dim)).astype(np.float32),
                              feature_mask=np.zeros((P, Lp), bool))
  sc = decode.SamplingConfig(max_new_tokens=N, group_size=G, sampling=decode.StreamSampling(1.0, 1.0, 0),
                             cache_windows=config.rollout.cache_windows)
  run = lambda c: lambda i: sampler_lib.sample(params, cfg, prompts, jax.random.key(i), c).lengths
  first, median = timed(run(sc), FLAGS.repeats)
  per_token = median / N
  figures = {"layers": cfg.num_layers, "rows": P * G, "prompt_len": Lp, "completion_len": N,
             "compile_and_first_s": first, "call_s": median, "ms_per_token": 1e3 * per_token,
             "min_bytes_per_token": decode_bytes_per_token(cfg, P * G, Lp, sc)}
  figures["hbm_tb_per_s"] = figures["min_bytes_per_token"] / per_token / 1e12
  figures["hbm_fraction_of_datasheet"] = figures["hbm_tb_per_s"] * 1e12 / _hardware().hbm
  if cfg.num_mtp_modules:
    mc = dataclasses.replace(sc, decode="mctp", mctp_schedule=decode.mctp_schedule(config.rollout, config.layout))
    first_m, median_m = timed(run(mc), FLAGS.repeats)
    figures.update(mctp_schedule=list(mc.mctp_schedule), mctp_compile_and_first_s=first_m, mctp_call_s=median_m,
                   mctp_speedup=median / median_m)
  emit("decode", figures)


def main(argv: list[str]) -> None:
  del argv
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
  reference = None
  for part in FLAGS.parts:
    if part not in ("ceilings", "step", "decode", "cudnn"):
      raise app.UsageError(f"--parts: unknown part {part!r}")
    t = time.perf_counter()
    try:   # a part that fails (e.g. a kernel this device lacks) is reported, and the next one runs
      if part == "ceilings":
        ceilings()
      elif part == "step":
        reference = train_step()
      elif part == "decode":
        decoding()
      elif part == "cudnn" and jax.default_backend() == "gpu":
        train_step("cudnn", reference)
    except Exception:   # noqa: BLE001
      traceback.print_exc()
      emit(part, {"error": traceback.format_exc(limit=3)})
    print(f"  ({part}: {time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
  app.run(main)
