r"""Evaluation entry point: generate benchmark responses with a checkpoint, save them, score them offline.

  python -m wavalign_jax.evaluate --config=experiments/vita.py:boost --checkpoint=/ckpt/vita_boost_jax \
      --suite=voicebench --data=/data/voicebench_codes --workdir=/evals/vita_boost \
      --judge_base_url=https://api.openai.com/v1 --judge_api_key_env=OPENAI_API_KEY
  python -m wavalign_jax.evaluate --config=experiments/vita.py:tiny --checkpoint=/tmp/vita_tiny \
      --suite=testbed --workdir=/tmp/vita_tiny_eval

--checkpoint is a converted checkpoint, a training work directory or one of its checkpoints
(model_loading.py says how each is read).

Writes WORKDIR/responses-<suite>.jsonl (id, subset, benchmark fields, text, audio_codes) and
WORKDIR/report-<suite>.md, and prints one line per subset. --skip_generation re-scores the saved
responses without loading the model. Judge flags are those of `python -m wavalign_jax.evaluation.score`.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import ml_collections as mlc
from absl import app, flags
from ml_collections import config_flags

from wavalign_jax import cli, log_setup
from wavalign_jax import tokenizer as tokenizer_lib
from wavalign_jax.evaluation import generate, score
from wavalign_jax.model_loading import LoadedModel, load_model
from wavalign_jax.rewards import llm_judge
from wavalign_jax.rollout import decode

SUITES = score.BENCHMARKS


def generate_responses(model: LoadedModel, config: mlc.ConfigDict, suite: str, data: str | None, out_path: str, *,
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
                               rng=jax.random.PRNGKey(seed), mesh=model.mesh)
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
