"""Runs a converted model on a fixture-style folder (inputs.npz / expected.npz) and reports max |diff|.

The input and output names are those of the upstream reference scripts (tests/fixtures/*/README.md):
  qwen2       input_ids, attention_mask                       -> logits (compared where valid_mask)
  interleaved input_ids, position_ids                         -> main_logits, mtp_logits_{k}
  parallel    input_ids (audio), text_input_ids, position_ids, is_continuous_mask, whisper_input_feature
              -> text_logits, audio_logits (+ *_nofeat: the same ids without the continuous features)
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wavalign_jax import models
from wavalign_jax.models.config import ModelConfig

# Default --atol per parameter dtype. bfloat16: stated bound for |logits| ~ 3 with bf16 weights and
# activations (measured max 3.1e-2 on the fixtures, tests/test_convert.py::test_bf16_forward_close_to_f32).
DEFAULT_ATOL = {"float32": 1e-4, "bfloat16": 1e-1}


# Jitted once per config (eager Flax dispatch is many times slower than one compile, even at fixture size).
_logits = jax.jit(models.logits, static_argnums=1)
_mtp_logits = jax.jit(models.mtp_logits, static_argnums=1)


def _load_npz(path: str) -> dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found (a --verify folder holds inputs.npz and expected.npz)")
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _need(inputs: dict[str, np.ndarray], keys: tuple[str, ...], where: str) -> None:
  missing = [k for k in keys if k not in inputs]
  if missing:
    raise KeyError(f"{where}: missing arrays {missing} (have {sorted(inputs)})")


def _scatter_features(feature: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """[B, n, D] frames -> [B, L, D] placed in order at the positions where `mask` is set."""
  B, L = mask.shape
  out = np.zeros((B, L, feature.shape[-1]), np.float32)
  for b in range(B):
    pos = np.flatnonzero(mask[b])
    if len(pos) > feature.shape[1]:
      raise ValueError(f"is_continuous_mask row {b} has {len(pos)} positions but only {feature.shape[1]} frames")
    out[b, pos] = feature[b, :len(pos)]
  return out


def model_outputs(params: Any, cfg: ModelConfig, inputs: dict[str, np.ndarray], where: str = "inputs.npz"
                  ) -> dict[str, np.ndarray]:
  """Float32 logits of the converted model under the reference names."""
  _need(inputs, ("input_ids",), where)
  ids = jnp.asarray(inputs["input_ids"], jnp.int32)
  B, L = ids.shape
  positions = jnp.asarray(inputs.get("position_ids", np.broadcast_to(np.arange(L), (B, L))), jnp.int32)
  segments = jnp.asarray(inputs.get("attention_mask", np.ones((B, L))), jnp.int32)
  batch: dict[str, Any] = {"positions": positions, "segment_ids": segments}
  out: dict[str, Any] = {}
  if cfg.arch == "qwen2":
    out["logits"] = _logits(params, cfg, {**batch, "inputs": {"tokens": ids}})["tokens"]
  elif cfg.arch == "interleaved":
    out["main_logits"] = _logits(params, cfg, {**batch, "inputs": {"tokens": ids}})["tokens"]
    for k, lg in enumerate(_mtp_logits(params, cfg, ids, positions)):
      out[f"mtp_logits_{k}"] = lg
  elif cfg.arch == "parallel":
    _need(inputs, ("text_input_ids",), where)
    streams = {"audio": ids, "text": jnp.asarray(inputs["text_input_ids"], jnp.int32)}
    plain = _logits(params, cfg, {**batch, "inputs": streams})
    out["text_logits_nofeat"], out["audio_logits_nofeat"] = plain["text"], plain["audio"]
    if "whisper_input_feature" in inputs:
      _need(inputs, ("is_continuous_mask",), where)
      mask = np.asarray(inputs["is_continuous_mask"]).astype(bool)
      feats = _scatter_features(np.asarray(inputs["whisper_input_feature"]), mask)
      lg = _logits(params, cfg, {**batch, "inputs": streams, "features": jnp.asarray(feats, cfg.dtype),
                                       "feature_mask": jnp.asarray(mask)})
      out["text_logits"], out["audio_logits"] = lg["text"], lg["audio"]
    else:
      out["text_logits"], out["audio_logits"] = plain["text"], plain["audio"]
  else:
    raise ValueError(f"unknown arch {cfg.arch!r}")
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def compare(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
  """Max |diff| for every output that has an expected array (rows outside `valid_mask` are skipped)."""
  valid = expected.get("valid_mask")
  diffs = {}
  for name, got in outputs.items():
    if name not in expected:
      continue
    want = expected[name]
    if got.shape != want.shape:
      raise ValueError(f"expected.npz[{name!r}] has shape {want.shape}, the model gives {got.shape}")
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if valid is not None and d.shape[:2] == valid.shape:
      d = d[valid.astype(bool)]
    diffs[name] = float(d.max())
  if not diffs:
    raise ValueError(f"expected.npz has none of the model outputs {sorted(outputs)} (it has {sorted(expected)})")
  return diffs


def verify(params: Any, cfg: ModelConfig, folder: str) -> dict[str, float]:
  """Max |diff| per output between the model on `folder`/inputs.npz and `folder`/expected.npz."""
  inputs_path = os.path.join(folder, "inputs.npz")
  inputs = _load_npz(inputs_path)
  expected = _load_npz(os.path.join(folder, "expected.npz"))
  with jax.default_matmul_precision("highest"):
    return compare(model_outputs(params, cfg, inputs, inputs_path), expected)
