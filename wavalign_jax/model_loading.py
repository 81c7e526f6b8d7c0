"""A checkpoint as the evaluation, generation and analysis commands load it.

`checkpoint` is a converted checkpoint (DIR/params + DIR/model_config.json, tokenizer in DIR/hf/), a training
work directory (its latest step), WORKDIR/checkpoints or WORKDIR/checkpoints/<step>. A training checkpoint holds
only the train state: the model config and tokenizer are those of the checkpoint the run started from,
--config.init_checkpoint when set, else the testbed run's WORKDIR/base_model. Testbed configs (`:tiny`) take the
tokenizer and the eval split from the run's WORKDIR/testbed/jsonl (for a converted checkpoint folder, its parent
is taken as the run). Training itself restores its full state with `checkpointing.Checkpointer`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections as mlc
import tokenizers
from jax.sharding import Mesh

from wavalign_jax import checkpointing, models, sharding
from wavalign_jax import tokenizer as tokenizer_lib
from wavalign_jax.data import build as build_lib
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.testbed import base_model, prepare, unit_tts
from wavalign_jax.testbed import vocab as testbed_vocab


def resolve_checkpoint(path: str, step: int | None = None) -> tuple[str, str | None]:
  """-> (orbax item folder holding the params, key of the params inside it or None)."""
  if (os.path.isdir(os.path.join(path, checkpointing.PARAMS_DIR))
      and os.path.exists(os.path.join(path, checkpointing.MODEL_CONFIG_FILE))):
    return os.path.join(path, checkpointing.PARAMS_DIR), None
  if os.path.isdir(os.path.join(path, "state")):
    return os.path.join(path, "state"), "params"
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(path) if d.isdigit() and os.path.isdir(os.path.join(path, d, "state"))) \
      if os.path.isdir(path) else []
  if not steps:
    raise FileNotFoundError(f"{path}: neither a converted checkpoint (params/ + model_config.json) nor a training "
                            "checkpoint (<step>/state)")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"{path}: no step {step} (have {steps})")
  return os.path.join(path, str(steps[-1] if step is None else step), "state"), "params"


@dataclasses.dataclass
class LoadedModel:
  """A checkpoint ready to sample from: params on the config's mesh, its model config and prompt builder."""
  params: Any
  model_cfg: ModelConfig
  builder: build_lib.Builder       # lays out prompts with the model's tokenizer
  tokenizer: tokenizers.Tokenizer
  model_dir: str                   # where the model config (and tokenizer) came from
  mesh: Mesh                       # the params' mesh (config.mesh); sampling runs on it
  testbed_root: str | None = None  # testbed configs: the run's testbed folder (testbed/prepare.py names its parts)
  testbed_eval: str | None = None  # testbed configs: the folder of its eval splits (JSONL)


def _model_dir(checkpoint: str, config: mlc.ConfigDict) -> tuple[str, str | None, str, str | None]:
  """-> (params item folder, key of the params inside it, model config dir, training run dir or None)."""
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
  item, key = resolve_checkpoint(checkpoint)
  if key is None:
    return item, key, checkpoint, None
  run_dir = os.path.dirname(os.path.dirname(os.path.dirname(item)))   # RUN/checkpoints/<step>/state
  model_dir = config.init_checkpoint or base_model.path(run_dir)
  if not os.path.exists(os.path.join(model_dir, checkpointing.MODEL_CONFIG_FILE)):
    raise FileNotFoundError(
        f"{checkpoint} is a training checkpoint, which stores no model config; it is taken from the checkpoint "
        f"the run started from, but {model_dir}/model_config.json does not exist. Pass "
        "--config.init_checkpoint=<the converted checkpoint of the run> (testbed runs keep theirs in "
        "WORKDIR/base_model)")
  return item, key, model_dir, run_dir


def _testbed_files(config: mlc.ConfigDict, run_dir: str | None, checkpoint: str) -> tuple[str, str, str]:
  """(testbed folder, tokenizer.json, folder of the eval JSONL splits) of a testbed run: config.testbed.dir or
  RUN/testbed, RUN being the training work dir or the parent of a converted checkpoint folder (its base_model)."""
  testbed = prepare.root_dir(config, run_dir or os.path.dirname(os.path.abspath(checkpoint)))
  jsonl = prepare.jsonl_dir(testbed)
  for name in ("tokenizer.json", "eval"):
    if not os.path.exists(os.path.join(jsonl, name)):
      raise FileNotFoundError(
          f"{os.path.join(jsonl, name)} not found: testbed checkpoints are evaluated on their run's testbed data "
          f"(written by the training run, or by `python -m wavalign_jax.testbed.make_data --out={jsonl}`)")
  return testbed, os.path.join(jsonl, "tokenizer.json"), os.path.join(jsonl, "eval")


def _builder(config: mlc.ConfigDict, model_cfg: ModelConfig, tokenizer: str, meta: dict[str, Any]) -> build_lib.Builder:
  if model_cfg.arch not in ("interleaved", "parallel"):
    raise ValueError(f"arch {model_cfg.arch!r} has no speech layout: evaluate a VITA-Audio (interleaved) or "
                     "Kimi-Audio (parallel) checkpoint")
  kw: dict[str, Any] = {}
  if model_cfg.arch == "parallel":
    if config.data.source == "testbed":
      kw.update(audio_offset=testbed_vocab.parallel_vocab().audio_offset, num_audio_codes=unit_tts.NUM_AUDIO_CODES)
    elif "kimia_token_offset" in meta.get("hf_config", {}):
      kw.update(audio_offset=int(meta["hf_config"]["kimia_token_offset"]))
  return build_lib.Builder(tokenizer, arch=model_cfg.arch, kind="sft", **kw)


def _load_params(item: str, key: str | None, model_cfg: ModelConfig, mesh: Mesh, where: str) -> Any:
  """Host restore, checked leaf by leaf against the model config, then placed on the config's mesh."""
  params = checkpointing.load_host_params(item, key)
  abstract = jax.eval_shape(lambda: models.init_params(model_cfg, jax.random.PRNGKey(0)))
  got = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
  if got != want:
    diff = sorted(set(got.items()) ^ set(want.items()))[:4]
    raise ValueError(f"{item}: parameters do not match the model config from {where} (first differences, "
                     f"(path, shape) present in only one of them: {diff})")
  return jax.device_put(params, models.param_shardings(model_cfg, mesh))


def load_model(checkpoint: str, config: mlc.ConfigDict) -> LoadedModel:
  """Parameters, model config and prompt builder for `checkpoint` (see the module docstring)."""
  item, key, model_dir, run_dir = _model_dir(checkpoint, config)
  model_cfg, meta = checkpointing.load_model_config(model_dir)
  model_cfg = model_cfg.with_runtime_fields(config.model, evaluation=True)
  if model_cfg.arch != config.model.arch:
    raise ValueError(f"{model_dir} holds a {model_cfg.arch!r} model but --config is for {config.model.arch!r}")
  testbed_root = testbed_eval = None
  if config.data.source == "testbed":
    testbed_root, tokenizer, testbed_eval = _testbed_files(config, run_dir, checkpoint)
  else:
    tokenizer = os.path.join(model_dir, checkpointing.HF_FILES_DIR, tokenizer_lib.TOKENIZER_FILE)
    if not os.path.exists(tokenizer):
      raise FileNotFoundError(f"{tokenizer} not found: {model_dir} must be a checkpoint written by "
                              "`python -m wavalign_jax.convert` (it keeps the Hugging Face tokenizer under hf/)")
  builder = _builder(config, model_cfg, tokenizer, meta)
  if builder.vocab.vocab_size > model_cfg.vocab_size:
    raise ValueError(f"{tokenizer}: vocabulary of {builder.vocab.vocab_size} ids does not fit the model's "
                     f"{model_cfg.vocab_size} embedding rows ({model_dir})")
  mesh = sharding.config_mesh(config.mesh)
  return LoadedModel(params=_load_params(item, key, model_cfg, mesh, model_dir), model_cfg=model_cfg,
                     builder=builder, tokenizer=builder.tok, model_dir=model_dir, mesh=mesh,
                     testbed_root=testbed_root, testbed_eval=testbed_eval)
