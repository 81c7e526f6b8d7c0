"""Hugging Face checkpoint -> Orbax parameters checkpoint (what `--config.init_checkpoint=DIR` reads).

  python -m wavalign_jax.convert --arch={qwen2,vita_audio,kimi_audio} --hf_dir=DIR --out=DIR \
      [--dtype=float32|bfloat16] [--verify=FIXTURE_DIR [--atol=X]] [--no_scan_layers] [--overwrite]

Streams tensor by tensor (safetensors headers first, then one tensor at a time into preallocated
leaves), so peak host memory is about one copy of the model in the target dtype. Every source tensor
must be used exactly once and every target leaf filled exactly once with the expected shape; any
other situation is an error naming the tensors, raised before anything is written. Output is written
to a temp dir next to --out and renamed at the end (after --verify passed), so an error never leaves a
partial checkpoint behind. DIR/hf/ keeps config.json, tokenizer and code files for `export`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Sequence

from absl import flags

from wavalign_jax import checkpointing, cli
from wavalign_jax.conversion import hf_mapping, safetensors_io, verify as verify_lib
from wavalign_jax.models.config import ModelConfig

ARCHS = {"qwen2": "qwen2", "vita_audio": "interleaved", "kimi_audio": "parallel"}  # --arch -> ModelConfig.arch
MAX_COPIED_FILE_BYTES = 100 * 2**20
_FLOAT_TAGS = ("F32", "BF16", "F16", "F64")


def model_config(arch: str, hf_config: dict[str, Any], dtype: str, scan_layers: bool = True) -> ModelConfig:
  """ModelConfig from config.json, checked against --arch (a mismatch usually means the wrong folder)."""
  if arch not in ARCHS:
    raise ValueError(f"--arch={arch!r}; choose one of {sorted(ARCHS)}")
  cfg = hf_mapping.config_from_hf(hf_config, dtype=dtype, param_dtype=dtype, scan_layers=scan_layers)
  if cfg.arch != ARCHS[arch]:
    raise ValueError(f"--arch={arch} but config.json (architectures={hf_config.get('architectures')}) describes a "
                     f"{cfg.arch!r} model")
  return cfg


def _check_headers(reader: safetensors_io.CheckpointReader, cfg: ModelConfig) -> None:
  """Every problem visible from the headers alone, all reported at once, before any data is read."""
  infos = reader.infos
  problems = []
  unknown, missing, misshapen = hf_mapping.check_names_and_shapes({n: i.shape for n, i in infos.items()}, cfg)
  if unknown:
    problems.append(f"unknown tensors (not part of a {cfg.arch!r} model with this config.json): {unknown}")
  if missing:
    problems.append(f"missing tensors: {missing}")
  wrong = [f"{name} {list(infos[name].shape)} (config.json implies {list(hf_mapping.hf_slot(name, cfg).hf_shape)}, "
           f"in {infos[name].file})" for name in misshapen]
  wrong += [f"{name} has dtype {infos[name].dtype}, expected a float type"
            for name in sorted(set(infos) & set(hf_mapping.hf_names(cfg))) if infos[name].dtype not in _FLOAT_TAGS]
  if wrong:
    problems.append("shape/dtype mismatch: " + "; ".join(wrong))
  by_file: dict[str, set[str]] = {}
  for info in infos.values():
    by_file.setdefault(info.file, set()).add(info.dtype)
  if len(by_file) > 1 and all(len(d) == 1 for d in by_file.values()) and len(set.union(*by_file.values())) > 1:
    problems.append(f"shards store different dtypes ({ {f: sorted(d)[0] for f, d in by_file.items()} }): "
                    "shards of two checkpoints mixed up?")
  if problems:
    raise ValueError(f"{reader.hf_dir} does not match its config.json:\n  " + "\n  ".join(problems))


def convert_tensors(reader: safetensors_io.CheckpointReader, cfg: ModelConfig) -> dict[str, Any]:
  """Nested numpy params in cfg.param_dtype, filled one HF tensor at a time."""
  _check_headers(reader, cfg)
  return hf_mapping.fill_params(reader.iter_tensors(), cfg, where=reader.hf_dir)


def _copy_hf_files(hf_dir: str, dst: str) -> list[str]:
  """Copies the folder's small non-weight files (config, tokenizer, generation config, remote code)."""
  os.makedirs(dst)
  copied = []
  for name in sorted(os.listdir(hf_dir)):
    src = os.path.join(hf_dir, name)
    if (os.path.isfile(src) and not name.endswith(".safetensors") and name != safetensors_io.INDEX_FILE
        and os.path.getsize(src) <= MAX_COPIED_FILE_BYTES):
      shutil.copyfile(src, os.path.join(dst, name))
      copied.append(name)
  return copied


def convert(arch: str, hf_dir: str, out: str, dtype: str = "float32", *, verify_dir: str | None = None,
            atol: float | None = None, scan_layers: bool = True, overwrite: bool = False
            ) -> tuple[ModelConfig, dict[str, float]]:
  """Converts `hf_dir` into `out`; returns the ModelConfig and the --verify max diffs ({} without it).

  Raises ValueError when the checkpoint is inconsistent or verification exceeds `atol`; `out` is then untouched.
  """
  if dtype not in verify_lib.DEFAULT_ATOL:
    raise ValueError(f"--dtype={dtype!r}; choose one of {sorted(verify_lib.DEFAULT_ATOL)}")
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found")
  with open(config_path) as f:
    hf_config = json.load(f)
  cfg = model_config(arch, hf_config, dtype, scan_layers)
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"--out {out} exists (pass --overwrite to replace it)")
  reader = safetensors_io.CheckpointReader(hf_dir)
  params = convert_tensors(reader, cfg)
  out = os.path.abspath(out)
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  diffs: dict[str, float] = {}
  try:
    checkpointing.save_params(tmp, params, cfg, extra={
        "arch": arch, "hf_config": hf_config, "source": os.path.abspath(hf_dir), "source_dtypes": sorted(
            {i.dtype for i in reader.infos.values()})})
    del params
    _copy_hf_files(hf_dir, os.path.join(tmp, checkpointing.HF_FILES_DIR))
    if verify_dir is not None:
      diffs = verify_checkpoint(tmp, verify_dir, atol)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return cfg, diffs


def verify_checkpoint(ckpt_dir: str, verify_dir: str, atol: float | None = None) -> dict[str, float]:
  """Restores `ckpt_dir` from disk, runs it on `verify_dir`, prints max |diff| per output, raises above atol."""
  cfg, _ = checkpointing.load_model_config(ckpt_dir)
  atol = verify_lib.DEFAULT_ATOL[cfg.param_dtype] if atol is None else atol
  params = checkpointing.load_host_params(os.path.join(ckpt_dir, "params"))
  diffs = verify_lib.verify(params, cfg, verify_dir)
  for name, d in diffs.items():
    print(f"verify {name:<24} max|diff| {d:.3e} {'OK' if d <= atol else 'FAIL'} (atol {atol:g})")
  failed = {k: d for k, d in diffs.items() if not d <= atol}
  if failed:
    raise ValueError(f"--verify={verify_dir}: outputs above atol {atol:g}: {failed}")
  return diffs


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_enum("arch", None, sorted(ARCHS), "Source architecture.", required=True, flag_values=fv)
  flags.DEFINE_string("hf_dir", None, "Folder with config.json and *.safetensors.", required=True, flag_values=fv)
  flags.DEFINE_string("out", None, "Output folder (Orbax params + model_config.json + hf/).", required=True,
                      flag_values=fv)
  flags.DEFINE_enum("dtype", "float32", sorted(verify_lib.DEFAULT_ATOL),
                    "Parameter (and compute) dtype of the converted model.", flag_values=fv)
  flags.DEFINE_string("verify", None, "Folder with inputs.npz / expected.npz to check against.", flag_values=fv)
  flags.DEFINE_float("atol", None, f"Max |diff| for --verify (default per dtype: {verify_lib.DEFAULT_ATOL}).",
                     flag_values=fv)
  flags.DEFINE_bool("no_scan_layers", False, "Unstacked layer params (layer_{i}); must match the experiment's "
                    "model.scan_layers.", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder.", flag_values=fv)


def run(f: flags.FlagValues) -> int:
  try:
    cfg, _ = convert(f.arch, f.hf_dir, f.out, f.dtype, verify_dir=f.verify, atol=f.atol,
                     scan_layers=not f.no_scan_layers, overwrite=f.overwrite)
  except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {f.out}: {f.arch} ({cfg.arch}), {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}, params {cfg.param_dtype}")
  return 0


def main(argv: Sequence[str]) -> int:
  """The CLI on `argv` (without the program name); returns the exit status."""
  return cli.main_with_fresh_flags("wavalign_jax.convert", define_flags, run, argv)


if __name__ == "__main__":
  cli.run_as_script(define_flags, run)
