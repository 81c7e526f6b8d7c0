"""Per-device costs of compiled programs (FLOPs, HBM bytes, collective traffic), their time on an accelerator at its
roofline, and the loop-free programs of the 7B recipes whose costs benchmarks/roofline.py extrapolates
(its docstring says why they are loop-free and how the depths and decode tokens are differenced).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import jax
import numpy as np

from benchmarks import mctp_pieces
from benchmarks.recipes_7b import hybrid_step, sampler_params, sampler_prompts
from wavalign_jax import models, sharding
from wavalign_jax.rollout import decode
from wavalign_jax.rollout import sampler as sampler_lib


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  peak_flops: float      # dense bf16 FLOP/s per device
  hbm: float             # HBM bytes/s per device
  link: float            # collective bytes/s per device inside its fast domain
  domain: int            # devices in that domain (0: the whole slice)
  far_link: float        # bytes/s per device for a group whose devices span several domains (ids // domain)
  match: str = ""        # a piece of jax's device_kind naming this device (benchmarks/measure_7b.py)


# Vendor figures: H100 SXM (989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 4 450 GB/s per direction inside
# an 8-GPU node, 400 Gb/s InfiniBand NDR per GPU between nodes); H200 SXM (the H100's chip with 4.8 TB/s HBM3e);
# TPU v5p (459 TFLOP/s bf16, 2.765 TB/s HBM, 4,800 Gb/s ICI per chip in a 3D torus spanning the slice).
HARDWARE = (Hardware("H100 SXM", 989e12, 3.35e12, 450e9, 8, 50e9, "h100"),
            Hardware("H200 SXM", 989e12, 4.8e12, 450e9, 8, 50e9, "h200"),
            Hardware("TPU v5p", 459e12, 2.765e12, 600e9, 0, 600e9, "v5p"))

# Bytes a device sends per byte of a collective's result, for a ring over g devices.
_TRAFFIC = {"all-gather": lambda g: (g - 1) / g, "reduce-scatter": lambda g: g - 1,
            "all-reduce": lambda g: 2 * (g - 1) / g, "all-to-all": lambda g: (g - 1) / g,
            "collective-permute": lambda g: 1.0}
_COLLECTIVE = re.compile(r"=\s*(.*?)\s(" + "|".join(_TRAFFIC) + r")(?:-start)?\((.*)$")
_ARRAY = re.compile(r"\b(pred|[su]8|[su]16|[su]32|[su]64|bf16|f16|f32|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}


_MESH_GROUPS = re.compile(r"mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?\s*\{([^}]*)\}")


def _iota(dims: list[int], perm: str | None) -> np.ndarray:
  ids = np.arange(math.prod(dims)).reshape(dims)
  return ids.transpose([int(x) for x in perm.split(",")]) if perm else ids


def first_group(replica_groups: str | None, num_devices: int) -> tuple[int, ...]:
  """Device ids of a collective's first replica group, from what follows `replica_groups=`: explicit
  (`{{0,1},{2,3}}`; `{}` or none: every device), iota (`[G,S]<=[dims]`, optionally transposed `T(perm)`:
  arange(prod(dims)).reshape(dims).transpose(perm).reshape(G, S)), or mesh axes (`mesh['a'=4,'b'=2],
  device_ids=([dims]T(perm)) {'a'}`: the devices along the listed axes, the others at index 0)."""
  text = replica_groups or ""
  explicit = re.match(r"\{\{([\d,]*)\}", text)
  if not text or text.startswith("{}") or (explicit and not explicit.group(1)):
    return tuple(range(num_devices))
  if explicit:
    return tuple(int(x) for x in explicit.group(1).split(","))
  mesh = _MESH_GROUPS.match(text)
  if mesh:
    axes = [(name.strip().strip("'"), int(size)) for name, size in (a.split("=") for a in mesh.group(1).split(","))]
    sizes = [size for _, size in axes]
    ids = (_iota([int(x) for x in mesh.group(2).split(",")], mesh.group(3)) if mesh.group(2)
           else np.arange(math.prod(sizes))).reshape(sizes)
    over = {a.strip().strip("'") for a in mesh.group(4).split(",")}
    return tuple(ids[tuple(slice(None) if name in over else 0 for name, _ in axes)].reshape(-1).tolist())
  iota = re.match(r"\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
  if not iota:
    raise ValueError(f"replica_groups={text[:80]!r}: a format benchmarks/costs.py does not read")
  ids = _iota([int(x) for x in iota.group(3).split(",")], iota.group(4))
  return tuple(ids.reshape(int(iota.group(1)), int(iota.group(2)))[0].tolist())


def collective_traffic(hlo: str, num_devices: int) -> dict[str, float]:
  """{group: bytes one device sends} over the collectives of an optimised HLO module (ring algorithms); a group
  is named by its first replica group's device ids ("0,8,16"): the members tell whether it crosses a node."""
  out: dict[str, float] = {}
  for line in hlo.splitlines():
    m = _COLLECTIVE.search(line)
    if not m:
      continue
    result, kind, rest = m.groups()
    size = sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in _ARRAY.findall(result))
    groups = re.search(r"replica_groups=(.*)", rest)
    members = first_group(groups.group(1) if groups else None, num_devices)
    if len(members) > 1:
      key = ",".join(map(str, members))
      out[key] = out.get(key, 0.0) + size * _TRAFFIC[kind](len(members))
  return out


Cost = dict[str, Any]   # {"flops": float, "bytes": float, "comm": {group's device ids: bytes sent}}


def compiled_cost(compiled: Any, num_devices: int) -> Cost:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0)),
          "comm": collective_traffic(compiled.as_text(), num_devices)}


def combine(terms: list[tuple[float, Cost]]) -> Cost:
  """sum of weight * cost (weights may be negative: differences of programs)."""
  comm: dict[str, float] = {}
  for w, c in terms:
    for g, b in c["comm"].items():
      comm[g] = comm.get(g, 0.0) + w * b
  return {"flops": sum(w * c["flops"] for w, c in terms), "bytes": sum(w * c["bytes"] for w, c in terms),
          "comm": {g: max(b, 0.0) for g, b in comm.items()}}


def seconds(cost: Cost, hw: Hardware) -> dict[str, float]:
  """Compute, HBM and link time of `cost` on one device of `hw`, and their max (the roofline)."""
  crosses = lambda group: hw.domain and len({int(i) // hw.domain for i in group.split(",")}) > 1
  link = sum(b / (hw.far_link if crosses(g) else hw.link) for g, b in cost["comm"].items())
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


def loop_free(cfg: models.ModelConfig, length: int, **overrides: Any) -> models.ModelConfig:
  """`cfg` compiled without loops (layers unrolled, unblocked attention, one log-prob chunk of `length`), so that
  XLA's cost analysis counts everything once (roofline.py's docstring)."""
  return cfg.replace(scan_layers=False, attention_block=0, logprob_chunk=length, **overrides)


def extrapolated_step_cost(cfg: models.ModelConfig, config: Any, mesh: Any, P: int, G: int, Lp: int, N: int,
                           **overrides: Any) -> Cost:
  """Per-device cost of one hybrid step of `cfg` at its depth, from its loop-free programs at the depths of
  `depth_variants`; `overrides` (e.g. remat="none": the model FLOPs) change the config of each."""
  variants, extrapolate = depth_variants(cfg)
  return extrapolate([step_cost(loop_free(cfg, Lp + N, **overrides, **v), config, mesh, P, G, Lp, N)
                      for v in variants])


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
               catch_up: int, anchors: int, gathered: bool = False) -> dict[str, Cost]:
  """Per-device costs of MCTP decoding's pieces (mctp_pieces.py: "main", "catch_up" over `catch_up` tokens,
  "module" over `anchors` anchors) on `rows` rows against caches of `slots` slots filled to `filled`, with the
  parameters in the compute dtype as the sampler converts them once per call (`gathered`: and gathered,
  `rollout.gather_weights`)."""
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
            "module": cost(module, mtp_cache, cache["valid"], new(anchors), new(anchors))}
