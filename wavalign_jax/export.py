"""Orbax checkpoint -> Hugging Face safetensors + config.json, servable with the upstream code.

  python -m wavalign_jax.export --arch={qwen2,vita_audio,kimi_audio} --checkpoint=DIR --out=DIR \
      [--base=CONVERTED_DIR] [--step=N] [--dtype=source|float32|bfloat16] [--max_shard_size=5GB] [--overwrite]

--checkpoint is either a converted / parameters checkpoint (DIR/params + DIR/model_config.json) or a
training checkpoint: a step folder WORKDIR/checkpoints/<step> (TrainState saved by
`checkpointing.Checkpointer`, params under its `params` field), WORKDIR/checkpoints or WORKDIR itself
(latest step unless --step). A training checkpoint has no model config of its own: --base names the
converted checkpoint the run started from (`--config.init_checkpoint`), whose config.json, tokenizer
and code files are copied along. Tensors keep their original names and layouts; float32 export of a
float32 conversion reproduces the source tensors bit for bit.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from wavalign_jax import checkpointing, cli
from wavalign_jax.conversion import hf_mapping, safetensors_io
from wavalign_jax.convert import ARCHS
from wavalign_jax.model_loading import resolve_checkpoint
from wavalign_jax.models.config import ModelConfig

_STRUCTURE = ("arch", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
              "head_dim", "rms_norm_eps", "rope_theta", "num_mtp_modules", "mimo_from_layer", "num_mimo_layers",
              "adaptor_input_dim")


def hf_config_for(cfg: ModelConfig, stored: dict[str, Any] | None, torch_dtype: str) -> dict[str, Any]:
  """config.json: the stored original (upstream-only keys kept) with the structural keys re-derived from cfg."""
  if stored is None and cfg.arch == "parallel":
    raise ValueError("a Kimi-Audio export needs the original config.json (kimia_token_offset, media ids, ...): "
                     "pass --base=<the converted checkpoint the run started from>")
  out = dict(stored or {})
  out.update(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_heads,
             num_key_value_heads=cfg.num_kv_heads, vocab_size=cfg.vocab_size, rms_norm_eps=cfg.rms_norm_eps,
             rope_theta=cfg.rope_theta, num_hidden_layers=cfg.num_layers, tie_word_embeddings=False,
             hidden_act="silu", torch_dtype=torch_dtype)
  if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
    out["head_dim"] = cfg.head_dim
  if cfg.arch == "qwen2":
    out.setdefault("architectures", ["Qwen2ForCausalLM"])
    out.setdefault("model_type", "qwen2")
  elif cfg.arch == "interleaved":
    out.setdefault("architectures", ["Qwen2MTPForCausalLM"])
    out.setdefault("model_type", "qwen2_mtp")
    out.update(num_hidden_layers=cfg.num_layers + cfg.num_mtp_modules, num_nextn_predict_layers=cfg.num_mtp_modules)
  else:
    out.update(kimia_mimo_layers=cfg.num_mimo_layers, kimia_mimo_transformer_from_layer_index=cfg.mimo_from_layer,
               use_whisper_feature=cfg.adaptor_input_dim > 0)
    if cfg.adaptor_input_dim > 0:
      out["kimia_adaptor_input_dim"] = cfg.adaptor_input_dim
  back = hf_mapping.config_from_hf(out)
  diff = [k for k in _STRUCTURE if getattr(back, k) != getattr(cfg, k)]
  if diff:
    raise ValueError(f"config.json would describe another model than the checkpoint (fields {diff})")
  return out


def _check_tree(params: Any, cfg: ModelConfig, where: str) -> None:
  flat = {tuple(k.key for k in p): np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  want = hf_mapping.param_shapes(cfg)
  problems = [f"{'/'.join(p)} missing" for p in sorted(set(want) - set(flat))]
  problems += [f"{'/'.join(p)} unexpected" for p in sorted(set(flat) - set(want))]
  problems += [f"{'/'.join(p)} shape {list(flat[p])} != {list(want[p])}" for p in sorted(set(want) & set(flat))
               if tuple(flat[p]) != tuple(want[p])]
  if problems:
    raise ValueError(f"{where}: params do not match the model config: " + "; ".join(problems[:20]))


def export(arch: str, checkpoint: str, out: str, *, base: str | None = None, step: int | None = None,
           dtype: str = "source", max_shard_bytes: int = 5 * 10**9, overwrite: bool = False) -> list[str]:
  """Writes `out` (safetensors shards [+ index], config.json, tokenizer/code files); returns the weight files."""
  item, key = resolve_checkpoint(checkpoint, step)
  if base is None:
    if key is not None:
      raise ValueError(f"{checkpoint} is a training checkpoint: pass --base=<the converted checkpoint the run started "
                       "from (its --config.init_checkpoint)>")
    base = checkpoint
  cfg, meta = checkpointing.load_model_config(base)
  if ARCHS.get(arch) != cfg.arch:
    raise ValueError(f"--arch={arch} but {base} holds a {cfg.arch!r} model")
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"--out {out} exists (pass --overwrite to replace it)")
  params = checkpointing.load_host_params(item, key)
  trunk = params.get("trunk", {}) if isinstance(params, dict) else {}
  cfg = cfg.replace(scan_layers="layers" in trunk)  # the run may have changed model.scan_layers
  _check_tree(params, cfg, item)
  stored = meta.get("hf_config")
  if dtype == "source":
    dtype = (stored or {}).get("torch_dtype") or cfg.param_dtype
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"export dtype {dtype!r}: choose float32 or bfloat16")
  np_dtype = np.dtype(jnp.dtype(dtype))
  hf_config = hf_config_for(cfg, stored, dtype)

  slots = {name: hf_mapping.hf_slot(name, cfg) for name in hf_mapping.hf_names(cfg)}

  def get(name: str) -> np.ndarray:
    leaf = params
    for k in slots[name].path:
      leaf = leaf[k]
    leaf = np.asarray(leaf if slots[name].index is None else leaf[slots[name].index])
    return hf_mapping.to_hf(slots[name], leaf)  # a view: the writer casts and lays it out, one tensor at a time

  specs = [(n, s.hf_shape, np_dtype) for n, s in sorted(slots.items())]
  out = os.path.abspath(out)
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(tmp)
    extra_dir = os.path.join(base, checkpointing.HF_FILES_DIR)
    if os.path.isdir(extra_dir):
      for name in sorted(os.listdir(extra_dir)):
        if name != "config.json" and os.path.isfile(os.path.join(extra_dir, name)):
          shutil.copyfile(os.path.join(extra_dir, name), os.path.join(tmp, name))
    files = safetensors_io.write_checkpoint(tmp, specs, get, max_shard_bytes)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return files


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_enum("arch", None, sorted(ARCHS), "Architecture of the checkpoint.", required=True, flag_values=fv)
  flags.DEFINE_string("checkpoint", None, "Converted checkpoint, WORKDIR, or WORKDIR/checkpoints/<step>.",
                      required=True, flag_values=fv)
  flags.DEFINE_string("out", None, "Output folder (safetensors + config.json + tokenizer files).", required=True,
                      flag_values=fv)
  flags.DEFINE_string("base", None, "Converted checkpoint a training run started from.", flag_values=fv)
  flags.DEFINE_integer("step", None, "Training step (default: latest).", flag_values=fv)
  flags.DEFINE_enum("dtype", "source", ["source", "float32", "bfloat16"],
                    "Tensor dtype; 'source' = torch_dtype of the original config.json.", flag_values=fv)
  flags.DEFINE_string("max_shard_size", "5GB", "Shard above this size (with an index.json).", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder.", flag_values=fv)


def run(f: flags.FlagValues) -> int:
  try:
    files = export(f.arch, f.checkpoint, f.out, base=f.base, step=f.step, dtype=f.dtype,
                   max_shard_bytes=safetensors_io.parse_size(f.max_shard_size), overwrite=f.overwrite)
  except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {f.out}: {len(files)} safetensors file(s) + config.json")
  return 0


def main(argv: Sequence[str]) -> int:
  """The CLI on `argv` (without the program name); returns the exit status."""
  return cli.main_with_fresh_flags("wavalign_jax.export", define_flags, run, argv)


if __name__ == "__main__":
  cli.run_as_script(define_flags, run)
