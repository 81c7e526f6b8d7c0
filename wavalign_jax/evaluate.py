r"""Evaluation entry point: generate benchmark responses with a checkpoint, save them, score them offline.

  python -m wavalign_jax.evaluate --config=experiments/vita.py:boost --checkpoint=/ckpt/vita_boost_jax \
      --suite=voicebench --data=/data/voicebench_codes --workdir=/evals/vita_boost \
      --judge_base_url=https://api.openai.com/v1 --judge_api_key_env=OPENAI_API_KEY
  python -m wavalign_jax.evaluate --config=experiments/vita.py:tiny --checkpoint=/tmp/vita_tiny \
      --suite=testbed --workdir=/tmp/vita_tiny_eval

--checkpoint is a converted checkpoint (DIR/params + DIR/model_config.json, tokenizer in DIR/hf/), a
training work directory (its latest step), WORKDIR/checkpoints or WORKDIR/checkpoints/<step>. A
training checkpoint holds only the train state: the model config and tokenizer are those of the
checkpoint the run started from, --config.init_checkpoint when set, else the testbed run's
WORKDIR/base_model. Testbed configs (`:tiny`) take the tokenizer and the eval split from the run's
WORKDIR/testbed/jsonl (for a converted checkpoint folder, its parent is taken as the run).

Writes WORKDIR/responses-<suite>.jsonl (id, subset, benchmark fields, text, audio_codes) and
WORKDIR/report-<suite>.md, and prints one line per subset. --skip_generation re-scores the saved
responses without loading the model. Judge flags are those of `python -m wavalign_jax.evaluation.score`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections as mlc
import tokenizers
from absl import app, flags
from jax.sharding import Mesh
from ml_collections import config_flags

from wavalign_jax import checkpointing, cli, log_setup, models, sharding
from wavalign_jax import tokenizer as tokenizer_lib
from wavalign_jax.data import build as build_lib
from wavalign_jax.evaluation import generate, score, testbed
from wavalign_jax.testbed import base_model, unit_tts
from wavalign_jax.testbed import vocab as testbed_vocab
from wavalign_jax.export import resolve_checkpoint
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.rewards import llm_judge
from wavalign_jax.rollout import decode

SUITES = ("voicebench", "openaudiobench", "vstyle", "testbed")


@dataclasses.dataclass
class EvalModel:
  params: Any
  model_cfg: ModelConfig
  builder: build_lib.Builder       # lays out prompts with the model's tokenizer
  tokenizer: tokenizers.Tokenizer
  model_dir: str                   # where the model config (and tokenizer) came from
  mesh: Mesh                       # the params' mesh (config.mesh); sampling runs on it
  testbed_eval: str | None = None  # the folder of the testbed eval splits (JSONL) for testbed configs


def _model_dir(checkpoint: str, config: mlc.ConfigDict) -> tuple[str, str | None, str, str | None]:
  """-> (params item folder, key of the params inside it, model config dir, training run dir or None)."""
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
  item, key = resolve_checkpoint(checkpoint)
  if key is None:
    return item, key, checkpoint, None
  run_dir = os.path.dirname(os.path.dirname(os.path.dirname(item)))   # RUN/checkpoints/<step>/state
  model_dir = config.init_checkpoint or base_model.path(run_dir)
  if not os.path.exists(os.path.join(model_dir, "model_config.json")):
    raise FileNotFoundError(
        f"{checkpoint} is a training checkpoint, which stores no model config; it is taken from the checkpoint "
        f"the run started from, but {model_dir}/model_config.json does not exist. Pass "
        "--config.init_checkpoint=<the converted checkpoint of the run> (testbed runs keep theirs in "
        "WORKDIR/base_model)")
  return item, key, model_dir, run_dir


def _testbed_files(config: mlc.ConfigDict, run_dir: str | None, checkpoint: str) -> tuple[str, str]:
  """(tokenizer.json, folder of the eval JSONL splits) of a testbed run: config.testbed.dir or RUN/testbed, RUN
  being the training work dir or the parent of a converted checkpoint folder (the run's base_model)."""
  run_dir = run_dir or os.path.dirname(os.path.abspath(checkpoint))
  root = os.path.join(config.testbed.get("dir") or os.path.join(run_dir, "testbed"), "jsonl")
  for name in ("tokenizer.json", "eval"):
    if not os.path.exists(os.path.join(root, name)):
      raise FileNotFoundError(
          f"{os.path.join(root, name)} not found: testbed checkpoints are evaluated on their run's testbed data "
          f"(written by the training run, or by `python -m wavalign_jax.testbed.generate --out={root}`)")
  return os.path.join(root, "tokenizer.json"), os.path.join(root, "eval")


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


def load_model(checkpoint: str, config: mlc.ConfigDict) -> EvalModel:
  """Parameters, model config and prompt builder for `checkpoint` (see the module docstring)."""
  item, key, model_dir, run_dir = _model_dir(checkpoint, config)
  model_cfg, meta = checkpointing.load_model_config(model_dir)
  model_cfg = model_cfg.with_runtime_fields(config.model, evaluation=True)
  if model_cfg.arch != config.model.arch:
    raise ValueError(f"{model_dir} holds a {model_cfg.arch!r} model but --config is for {config.model.arch!r}")
  testbed_eval = None
  if config.data.source == "testbed":
    tokenizer, testbed_eval = _testbed_files(config, run_dir, checkpoint)
  else:
    tokenizer = os.path.join(model_dir, "hf", "tokenizer.json")
    if not os.path.exists(tokenizer):
      raise FileNotFoundError(f"{tokenizer} not found: {model_dir} must be a checkpoint written by "
                              "`python -m wavalign_jax.convert` (it keeps the Hugging Face tokenizer under hf/)")
  builder = _builder(config, model_cfg, tokenizer, meta)
  if builder.vocab.vocab_size > model_cfg.vocab_size:
    raise ValueError(f"{tokenizer}: vocabulary of {builder.vocab.vocab_size} ids does not fit the model's "
                     f"{model_cfg.vocab_size} embedding rows ({model_dir})")
  mesh = sharding.config_mesh(config.mesh)
  return EvalModel(params=_load_params(item, key, model_cfg, mesh, model_dir), model_cfg=model_cfg,
                   builder=builder, tokenizer=builder.tok, model_dir=model_dir, mesh=mesh, testbed_eval=testbed_eval)


def generate_responses(model: EvalModel, config: mlc.ConfigDict, suite: str, data: str | None, out_path: str, *,
                       batch_size: int, temperature: float, top_p: float, max_new_tokens: int,
                       max_examples: int, seed: int) -> int:
  """Generates one response per benchmark record into `out_path`; returns the number of records."""
  data = data or (model.testbed_eval if suite == "testbed" else None)
  if not data:
    raise ValueError(f"--suite={suite} needs --data: a JSONL file (or a directory of them) with the benchmark's "
                     "records (messages, audios as code lists / code files, id, subset, benchmark fields)")
  records = generate.load_prompts(data, default_subset="testbed" if suite == "testbed" else None)
  if max_examples:
    records = records[:max_examples]
  prompts = generate.layout_prompts(records, model.builder)
  sampling = generate.eval_sampling(decode.sampling_config(config.rollout, config.layout, model.builder.vocab,
                                                                model.model_cfg.num_mtp_modules),
                                    temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
  contents = generate.generate(model.params, model.model_cfg, sampling, prompts, batch_size=batch_size,
                               pad_id=model.builder.vocab.pad, rng=jax.random.PRNGKey(seed), mesh=model.mesh)
  generate.write_responses(out_path, generate.response_records(
      records, [tokenizer_lib.decode_text(model.tokenizer, t) for t, _ in contents], [c for _, c in contents]))
  return len(records)


def run(config: mlc.ConfigDict, *, checkpoint: str, suite: str, workdir: str, data: str | None = None,
        batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 0,
        max_examples: int = 0, skip_generation: bool = False, judge: llm_judge.JudgeSettings | None = None,
        judge_model: str | None = None, decoder: llm_judge.AudioDecoder | None = None, seed: int = 0) -> list[str]:
  """Generates (unless `skip_generation`) and scores one suite; returns and prints the summary lines."""
  if suite not in SUITES:
    raise ValueError(f"--suite={suite!r}: choose one of {list(SUITES)}")
  responses = os.path.join(workdir, f"responses-{suite}.jsonl")
  if skip_generation:
    if not os.path.exists(responses):
      raise FileNotFoundError(f"--skip_generation: {responses} does not exist; run once without it to generate")
  else:
    model = load_model(checkpoint, config)
    n = generate_responses(model, config, suite, data, responses, batch_size=batch_size, temperature=temperature,
                           top_p=top_p, max_new_tokens=max_new_tokens, max_examples=max_examples, seed=seed)
    print(f"{suite}: {n} responses from {checkpoint} -> {responses}", flush=True)
  report_path = os.path.join(workdir, f"report-{suite}.md")
  if suite == "testbed":
    lines = testbed.score_file(responses, report_path)
  else:
    lines = score.score_file(suite, responses, report_path, judge=judge, judge_model=judge_model, decoder=decoder,
                             seed=seed)
  for line in lines:
    print(line, flush=True)
  return lines


def define_flags() -> None:
  """Flags of the CLI (defined on demand: train.py owns --config / --workdir when both are imported)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. experiments/vita.py:boost.",
                                  lock_config=True)
  flags.DEFINE_string("checkpoint", None, "Converted checkpoint, training work dir or step folder.")
  flags.DEFINE_string("suite", None, f"One of {', '.join(SUITES)}.")
  flags.DEFINE_string("data", None, "Benchmark JSONL file or directory (testbed: default eval split).")
  flags.DEFINE_string("workdir", None, "Output directory: responses-<suite>.jsonl, report-<suite>.md.")
  flags.DEFINE_integer("batch_size", 8, "Prompts per sampler call.")
  flags.DEFINE_float("temperature", 0.0, "Sampling temperature of every stream (0 = greedy).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold (1 = off).")
  flags.DEFINE_integer("max_new_tokens", 0, "Response length cap (0 = config.rollout.max_new_tokens).")
  flags.DEFINE_integer("max_examples", 0, "Evaluate only the first N records (0 = all).")
  flags.DEFINE_bool("skip_generation", False, "Re-score WORKDIR/responses-<suite>.jsonl without the model.")
  score.define_judge_flags()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.suite or not f.workdir or (not f.skip_generation and (f.config is None or not f.checkpoint)):
    raise app.UsageError("--suite and --workdir are required, and --config and --checkpoint unless --skip_generation")
  print(f"logs (absl / Orbax INFO and above): {log_setup.quiet_logs(f.workdir, 'evaluate')}", flush=True)
  judge, decoder = score.judge_from_flags(os.path.join(f.workdir, "judge_cache"))
  run(f.config, checkpoint=f.checkpoint, suite=f.suite, workdir=f.workdir, data=f.data, batch_size=f.batch_size,
      temperature=f.temperature, top_p=f.top_p, max_new_tokens=f.max_new_tokens, max_examples=f.max_examples,
      skip_generation=f.skip_generation, judge=judge, judge_model=f.judge_model, decoder=decoder, seed=f.seed)


if __name__ == "__main__":
  cli.run(main, define_flags)
