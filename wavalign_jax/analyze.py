r"""Diagnostics of the paper's four observations for a checkpoint: `analysis.md`, `analysis.json`, one PNG each.

  python -m wavalign_jax.analyze --config=experiments/vita.py:tiny --checkpoint=/tmp/vita_tiny \
      --workdir=/tmp/vita_tiny_analysis [--compare=CKPT] [--data=DATASET] [--judge_scores=FILE.jsonl]

--checkpoint / --compare: converted checkpoints or training runs (as `model_loading.load_model` reads them).
--compare defaults to a testbed run's base model. --data: a dataset built with `data_pipeline.build --kind=rl`
(testbed runs: their eval split).
1. Token-level change of the reference responses' log-probs, compare -> checkpoint, by type and position.
2. Judge agreement per dimension: on the testbed, the judge against its true semantic and acoustic scores on the
   rollout batch; else from --judge_scores, a JSONL of {"judge": {dim: score}, "reference": {dim: score}} items.
3. Text- vs speech-token policy gradients on a rollout batch of the checkpoint: energies, coupling, SNR.
4. Rollout diversity of that batch: reward variance, informative groups, distinct-2 of text and audio.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from wavalign_jax import cli, config_lib, files, log_setup, model_loading, models, sharding
from wavalign_jax import tokenizer as tokenizer_lib
from wavalign_jax.analysis import gradient_geometry, judge_agreement, rollout_diversity, token_shift
from wavalign_jax.data import loader
from wavalign_jax.objectives import grpo
from wavalign_jax.objectives.grpo import GRPOConfig
from wavalign_jax.rollout import batch as rl_batch_lib
from wavalign_jax.rollout import decode
from wavalign_jax.run_setup import make_reward_fn
from wavalign_jax.testbed import prepare


def _plot(path: str, draw) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 3.5))
  draw(ax)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return os.path.basename(path)


def _dataset(config: mlc.ConfigDict, model: model_loading.LoadedModel, data: str | None) -> str:
  if data:
    return data
  path = prepare.dataset_dir(model.testbed_root, config.model.arch, "eval_id") if model.testbed_root else ""
  if not os.path.isdir(path):
    raise FileNotFoundError("--data is needed: a dataset built with `python -m data_pipeline.build --kind=rl` "
                            "(testbed runs use their in-distribution eval set, <testbed dir>/<arch>/eval_id)")
  return path


def analyze(config: mlc.ConfigDict, checkpoint: str, workdir: str, *, compare: str | None = None,
            data: str | None = None, judge_scores: str | None = None, examples: int = 16, seed: int = 0,
            minibatches: int = 2) -> dict[str, Any]:
  """Runs the four diagnostics and writes WORKDIR/analysis.{json,md} and the PNGs; returns the JSON dict."""
  os.makedirs(workdir, exist_ok=True)
  model = model_loading.load_model(checkpoint, config)
  if compare is None and config.data.source == "testbed" and model.model_dir != checkpoint:
    compare = model.model_dir   # a training run's checkpoint: the base model it started from
  cfg, mesh = model.model_cfg, model.mesh
  logprob_fn = models.logprob_fn(cfg)
  it = loader.make_loader(_dataset(config, model, data), global_batch_size=examples, shuffle=False, num_epochs=1,
                          buckets=config_lib.padded_lengths(config.data), process_index=0, process_count=1)
  raw = next(iter(it))
  out: dict[str, Any] = {"checkpoint": checkpoint, "compare": compare, "examples": examples}
  figures = {}

  # 1. token-level probability change
  if compare:
    base = model_loading.load_model(compare, config)
    ref = raw.reference
    delta = jax.device_get(sharding.jit_with_rules(
        lambda a, b, batch: token_shift.logprob_shift(logprob_fn, a, b, batch), mesh)(base.params, model.params, ref))
    out["token_shift"] = token_shift.summarize(delta, ref.types)
    rows = np.concatenate([np.abs(delta[s]) for s in sorted(delta)], axis=1)[:8]
    figures["token_shift"] = _plot(os.path.join(workdir, "token_shift.png"), lambda ax: (
        ax.imshow(rows, aspect="auto", cmap="magma"), ax.set_xlabel("position (streams side by side)"),
        ax.set_ylabel("example"), ax.set_title(f"|Δ log p| of reference tokens, {os.path.basename(compare)} → "
                                               "checkpoint")))

  # 3 and 4. a rollout batch of the checkpoint, scored by the run's reward
  sampling = decode.sampling_config(config.rollout, config.layout, model.builder.vocab, cfg.num_mtp_modules)
  text = lambda ids: tokenizer_lib.decode_text(model.tokenizer, ids, collapse_whitespace=True)
  batch = rl_batch_lib.rollout_batch(model.params, cfg, sampling, raw, jax.random.PRNGKey(seed),
                                     make_reward_fn(config, workdir), text, mesh=mesh,
                                     exclude_failed=config.reward.exclude_failed,
                                     length_buckets=config.rollout.length_buckets)
  result, rewards, P = batch.scored, batch.rewards, len(raw.meta)
  if judge_agreement.has_true_scores(result.info):
    on_judge_scale = {"semantic": lambda v: v, "acoustic": lambda v: 1 + 4 * v}   # acoustic quality is in [0, 1]
    out["judge_agreement"] = {d: judge_agreement.agreement(result.scores, f(np.array([i[d] for i in result.info])))
                              for d, f in on_judge_scale.items()}
  stats = rollout_diversity.content_stats(rewards, batch.contents, valid=batch.reward_valid)
  scored = ~result.failed.reshape(rewards.shape)   # a failed judge call's fallback score is no measurement
  out["rollout_diversity"] = {**rollout_diversity.summary(stats),
                              "reward_mean": float(rewards[scored].mean()) if scored.any() else float("nan"),
                              "reward_failed": int(result.failed.sum())}
  figures["rollout_diversity"] = _plot(os.path.join(workdir, "rollout_diversity.png"), lambda ax: (
      ax.bar(np.arange(P), stats["reward_var"]), ax.set_xlabel("prompt group"), ax.set_ylabel("reward variance"),
      ax.set_title(f"{int(stats['informative'].sum())} of {P} groups carry a gradient")))
  rl_cfg = GRPOConfig(**config.rl)
  rl = grpo.with_group_fields(batch.rl, rewards, batch.reward_valid, rl_cfg)   # the rows training weighs, weighed alike
  geo = sharding.jit_with_rules(lambda p, b: gradient_geometry.geometry(logprob_fn, p, b, rl_cfg, minibatches),
                                mesh)(model.params, rl)
  out["gradient_geometry"] = {k: float(v) for k, v in jax.device_get(geo).items()}
  g = out["gradient_geometry"]
  energies = [g[f"energy_{s}"] for s in ("text", "speech")]
  figures["gradient_geometry"] = _plot(os.path.join(workdir, "gradient_geometry.png"), lambda ax: (
      ax.bar(["text", "speech"], energies), ax.set_ylabel("policy-gradient energy"),
      ax.set_title(f"cosine {g['cosine_text_speech']:.3f}, SNR text {g['snr_text']:.2f} / speech "
                   f"{g['snr_speech']:.2f}")))

  # 2. judge agreement: the testbed judge's true scores (above), or a file of judge and reference scores
  if judge_scores:
    items = [json.loads(line) for line in open(judge_scores) if line.strip()]
    dims = sorted(set(items[0]["judge"]) & set(items[0]["reference"]))
    out["judge_agreement"] = {d: judge_agreement.agreement(np.array([i["judge"][d] for i in items], float),
                                                           np.array([i["reference"][d] for i in items], float))
                              for d in dims}
  if "judge_agreement" in out:
    dims = list(out["judge_agreement"])
    figures["judge_agreement"] = _plot(os.path.join(workdir, "judge_agreement.png"), lambda ax: (
        ax.bar(dims, [out["judge_agreement"][d]["spearman"]["value"] for d in dims]),
        ax.set_ylabel("Spearman ρ (judge vs reference)")))
  out["figures"] = figures
  files.write_json(os.path.join(workdir, "analysis.json"), out, indent=2)
  files.write_text(os.path.join(workdir, "analysis.md"), _markdown(out))
  return out


def _markdown(out: dict[str, Any]) -> str:
  lines = [f"# Analysis of {out['checkpoint']}", ""]
  if "token_shift" in out:
    lines += ["## 1. Token-level probability change (paper: SFT shifts whole sequences, RL is local)", "",
              f"compare: {out['compare']}", "",
              "| type | tokens | mean abs Δ | share above 0.1 | spread over positions |",
              "|---|---|---|---|---|"]
    lines += [f"| {t} | {v['count']} | {v['mean_abs']:.4f} | {v['frac_above']:.3f} | {v['position_spread']:.4f} |"
              for t, v in out["token_shift"].items()]
    lines += ["", f"![]({out['figures']['token_shift']})", ""]
  if "judge_agreement" in out:
    lines += ["## 2. Judge agreement (paper: semantics agree better than acoustics)", "",
              "| dimension | Spearman | Pearson | kappa |", "|---|---|---|---|"]
    cell = lambda m: f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"
    lines += [f"| {d} | {cell(a['spearman'])} | {cell(a['pearson'])} | {cell(a['kappa'])} |"
              for d, a in out["judge_agreement"].items()]
    lines += [""]
  g = out["gradient_geometry"]
  lines += ["## 3. Gradient geometry (paper: gradients concentrate on text, low coupling)", "",
            "| energy text | energy speech | cosine | SNR text | SNR speech |", "|---|---|---|---|---|",
            f"| {g['energy_text']:.3e} | {g['energy_speech']:.3e} | {g['cosine_text_speech']:.3f} | "
            f"{g['snr_text']:.3f} | {g['snr_speech']:.3f} |", "", f"![]({out['figures']['gradient_geometry']})", "",
            "## 4. Rollout diversity (paper: discriminability is uneven)", ""]
  lines += [f"- {k}: {v:.4f}" for k, v in out["rollout_diversity"].items()]
  lines += ["", f"![]({out['figures']['rollout_diversity']})", ""]
  return "\n".join(lines)


def define_flags() -> None:
  """Flags of the CLI (defined on demand: train.py owns --config / --workdir when both are imported)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. experiments/vita.py:tiny.", lock_config=True)
  flags.DEFINE_string("checkpoint", None, "Converted checkpoint or training run to analyse.")
  flags.DEFINE_string("compare", None, "Checkpoint to compare with (default: a testbed run's base model).")
  flags.DEFINE_string("data", None, "Dataset (data_pipeline.build --kind=rl); testbed runs: their eval split.")
  flags.DEFINE_string("judge_scores", None, "JSONL of {'judge': {dim: s}, 'reference': {dim: s}} (observation 2).")
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.DEFINE_integer("examples", 16, "Prompts analysed (rollouts: G per prompt).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if f.config is None or not f.checkpoint or not f.workdir:
    raise app.UsageError("--config, --checkpoint and --workdir are required")
  print(f"logs: {log_setup.quiet_logs(f.workdir, 'analyze')}", flush=True)
  out = analyze(f.config, f.checkpoint, f.workdir, compare=f.compare, data=f.data, judge_scores=f.judge_scores,
                examples=f.examples)
  print(f"wrote {os.path.join(f.workdir, 'analysis.md')} ({', '.join(out['figures'].values())})", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
