"""The study's configs: each method's resolved config, methods whose configs are identical (run once), and
`--sweep=FIELD=V1,V2,...` parsing (which runs a sweep value can share with the first value's)."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import ml_collections as mlc
from absl import flags

from wavalign_jax import config_lib

# Fields every run gets from the study itself (train_command): not sweepable.
STUDY_FIELDS = ("method", "seed", "init_checkpoint", "testbed.seed", "testbed.dir", "data.shuffle_seed",
                "train.eval_before", "train.eval_every")
# Fields that only make the RL reward (run_setup.make_reward_fn): a sweep over one shares the base runs, and
# the runs of methods that never call the reward (reads_reward_field).
JUDGE_FIELDS = ("testbed.judge_acoustic_weight", "testbed.judge_acoustic_noise")
REWARD_ONLY_FIELDS = (*JUDGE_FIELDS, "reward.")


def override_fields(overrides: Sequence[str]) -> list[str]:
  """The dotted fields of --config.x=y arguments."""
  return [o[len("--config."):].split("=", 1)[0] for o in overrides]


def format_value(value: Any) -> str:
  """The one spelling of a sweep value: its directory name and its --config override (absl parses it back)."""
  return str(value)


def parse_sweep(arg: str, config: mlc.ConfigDict, overridden: Sequence[str] = ()) -> tuple[str, list[Any]]:
  """'FIELD=V1,V2,...' -> (FIELD, values typed like the field in `config`, as absl parses a --config override).
  ValueError with a short message for anything else; `overridden` are fields the command also sets."""
  field, sep, raw = arg.partition("=")
  if not sep or not field or not raw:
    raise ValueError(f"--sweep={arg}: give FIELD=V1,V2,... e.g. --sweep=testbed.judge_acoustic_noise=0,0.25,0.5")
  if not config_lib.has_field(config, field):
    near = config_lib.nearest_fields(config, field)
    raise ValueError(f"--sweep: the config has no field {field!r}" +
                     (f"; did you mean {', '.join(near)}?" if near else ""))
  if field in STUDY_FIELDS or field in overridden:
    raise ValueError(f"--sweep: {field} is set by " + ("the study for every run" if field in STUDY_FIELDS else
                                                       f"--config.{field}") + "; sweep another field")
  current = config_lib.get_field(config, field)
  parser = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
            str: flags.ArgumentParser()}.get(type(current))
  if parser is None:
    raise ValueError(f"--sweep: {field} holds a {type(current).__name__}; only bool, int, float and str fields "
                     "can be swept")
  values = []
  for text in raw.split(","):
    try:
      value = parser.parse(text.strip())
    except ValueError as e:
      raise ValueError(f"--sweep: {field}={text!r} is not a {type(current).__name__} ({e})") from None
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"--sweep: {field}={text!r} is not finite")
    if not format_value(value) or os.sep in format_value(value):
      raise ValueError(f"--sweep: {field}={text!r} cannot name a directory")
    values.append(value)
  if len({format_value(v) for v in values}) != len(values):
    raise ValueError(f"--sweep: {field} has a value twice: {raw}")
  return field, values


def method_config(config_spec: str, method: str, overrides: dict[str, Any]) -> mlc.ConfigDict:
  """The resolved config of one run: the spec's variant, the method, then `overrides` {dotted field: value}."""
  config = config_lib.load_config_file(config_lib.with_variant(config_spec, method))
  for dotted, value in overrides.items():
    config_lib.set_field(config, dotted, value)
  return config


def duplicate_runs(config_spec: str, methods: Sequence[str], overrides: dict[str, Any]) -> dict[str, str]:
  """{method: the earlier method of `methods` whose run it reuses}, for methods whose resolved configs (the
  spec's variant + the method + `overrides`) are identical in everything but `method`."""
  seen: dict[str, str] = {}
  out = {}
  for m in methods:
    config = method_config(config_spec, m, overrides)
    del config["method"]
    key = json.dumps(config.to_dict(), sort_keys=True, default=repr)
    if key in seen:
      out[m] = seen[key]
    else:
      seen[key] = m
  return out


def reads_reward_field(config_spec: str, method: str, overrides: dict[str, Any], field: str) -> bool:
  """Whether `method`'s run can depend on the reward-only `field`: it draws rollouts, and for a testbed judge
  field its reward is that judge."""
  config = method_config(config_spec, method, overrides)
  return config_lib.samples_rollouts(config) and (not field.startswith(JUDGE_FIELDS) or config.reward.kind == "testbed")
