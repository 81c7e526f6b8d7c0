r"""Look at a model's outputs: sample responses to text prompts or to dataset records, print text and audio codes.

  python -m wavalign_jax.generate --config=experiments/vita.py:tiny --checkpoint=/tmp/vita_tiny \
      --prompt="what is 2 plus 3" --prompt="say hello"
  python -m wavalign_jax.generate --config=experiments/kimi.py --checkpoint=/ckpt/kimi_jax \
      --data=/data/voicebench/commoneval.jsonl --max_examples=4 --temperature=0.8 --config.rollout.decode=main

--checkpoint is anything `python -m wavalign_jax.evaluate` takes: a training work directory (its latest step),
WORKDIR/checkpoints[/<step>] or a converted checkpoint; without it, --config.init_checkpoint. --prompt is a
user turn of text; --data a JSONL file (or folder of them) of WavAlign records (`messages`, `audios`, `id`), e.g.
a benchmark or a testbed split. Sampling is greedy unless --temperature > 0; the head is the config's
`rollout.decode` (auto: MCTP when the model has MCTP modules). --out also writes the responses JSONL (the
schema `python -m wavalign_jax.evaluation.score` reads).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import ml_collections as mlc
from absl import app, flags
from ml_collections import config_flags

from wavalign_jax import cli, log_setup, model_loading
from wavalign_jax import tokenizer as tokenizer_lib
from wavalign_jax.evaluation import generate as generate_lib
from wavalign_jax.rollout import decode


def prompt_records(prompts: Sequence[str], data: str | None, max_examples: int) -> list[dict[str, Any]]:
  """Records to answer: one user turn per text prompt, then the records of `data` (the first `max_examples`)."""
  records = [{"id": f"prompt_{i}", "subset": "prompt", "messages": [{"role": "user", "content": text}],
              "_where": f"--prompt #{i + 1}", "_base_dir": os.getcwd()} for i, text in enumerate(prompts)]
  if data:
    from_data = generate_lib.load_prompts(data, default_subset="data")
    records += from_data[:max_examples] if max_examples else from_data
  if not records:
    raise app.UsageError("nothing to answer: pass --prompt=TEXT (repeatable) or --data=JSONL")
  return records


def run(config: mlc.ConfigDict, *, checkpoint: str | None, prompts: Sequence[str] = (), data: str | None = None,
        max_examples: int = 0, batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0,
        max_new_tokens: int = 0, seed: int = 0, out: str | None = None) -> list[dict[str, Any]]:
  """Responses (the benchmark fields of each record plus `text` and `audio_codes`) of the model at
  `checkpoint` (default: config.init_checkpoint); `out` also gets them as JSONL."""
  records = prompt_records(prompts, data, max_examples)
  checkpoint = checkpoint or config.init_checkpoint
  if not checkpoint:
    raise app.UsageError("--checkpoint is required (or --config.init_checkpoint)")
  model = model_loading.load_model(checkpoint, config)
  sampling = generate_lib.eval_sampling(
      decode.sampling_config(config.rollout, config.layout, model.builder.vocab, model.model_cfg.num_mtp_modules),
      temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
  contents = generate_lib.generate(model.params, model.model_cfg, sampling,
                                   generate_lib.layout_prompts(records, model.builder), batch_size=batch_size,
                                   rng=jax.random.PRNGKey(seed), mesh=model.mesh)
  responses = generate_lib.response_records(
      records, [tokenizer_lib.decode_text(model.tokenizer, t) for t, _ in contents], [c for _, c in contents])
  if out:
    generate_lib.write_responses(out, responses)
  how = "greedy" if temperature == 0 else f"temperature {temperature:g}, top_p {top_p:g}, seed {seed}"
  print(f"{checkpoint}: {sampling.decode} head, {how}, at most {sampling.max_new_tokens} new tokens", flush=True)
  for record, response in zip(records, responses):
    codes = response["audio_codes"]
    print(f"\n[{record['id']}] {record['_where']}\n  text : {response['text']}\n"
          f"  audio: {len(codes)} codes {' '.join(map(str, codes))}", flush=True)
  return responses


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. experiments/vita.py:tiny.",
                                  lock_config=True)
  flags.DEFINE_string("checkpoint", None, "Training work dir, step folder or converted checkpoint (default: "
                      "--config.init_checkpoint).")
  flags.DEFINE_multi_string("prompt", [], "A user turn of text to answer (repeatable).")
  flags.DEFINE_string("data", None, "JSONL file or folder of WavAlign records (messages, audios, id) to answer.")
  flags.DEFINE_integer("max_examples", 0, "Answer only the first N records of --data (0 = all).")
  flags.DEFINE_integer("batch_size", 8, "Prompts per sampler call.")
  flags.DEFINE_float("temperature", 0.0, "Sampling temperature of every stream (0 = greedy).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold (1 = off).")
  flags.DEFINE_integer("max_new_tokens", 0, "Response length cap (0 = config.rollout.max_new_tokens).")
  flags.DEFINE_integer("seed", 0, "Sampling seed (with --temperature > 0).")
  flags.DEFINE_string("out", None, "Also write the responses JSONL here.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if f.config is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/vita.py:tiny")
  log_setup.quiet_stderr()
  run(f.config, checkpoint=f.checkpoint, prompts=f.prompt, data=f.data, max_examples=f.max_examples,
      batch_size=f.batch_size, temperature=f.temperature, top_p=f.top_p, max_new_tokens=f.max_new_tokens,
      seed=f.seed, out=f.out)


if __name__ == "__main__":
  cli.run(main, define_flags)
