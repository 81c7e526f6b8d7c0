r"""Score a saved responses JSONL offline and write the report.

  python -m wavalign_jax.evaluation.score --benchmark=voicebench \
    --responses=out/voicebench.jsonl --report=out/voicebench.md \
    --judge_base_url=https://api.openai.com/v1 --judge_api_key_env=OPENAI_API_KEY \
    --judge_cache_dir=out/judge_cache

The judge model and sampling follow each benchmark's protocol unless --judge_model is given.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from absl import flags

from wavalign_jax import cli
from wavalign_jax.evaluation import common
from wavalign_jax.evaluation import openaudiobench
from wavalign_jax.evaluation import report
from wavalign_jax.evaluation import testbed
from wavalign_jax.evaluation import voicebench
from wavalign_jax.evaluation import vstyle
from wavalign_jax.rewards import llm_judge

BENCHMARKS = ("voicebench", "openaudiobench", "vstyle", "testbed")
_JUDGED = {"voicebench": set(voicebench.OPEN_SUBSETS) | {"sd-qa"}, "openaudiobench": set(openaudiobench.SUBSETS),
           "vstyle": set(vstyle.CATEGORIES), "testbed": set()}   # the testbed scores by rule, no judge
_PROTOCOL = {"voicebench": voicebench.JUDGE, "openaudiobench": {}, "vstyle": vstyle.JUDGE, "testbed": {}}



def score_file(benchmark: str, responses: str, report_path: str, *, judge: llm_judge.JudgeSettings | None,
               judge_model: str | None = None, decoder: llm_judge.AudioDecoder | None = None,
               seed: int = 0) -> list[str]:
  """Score one responses file with `benchmark`'s rules (the one dispatch of `evaluate` and this command); writes
  the report and returns its summary lines.

  `judge` names the server; its model and sampling are replaced by the benchmark protocol's (the
  model by `judge_model` when given). No client is built when no subset needs a judge.
  """
  records = common.load_responses(responses)
  client = None
  if judge is not None and any(r["subset"] in _JUDGED[benchmark] for r in records):
    protocol = dict(_PROTOCOL[benchmark])
    if judge_model:
      protocol["model"] = judge_model
    client = llm_judge.ChatClient(dataclasses.replace(judge, **protocol))
  if benchmark == "voicebench":
    result = voicebench.score(records, client, seed)
  elif benchmark == "openaudiobench":
    result = openaudiobench.score(records, client)
  elif benchmark == "vstyle":
    result = vstyle.score(records, client, decoder)
  else:
    result = testbed.score(records)
  return report.write_report([result], report_path)


def define_judge_flags() -> None:
  """Judge / decoder flags, shared with `python -m wavalign_jax.evaluate` (defined on demand, not at import)."""
  flags.DEFINE_integer("seed", 0, "Seed of the random guesses for unparsed multiple-choice answers.")
  defaults = llm_judge.JudgeSettings()
  flags.DEFINE_string("judge_base_url", defaults.base_url, "OpenAI-compatible judge server.")
  flags.DEFINE_string("judge_api_key_env", defaults.api_key_env, "Env variable holding the judge API key.")
  flags.DEFINE_string("judge_model", None, "Override the protocol's judge model.")
  flags.DEFINE_string("judge_cache_dir", None, "Directory caching judge replies.")
  flags.DEFINE_integer("judge_max_in_flight", defaults.max_in_flight, "Concurrent judge requests.")
  flags.DEFINE_string("decoder_command", "", "Command turning codes (JSON on stdin) into a 24 kHz WAV.")
  flags.DEFINE_string("decoder_url", "", "HTTP endpoint turning codes into a 24 kHz WAV.")


def judge_from_flags(default_cache_dir: str | None = None):
  """(JudgeSettings, AudioDecoder | None) from the flags of `define_judge_flags`."""
  f = flags.FLAGS
  judge = llm_judge.JudgeSettings(base_url=f.judge_base_url, api_key_env=f.judge_api_key_env,
                                  cache_dir=f.judge_cache_dir or default_cache_dir,
                                  max_in_flight=f.judge_max_in_flight)
  decoder = None
  if f.decoder_command or f.decoder_url:
    decoder = llm_judge.AudioDecoder(llm_judge.AudioDecoderSettings(command=f.decoder_command, url=f.decoder_url))
  return judge, decoder


def define_flags() -> None:
  flags.DEFINE_enum("benchmark", None, BENCHMARKS, "Which benchmark's rules to apply.")
  flags.DEFINE_string("responses", None, "Responses JSONL (id, subset, fields, text, audio_codes).")
  flags.DEFINE_string("report", None, "Markdown report to write.")
  define_judge_flags()
  flags.mark_flags_as_required(["benchmark", "responses", "report"])


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  judge, decoder = judge_from_flags()
  for line in score_file(f.benchmark, f.responses, f.report, judge=judge, judge_model=f.judge_model,
                         decoder=decoder, seed=f.seed):
    print(line)


if __name__ == "__main__":
  cli.run(main, define_flags)
