"""Shared pieces of the experiment configs: the default sections and the table of training methods.

`experiments/vita.py` and `experiments/kimi.py` build a ConfigDict from these and pick variants from
the string after ':' (e.g. `--config=experiments/vita.py:tiny,rl_text`). Every field can then be
overridden with absl flags (`--config.rollout.group_size=8`).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import sys
from typing import Any, Iterable

import ml_collections as mlc

from wavalign_jax import sharding
from wavalign_jax.errors import ConfigError  # noqa: F401  (config_lib.ConfigError: where configs are made)
from wavalign_jax.objectives import DPOConfig, GateConfig, GRPOConfig, SFTConfig
from wavalign_jax.optim import OptimConfig
from wavalign_jax.rewards.llm_judge import FALLBACK_SCORE, JudgeSettings

# The LLM judge's settings (rewards/llm_judge.JudgeSettings) a run's `reward` section carries.
JUDGE_FIELDS = ("base_url", "model", "api_key_env", "timeout_s", "max_retries", "max_in_flight")

# Each training method of the paper is a small patch of config fields.
#   lambda = 0: SFT only; lambda = 1: RL only; "fixed": constant lambda; "dynamic": the gated EMA.
METHODS: dict[str, dict[str, object]] = {
    # The WavAlign recipe: text-token GRPO + SFT anchor, gated dynamic lambda.
    "hybrid": {"gate.mode": "dynamic", "rl.token_set": "text"},
    "base": {"train.total_steps": 0},                                     # no training, evaluate only
    "sft": {"gate.mode": "sft_only"},
    "rl_text": {"gate.mode": "rl_only", "rl.token_set": "text"},
    "rl_full": {"gate.mode": "rl_only", "rl.token_set": "all"},
    # The study's positive control: rl_text with a noiseless reward (1 where IQ is 1, else 0). When it
    # does not beat `base`, the budget is too small for RL to learn and no RL claim can be decided.
    "rl_text_exact": {"gate.mode": "rl_only", "rl.token_set": "text", "reward.kind": "exact_match"},
    "dpo_text": {"objective": "dpo", "dpo.token_set": "text", "optim.learning_rate": 5e-6},
    "dpo_full": {"objective": "dpo", "dpo.token_set": "all", "optim.learning_rate": 5e-6},
    # Two stages in one run: SFT for the first half of the steps, then text-token RL.
    "two_stage": {"gate.mode": "rl_only", "rl.token_set": "text", "train.sft_stage_fraction": 0.5},
    # Fixed mixes (gating off); fixed_lambda is the RL weight.
    "fixed_balance": {"gate.mode": "fixed", "gate.fixed_lambda": 0.7},
    "fixed_boost": {"gate.mode": "fixed", "gate.fixed_lambda": 0.8},
    "fixed_plus_vanilla": {"gate.mode": "fixed", "gate.fixed_lambda": 0.5},
    # Ablations of the paper.
    "ablate_all_fixed_0.5": {"gate.mode": "fixed", "gate.fixed_lambda": 0.5, "rl.token_set": "all"},
    "ablate_text_fixed_0.5": {"gate.mode": "fixed", "gate.fixed_lambda": 0.5, "rl.token_set": "text"},
    "ablate_text_fixed_0.3": {"gate.mode": "fixed", "gate.fixed_lambda": 0.3, "rl.token_set": "text"},
    "ablate_all_dynamic": {"gate.mode": "dynamic", "rl.token_set": "all"},
    "ablate_text_dynamic_no_ema": {"gate.mode": "dynamic_no_ema", "rl.token_set": "text"},
    # Advantages scaled by the batch's reward std (Dr. GRPO) instead of each group's: a group whose rewards
    # differ only by judge noise no longer gets full-size advantages.
    "ablate_text_dynamic_batch_std": {"gate.mode": "dynamic", "rl.token_set": "text", "rl.advantage_scale": "batch"},
}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
  """'did you mean X? ' for the nearest of `choices` to a misspelled `word`, else ''."""
  near = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
  return f"did you mean {near[0]!r}? " if near else ""


def parse_variant(arg: str | None, known: dict[str, set[str]]) -> dict[str, str]:
  """Parses 'tiny,rl_text' or 'size=tiny,method=rl_text' into {group: value} using the `known` table.

  A misspelled variant raises ConfigError with the nearest valid one (':tiny,hybird' -> 'hybrid')."""
  choices = "; ".join(f"{g}: {', '.join(sorted(v))}" for g, v in known.items())
  out: dict[str, str] = {}
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    if "=" in token:
      group, value = token.split("=", 1)
      if group not in known:
        raise ConfigError(f"config variant {token!r}: {did_you_mean(group, known)}groups are {sorted(known)}")
    else:
      groups = [g for g, values in known.items() if token in values]
      if len(groups) != 1:
        raise ConfigError(f"config variant {token!r}: {did_you_mean(token, set().union(*known.values()))}"
                          f"choose from {choices}")
      group, value = groups[0], token
    if value not in known[group]:
      raise ConfigError(f"config variant {token!r}: {did_you_mean(value, known[group])}"
                        f"choose a {group} from {sorted(known[group])}")
    if group in out:
      raise ConfigError(f"config variants {out[group]!r} and {value!r} both set the {group}; give one")
    out[group] = value
  return out


def padded_lengths(data: mlc.ConfigDict) -> tuple[int, int]:
  """The loader's padded lengths: the prompt alone and prompt + response (the longest example a run loads)."""
  return (data.max_prompt_len, data.max_prompt_len + data.max_response_len)


def sft_stage_steps(config: mlc.ConfigDict) -> int:
  """The steps of the SFT stage (`train.sft_stage_fraction` of the budget; two-stage): RL batches start after it."""
  return int(round(config.train.sft_stage_fraction * config.train.total_steps))


def with_variant(config_spec: str, variant: str) -> str:
  """A config file spec with one more variant: ("experiments/vita.py:tiny", "hybrid") -> "...vita.py:tiny,hybrid"."""
  path, _, variants = config_spec.partition(":")
  return f"{path}:{','.join(filter(None, [variants, variant]))}"


def samples_rollouts(config: mlc.ConfigDict) -> bool:
  """Whether training draws rollouts: GRPO compares the `rollout.group_size` rollouts of each prompt."""
  return config.objective != "dpo" and config.gate.mode != "sft_only" and config.train.total_steps > 0


def calls_reward(config: mlc.ConfigDict) -> bool:
  """Whether the run calls its reward (`reward.kind`): to score rollouts, or to evaluate `data.eval` on built
  datasets (the testbed's evaluator scores IQ / EQ itself)."""
  return samples_rollouts(config) or (config.data.source == "arrayrecord" and bool(config.data.eval))


def apply_method(config: mlc.ConfigDict, method: str) -> None:
  if method not in METHODS:
    raise ConfigError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
  config.method = method
  for dotted, value in METHODS[method].items():
    set_field(config, dotted, value)


def get_field(config: mlc.ConfigDict, dotted: str) -> Any:
  """The value of a dotted field ("rl.token_set")."""
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def set_field(config: mlc.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  (get_field(config, ".".join(parents)) if parents else config)[leaf] = value


def has_field(config: mlc.ConfigDict, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, mlc.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def _section(defaults: Any) -> mlc.ConfigDict:
  """A config section of a config dataclass's fields with its defaults: a default is written once, there."""
  return mlc.ConfigDict(dataclasses.asdict(defaults))


def base_config() -> mlc.ConfigDict:
  """The reference recipe (docs/method.md §1) with every section; experiments fill in model and data."""
  c = mlc.ConfigDict()
  c.method = "hybrid"
  c.objective = "hybrid"            # "hybrid" | "dpo"
  c.seed = 0
  c.init_checkpoint = ""            # converted Orbax checkpoint (python -m wavalign_jax.convert)

  # --- Model -----------------------------------------------------------------------------------
  c.model = mlc.ConfigDict()        # ModelConfig fields; overwritten by init_checkpoint's model_config.json

  # --- Data ------------------------------------------------------------------------------------
  c.data = mlc.ConfigDict()
  c.data.train = ""                 # a dataset directory built by data_pipeline.build (with dataset_info.json)
  c.data.eval = ""
  c.data.prompts_per_step = 8       # P: prompts per step; the RL batch has P * group_size rows
  c.data.max_prompt_len = 512
  c.data.max_response_len = 1024
  c.data.shuffle_seed = 0
  c.data.num_epochs = 0             # 0 = repeat forever
  c.data.worker_count = 0           # Grain worker processes (0 = in-process)

  # --- Rollouts --------------------------------------------------------------------------------
  c.rollout = mlc.ConfigDict()
  c.rollout.group_size = 4
  c.rollout.temperature = 0.7
  c.rollout.top_p = 0.9
  c.rollout.top_k = 0
  c.rollout.max_new_tokens = 1024
  c.rollout.constrained = True         # False: upstream-style free decoding (malformed rollouts counted)
  # "auto": MCTP decoding where the model has MCTP modules (VITA-Audio, as upstream), else the main head;
  # "main": every token from the main head (on-policy for every token, e.g. for full-token RL); "mctp".
  c.rollout.decode = "auto"
  c.rollout.mctp_schedule = ()         # [M1, m1, ...]; () = the layout's ratio list (upstream's choice)
  # The RL batch is cut to the longest rollout rounded up to one of this many lengths (compiled shapes);
  # 1 = always the full prompt + max_new_tokens (one compilation: best when compiling dominates, e.g. tiny runs).
  c.rollout.length_buckets = 8
  # The decode loop grows its completion KV cache in this many steps (one more compiled loop body each), so
  # a token attends to about what has been written, not a max_new_tokens cache; 1 = one static cache.
  c.rollout.cache_windows = 4
  # On a mesh with FSDP, gather the weights once per rollout call instead of at every decode token (the 7B roofline:
  # decoding is bound by that per-token all-gather, docs/performance.md). Memory: a compute-dtype copy of the
  # weights per device (divided over the tensor axis) during rollouts; off where that does not fit (40 GB devices).
  c.rollout.gather_weights = False

  # --- Reward ----------------------------------------------------------------------------------
  c.reward = mlc.ConfigDict()
  c.reward.kind = "llm_judge"        # "llm_judge" | "testbed" | "exact_match"
  judge = JudgeSettings()            # the judge's settings a run may set (the LLM judge's defaults)
  c.reward.update({f: getattr(judge, f) for f in JUDGE_FIELDS})
  c.reward.fallback_score = FALLBACK_SCORE   # a failed judge call's score (the reference's middle of 1-5)
  # The judge hears the answer: an external command (codes as JSON on stdin, a 24 kHz WAV on stdout) or HTTP
  # endpoint (the same JSON POSTed) that decodes audio codes; at most one. Unset: the judge reads the transcript only.
  c.reward.decoder_command = ""
  c.reward.decoder_url = ""
  c.reward.decoder_timeout_s = 120.0
  c.reward.max_failed_fraction = 0.2   # above this fraction of failed judge calls in one step, stop the run
  c.reward.exclude_failed = False      # keep failed items out of the gate statistics and the advantages
  c.reward.cache_dir = ""              # default WORKDIR/judge_cache

  # --- Objective: the fields and defaults of objectives.SFTConfig / GRPOConfig / DPOConfig / GateConfig ----
  c.sft = _section(SFTConfig())
  c.rl = _section(GRPOConfig())
  c.dpo = _section(DPOConfig())
  c.gate = _section(GateConfig())

  # --- Optimizer: optim.OptimConfig's fields and defaults (AdamW, docs/method.md §1), but its total_steps: the
  # cosine decays over train.total_steps ----------------------------------------------------------------------
  c.optim = _section(OptimConfig())
  del c.optim["total_steps"]

  # --- Training loop ---------------------------------------------------------------------------
  c.train = mlc.ConfigDict()
  c.train.total_steps = 2000
  c.train.stop_at_step = 0             # > 0: exit cleanly (checkpointed) at this step; rerun to continue
  c.train.microbatches = 1             # gradient accumulation: the step's batch in this many sequential pieces
  c.train.max_consecutive_skips = 5    # stop after this many non-finite steps in a row (each is skipped); 0 = never
  c.train.allow_config_change = False  # resume although experiment fields changed (kept as config.<step>.json)
  c.train.sft_stage_fraction = 0.0     # two-stage baseline: fraction of steps trained with SFT only
  c.train.log_every = 1
  c.train.checkpoint_every = 50
  c.train.keep_checkpoints = 3
  c.train.checkpoint_every_minutes = 0.0   # > 0: also checkpoint once this many minutes passed since the last one
  # Where the CLI keeps XLA's compiled programs across launches (a path on a shared filesystem or a bucket): a
  # restarted or preempted job then skips its compiles (the 7B step's took 4 minutes on an H200 host). "" = off.
  c.train.compilation_cache_dir = ""
  c.train.eval_every = 0               # 0 = evaluate only before and after training
  c.train.eval_before = True           # False: skip the evaluation before training (studies evaluate `base` once)
  c.train.eval_examples = 64           # eval rows per evaluation; 0 = every row of every eval set
  c.train.eval_batch_size = 16         # rows per eval sampler call (at most eval_examples)
  c.train.analysis_every = 0           # > 0: log the text/speech gradient geometry (docs: analysis/) every N steps
  c.train.analysis_minibatches = 2     # mini-batches of prompt groups for its SNR
  c.train.profile_steps = 0            # > 0: trace this many steps with JAX's profiler into WORKDIR/profile
  c.train.profile_start_step = 5       # tracing begins after this step (its first steps' compilations done)

  # --- Parallelism -----------------------------------------------------------------------------
  # FSDP over every device by default (a 7B model with AdamW state does not fit replicated);
  # e.g. (2, -1, 1) adds data parallelism across 2 groups, (1, -1, 4) tensor parallelism.
  # num_devices > 0: the mesh over the first N devices only (one process; debugging, the unit tests).
  c.mesh = mlc.ConfigDict(dict(shape=(1, -1, 1), axes=sharding.MESH_AXES, num_devices=0))
  return c


# The testbed's tiny model trains at 100x the 7B recipe's learning rates; every method keeps its own rate
# relative to the others (hybrid / RL / SFT 1e-6 -> 1e-4, DPO 5e-6 -> 5e-4).
TINY_LR_SCALE = 100.0
# Post-training steps of a testbed run, per architecture: the budget at which text-token RL with a noiseless reward
# (the study's positive control, `rl_text_exact`) measurably raises IQ over 3 seeds; at 200 it did not anywhere, and
# the parallel layout learns more slowly (docs/testbed.md "The budget": the learning curves).
TINY_STEPS = {"interleaved": 600, "parallel": 1600}


def make_tiny(c: mlc.ConfigDict) -> None:
  """The CPU testbed: a tiny model SFT-trained on the synthetic spoken-QA task, then post-trained.

  Apply the method (`apply_method`) before this: learning rates are scaled, not overwritten."""
  # attention_block=0: a testbed sequence (<= 80 tokens) is one block; blocks would only add compile time.
  c.model.update(dict(hidden_size=128, intermediate_size=256, num_layers=3, num_heads=4, num_kv_heads=2,
                      head_dim=32, dtype="float32", remat="none", logprob_chunk=72, attention_block=0))
  if c.model.arch == "interleaved":
    c.model.num_mtp_modules = 1
  else:
    c.model.update(dict(mimo_from_layer=1, num_mimo_layers=1))
    c.layout.audio_delay = 2
  c.data.source = "testbed"
  c.data.prompts_per_step = 8
  # Prompts are <= 35 tokens. The longest response is a hedged 4-number count in a slow voice with every word
  # held: 25 audio codes, 5 words and the layout's markers: 38 tokens interleaved (Balance), 28 parallel
  # (tests/test_testbed.py checks it).
  c.data.max_prompt_len = 40
  c.data.max_response_len = 40 if c.model.arch == "interleaved" else 32
  c.rollout.max_new_tokens = c.data.max_response_len
  # The testbed base model's SFT trains the main head only (as WavAlign does), so its MCTP modules are
  # untrained: decode with the main head. Set rollout.decode=mctp to measure the MCTP path anyway.
  c.rollout.decode = "main"
  # The synthetic task and its premises (docs/testbed.md justifies every default).
  c.testbed = mlc.ConfigDict(dict(
      dir="",                          # where the data is generated and built; "" = WORKDIR/testbed
      seed=0,                          # fact table, splits, question noise, reference realisations
      noise_rate=0.1, eval_style_prob=0.3, heldout_question_prob=0.1,
      base_expressiveness=0.25,        # the base model's corpus speaks with little of each style's prosody
      sft_wrong_fraction=0.3,          # post-training references: speech-good, content-imperfect
      judge_acoustic_weight=0.3,       # share of the holistic judge score that rates the speech
      judge_acoustic_noise=0.5,        # std of the judge's error on the acoustic part (true quality in [0, 1])
      base_sft_steps=400, base_learning_rate=3e-3, base_batch_size=32, base_checkpoint_every=100))
  if c.reward.kind == "llm_judge":   # the testbed's judge replaces the LLM judge; a method's own reward stays
    c.reward.kind = "testbed"
  c.optim.update(dict(learning_rate=c.optim.learning_rate * TINY_LR_SCALE, warmup_steps=5))
  c.rollout.length_buckets = 1       # compiling a step per RL length costs more than the padding saves here
  c.rollout.cache_windows = 1        # likewise a loop body per cache size, for completions of <= 40 tokens
  # TINY_STEPS of the architecture (capped, so that `base` keeps its 0); every eval row, in big batches.
  c.train.update(dict(total_steps=min(c.train.total_steps, TINY_STEPS[c.model.arch]), checkpoint_every=100,
                      eval_examples=0, eval_batch_size=128))


# ----------------------------------------------------------------------------- command line


def _field_paths(node: mlc.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for key, value in node.items():
    path = f"{prefix}{key}"
    out += _field_paths(value, path + ".") if isinstance(value, mlc.ConfigDict) else [path]
  return out


def nearest_fields(config: mlc.ConfigDict, dotted: str, n: int = 3) -> list[str]:
  """Valid field paths closest to a misspelled `dotted` one (whole path first, then by the last name)."""
  paths = _field_paths(config)
  leaf = dotted.rsplit(".", 1)[-1]
  by_leaf = difflib.get_close_matches(leaf, sorted({p.rsplit(".", 1)[-1] for p in paths}), n=n, cutoff=0.6)
  found = [p for p in paths if p.rsplit(".", 1)[-1] in by_leaf]
  found += difflib.get_close_matches(dotted, paths, n=n, cutoff=0.6)
  return list(dict.fromkeys(found))[:n]


def load_config_file(spec: str) -> mlc.ConfigDict:
  """`path.py[:variant]` -> its get_config(variant), as `--config=` loads it."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_experiment_config", path)
  if module_spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"--config={spec}: no config file {path}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None) if arg else module.get_config()


def unknown_overrides(argv: list[str], flag: str = "config") -> list[str]:
  """Messages for the `--config.a.b=...` arguments of `argv` that name no field of the config."""
  spec = next((a.split("=", 1)[1] if "=" in a else b for a, b in zip(argv, [*argv[1:], None])
               if a.startswith(f"--{flag}=") or a == f"--{flag}"), None)
  if spec is None:
    return []
  config = load_config_file(spec)
  messages = []
  for arg in argv:
    if arg.startswith(f"--{flag}."):
      dotted = arg[len(flag) + 3:].split("=", 1)[0]
      if not has_field(config, dotted):
        near = nearest_fields(config, dotted)
        hint = f"; did you mean {', '.join('--' + flag + '.' + p for p in near)}?" if near else ""
        messages.append(f"{arg.split('=', 1)[0]}: {spec} has no field {dotted!r}{hint}")
  return messages


def flags_parser(argv: list[str]) -> list[str]:
  """absl flags parser for entry points with a config flag: a misspelled field gets a short message naming
  the flag and the nearest valid fields instead of a traceback; `--print_config` is handled by the caller."""
  from absl import flags
  try:
    messages = unknown_overrides(argv[1:])
  except (ConfigError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  if messages:
    sys.exit("error: " + "\n       ".join(messages) + "\n(`--print_config` lists every field)")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --helpfull to see the flags.")
