"""The report's plots: matplotlib figures of ``ReportData``, embedded as base64 PNGs.

PNGs instead of an interactive chart library keep the page free of scripts and external
resources: it opens offline and renders the same everywhere.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

from m2l_ray.layout import CONFIG_NAMES
from m2l_ray.report.data import RESOURCE_ORDER, ROW_STAGES, STAGES, ReportData, reason_order


def make_plots(data: ReportData) -> dict[str, str]:
    """name -> base64 PNG of every plot that has something to show."""
    builders = {
        "funnel": _plot_funnel,
        "drops": _plot_drops,
        "failures": _plot_failures,
        "lid": _plot_lid,
        "rows_language": lambda d: _plot_config_counts(d, "language", d.languages, "rows per language"),
        "rows_task": lambda d: _plot_config_counts(d, "task", None, "rows per task"),
        "evol_types": lambda d: _plot_counter(d.evol_types, "evolved pairs per task-evol type (seed_evol_data)"),
        "multiturn_types": lambda d: _plot_counter(d.multiturn_types,
                                                   "further user turns per multi-turn evol type"),
        "turns": _plot_turns,
        "tokens": _plot_tokens,
    }
    out = {}
    for name, build in builders.items():
        fig = build(data)
        if fig is not None:
            out[name] = png_base64(fig)
    return out


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _integer_axis(axis: Any) -> None:
    """Counts get whole-number ticks (a small run would otherwise show 0.2 rows)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def png_base64(fig: Any) -> str:
    buf = io.BytesIO()
    # no Software/time metadata: the same output gives byte-identical plots
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_funnel(d: ReportData) -> Any:
    levels = [lv for lv in [*RESOURCE_ORDER, None] if any(d.resource.get(c) == lv for c in d.languages)]
    if not d.languages:
        return None
    fig = _figure(11, 2.8 * len(levels) + 0.6)
    axes = fig.subplots(len(levels), 1, squeeze=False)[:, 0]
    labels = dict(STAGES)
    for ax, level in zip(axes, levels, strict=True):
        codes = [c for c in d.languages if d.resource.get(c) == level]
        width = 0.8 / len(ROW_STAGES)
        for i, stage in enumerate(ROW_STAGES):
            vals = [d.funnel[c][stage] or 0 for c in codes]
            ax.bar([x + i * width for x in range(len(codes))], vals, width, label=labels[stage],
                   color=f"C{i}")
        ax.set_xticks([x + width * (len(ROW_STAGES) - 1) / 2 for x in range(len(codes))], codes)
        ax.set_title(f"{level or 'unknown'}-resource languages", loc="left")
        ax.set_ylabel("generated rows")
        _integer_axis(ax.yaxis)
    axes[0].legend(ncols=len(ROW_STAGES), fontsize="small", loc="upper right")
    return fig


def _plot_drops(d: ReportData) -> Any:
    reasons = reason_order(d.stats)
    if not reasons:
        return None
    fig = _figure(11, 0.45 * len(d.languages) + 1.6)
    ax = fig.subplots()
    left = [0] * len(d.languages)
    for i, reason in enumerate(reasons):
        vals = [d.drops.get(c, {}).get(reason, 0) for c in d.languages]
        ax.barh(d.languages, vals, left=left, label=reason, color=f"C{i % 10}")
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("dropped rows (first reason of each row)")
    _integer_axis(ax.xaxis)
    ax.legend(fontsize="small", loc="lower right")
    return fig


def _plot_failures(d: ReportData) -> Any:
    if not d.failures:
        return None
    reasons = list(d.failures)
    codes = d.languages
    grid = [[d.failures[r].get(c, 0) for c in codes] for r in reasons]
    fig = _figure(max(6.0, 0.8 * len(codes) + 3), 0.5 * len(reasons) + 1.8)
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(codes)), codes)
    ax.set_yticks(range(len(reasons)), reasons)
    top = max(max(row) for row in grid) or 1
    for y, row in enumerate(grid):
        for x, v in enumerate(row):
            ax.text(x, y, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.colorbar(im, ax=ax, label="failed steps")
    ax.set_title("failed generation steps (step:reason x language)", loc="left")
    return fig


def _plot_lid(d: ReportData) -> Any:
    codes = [c for c in d.languages if c in d.lid]
    if not codes:
        return None
    fig = _figure(11, 4.8)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 1])
    data = [d.lid[c].expected_scores or [float("nan")] for c in codes]
    ax.boxplot(data, tick_labels=codes, showfliers=True)
    for x, c in enumerate(codes, start=1):
        ax.hlines(d.lid[c].threshold, x - 0.4, x + 0.4, colors="red", linestyles="dashed",
                  label="threshold" if x == 1 else None)
        for s in d.lid[c].expected_scores:
            ax.plot(x + 0.25, s, marker="_", color="C0", alpha=0.4)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("probability of the expected language")
    ax.set_title("LID score per turn against each language's threshold", loc="left")
    ax.legend(loc="lower right", fontsize="small")
    shares = [d.lid[c].script_share or 0.0 for c in codes]
    ax2.barh(codes, shares, color="C1")
    ax2.set_xlim(0, 1)
    ax2.invert_yaxis()
    ax2.set_title("share judged by script only", loc="left")
    return fig


def _plot_config_counts(d: ReportData, dim: str, order: Sequence[str] | None, title: str) -> Any:
    keys = list(order) if order else sorted({k for cfg in d.rows.values() for k in cfg[dim]})
    if not keys:
        return None
    fig = _figure(11, 3.6)
    ax = fig.subplots()
    width = 0.8 / len(CONFIG_NAMES)
    for i, name in enumerate(CONFIG_NAMES):
        vals = [d.rows.get(name, {}).get(dim, Counter()).get(k, 0) for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], vals, width, label=name, color=f"C{i}")
    ax.set_xticks([x + width for x in range(len(keys))], keys, rotation=30 if dim == "task" else 0,
                  ha="right" if dim == "task" else "center")
    ax.set_ylabel("rows")
    _integer_axis(ax.yaxis)
    ax.set_title(title, loc="left")
    ax.legend(fontsize="small")
    return fig


def _plot_counter(counts: Counter, title: str) -> Any:
    if not counts:
        return None
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig = _figure(11, 0.32 * len(items) + 1.4)
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color="C2")
    ax.invert_yaxis()
    _integer_axis(ax.xaxis)
    ax.set_title(title, loc="left")
    return fig


def _plot_turns(d: ReportData) -> Any:
    if not d.turns:
        return None
    fig = _figure(6, 3)
    ax = fig.subplots()
    keys = sorted(d.turns)
    ax.bar(range(len(keys)), [d.turns[k] for k in keys], color="C4")
    ax.set_xticks(range(len(keys)), [str(k) for k in keys])
    _integer_axis(ax.yaxis)
    ax.set_xlabel("user turns")
    ax.set_ylabel("multi-turn conversations (full_data)")
    return fig


def _plot_tokens(d: ReportData) -> Any:
    codes = [c for c in d.languages if c in d.tokens]
    if not codes:
        return None
    fig = _figure(11, 3.4)
    ax = fig.subplots()
    prompt = [d.tokens[c].get("prompt_tokens", 0) for c in codes]
    completion = [d.tokens[c].get("completion_tokens", 0) for c in codes]
    ax.bar(range(len(codes)), prompt, label="prompt", color="C0")
    ax.bar(range(len(codes)), completion, bottom=prompt, label="completion", color="C1")
    ax.set_xticks(range(len(codes)), codes)
    ax.set_ylabel("tokens")
    ax.legend(fontsize="small")
    return fig

