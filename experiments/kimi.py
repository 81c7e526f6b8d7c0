r"""Kimi-Audio (parallel text and audio streams, shared trunk, MIMO audio branch) with WavAlign's hybrid.

Real recipe (default), sized for one TPU v5p-64 slice / 8x H100 (bf16, FSDP over all chips):
  python -m wavalign_jax.convert --arch=kimi_audio --hf_dir=/ckpt/Kimi-Audio-7B-Instruct --out=/ckpt/kimi_jax
  python -m wavalign_jax.train --config=experiments/kimi.py \
      --config.init_checkpoint=/ckpt/kimi_jax --config.data.train=/data/wavalign_rl_kimi \
      --workdir=/runs/kimi_hybrid
  2000 steps x 8 prompts x 4 rollouts; about a day on 8x H100 (rollout-bound).
  "Text tokens" are the text-stream positions, "speech tokens" the audio-stream positions.

Built-in testbed (no weights, no data; CPU, about 9 minutes on 2 cores with nothing else running):
  python -m wavalign_jax.train --config=experiments/kimi.py:tiny --workdir=/tmp/kimi_tiny
  The synthetic spoken-QA task (docs/testbed.md), a tiny base model SFT-trained for 1000 steps, then 1600 hybrid
  steps (the parallel layout's RL learns more slowly than VITA's: docs/testbed.md "The budget"); IQ / EQ (every
  eval row, 95% CIs) before and after. Expected: seed 0, which this command runs, IQ 0.276 -> 0.279, EQ 0.792 ->
  0.811 (measured at 811ea3f). The study's hybrid runs at a7946fa (means of seeds 0-2; a base model numerically
  different since 1efb0d6, and the style score before its fix): IQ 0.342 -> 0.335, EQ 0.797 -> 0.830.
  `python -m wavalign_jax.study` compares methods.

Variants after ':' (comma separated): size `tiny`; a method from wavalign_jax/config_lib.py METHODS.
"""
import ml_collections as mlc

from wavalign_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  variant = config_lib.parse_variant(arg, {"size": {"tiny"}, "method": set(config_lib.METHODS)})
  c = config_lib.base_config()

  # --- Model -----------------------------------------------------------------------------------
  c.model = mlc.ConfigDict(dict(arch="parallel", dtype="bfloat16", param_dtype="float32", remat="full",
                                scan_layers=True, logprob_chunk=64,   # x every row of a data shard: README memory
                                logprob_keep_logits=False,   # True: the backward reuses the logits (README)
                                attention_impl="xla", attention_block=64))
  c.layout = mlc.ConfigDict(dict(audio_delay=6))

  # --- Rollouts: Kimi's upstream per-stream sampling (audio T=0.8 top-k 10, text greedy) -------
  c.rollout.text_temperature = 0.7      # RL needs text diversity; upstream inference uses greedy text
  c.rollout.text_top_p = 0.9
  c.rollout.audio_temperature = 0.8
  c.rollout.audio_top_k = 10
  c.rollout.audio_top_p = 1.0

  # --- Objective: Kimi upstream SFT is text CE + audio CE, each a mean over its own stream ---
  c.sft.aggregation = "stream_mean"

  # --- Data ------------------------------------------------------------------------------------
  c.data.source = "arrayrecord"

  # The method first, then the size: make_tiny scales the method's own settings (e.g. DPO's learning rate).
  config_lib.apply_method(c, variant.get("method", "hybrid"))
  if variant.get("size") == "tiny":
    config_lib.make_tiny(c)
    # The parallel layout learns to speak the answer more slowly: 1000 steps give about VITA's 400-step base
    # (IQ 0.34 / EQ 0.80 against 0.39 / 0.82, means of seeds 0-2 in the studies), i.e. similar headroom.
    c.testbed.base_sft_steps = 1000
  return c
