"""Checks a training config before any work is done.

A mistake in a config must be a one-line message at start-up, not a traceback minutes or hours into a run
(after the testbed's base model has trained, at the first checkpoint, when the loader meets a long record).
`check` raises `config_lib.ConfigError`; the entry points print it as `error: ...` and exit non-zero. It
creates nothing: the work directory is probed with a temporary file that is removed at once.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Sequence

import jax
import ml_collections as mlc

from wavalign_jax import checkpointing, config_lib, optim, sharding, steps
from wavalign_jax.config_lib import ConfigError
from wavalign_jax.data import loader
from wavalign_jax.rollout import decode

# The smallest valid value of each integer size (0 where 0 means "never" / "all" / "no training").
MINIMUM = {
    "data.prompts_per_step": 1, "data.max_prompt_len": 1, "data.max_response_len": 1, "data.num_epochs": 0,
    "data.worker_count": 0, "rollout.group_size": 1, "rollout.max_new_tokens": 1, "rollout.length_buckets": 1,
    "rollout.cache_windows": 1,
    "rl.num_iterations": 1, "train.total_steps": 0, "train.stop_at_step": 0, "train.microbatches": 1,
    "train.log_every": 0, "train.checkpoint_every": 0, "train.keep_checkpoints": 1, "train.eval_every": 0,
    "train.eval_examples": 0, "train.eval_batch_size": 1, "train.analysis_every": 0,
    "train.analysis_minibatches": 1, "train.profile_steps": 0, "train.profile_start_step": 0,
    "testbed.base_sft_steps": 0, "testbed.base_batch_size": 1,
    "testbed.base_checkpoint_every": 0,
}
OBJECTIVES = ("hybrid", "dpo")
REWARD_KINDS = ("llm_judge", "testbed", "exact_match")
DATA_SOURCES = ("testbed", "arrayrecord")


def check(config: mlc.ConfigDict, workdir: str) -> list[str]:
  """Raises ConfigError on the first mistake; returns warnings about settings that work but waste something.
  `train.main` runs it before taking the work directory and prints the warnings; `train.train` (library callers)
  runs it first and logs them."""
  check_sizes(config)
  _check_choices(config)
  optim.validate(optim.optim_config(config))
  check_finite_knobs(config)
  warnings = check_mesh(config) + _profile_warnings(config) + _reward_warnings(config)
  check_data(config)
  check_reward(config)
  check_writable(workdir)
  return warnings


def _reward_warnings(config: mlc.ConfigDict) -> list[str]:
  r = config.reward
  decoder = [f for f in ("decoder_command", "decoder_url") if r.get(f)]
  if decoder and r.kind != "llm_judge":
    return [f"--config.reward.{decoder[0]} is set but --config.reward.kind={r.kind}: only the LLM judge hears the "
            "answer's audio, so the decoder is not used"]
  return []


def _profile_warnings(config: mlc.ConfigDict) -> list[str]:
  t = config.train
  if t.profile_steps and t.profile_start_step >= t.total_steps:
    return [f"--config.train.profile_start_step={t.profile_start_step} is not below --config.train.total_steps="
            f"{t.total_steps}: no step will be profiled"]
  return []


def check_reward(config: mlc.ConfigDict) -> None:
  """An LLM judge the run will call (rollouts, or `data.eval` on built datasets) has its API key in the environment:
  a missing key is found here, not as a traceback when the judge is built; it hears the answer through one audio
  decoder at most."""
  r = config.reward
  if r.get("decoder_command") and r.get("decoder_url"):
    raise ConfigError(f"--config.reward.decoder_command={r.decoder_command!r} and --config.reward.decoder_url="
                      f"{r.decoder_url!r}: the judge's audio comes from one decoder; set one of them")
  if r.kind == "llm_judge" and config_lib.calls_reward(config) and r.api_key_env and r.api_key_env not in os.environ:
    raise ConfigError(f"--config.reward.api_key_env={r.api_key_env}: the environment variable {r.api_key_env} is not "
                      "set (export it, or pass --config.reward.api_key_env='' for a judge server without "
                      "authentication)")


def check_finite_knobs(config: mlc.ConfigDict, sections: Sequence[str] = ("testbed", "reward", "rollout")) -> None:
  """Refuses a NaN / inf in the numbers of the testbed, reward and rollout sections at start-up (a NaN judge noise
  gives NaN rewards for the whole run, a NaN temperature NaN logits; comparisons with NaN pass every range check)."""
  bad = [f"--config.{section}.{key}={value}" for section in sections for key, value in config.get(section, {}).items()
         if isinstance(value, float) and not math.isfinite(value)]
  if bad:
    raise ConfigError(f"not a finite number: {', '.join(bad)}")


def check_sizes(config: mlc.ConfigDict) -> None:
  for dotted, least in MINIMUM.items():
    section, field = dotted.split(".")
    if section not in config or field not in config[section]:
      continue
    value = config[section][field]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ConfigError(f"--config.{dotted}={value!r}: must be an integer >= {least}")
  minutes = config.train.checkpoint_every_minutes
  if not math.isfinite(minutes) or minutes < 0:
    raise ConfigError(f"--config.train.checkpoint_every_minutes={minutes!r}: must be a number >= 0 (0 = off)")
  if config_lib.samples_rollouts(config) and config.rollout.group_size < 2:
    raise ConfigError(
        f"--config.rollout.group_size={config.rollout.group_size}: method {config.method!r} samples rollouts and "
        "GRPO scores each against the others of its prompt, so it needs at least 2 (with 1 every advantage is 0 "
        "and the gate's lambda stays 0)")
  if config.data.prompts_per_step % config.train.microbatches:
    raise ConfigError(f"--config.data.prompts_per_step={config.data.prompts_per_step} does not split into "
                      f"--config.train.microbatches={config.train.microbatches} equal micro-batches")
  stop, reuse, total = config.train.get("stop_at_step", 0), config.rl.get("num_iterations", 1), config.train.total_steps
  if stop and reuse > 1 and stop < total and config_lib.samples_rollouts(config):
    first = config_lib.sft_stage_steps(config)   # RL batches start after the SFT stage
    if stop > first and (stop - first) % reuse:
      raise ConfigError(
          f"--config.train.stop_at_step={stop}: with --config.rl.num_iterations={reuse} each rollout batch trains "
          f"{reuse} steps from step {first} on, so a stop inside one would continue with a new batch where an "
          f"uninterrupted run reuses the old one; stop at {first} plus a multiple of {reuse}")


def _check_choices(config: mlc.ConfigDict) -> None:
  for dotted, value, choices in (("objective", config.objective, OBJECTIVES),
                                 ("reward.kind", config.reward.kind, REWARD_KINDS)):
    if value not in choices:
      raise ConfigError(f"--config.{dotted}={value!r}: {config_lib.did_you_mean(str(value), choices)}"
                        f"choose one of {list(choices)}")
  try:   # the objective and gate sections validate their own fields
    steps.step_config(config)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None
  check_rollout(config)


def check_rollout(config: mlc.ConfigDict) -> None:
  """The sampling settings (global and per-stream overrides) and the decoder, before the testbed's base model trains:
  the sampler reads them only once the run is set up."""
  r, fields = config.rollout, ("temperature", "top_p", "top_k")
  for prefix in ("", "text_", "audio_"):
    names = {f: f"{prefix}{f}" if f"{prefix}{f}" in r else f for f in fields}   # a missing override: the global one
    try:
      decode.StreamSampling(**{f: r[name] for f, name in names.items()})
    except (TypeError, ValueError):
      flags = ", ".join(f"--config.rollout.{name}={r[name]!r}" for name in names.values())
      raise ConfigError(f"{flags}: need temperature >= 0, 0 < top_p <= 1, top_k >= 0") from None
  if r.decode not in (*decode.DECODERS, "auto"):
    raise ConfigError(f"--config.rollout.decode={r.decode!r}: choose one of {['auto', *decode.DECODERS]}")
  if r.decode == "mctp" or (r.decode == "auto" and r.mctp_schedule):
    try:
      decode.check_mctp_schedule(decode.mctp_schedule(r, config.layout))
    except ValueError as e:
      raise ConfigError(f"--config.rollout.decode={r.decode!r}, --config.rollout.mctp_schedule="
                        f"{list(r.mctp_schedule)!r} (the interleaved layout's ratios when empty; the parallel "
                        f"layout has none): {e}") from None


def check_mesh(config: mlc.ConfigDict) -> list[str]:
  """The mesh fits the devices and the step's prompts split over its data-parallel shards (data x fsdp)."""
  shape, axes = tuple(config.mesh.shape), tuple(config.mesh.axes)
  if len(set(axes)) != len(sharding.MESH_AXES) or len(shape) != len(axes):
    raise ConfigError(f"--config.mesh: axes {axes} with shape {shape}; give one size for each of "
                      f"{sharding.MESH_AXES} (-1 = all remaining devices)")
  try:
    mesh = sharding.config_mesh(config.mesh)
  except ValueError as e:
    raise ConfigError(f"--config.mesh.shape={shape}, --config.mesh.num_devices="
                      f"{config.mesh.get('num_devices', 0)}: {e}") from None
  prompts, hosts = config.data.prompts_per_step, jax.process_count()
  shards, names = sharding.data_parallel_size(mesh), " x ".join(sharding.batch_axes(mesh))
  if prompts % hosts:
    raise ConfigError(f"--config.data.prompts_per_step={prompts} does not divide over the {hosts} hosts")
  if hosts > 1 and (prompts // hosts) % shards:
    # Each host holds its own rows, so they must split evenly over the data shards (sharding.batch_sharding).
    raise ConfigError(f"--config.data.prompts_per_step={prompts}: each of the {hosts} hosts needs a multiple of "
                      f"the {shards} data shards (mesh {names})")
  if prompts % shards:
    return [f"--config.data.prompts_per_step={prompts} does not divide over the {shards} data shards (mesh "
            f"{names}): the SFT batch is replicated on every shard (correct, but without data parallelism)"]
  return []


def check_data(config: mlc.ConfigDict) -> None:
  """An init_checkpoint is a checkpoint of the config's architecture. A real (non-testbed) config names one, and
  datasets of its architecture, the method's kind
  and the config's token layout (interleave ratios / audio delay), built with one vocabulary, whose examples fit
  the length buckets. A layout mismatch would train the SFT anchor on one layout while rollouts follow another."""
  if config.data.source not in DATA_SOURCES:
    hint = config_lib.did_you_mean(str(config.data.source), DATA_SOURCES)
    raise ConfigError(f"--config.data.source={config.data.source!r}: {hint}choose one of {list(DATA_SOURCES)}")
  if config.init_checkpoint:   # on the testbed too (a study's runs start from their seed's base model)
    try:
      arch = checkpointing.load_model_config(config.init_checkpoint)[0].arch
    except FileNotFoundError as e:
      raise ConfigError(f"--config.init_checkpoint: {e}") from None
    if arch != config.model.arch:
      raise ConfigError(f"--config.init_checkpoint={config.init_checkpoint} holds a {arch!r} model but the config "
                        f"is for {config.model.arch!r}")
  if config.data.source != "arrayrecord":
    return
  if not config.init_checkpoint:
    raise ConfigError(
        "this config trains released weights and needs a converted checkpoint: convert the Hugging Face "
        "weights with `python -m wavalign_jax.convert --arch=... --hf_dir=HF_DIR --out=DIR` and pass "
        "--config.init_checkpoint=DIR (or use the ':tiny' variant to run the built-in testbed)")
  arch = config.model.arch
  if not config.data.train:
    raise ConfigError("--config.data.train is empty: build a dataset with `python -m data_pipeline.build` "
                      "(--kind=rl for the hybrid / RL methods, --kind=dpo for DPO) and pass its directory")
  buckets = config_lib.padded_lengths(config.data)
  layout_field, wanted_layout, flag = _layout_as_built(config, arch)
  train_vocab = None
  for name, kind in (("train", "dpo" if config.objective == "dpo" else "rl"), ("eval", "rl")):
    path = config.data[name]
    if not path:
      continue
    if not os.path.exists(path):
      raise ConfigError(f"--config.data.{name}={path} does not exist")
    try:
      shards, info = loader.resolve_paths(path)
      if not info:
        raise ValueError("not a dataset directory; build one with `python -m data_pipeline.build`")
      missing = [s for s in shards if not os.path.isfile(s)]
      if missing:
        raise ValueError(f"{len(missing)} of its {len(shards)} shards are missing ({missing[0]}, ...): copy the "
                         "dataset folder whole, or rebuild it")
      records, hosts = info.get("num_records", 0), jax.process_count()
      if name == "train" and records - records % hosts < config.data.prompts_per_step:   # as the loader reads them
        raise ValueError(f"{records} records cannot fill one step of --config.data.prompts_per_step="
                         f"{config.data.prompts_per_step} (on {hosts} host(s))")
      if info.get("arch") != arch:
        raise ValueError(f"built for arch {info.get('arch')!r}, the model is {arch!r}")
      if info.get("kind") != kind:
        raise ValueError(f"holds {info.get('kind')!r} records; this method needs a --kind={kind} dataset")
      if info.get(layout_field) != wanted_layout:
        raise ValueError(f"built with {layout_field} {info.get(layout_field)}, but --config.layout.{layout_field} is "
                         f"{wanted_layout}: rebuild it with `python -m data_pipeline.build --{layout_field}={flag}` "
                         "or change the layout")
      train_vocab = train_vocab or info.get("vocab")
      if info.get("vocab") != train_vocab:
        raise ValueError(f"built with another vocabulary than --config.data.train={config.data.train} (another "
                         "tokenizer or audio-code range); build both with the checkpoint's tokenizer")
      loader.check_lengths(info, buckets)
      if not os.path.isfile(info.get("tokenizer") or ""):
        raise ValueError(f"its {loader.INFO_FILE} names the tokenizer {info.get('tokenizer')}, which does not "
                         "exist (a dataset built before datasets carried their own tokenizer.json names it by "
                         "absolute path): rebuild it with `python -m data_pipeline.build`")
    except ValueError as e:
      raise ConfigError(f"--config.data.{name}={path}: {e}") from None


def _layout_as_built(config: mlc.ConfigDict, arch: str) -> tuple[str, Any, str]:
  """(dataset_info.json field, the value a dataset for this config holds there, its data_pipeline.build flag value)
  of the config's token layout: the interleave ratios, or the parallel streams' audio delay."""
  if arch == "interleaved":
    ratios = [int(r) for r in config.layout.ratios]
    return "ratios", ratios, ",".join(map(str, ratios))
  return "audio_delay", config.layout.audio_delay, str(config.layout.audio_delay)


def check_writable(workdir: str) -> None:
  """The work directory and its checkpoints/ can take new files, with content (else the first save would fail, steps
  in; an empty file is created even on a full disk)."""
  workdir = os.path.abspath(workdir)
  probes = [p for p in (os.path.join(workdir, "checkpoints"), workdir) if os.path.exists(p)]
  if not probes:   # created by the run: the nearest existing parent must take it
    parent = workdir
    while not os.path.exists(parent):
      parent = os.path.dirname(parent)
    probes = [parent]
  for path in probes:
    if not os.path.isdir(path):
      raise ConfigError(f"--workdir={workdir}: {path} is not a directory")
    try:
      with tempfile.TemporaryFile(dir=path) as f:
        f.write(b"\0")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
      raise ConfigError(f"--workdir={workdir}: cannot write in {path} ({e.strerror})") from None
