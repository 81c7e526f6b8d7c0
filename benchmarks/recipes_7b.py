"""The 7B recipes as the ahead-of-time benchmarks compile them (memory_7b.py, roofline.py): the released models'
shapes with an experiment's runtime settings, and abstract batches on a mesh."""
from __future__ import annotations

import jax
import ml_collections as mlc
import numpy as np

from experiments import kimi, vita
from wavalign_jax import models
from wavalign_jax.batches import SeqBatch
from wavalign_jax.models.config import RUNTIME_FIELDS, kimi_audio_7b, vita_audio_7b

# "tiny": VITA's experiment on the unit-test model, a quick check of this script (tests/test_benchmarks.py).
EXPERIMENTS = {"vita": (vita, vita_audio_7b), "kimi": (kimi, kimi_audio_7b),
               "tiny": (vita, lambda **kw: models.tiny_config("interleaved", **kw))}


def experiment(name: str) -> tuple[models.ModelConfig, mlc.ConfigDict]:
  """The released model's shapes with the runtime settings (dtypes, remat, chunks) of experiments/<name>.py, as
  run_setup applies them to a converted checkpoint, and that experiment's config."""
  module, shapes = EXPERIMENTS[name]
  config = module.get_config()
  return shapes(**{k: config.model[k] for k in RUNTIME_FIELDS if k in config.model}), config


def shape_struct(shape, dtype, sharding_):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding_)


def seq_batch(cfg, rows, length, mesh, cls=SeqBatch):
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  ints = lambda: shape_struct((rows, length), np.int32, data)
  return cls(inputs={s: ints() for s in cfg.streams}, targets={s: ints() for s in cfg.streams},
             types={s: ints() for s in cfg.streams}, positions=ints(), segment_ids=ints())
