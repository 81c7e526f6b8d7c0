"""Markdown report of benchmark scores, plus one printable line per subset."""
from __future__ import annotations

import math
from typing import Sequence

from wavalign_jax import files
from wavalign_jax.evaluation import common


def _fmt(x: float) -> str:
  return "n/a" if math.isnan(x) else f"{x:.2f}"


def summary_lines(result: common.BenchmarkScore) -> list[str]:
  lines = [f"{result.benchmark}/{s.subset}: {_fmt(s.value)} ({s.unit}, n={s.n}, judge failures={s.failed})"
           for s in result.subsets]
  return lines + [f"{result.benchmark}/{result.aggregate_name}: {_fmt(result.aggregate)}"]


def markdown(results: Sequence[common.BenchmarkScore]) -> str:
  rows = ["| benchmark | subset | score | unit | 0-100 | n | judge failures |", "|---|---|---:|---|---:|---:|---:|"]
  for r in results:
    for s in r.subsets:
      rows.append(f"| {r.benchmark} | {s.subset} | {_fmt(s.value)} | {s.unit} | {_fmt(s.normalized)} | {s.n} | {s.failed} |")
    rows.append(f"| **{r.benchmark}** | **{r.aggregate_name}** | **{_fmt(r.aggregate)}** | | | | |")
  return "\n".join(rows) + "\n"


def write_report(results: Sequence[common.BenchmarkScore], path: str) -> list[str]:
  """Write the Markdown table to `path`; returns the one-line-per-subset summary."""
  files.write_text(path, markdown(results))
  return [line for r in results for line in summary_lines(r)]
