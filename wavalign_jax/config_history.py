"""WORKDIR/config.json and its history: a resumed run continues the experiment it started, or says what changed.

A run records the config it started with in WORKDIR/config.json. A rerun on a work directory that already
holds training state (checkpoints; before the first one, the testbed's data, base model or its SFT checkpoints:
train._holds_testbed_state) compares its config with the one its newest checkpoint was trained with. Fields that
define the experiment
(model, layout, method, objective, gates, rollouts, reward, data, losses, optimizer, seed, testbed) must be equal,
or the run stops listing each change as `field: saved -> given`; `--config.train.allow_config_change=True` accepts
them. Operational fields (step counts, cadences, evaluation, memory and I/O knobs, the mesh) may change freely.
Whenever the config differs at all, the new one is kept as WORKDIR/config.<step>.json (step: the checkpoint the run
resumes from; the config of the steps after it) and config.json stays the first, so the history of a run is on
disk. A config.<N>.json whose launch ended before its next checkpoint trained nothing: a resume from N compares with
the config before it, and one with that older config removes the abandoned file.

The files the config names are part of the experiment too: the recorded config carries, under `inputs`, what
identifies the datasets (their records' checksum, data/build.py) and the initial checkpoint (the id each save
gives it, checkpointing.save_params). A dataset rebuilt in place with other records, or a checkpoint written again
at the same path, changes the experiment as a changed field would (its frozen reference, its data order) and is
refused the same way. Inputs made before they carried an identity are not compared.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import jax
import ml_collections as mlc

from wavalign_jax import checkpointing, files, optim
from wavalign_jax.data import loader
from wavalign_jax.errors import RunError

# Fields that may change on resume: they change when or how things run, not what is trained.
FREE = (
    "train.total_steps", "train.stop_at_step", "train.microbatches", "train.max_consecutive_skips",
    "train.log_every", "train.checkpoint_every", "train.checkpoint_every_minutes", "train.keep_checkpoints",
    "train.compilation_cache_dir",
    "train.eval_every", "train.eval_before",
    "train.eval_examples", "train.eval_batch_size", "train.analysis_every", "train.analysis_minibatches",
    "train.profile_steps", "train.profile_start_step",
    "optim.warmup_steps", "mesh.", "rollout.length_buckets",
    "rollout.cache_windows", "rollout.gather_weights",
    "model.remat", "model.logprob_chunk", "model.logprob_keep_logits", "model.attention_impl", "model.attention_block",
    "reward.timeout_s", "reward.decoder_timeout_s", "reward.max_retries", "reward.max_in_flight", "reward.cache_dir",
    "reward.api_key_env", "reward.max_failed_fraction", "testbed.base_checkpoint_every",
)
# Not free although operational: `data.worker_count` (the data iterator's checkpointed position differs between
# in-process and worker-process loading, so a checkpoint of one cannot be restored into the other).
_ABSENT = "<absent>"
# Fields a config no longer has: a run recorded with them compares equal without them.
RETIRED = ("layout.kind",)   # it always equalled model.arch
# Fields added since runs were recorded, with the value that does what the code did before them: a run recorded
# without such a field resumes when it has that value (any other value is a change like any other).
ADDED = {"reward.decoder_command": "", "reward.decoder_url": "",   # the judge read the transcript only
         "reward.decoder_timeout_s": 120.0}


class ConfigChanged(RunError):
  pass


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(node, dict):
    out = {}
    for k, v in node.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: node}


def _is_free(field: str) -> bool:
  return any(field == f or (f.endswith(".") and field.startswith(f)) for f in FREE)


def as_dict(config: mlc.ConfigDict) -> dict[str, Any]:
  """The config as written to config.json (tuples as lists, non-finite floats as null)."""
  return files.finite_or_none(json.loads(config.to_json_best_effort()))


# Fields that name files: one spelled another way (relative / absolute, a link) is the same when it resolves to the
# same path (a study made its directory absolute; a user reruns from another directory).
PATH_FIELDS = ("init_checkpoint", "data.train", "data.eval", "testbed.dir")


def _same(field: str, a: Any, b: Any) -> bool:
  if field in PATH_FIELDS and isinstance(a, str) and isinstance(b, str) and a and b:
    return os.path.realpath(a) == os.path.realpath(b)
  return a == b


# The config fields that name a run's inputs, with what identifies each.
INPUT_FIELDS = ("init_checkpoint", "data.train", "data.eval")


def input_fingerprints(config: mlc.ConfigDict) -> dict[str, str | None]:
  """{field: identity} of the initial checkpoint and the built datasets the config names (None: made before they
  carried one, or not a checkpoint / dataset, which config_check refuses where it matters; fields that name nothing
  are left out)."""
  out = {}
  for field in INPUT_FIELDS:
    section, _, leaf = field.rpartition(".")
    path = (config[section] if section else config).get(leaf)
    if not path or not os.path.isdir(path):
      continue
    if field == "init_checkpoint":
      meta = os.path.join(path, checkpointing.MODEL_CONFIG_FILE)
      out[field] = checkpointing.load_model_config(path)[1].get("checkpoint_id") if os.path.exists(meta) else None
    else:
      info = os.path.join(path, loader.INFO_FILE)
      out[field] = loader.resolve_paths(path)[1].get("content_sha256") if os.path.exists(info) else None
  return out


def _unknown_input(field: str, a: Any, b: Any) -> bool:
  """An input identity that cannot be compared: missing on one side (recorded before inputs were, or made before
  they carried one)."""
  return field.startswith("inputs.") and (a in (_ABSENT, None) or b in (_ABSENT, None))


def changes(saved: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(field, saved value, given value) of every field that differs, sorted by field."""
  a, b = _flatten(saved), _flatten(given)
  return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
          if not _same(k, a.get(k, _ABSENT), b.get(k, _ABSENT))]


def latest(workdir: str, before_step: int) -> tuple[str, dict[str, Any]] | None:
  """(path, config) of the config the state at `before_step` was trained with: config.<step>.json of the highest
  step below it, else config.json. A config.<step>.json at `before_step` itself trained no checkpoint (its launch
  ended before the next one, e.g. a larger batch ran out of memory): the run is still the older config's."""
  steps = [int(m.group(1)) for name in os.listdir(workdir)
           if (m := re.fullmatch(r"config\.(\d+)\.json", name)) and int(m.group(1)) < before_step]
  path = os.path.join(workdir, f"config.{max(steps)}.json" if steps else "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return path, json.load(f)
  except ValueError as e:
    raise RunError(f"{path} is not valid JSON ({e}): restore it from a copy, or remove it to accept the given "
                   "config as the run's config") from None


def check(config: mlc.ConfigDict, workdir: str, resume_step: int | None) -> dict[str, Any] | None:
  """Writes config.json for a new run (`resume_step` None: returns None); on a resume (`resume_step`: the newest
  checkpoint), checks the config against the one that checkpoint was trained with and returns it, for `keep` to
  record once the step the run resumes from is known (an older one if the newest checkpoint is damaged). Every
  process checks; process 0 writes."""
  given = {**as_dict(config), "inputs": input_fingerprints(config)}
  saved = latest(workdir, resume_step) if resume_step is not None else None
  if saved is None:   # a new run: the configs of an earlier attempt without training state go with it
    if jax.process_index() == 0 and os.path.isdir(workdir):
      for name in os.listdir(workdir):
        if re.fullmatch(r"config\.\d+\.json", name):
          os.remove(os.path.join(workdir, name))
    _write(os.path.join(workdir, "config.json"), given)
    return None
  path, old = saved
  diff = _differences(old, given)
  if not diff:
    return given
  locked = [(k, a, b) for k, a, b in diff if not _is_free(k)]
  changed = {k for k, _, _ in diff}
  rewritten = lambda k: k.startswith("inputs.") and k[len("inputs."):] not in changed   # same path, new contents
  listing = "\n  ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" + (
      f" ({k[len('inputs.'):]} names the same path, whose contents were written again since)" if rewritten(k) else "")
      for k, a, b in locked)
  if locked and not config.train.get("allow_config_change", False):
    raise ConfigChanged(
        f"{workdir} holds a run of another experiment (checkpoint step {resume_step}); these fields differ from "
        f"{path}:\n  {listing}\nRerun with the saved values, use a new --workdir, or pass "
        "--config.train.allow_config_change=True to continue this run with the new config (it is kept as "
        "config.<step>.json, of the step the run resumes from)")
  if locked and jax.process_index() == 0:
    print(f"warning: continuing from step {resume_step} with a changed config "
          f"(train.allow_config_change):\n  {listing}", flush=True)
  note = _schedule_change(old, given, resume_step)
  if note and jax.process_index() == 0:
    print(f"warning: {note}", flush=True)
  return given


def _schedule_change(old: dict[str, Any], given: dict[str, Any], step: int) -> str | None:
  """What a free change of the schedule's length (train.total_steps, optim.warmup_steps) does to the learning rate
  the run continues with: the cosine decay is stretched or cut, so the rate jumps (None when it does not change)."""
  def rate(c: dict[str, Any]) -> float:
    return float(optim.learning_rate_schedule(optim.optim_config(c))(step))
  try:
    before, after = rate(old), rate(given)
  except (KeyError, TypeError):   # a config recorded with other optimizer fields
    return None
  fields = [f for f in ("train.total_steps", "optim.warmup_steps") if _flatten(old).get(f) != _flatten(given).get(f)]
  if not fields or math.isclose(before, after, rel_tol=1e-3, abs_tol=1e-12):   # other fields: listed as changed
    return None
  return (f"{', '.join(fields)} changed: the learning-rate schedule (warmup, then cosine decay to "
          f"optim.end_learning_rate over train.total_steps) gives {after:.3g} at step {step} where the run's was "
          f"{before:.3g}")


def keep(workdir: str, step: int, given: dict[str, Any] | None) -> None:
  """Records the config `check` returned as config.<step>.json (`step`: the checkpoint the run resumed from) when it
  differs from the one that step was trained with; else removes a config.<step>.json of an earlier launch from
  that step, which ended before it checkpointed (the run goes on with the older config)."""
  if given is None:
    return
  path, saved = os.path.join(workdir, f"config.{step}.json"), latest(workdir, step)
  if saved is None or _differences(saved[1], given):
    _write(path, given)
  elif jax.process_index() == 0 and os.path.exists(path):
    os.remove(path)


def _differences(old: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """The changes that count: all but allow_config_change itself, retired fields, added fields at their former
  behaviour and inputs whose identity cannot be compared."""
  added = lambda k, a, b: k in ADDED and a == _ABSENT and b == ADDED[k]
  return [d for d in changes(old, given)
          if d[0] != "train.allow_config_change" and d[0] not in RETIRED and not added(*d) and not _unknown_input(*d)]


def _write(path: str, config: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    files.write_json(path, config, indent=2)
