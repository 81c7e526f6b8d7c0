"""The study's figures: IQ against EQ per method, the gates and evaluations over training, and a sweep's
effects against the swept value; one colour and marker per method in every figure."""
from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import numpy as np

from wavalign_jax import config_lib

METRIC_NAMES = {"iq": "IQ", "eq": "EQ", "tradeoff": "trade-off"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")   # 7 markers x tab20's 20 colours: 140 distinct (colour, marker)


def method_style(method: str) -> dict[str, str]:
  """The colour and marker of `method` in every figure, fixed by its place in config_lib.METHODS (not by the
  methods a figure happens to show, so a panel without some curves cannot shift the others' colours)."""
  import matplotlib
  i = list(config_lib.METHODS).index(method)
  return {"color": matplotlib.colors.to_hex(matplotlib.colormaps["tab20"](i % 20)), "marker": MARKERS[i % len(MARKERS)]}


def _label(method: str, same_run: dict[str, str]) -> str:
  return " = ".join([method, *(a for a, m in same_run.items() if m == method)])


def _legend(fig: Any, methods: Sequence[str], same_run: dict[str, str], title: str = "",
            extra: Sequence[Any] = ()) -> None:
  """One legend for the whole figure, entries drawn from method_style (so they match every panel)."""
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], lw=1, **method_style(m), label=_label(m, same_run)) for m in methods]
  fig.legend(handles=handles + list(extra), loc="outside right center", fontsize=7,
             title=title or None, title_fontsize=7)


def iq_eq_figure(vs_base: dict[str, dict[str, list[float]]], same_run: dict[str, str], zoom: float = 10.0) -> Any:
  """Each method's IQ and EQ gain over the base model [95% CI, paired by seed and item] (report.versus_base);
  when some method lies farther than `zoom` points from the base model (DPO's collapse), a second panel shows
  the methods within it."""
  from matplotlib.figure import Figure
  shown = [m for m in vs_base if m not in same_run]
  gains = {m: (100 * np.asarray(vs_base[m]["iq"]), 100 * np.asarray(vs_base[m]["eq"])) for m in shown}
  near = [m for m in shown if max(abs(gains[m][0][0]), abs(gains[m][1][0])) <= zoom]
  panels = [("every method", shown)] + ([(f"within {zoom:g} points of base", near)] if near and near != shown else [])
  fig = Figure(figsize=(5 * len(panels) + 2, 5.5), layout="constrained")
  for ax, (title, methods) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
    for m in methods:
      iq, eq = gains[m]
      ax.errorbar(iq[0], eq[0], xerr=[[iq[0] - iq[1]], [iq[2] - iq[0]]], yerr=[[eq[0] - eq[1]], [eq[2] - eq[0]]],
                  capsize=3, ms=6, **method_style(m), label=_label(m, same_run))
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("IQ − base (points)")
    ax.set_ylabel("EQ − base (points)")
    ax.set_title(title, fontsize=9)
  fig.suptitle("Gain over the base model per method (mean, 95% CI paired by seed and item)", fontsize=10)
  _legend(fig, shown, same_run)
  return fig


CURVE_PANELS = {"gates.png": ("train", (("lambda", "λ (RL weight)"), ("gate_direction", "direction gate"),
                                         ("gate_info", "information gate"))),
                "eq_curve.png": ("eval", (("eq", "EQ (%)"), ("iq", "IQ (%)")))}


def curves_figure(curves: dict[str, dict[str, Any]], name: str, same_run: dict[str, str]) -> Any:
  """The panels of CURVE_PANELS[name] over training steps (means over seeds); eval values in %."""
  from matplotlib.figure import Figure
  group, keys = CURVE_PANELS[name]
  fig = Figure(figsize=(4.5 * len(keys), 4), layout="constrained")
  shown = []
  for ax, (key, ylabel) in zip(fig.subplots(1, len(keys)), keys):
    for m, c in curves.items():
      if m in same_run or key not in c.get(group, {}):
        continue
      steps, values = c[group][key]
      scale = 100 if group == "eval" else 1
      ax.plot(steps, scale * np.asarray(values), lw=1, ms=4, markevery=max(1, len(steps) // 8), **method_style(m),
              label=_label(m, same_run))
      shown.append(m)
    ax.set_title(f"{ylabel} (mean over seeds)", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
  _legend(fig, list(dict.fromkeys(shown)), same_run)
  return fig


def sweep_figure(sweep: dict[str, Any]) -> Any:
  """Per claim, each comparison's a − b [CI] against the swept value (values evenly spaced; a value whose positive
  control failed is shaded)."""
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch
  field, studies = sweep["field"], sweep["studies"]
  values = list(studies)
  claims = list(dict.fromkeys(c["claim"] for st in studies.values() for c in st["claims"]))
  cols = min(3, max(1, len(claims)))
  rows = max(1, math.ceil(len(claims) / cols))
  fig = Figure(figsize=(4.8 * cols, 3.6 * rows), layout="constrained")
  axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
  shown = []
  for ax, claim in zip(axes, claims):
    found = [(x, c) for x, st in enumerate(studies.values()) for c in st["claims"] if c["claim"] == claim]
    bs = list(dict.fromkeys(d["b"] for _, c in found for d in c["comparisons"]))
    for j, b in enumerate(bs):   # the comparisons side by side around each value
      pts = [(x + 0.6 * (j - (len(bs) - 1) / 2) / len(bs), d) for x, c in found for d in c["comparisons"]
             if d["b"] == b]
      diff = np.array([[d["diff"], d["lo"], d["hi"]] for _, d in pts]) * 100
      ax.errorbar([x for x, _ in pts], diff[:, 0], yerr=[diff[:, 0] - diff[:, 1], diff[:, 2] - diff[:, 0]], capsize=2,
                  lw=1, ms=4, label=b, **method_style(b))
    shown += bs
    for x, st in enumerate(studies.values()):
      if st["positive_control"] is not None and not st["positive_control"]["powered"]:
        ax.axvspan(x - 0.45, x + 0.45, color="0.9", zorder=0)
    a, metric = found[0][1]["a"], METRIC_NAMES[found[0][1]["metric"]]
    ax.axhline(0, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(range(len(values)), values)
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel(field)
    ax.set_ylabel(f"{a} − {bs[0] if len(bs) == 1 else 'b'}, {metric} (%)")
    ax.set_title(textwrap.fill(claim, 45), fontsize=9)
  for ax in axes[len(claims):]:
    ax.set_axis_off()
  _legend(fig, list(dict.fromkeys(shown)), {}, title="b in a − b",
          extra=[Patch(color="0.9", label="underpowered value")])
  return fig


def save(fig: Any, path: str) -> None:
  fig.savefig(path, dpi=100)
