"""Parity with the upstream PyTorch models on the golden fixtures (tests/fixtures/*/README.md).

Each checkpoint is loaded through the HF mapping (so the mapping is tested too) in both the scanned
and the looped layout, and every reference key the fixture README names is compared within 1e-4.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES
from wavalign_jax import models
from wavalign_jax.batches import SeqBatch
from wavalign_jax.conversion import config_from_hf, hf_to_params

pytestmark = pytest.mark.usefixtures("highest_precision")
TOL = 1e-4


def _load(name, **overrides):
  folder = FIXTURES / name
  cfg = config_from_hf(json.loads((folder / "config.json").read_text()), **overrides)
  params = hf_to_params(load_file(str(folder / "model.safetensors")), cfg)
  return cfg, params, dict(np.load(folder / "inputs.npz")), dict(np.load(folder / "expected.npz"))


@functools.partial(jax.jit, static_argnums=2)
def _run(params, batch, cfg):
  """Full logits, hidden states and the sown intermediates (input_embeds, residuals, mimo input).

  One jitted call per batch layout: eager nn.scan re-traces on every call and is slow."""
  (hidden, _), inter = models.Transformer(cfg).apply(
      {"params": params}, batch["inputs"], batch["positions"], models.causal_mask(batch["segment_ids"]),
      features=batch.get("features"), feature_mask=batch.get("feature_mask"), mutable="intermediates")
  return models.logits(params, cfg, batch), hidden, inter["intermediates"]


def _close(got, want, mask=None):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  diff = np.abs(got - want)
  if mask is not None:
    diff = diff[np.asarray(mask, bool)]
  assert diff.max() <= TOL, diff.max()


@pytest.mark.parametrize("scan", [True, False])
def test_qwen2(scan):
  cfg, params, inp, exp = _load("qwen2", scan_layers=scan)
  assert cfg.arch == "qwen2"
  ids = jnp.asarray(inp["input_ids"])
  batch = dict(inputs={"tokens": ids}, positions=jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape),
               segment_ids=jnp.asarray(inp["attention_mask"]))
  valid = exp["valid_mask"]
  lg, hidden, inter = _run(params, batch, cfg)
  _close(lg["tokens"], exp["logits"], valid)
  residual = inter["trunk"]["layers"]["residual"][0] if scan else inter["trunk"]["layer_0"]["residual"][0][None]
  hs = exp["hidden_states"]
  _close(inter["input_embeds"][0], hs[0], valid)
  _close(residual[0], hs[1], valid)          # residual after layer 0
  _close(hidden["tokens"], hs[2], valid)


def test_vita_audio_mtp():
  cfg, params, inp, exp = _load("vita_audio_mtp")
  assert (cfg.arch, cfg.num_layers, cfg.num_mtp_modules) == ("interleaved", 2, 2)
  ids, pos = jnp.asarray(inp["input_ids"]), jnp.asarray(inp["position_ids"])
  batch = dict(inputs={"tokens": ids}, positions=pos, segment_ids=jnp.ones_like(ids))
  seq = SeqBatch(**batch, targets={"tokens": jnp.roll(ids, -1, axis=1)}, types={"tokens": jnp.zeros_like(ids)})
  lg, hidden, _ = _run(params, batch, cfg)
  _close(lg["tokens"], exp["main_logits"])
  _close(hidden["tokens"], exp["main_hidden"])
  # main loss through the chunked target log-probs (the training path), and the MCTP modules
  logp, mtp, mtp_hidden = jax.jit(lambda p: (
      models.target_logprobs(p, cfg, seq).logp["tokens"], models.mtp_logits(p, cfg, ids, pos),
      models.Transformer(cfg).apply({"params": p}, ids, pos, method=models.Transformer.mtp_hidden)))(params)
  np.testing.assert_allclose(-float(logp[:, :-1].mean()), exp["loss_main"], atol=1e-5)
  losses = []
  for k in range(cfg.num_mtp_modules):
    _close(mtp[k], exp[f"mtp_logits_{k}"])
    _close(mtp_hidden[k], exp[f"mtp_hidden_{k}"])
    lp = jax.nn.log_softmax(mtp[k][:, :-1])
    losses.append(-jnp.take_along_axis(lp, ids[:, k + 2:, None], -1).mean())
  np.testing.assert_allclose(np.array(losses), exp["loss_mtp"], atol=1e-5)
  np.testing.assert_allclose(exp["loss_main"] + np.mean(losses), exp["loss_total"], atol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_kimi_audio(scan):
  cfg, params, inp, exp = _load("kimi_audio", scan_layers=scan)
  assert (cfg.arch, cfg.mimo_from_layer, cfg.num_mimo_layers, cfg.adaptor_input_dim) == ("parallel", 1, 2, 32)
  mask = inp["is_continuous_mask"][0].astype(bool)
  feats = np.zeros((1, mask.size, cfg.adaptor_input_dim), np.float32)
  feats[0, mask] = inp["whisper_input_feature"][0]           # frame j -> position media_begin + 1 + j
  batch = dict(inputs={"audio": jnp.asarray(inp["input_ids"]), "text": jnp.asarray(inp["text_input_ids"])},
               positions=jnp.asarray(inp["position_ids"]), segment_ids=jnp.ones_like(inp["input_ids"]),
               features=jnp.asarray(feats), feature_mask=jnp.asarray(mask[None]))
  lg, hidden, inter = _run(params, batch, cfg)
  _close(lg["text"], exp["text_logits"])
  _close(lg["audio"], exp["audio_logits"])
  _close(hidden["text"], exp["text_hidden"])
  _close(hidden["audio"], exp["audio_hidden"])
  _close(inter["input_embeds"][0], exp["input_embeds"])
  _close(inter["mimo_branch_input"][0], exp["mimo_branch_input"])
  nofeat = {k: v for k, v in batch.items() if k not in ("features", "feature_mask")}
  lg, _, inter = _run(params, nofeat, cfg)
  _close(lg["text"], exp["text_logits_nofeat"])
  _close(lg["audio"], exp["audio_logits_nofeat"])
  _close(inter["input_embeds"][0], exp["input_embeds_nofeat"])
