"""Resolves a config into the concrete pieces of a run: model config, vocabulary, data, sampler, reward.

Two sources of data and weights:
  * `data.source = "testbed"`: the built-in synthetic spoken-QA task, generated into WORKDIR/testbed,
    with a tiny base model SFT-trained once into WORKDIR/base_model (unless init_checkpoint is set).
  * `data.source = "arrayrecord"`: datasets built by `python -m data_pipeline.build` and a converted
    checkpoint (`python -m wavalign_jax.convert`); the vocabulary comes from the dataset's info file,
    which was built with the checkpoint's tokenizer.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple, Sequence

import ml_collections as mlc
import tokenizers

from wavalign_jax import checkpointing, config_lib
from wavalign_jax import tokenizer as tokenizer_lib
from wavalign_jax.data import layouts, loader
from wavalign_jax.evaluation import reward_eval
from wavalign_jax.errors import ConfigError, RunError
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.preemption import PreemptionGuard
from wavalign_jax.rewards.base import RewardFn, RewardItem
from wavalign_jax.rewards.llm_judge import AudioDecoder, AudioDecoderSettings, JudgeSettings, LLMJudge
from wavalign_jax.rewards.rules import ExactMatch, normalize_answer
from wavalign_jax.rollout import decode
from wavalign_jax.testbed import answers, base_model, metrics, prepare, tasks
from wavalign_jax.testbed.judge import TestbedJudge
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab


@dataclasses.dataclass
class RunSetup:
  """What a run's config resolves to: the model config, vocabulary, sampler settings (with the layout's decoding
  constraint), datasets, reward and evaluator."""
  model_cfg: ModelConfig
  vocab: InterleavedVocab | ParallelVocab
  sampling: decode.SamplingConfig
  tokenizer: tokenizers.Tokenizer
  train_data: str
  eval_data: dict[str, str]         # eval set name -> dataset directory (may be empty)
  buckets: tuple[int, ...]
  init_checkpoint: str
  eval_batch_size: int
  # The run's reward, one instance for rollouts and evaluation (an LLM judge's in-flight limit and cache are then
  # the run's); None when the run calls none (config_lib.calls_reward)
  reward_fn: RewardFn | None = None
  # the greedy responses -> (summary metrics, per-item rows): the testbed's IQ / EQ, or on built datasets the run's
  # reward of them (evaluation/reward_eval.py)
  evaluator: Callable[[Sequence[RewardItem]], tuple[dict[str, float], list[dict]]] | None = None

  def decode_text(self, text_ids: Sequence[int]) -> str:
    """The text channel of a response as rewards and the testbed's metrics read it (words, one space apart)."""
    return tokenizer_lib.decode_text(self.tokenizer, text_ids, collapse_whitespace=True)


def _vocab_from_info(info: dict[str, Any], arch: str) -> InterleavedVocab | ParallelVocab:
  cls = InterleavedVocab if arch == "interleaved" else ParallelVocab
  return cls(**info["vocab"])


class _Sources(NamedTuple):
  """Where a run's model and data come from: what differs between the testbed and built datasets."""
  model_cfg: ModelConfig
  vocab: InterleavedVocab | ParallelVocab
  tokenizer: str                    # tokenizer.json path
  train_data: str
  eval_data: dict[str, str]
  init_checkpoint: str


def setup_run(config: mlc.ConfigDict, workdir: str, guard: PreemptionGuard | None = None) -> RunSetup:
  """`guard` lets the testbed's base-model SFT stop on SIGTERM with a checkpoint (raises Preempted)."""
  buckets = config_lib.padded_lengths(config.data)
  testbed = config.data.source == "testbed"
  src = _testbed_sources(config, workdir, buckets, guard) if testbed else _built_sources(config)
  reward_fn = make_reward_fn(config, workdir) if config_lib.calls_reward(config) else None
  if testbed:
    evaluator = metrics.evaluate
  else:
    evaluator = reward_eval.reward_evaluator(reward_fn) if src.eval_data else None
  return RunSetup(model_cfg=src.model_cfg, vocab=src.vocab,
                  sampling=decode.sampling_config(config.rollout, config.layout, src.vocab,
                                                  src.model_cfg.num_mtp_modules),
                  tokenizer=tokenizers.Tokenizer.from_file(src.tokenizer), train_data=src.train_data,
                  eval_data=src.eval_data, buckets=buckets, init_checkpoint=src.init_checkpoint,
                  eval_batch_size=config.train.eval_batch_size, reward_fn=reward_fn, evaluator=evaluator)


def _built_sources(config: mlc.ConfigDict) -> _Sources:
  """A converted checkpoint and datasets from data_pipeline.build: the vocabulary is the train set's."""
  model_cfg, meta = checkpointing.load_model_config(config.init_checkpoint)
  model_cfg = model_cfg.with_runtime_fields(config.model)
  _, info = loader.resolve_paths(config.data.train)
  vocab = _vocab_from_info(info, model_cfg.arch)
  if vocab.vocab_size > model_cfg.vocab_size:
    raise RunError(f"{config.data.train}: vocabulary of {vocab.vocab_size} ids does not fit the model's "
                   f"{model_cfg.vocab_size} embedding rows ({config.init_checkpoint})")
  _check_checkpoint_vocab(config, vocab, model_cfg.arch, meta)
  return _Sources(model_cfg, vocab, info["tokenizer"], config.data.train,
                  {"eval": config.data.eval} if config.data.eval else {}, config.init_checkpoint)


def _check_checkpoint_vocab(config: mlc.ConfigDict, vocab: InterleavedVocab | ParallelVocab, arch: str,
                            meta: dict[str, Any]) -> None:
  """The training set's vocabulary gives the layout's ids as the converted checkpoint's own tokenizer and config.json
  do (convert.py keeps them in DIR/hf): a dataset built with another tokenizer (VITA-Audio-Plus's audio codes start
  one id later than Boost's; a Kimi build with another --audio_offset) would train every code into another row. A
  checkpoint without those files (the testbed's base model, weights converted without their tokenizer) is not
  compared."""
  hf_dir = os.path.join(config.init_checkpoint, checkpointing.HF_FILES_DIR)
  has = lambda name: os.path.exists(os.path.join(hf_dir, name))
  # VITA-Audio's reader needs tokenizer.json; Kimi-Audio ships a tiktoken model, its ids in tokenizer_config.json
  readable = has(tokenizer_lib.TOKENIZER_FILE) or (arch == "parallel" and has(tokenizer_lib.TOKENIZER_CONFIG_FILE))
  if "hf_config" not in meta or not readable:
    return
  read = tokenizer_lib.interleaved_vocab if arch == "interleaved" else tokenizer_lib.parallel_vocab
  try:
    model_vocab = read(hf_dir, meta["hf_config"])
  except (ValueError, KeyError, OSError) as e:
    raise RunError(f"{config.init_checkpoint}: its tokenizer files in {hf_dir} give no vocabulary to check "
                   f"{config.data.train} against: {e}") from None
  diff = tokenizer_lib.differing_ids(vocab, model_vocab)
  if diff:
    raise RunError(f"{config.data.train} was built with another vocabulary than {config.init_checkpoint}'s tokenizer "
                   f"({'; '.join(diff)}): its tokens would train other rows of the model. Rebuild it with that "
                   "checkpoint's tokenizer (`python -m data_pipeline.build --tokenizer=...`"
                   + (", and its --audio_offset: config.json kimia_token_offset)" if arch == "parallel" else ")"))


def _testbed_sources(config: mlc.ConfigDict, workdir: str, buckets: tuple[int, ...],
                     guard: PreemptionGuard | None) -> _Sources:
  """The testbed's data (generated once per spec) and its base model (SFT-trained once, unless init_checkpoint)."""
  arch = config.model.arch
  spec = tasks.Spec(**{f.name: config.testbed[f.name] for f in dataclasses.fields(tasks.Spec)})
  data = prepare.prepare(prepare.root_dir(config, workdir), arch, spec=spec,
                         ratios=tuple(config.layout.get("ratios", layouts.BOOST_RATIOS)),
                         audio_delay=int(config.layout.get("audio_delay", layouts.AUDIO_DELAY)))
  model_cfg = ModelConfig(**{**config.model.to_dict(), "vocab_size": data.vocab.vocab_size})
  init_checkpoint = config.init_checkpoint
  if not init_checkpoint:
    init_checkpoint = base_model.path(workdir)
    base_model.ensure_base_model(config, model_cfg, data.datasets["base_sft"], buckets, init_checkpoint, guard)
  train_name = "dpo_train" if config.objective == "dpo" else "rl_train"
  return _Sources(model_cfg, data.vocab, data.tokenizer, data.datasets[train_name],
                  {name: data.datasets[name] for name in prepare.EVAL_DATASETS}, init_checkpoint)


def make_reward_fn(config: mlc.ConfigDict, workdir: str) -> RewardFn:
  """The reward of `reward.kind`: the testbed's judge, exact match, or an LLM judge client (its cache in
  WORKDIR/judge_cache unless `reward.cache_dir`; the answer's audio attached with `reward.decoder_command` or
  `reward.decoder_url`)."""
  kind = config.reward.kind
  if kind == "testbed":
    return TestbedJudge(acoustic_weight=config.testbed.judge_acoustic_weight,
                        acoustic_noise=config.testbed.judge_acoustic_noise, seed=config.seed)
  if kind == "exact_match":   # on the testbed: 1 exactly where IQ is 1 (the positive control's reward)
    return ExactMatch("answer", normalize=answers.normalized if config.data.source == "testbed" else normalize_answer)
  if kind == "llm_judge":
    r = config.reward
    settings = JudgeSettings(**{f: r[f] for f in config_lib.JUDGE_FIELDS},
                             cache_dir=r.cache_dir or os.path.join(workdir, "judge_cache"))
    decoder = (AudioDecoder(AudioDecoderSettings(r.decoder_command, r.decoder_url, r.decoder_timeout_s))
               if r.decoder_command or r.decoder_url else None)
    return LLMJudge(settings, audio_decoder=decoder, fallback_score=r.fallback_score)
  raise ConfigError(f"--config.reward.kind={kind!r}: choose 'llm_judge', 'testbed' or 'exact_match'")

