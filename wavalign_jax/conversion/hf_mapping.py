"""Hugging Face <-> Flax parameter mapping for Qwen2, VITA-Audio (Qwen2MTP) and Kimi-Audio.

The unit is one HF tensor: `hf_slot(name, cfg)` says which Flax leaf it fills (and which slice of
the leading "layers" axis when layers are scanned) and how its layout changes, so a converter can
stream a checkpoint tensor by tensor (`to_flax` / `to_hf`). `hf_to_params` / `params_to_hf` apply
the table to a whole checkpoint and insist that it is used exactly: every source tensor once, every
target leaf (slice) filled, shapes as the config says.

Layouts: HF Linear weights are [out, in] (y = x W^T + b); Flax kernels are [in, out] with the
attention head axes split out: q/k/v kernels [d, heads, head_dim], o kernel [heads, head_dim, d].
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wavalign_jax.models import api
from wavalign_jax.models.config import ModelConfig

_KIMI_ARCHS = ("MoonshotKimiaForCausalLM",)
_VITA_ARCHS = ("Qwen2MTPForCausalLM",)
_QWEN2_ARCHS = ("Qwen2ForCausalLM",)


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> ModelConfig:
  """ModelConfig from a HF config.json dict. Dispatches on `architectures` and the `kimia_*` /
  `num_nextn_predict_layers` keys (Kimi checkpoints may say model_type "qwen2")."""
  c = dict(hf_config)
  archs = tuple(c.get("architectures") or ())
  for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
    if key not in c:
      raise ValueError(f"HF config: missing field {key!r}")
  if c.get("tie_word_embeddings", False):
    raise ValueError("HF config: tie_word_embeddings=true is not supported (the models have an untied lm_head)")
  if c.get("hidden_act", "silu") != "silu":
    raise ValueError(f"HF config: hidden_act={c['hidden_act']!r}, only 'silu' is supported")
  if c.get("rope_scaling"):
    raise ValueError(f"HF config: rope_scaling={c['rope_scaling']!r} is not supported")
  if c.get("use_sliding_window", False):
    raise ValueError("HF config: use_sliding_window=true is not supported")
  kw: dict[str, Any] = dict(
      vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
      num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
      num_kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
      head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
      # a missing rope_theta is transformers' Qwen2Config default
      rms_norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=c.get("rope_theta", 10000.0))
  if any(a in _KIMI_ARCHS for a in archs) or any(k.startswith("kimia_") for k in c):
    kw.update(arch="parallel", mimo_from_layer=c["kimia_mimo_transformer_from_layer_index"],
              num_mimo_layers=c["kimia_mimo_layers"],
              adaptor_input_dim=c.get("kimia_adaptor_input_dim", 0) if c.get("use_whisper_feature") else 0)
  elif any(a in _VITA_ARCHS for a in archs) or "num_nextn_predict_layers" in c:
    n = c.get("num_nextn_predict_layers", 0)
    if not 0 < n < c["num_hidden_layers"]:
      raise ValueError(f"HF config: num_nextn_predict_layers={n} must be in (0, num_hidden_layers)")
    kw.update(arch="interleaved", num_layers=c["num_hidden_layers"] - n, num_mtp_modules=n)
  elif any(a in _QWEN2_ARCHS for a in archs):
    kw.update(arch="qwen2")
  else:
    raise ValueError(f"HF config: cannot tell the architecture from architectures={list(archs)} "
                     "(expected Qwen2ForCausalLM, Qwen2MTPForCausalLM or MoonshotKimiaForCausalLM)")
  kw.update(overrides)
  return ModelConfig(**kw)


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one HF tensor goes. kind "T": transpose then reshape; "R": reshape only."""
  path: tuple[str, ...]
  index: int | None         # slice of the leading "layers" axis (scanned stacks), else None
  kind: str
  hf_shape: tuple[int, ...]


def _layer_table(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], str, tuple[int, ...]]]:
  d, m = cfg.hidden_size, cfg.intermediate_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  return {
      "self_attn.q_proj.weight": (("attn", "q", "kernel"), "T", (q, d)),
      "self_attn.q_proj.bias": (("attn", "q", "bias"), "R", (q,)),
      "self_attn.k_proj.weight": (("attn", "k", "kernel"), "T", (kv, d)),
      "self_attn.k_proj.bias": (("attn", "k", "bias"), "R", (kv,)),
      "self_attn.v_proj.weight": (("attn", "v", "kernel"), "T", (kv, d)),
      "self_attn.v_proj.bias": (("attn", "v", "bias"), "R", (kv,)),
      "self_attn.o_proj.weight": (("attn", "o", "kernel"), "T", (d, q)),
      "mlp.gate_proj.weight": (("mlp", "gate", "kernel"), "T", (m, d)),
      "mlp.up_proj.weight": (("mlp", "up", "kernel"), "T", (m, d)),
      "mlp.down_proj.weight": (("mlp", "down", "kernel"), "T", (d, m)),
      "input_layernorm.weight": (("attn_norm", "scale"), "R", (d,)),
      "post_attention_layernorm.weight": (("mlp_norm", "scale"), "R", (d,)),
  }


def _global_table(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], str, tuple[int, ...]]]:
  V, d = cfg.vocab_size, cfg.hidden_size
  t = {"model.embed_tokens.weight": (("embedding",), "R", (V, d)),
       "model.norm.weight": (("final_norm", "scale"), "R", (d,)),
       "lm_head.weight": (("lm_head",), "T", (V, d))}
  if cfg.arch == "parallel":
    t["mimo_output.weight"] = (("audio_head",), "T", (V, d))
    t["model.mimo_norm.weight"] = (("mimo_norm", "scale"), "R", (d,))
    if cfg.adaptor_input_dim > 0:
      t.update({"model.vq_adaptor.layers.0.weight": (("adaptor", "in", "kernel"), "T", (d, cfg.adaptor_input_dim)),
                "model.vq_adaptor.layers.0.bias": (("adaptor", "in", "bias"), "R", (d,)),
                "model.vq_adaptor.layers.3.weight": (("adaptor", "out", "kernel"), "T", (d, d)),
                "model.vq_adaptor.layers.3.bias": (("adaptor", "out", "bias"), "R", (d,)),
                "model.vq_adaptor.layers.4.weight": (("adaptor", "scale"), "R", (d,)),
                "model.vq_adaptor.layers.4.bias": (("adaptor", "bias"), "R", (d,))})
  for k in range(cfg.num_mtp_modules if cfg.arch == "interleaved" else 0):
    t[f"mtp_embed_norms.{k}.weight"] = ((f"mtp_{k}", "embed_norm", "scale"), "R", (d,))
    t[f"mtp_hidden_norms.{k}.weight"] = ((f"mtp_{k}", "hidden_norm", "scale"), "R", (d,))
    t[f"mtp_projs.{k}.weight"] = ((f"mtp_{k}", "proj", "kernel"), "T", (d, 2 * d))
  return t


def _layer_owner(group: str, i: int, cfg: ModelConfig) -> tuple[tuple[str, ...], int] | None:
  """HF layer (group "layers" | "mimo_layers", index i) -> (Flax module path, index in its stack)."""
  if group == "mimo_layers":
    return (("mimo",), i) if cfg.arch == "parallel" and i < cfg.num_mimo_layers else None
  if cfg.arch == "parallel" and i < cfg.num_layers:
    trunk = cfg.stack_sizes["trunk"]
    return (("trunk",), i) if i < trunk else (("text_trunk",), i - trunk)
  if i < cfg.num_layers:
    return ("trunk",), i
  if cfg.arch == "interleaved" and i < cfg.num_layers + cfg.num_mtp_modules:
    return (f"mtp_{i - cfg.num_layers}", "layer"), -1   # MCTP layers are never stacked
  return None


_LAYER_RE = re.compile(r"model\.(layers|mimo_layers)\.(\d+)\.(.+)")


def hf_slot(name: str, cfg: ModelConfig) -> Slot | None:
  """The Slot of HF tensor `name`, or None when the name does not belong to this config."""
  if name in (g := _global_table(cfg)):
    return Slot(g[name][0], None, g[name][1], g[name][2])
  match = _LAYER_RE.fullmatch(name)
  if not match or match[3] not in (table := _layer_table(cfg)):
    return None
  owner = _layer_owner(match[1], int(match[2]), cfg)
  if owner is None:
    return None
  (module, j), (sub, kind, shape) = owner, table[match[3]]
  if j < 0:
    return Slot(module + sub, None, kind, shape)
  if cfg.scan_layers:
    return Slot(module + ("layers",) + sub, j, kind, shape)
  return Slot(module + (f"layer_{j}",) + sub, None, kind, shape)


def hf_names(cfg: ModelConfig) -> list[str]:
  """Every HF tensor name a checkpoint of this config holds."""
  names = list(_global_table(cfg))
  n_layers = cfg.num_layers + (cfg.num_mtp_modules if cfg.arch == "interleaved" else 0)
  groups = [("layers", n_layers)] + ([("mimo_layers", cfg.num_mimo_layers)] if cfg.arch == "parallel" else [])
  for group, n in groups:
    names += [f"model.{group}.{i}.{sub}" for i in range(n) for sub in _layer_table(cfg)]
  return names


def to_flax(slot: Slot, tensor: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  a = tensor.T if slot.kind == "T" else tensor
  return np.reshape(a, target_shape)


def to_hf(slot: Slot, leaf: np.ndarray) -> np.ndarray:
  if slot.kind == "T":
    return np.reshape(leaf, slot.hf_shape[::-1]).T
  return np.reshape(leaf, slot.hf_shape)


def param_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {path: shape} of the Flax parameters (computed abstractly, no memory)."""
  tree = jax.eval_shape(lambda: api.init_params(cfg, jax.random.key(0)))
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _slice_shape(slot: Slot, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
  return leaf_shape[1:] if slot.index is not None else leaf_shape


def check_names_and_shapes(shapes: Mapping[str, tuple[int, ...]], cfg: ModelConfig
                           ) -> tuple[list[str], list[str], list[str]]:
  """(unknown, missing, wrongly shaped) names of HF tensors (`shapes`: name -> shape) against the model of `cfg`:
  what the converter checks from a checkpoint's headers before reading any data."""
  expected, params = hf_names(cfg), param_shapes(cfg)
  wrong = []
  for name in sorted(set(expected) & set(shapes)):
    slot = hf_slot(name, cfg)
    got = tuple(shapes[name])
    if got != slot.hf_shape or math.prod(got) != math.prod(_slice_shape(slot, params[slot.path])):
      wrong.append(name)
  return sorted(set(shapes) - set(expected)), sorted(set(expected) - set(shapes)), wrong


def hf_to_params(tensors: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict[str, Any]:
  """Nested Flax params (numpy, cfg.param_dtype) from in-memory HF tensors; ValueError on any mismatch (the
  converter streams files instead: convert.convert_tensors)."""
  unknown, missing, wrong = check_names_and_shapes({k: np.shape(v) for k, v in tensors.items()}, cfg)
  wrong = [f"{n}: shape {np.shape(tensors[n])}, expected {hf_slot(n, cfg).hf_shape}" for n in wrong]
  problems = ([f"unknown tensors (not used by arch {cfg.arch!r}): {unknown}"] if unknown else []) + \
             ([f"missing tensors: {missing}"] if missing else []) + \
             ([f"shape mismatch: {wrong}"] if wrong else [])
  if problems:
    raise ValueError("HF checkpoint does not match the config: " + "; ".join(problems))
  return fill_params(tensors.items(), cfg)


def fill_params(tensors: Iterable[tuple[str, np.ndarray]], cfg: ModelConfig, where: str = "HF checkpoint"
                ) -> dict[str, Any]:
  """Nested params (numpy, cfg.param_dtype) filled one (name, tensor) at a time: a stream needs one model copy.

  Names must already be checked against `hf_names(cfg)`; every leaf (slice) must be filled exactly once.
  """
  shapes = param_shapes(cfg)
  dtype = np.dtype(jnp.dtype(cfg.param_dtype))
  flat = {path: np.empty(shape, dtype) for path, shape in shapes.items()}  # pages are touched as they fill
  filled = {path: np.zeros(shape[0] if shape else 1, np.int32) for path, shape in shapes.items()}
  for name, tensor in tensors:
    slot = hf_slot(name, cfg)
    leaf = flat[slot.path]
    if slot.index is None:
      leaf[...] = to_flax(slot, np.asarray(tensor), leaf.shape)
      filled[slot.path] += 1
    else:
      leaf[slot.index] = to_flax(slot, np.asarray(tensor), leaf.shape[1:])
      filled[slot.path][slot.index] += 1
    del tensor
  bad = sorted("/".join(p) for p, f in filled.items() if not np.all(f == 1))
  if bad:
    raise ValueError(f"{where}: parameters not filled exactly once (mapping/model mismatch): {bad}")
  params: dict[str, Any] = {}
  for path, value in flat.items():
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return params


def params_to_hf(params: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
  """HF-named tensors (HF layouts) from Flax params: the inverse of `hf_to_params`."""
  out = {}
  for name in hf_names(cfg):
    slot = hf_slot(name, cfg)
    leaf = params
    for key in slot.path:
      leaf = leaf[key]
    leaf = np.asarray(leaf)
    out[name] = np.ascontiguousarray(to_hf(slot, leaf if slot.index is None else leaf[slot.index]))
  return out
