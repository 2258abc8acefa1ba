"""``report.html``: one self-contained page that shows where each language lost its rows.

stats.json has the counts, but a reviewer asking "why is Swahili thin?" needs to see
the path of every language from seed to kept row, which step failed, what the filters
removed, and a few conversations to read. This module answers that from what the output
folder holds (stats.json, manifest.json, raw/, the three configs, quarantine/), through
``Store``, so a report can be rebuilt later from a local folder or an s3:// prefix
(``m2l report OUTPUT``) and not only at the end of ``m2l run``.

Gathering (``gather`` -> ``ReportData``) is kept apart from drawing (``make_plots``) and
from writing HTML (``render``): the card (card.py) and the tests use the numbers without
the page. The page has no script and no external resource: plots are matplotlib PNGs
embedded as base64, so it opens offline and renders the same everywhere. Every number
that comes from stats.json sits in a cell with ``data-*`` attributes that name it, so a
reader (or a test) can check the page against stats.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from m2l_ray.errors import M2LError

REPORT_KEY = "report.html"
STATS_KEY = "stats.json"
MANIFEST_KEY = "manifest.json"
CONFIG_NAMES = ("seed_data", "seed_evol_data", "full_data")
RESOURCE_ORDER = ("high", "mid", "low")

# Curation reasons, spelled as m2l_ray/curation/stage.py spells them. Repeated here so
# that reading a report does not import the curation stage (and Ray Data with it).
GENERATION_FAILED = "generation_failed"
HEURISTIC_REASONS = ("malformed_conversation", "empty_turn", "turn_too_short", "turn_too_long",
                     "template_leftover", "refusal", "repeated_ngrams", "duplicate_turn")
LID_REASONS = ("lid_mismatch", "script_mismatch")
NEAR_DUPLICATE = "near_duplicate"

#: The funnel of one language: (key, label). Seeds are counted in seeds, the rest in
#: generated rows (evolved pairs and multi-turn conversations).
STAGES: tuple[tuple[str, str], ...] = (
    ("seeds_usable", "seeds usable"),
    ("seeds_selected", "seeds selected"),
    ("generated", "generated"),
    ("generation_ok", "generation ok"),
    ("after_heuristics", "after heuristics"),
    ("after_lid", "after LID"),
    ("kept", "kept (after dedup)"),
)
ROW_STAGES = tuple(k for k, _ in STAGES[2:])

SAMPLES_PER_REASON = 3
SAMPLES_PER_LANGUAGE = 2
TURN_CHARS = 700  # a sample turn is cut here: enough to judge it, short enough to scan
SAMPLE_TURNS = 8

_SAMPLE_COLUMNS = ["key", "language_code", "task", "kind", "task_evol_type", "multiturn_evol_types",
                   "conversation", "failures", "no_of_turns"]
_KIND_ORDER = {"multiturn": 0, "evolved": 1, "seed": 2}


# ====================================================================== data


@dataclass
class Sample:
    """One conversation as the report shows it (already truncated, not yet escaped)."""

    key: str
    language: str
    task: str
    kind: str
    evol_type: str | None
    multiturn_types: list[str]
    turns: list[tuple[str, str]]
    failures: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    drop_reason: str | None = None
    drop_turn: int | None = None
    hidden_turns: int = 0


@dataclass
class LidStats:
    """LID of one language: the scores the filter compared with its threshold."""

    mode: str
    threshold: float
    expected_scores: list[float] = field(default_factory=list)
    turns_model: int = 0  # turns fastText scored
    turns_script: int = 0  # turns judged by their script alone (language unknown to the model)

    @property
    def script_share(self) -> float | None:
        judged = self.turns_model + self.turns_script
        return self.turns_script / judged if judged else None

    @property
    def below_threshold(self) -> int:
        return sum(s < self.threshold for s in self.expected_scores)


@dataclass
class ReportData:
    """Everything the page shows; numbers from stats.json where it has them."""

    title: str
    output_uri: str
    config_hash: str
    versions: dict[str, str]
    config: dict[str, Any]
    stats: dict[str, Any]
    generated_at: str
    languages: list[str]  # ordered by resource level, then code
    resource: dict[str, str]
    funnel: dict[str, dict[str, int | None]]
    drops: dict[str, dict[str, int]]  # language -> reason -> rows (first reason of a row)
    failures: dict[str, dict[str, int]]  # "step:reason" -> language -> failed steps
    lid: dict[str, LidStats]
    rows: dict[str, dict[str, Counter]]  # config -> "language"|"task"|"kind" -> Counter
    evol_types: Counter
    multiturn_types: Counter
    turns: Counter  # no_of_turns of full_data's multi-turn conversations
    tokens: dict[str, dict[str, Any]]  # language -> usage entry (stats.json usage.by_language)
    dropped_samples: dict[str, list[Sample]]
    kept_samples: dict[str, list[Sample]]
    seeds_per_language_known: bool = False


def gather(store: Any, manifest: Mapping[str, Any] | None = None,
           stats: Mapping[str, Any] | None = None) -> ReportData:
    """Read an output and compute the report's numbers.

    ``manifest`` / ``stats`` are passed by ``m2l run``, which writes the report just
    before it publishes manifest.json; ``m2l report`` reads both from the output.
    """
    # as JSON reads it back: the report of a run and of `m2l report` later are the same
    manifest = (json.loads(json.dumps(manifest, sort_keys=True)) if manifest is not None
                else _get_json(store, MANIFEST_KEY))
    stats = dict(stats if stats is not None else _get_json(store, STATS_KEY))
    config = dict(manifest.get("config") or {})
    raw = _scan_raw(store)
    resource = {**raw["resource"]}
    configs = _scan_configs(store, manifest.get("shards") or [], _lid_settings(config), stats)
    resource.update({k: v for k, v in configs["resource"].items() if k not in resource})
    dropped = _scan_dropped(store, _lid_settings(config), stats, configs["lid"])
    per_lang_seeds = stats.get("seeds_per_language")
    seeds = per_lang_seeds if isinstance(per_lang_seeds, dict) else {
        code: {"selected": n} for code, n in raw["selected"].items()}
    codes = set(stats.get("per_language", {})) | set(seeds) | set(resource)
    languages = sorted(codes, key=lambda c: (_resource_rank(resource.get(c)), c))
    return ReportData(
        title=str(manifest.get("job") or (config.get("job") or {}).get("name") or "m2l-ray output"),
        output_uri=store.uri,
        config_hash=str(manifest.get("config_hash") or ""),
        versions=dict(manifest.get("versions") or {}),
        config=config,
        stats=stats,
        generated_at=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        languages=languages,
        resource=resource,
        funnel=funnel(stats, seeds, languages),
        drops=drops_per_language(stats),
        failures=raw["failures"],
        lid=dropped["lid"],
        rows=configs["rows"],
        evol_types=configs["evol_types"],
        multiturn_types=configs["multiturn_types"],
        turns=configs["turns"],
        tokens=dict((stats.get("usage") or {}).get("by_language") or {}),
        dropped_samples=dropped["samples"],
        kept_samples=configs["samples"],
        seeds_per_language_known=isinstance(per_lang_seeds, dict),
    )


def _get_json(store: Any, key: str) -> dict[str, Any]:
    from m2l_ray.storage import NotFound

    try:
        return store.get_json(key)
    except NotFound:
        raise M2LError(f"{store.uri} has no {key}: not a finished m2l-ray output "
                       "(a run writes it at the end; rerun the job to finish it)") from None


def _resource_rank(level: str | None) -> int:
    return RESOURCE_ORDER.index(level) if level in RESOURCE_ORDER else len(RESOURCE_ORDER)


def funnel(stats: Mapping[str, Any], seeds: Mapping[str, Mapping[str, int]] | None = None,
           languages: Iterable[str] | None = None) -> dict[str, dict[str, int | None]]:
    """Rows left after each step, per language, from stats.json alone.

    A dropped row has one reason (the first problem in curation's order), so taking the
    drops of each filter group off in turn gives the rows that survive each step
    exactly; what is left after the last group is stats.json's ``kept``.
    """
    per = stats.get("per_language") or {}
    seeds = seeds or {}
    out: dict[str, dict[str, int | None]] = {}
    drops = drops_per_language(stats)
    for code in languages if languages is not None else sorted(per):
        c = per.get(code, {})
        d = drops.get(code, {})
        ok = c.get("ok")
        heur = sum(d.get(r, 0) for r in HEURISTIC_REASONS)
        lid = sum(d.get(r, 0) for r in LID_REASONS)
        s = seeds.get(code, {})
        out[code] = {
            "seeds_usable": s.get("usable"),
            "seeds_selected": s.get("selected"),
            "generated": c.get("raw"),
            "generation_ok": ok,
            "after_heuristics": None if ok is None else ok - heur,
            "after_lid": None if ok is None else ok - heur - lid,
            "kept": c.get("kept"),
        }
    return out


def drops_per_language(stats: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """language -> drop reason -> rows, as curation counted them (stats.json)."""
    per = ((stats.get("curation") or {}).get("per_language")) or {}
    return {code: {r: int(n) for r, n in (c.get("dropped") or {}).items()} for code, c in per.items()}


def reason_order(stats: Mapping[str, Any]) -> list[str]:
    """Every drop reason of this output, in curation's order (unknown ones last)."""
    known = [GENERATION_FAILED, *HEURISTIC_REASONS[:6], *LID_REASONS, *HEURISTIC_REASONS[6:],
             NEAR_DUPLICATE]
    seen = {r for d in drops_per_language(stats).values() for r in d} | set(stats.get("drop_reasons") or {})
    return [r for r in known if r in seen] + sorted(seen - set(known))


def _keys(store: Any, prefix: str, suffix: str = ".parquet") -> list[str]:
    return sorted(k for k in store.list(prefix) if k.endswith(suffix))


def _scan_raw(store: Any) -> dict[str, Any]:
    """Failed steps per reason x language, selected seeds and resource level per language.

    raw/ has one row per planned item and each request's failure once, which is what
    stats.json's ``failed_steps`` counts too.
    """
    failures: dict[str, Counter] = defaultdict(Counter)
    selected: dict[str, set[str]] = defaultdict(set)
    resource: dict[str, str] = {}
    for key in _keys(store, "raw/"):
        t = store.read_parquet(key, columns=["language_code", "resource_level", "seed_id", "failures"])
        for code, level, seed, fails in zip(*(t.column(n).to_pylist() for n in t.column_names), strict=True):
            resource.setdefault(code, level)
            selected[code].add(seed)
            for f in fails or ():
                failures[f"{f['step'].split('.')[0]}:{f['reason']}"][code] += 1
    return {
        "failures": {k: dict(sorted(v.items())) for k, v in sorted(failures.items())},
        "selected": {k: len(v) for k, v in sorted(selected.items())},
        "resource": resource,
    }


@dataclass(frozen=True)
class _LidSettings:
    roles: tuple[str, ...]
    threshold: float
    thresholds: dict[str, float]
    enabled: bool


def _lid_settings(config: Mapping[str, Any]) -> _LidSettings:
    """The LID thresholds and checked roles the run used (its config, with defaults)."""
    from m2l_ray.curation.config import CurationConfig

    cur = CurationConfig.from_dict(config.get("curation") or {})
    return _LidSettings(tuple(cur.lid.roles), float(cur.lid.threshold), dict(cur.lid.thresholds),
                        bool(cur.enabled and cur.lid.enabled))


def _lid_modes(stats: Mapping[str, Any]) -> dict[str, str]:
    return dict((((stats.get("curation") or {}).get("lid") or {}).get("modes")) or {})


def _add_lid(acc: dict[str, LidStats], settings: _LidSettings, modes: Mapping[str, str], code: str,
             conversation: Any, expected: Sequence[float | None] | None) -> None:
    """Count one curated row's turns: scored by fastText, or judged by script alone."""
    mode = modes.get(code, "skip" if not settings.enabled else "lid")
    if code not in acc:
        acc[code] = LidStats(mode=mode, threshold=settings.thresholds.get(code, settings.threshold))
    st = acc[code]
    expected = list(expected or ())
    for i, msg in enumerate(conversation or ()):
        score = expected[i] if i < len(expected) else None
        if score is not None:
            st.expected_scores.append(float(score))
            st.turns_model += 1
        elif mode == "script_only" and msg and msg.get("role") in settings.roles and msg.get("content"):
            st.turns_script += 1


def _to_sample(r: Mapping[str, Any], **extra: Any) -> Sample:
    conv = [(str(m.get("role") or ""), str(m.get("content") or "")) for m in r.get("conversation") or () if m]
    shown = [(role, truncate(text)) for role, text in conv[:SAMPLE_TURNS]]
    return Sample(
        key=str(r.get("key")),
        language=str(r.get("language_code")),
        task=str(r.get("task")),
        kind=str(r.get("kind")),
        evol_type=r.get("task_evol_type"),
        multiturn_types=list(r.get("multiturn_evol_types") or []),
        turns=shown,
        failures=[f"{f['step']}: {f['reason']}" + (f" ({truncate(f['detail'], 160)})" if f.get("detail") else "")
                  for f in r.get("failures") or ()],
        hidden_turns=max(0, len(conv) - SAMPLE_TURNS),
        **extra,
    )


def truncate(text: str | None, limit: int = TURN_CHARS) -> str:
    """A turn cut to ``limit`` characters, saying how much was left out."""
    text = text or ""
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters]"


def _scan_configs(store: Any, shards: Sequence[Mapping[str, Any]], lid: _LidSettings,
                  stats: Mapping[str, Any]) -> dict[str, Any]:
    """Balance of every config, LID of the kept rows and kept samples per language."""
    rows: dict[str, dict[str, Counter]] = {}
    evol_types: Counter = Counter()
    mt_types: Counter = Counter()
    turns: Counter = Counter()
    lid_acc: dict[str, LidStats] = {}
    modes = _lid_modes(stats)
    candidates: dict[str, list[tuple[tuple, Sample]]] = defaultdict(list)
    resource: dict[str, str] = {}
    for name in CONFIG_NAMES:
        keys = [s["key"] for s in shards if s.get("config") == name] or _keys(store, f"{name}/")
        acc = {"language": Counter(), "task": Counter(), "kind": Counter()}
        for key in sorted(keys):
            full = name == "full_data"
            cols = ["language_code", "task", "kind", "resource_level", "task_evol_type", "multiturn_evol_types",
                    "no_of_turns"]
            if full:
                cols = sorted(set(cols + _SAMPLE_COLUMNS + ["lid_expected_scores"]))
            t = _read(store, key, cols)
            for r in t.to_pylist():
                acc["language"][r["language_code"]] += 1
                acc["task"][r["task"]] += 1
                acc["kind"][r["kind"]] += 1
                resource.setdefault(r["language_code"], r.get("resource_level"))
                if name == "seed_evol_data" and r.get("task_evol_type"):
                    evol_types[r["task_evol_type"]] += 1
                if not full or r["kind"] == "seed":
                    continue
                if r["kind"] == "multiturn":
                    mt_types.update(r.get("multiturn_evol_types") or ())
                    turns[int(r.get("no_of_turns") or 0)] += 1
                _add_lid(lid_acc, lid, modes, r["language_code"], r.get("conversation"),
                         r.get("lid_expected_scores"))
                _offer(candidates[r["language_code"]], (_KIND_ORDER.get(r["kind"], 9), r["key"]), r,
                       SAMPLES_PER_LANGUAGE)
        rows[name] = acc
    samples = {code: [_to_sample(r) for _, r in sorted(c, key=lambda x: x[0])]
               for code, c in sorted(candidates.items())}
    return {"rows": rows, "evol_types": evol_types, "multiturn_types": mt_types, "turns": turns,
            "lid": lid_acc, "samples": samples, "resource": resource}


def _read(store: Any, key: str, columns: Sequence[str]) -> Any:
    """Those columns of a shard; of an older output lacking some, the ones it has."""
    from m2l_ray.errors import StorageError

    try:
        return store.read_parquet(key, columns=list(columns))
    except (StorageError, KeyError, ValueError, OSError):
        t = store.read_parquet(key)
        return t.select([c for c in columns if c in t.column_names])


def _offer(bucket: list[tuple[tuple, Any]], rank: tuple, row: Any, n: int) -> None:
    """Keep the ``n`` best-ranked rows seen so far (deterministic: ranks include the key)."""
    bucket.append((rank, row))
    if len(bucket) > n:
        bucket.sort(key=lambda x: x[0])
        del bucket[n:]


def _scan_dropped(store: Any, lid: _LidSettings, stats: Mapping[str, Any],
                  lid_acc: dict[str, LidStats]) -> dict[str, Any]:
    """Dropped examples per reason, spread over languages; LID of the dropped rows.

    The LID distribution needs the dropped turns too: the kept ones are, by
    construction, the ones above the threshold.
    """
    modes = _lid_modes(stats)
    per_reason: dict[str, dict[str, list[tuple[tuple, Any]]]] = defaultdict(lambda: defaultdict(list))
    for key in _keys(store, "quarantine/"):
        cols = _SAMPLE_COLUMNS + ["drop_reason", "drop_turn", "curation_flags", "lid_expected_scores"]
        t = _read(store, key, cols)
        for r in t.to_pylist():
            reason = r.get("drop_reason") or "?"
            if reason != GENERATION_FAILED:
                _add_lid(lid_acc, lid, modes, r["language_code"], r.get("conversation"),
                         r.get("lid_expected_scores"))
            _offer(per_reason[reason][r["language_code"]], (r["key"],), r, SAMPLES_PER_REASON)
    samples: dict[str, list[Sample]] = {}
    for reason in reason_order(stats) + sorted(set(per_reason) - set(reason_order(stats))):
        by_lang = per_reason.get(reason)
        if not by_lang:
            continue
        picked = _round_robin({c: [r for _, r in sorted(v, key=lambda x: x[0])] for c, v in by_lang.items()},
                              SAMPLES_PER_REASON)
        samples[reason] = [_to_sample(r, flags=list(r.get("curation_flags") or []), drop_reason=reason,
                                      drop_turn=r.get("drop_turn")) for r in picked]
    for code, mode in modes.items():  # a language with no curated turn still has a row
        lid_acc.setdefault(code, LidStats(mode=mode, threshold=lid.thresholds.get(code, lid.threshold)))
    return {"samples": samples, "lid": dict(sorted(lid_acc.items()))}


def _round_robin(groups: Mapping[str, list[Any]], n: int) -> list[Any]:
    """Up to ``n`` items taking one from each group in turn, so one language doesn't fill
    the whole list of a reason."""
    out: list[Any] = []
    queues = [list(groups[k]) for k in sorted(groups)]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


# ====================================================================== plots


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


# ====================================================================== HTML


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
padding:1rem 2rem;color:#1d232a;background:#fff}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dfe3e8;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:right}
th{background:#f3f5f7}td.l,th.l{text-align:left}
tr.level td{background:#eef4fb;font-weight:600;text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.4rem 0}
.meta{color:#57606a;font-size:.9rem}
.conv{border:1px solid #d0d7de;border-radius:6px;margin:.7rem 0;padding:.5rem .8rem;background:#fbfcfd}
.conv .hd{font-size:.85rem;color:#57606a;margin-bottom:.3rem}
.turn{margin:.25rem 0;white-space:pre-wrap;word-break:break-word}
.role{display:inline-block;min-width:5.5rem;font-weight:600}
.role.user{color:#0550ae}.role.assistant{color:#116329}
.bad{color:#cf222e}.zero{color:#aab}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else _e(value)


def _td(value: Any, cls: str = "", **attrs: Any) -> str:
    extra = "".join(f' data-{k.replace("_", "-")}="{_e(v)}"' for k, v in attrs.items())
    klass = f' class="{cls}"' if cls else ""
    return f"<td{klass}{extra}>{_num(value) if cls != 'l' else _e(value)}</td>"


def _img(plots: Mapping[str, str], name: str, alt: str) -> str:
    if name not in plots:
        return f'<p class="meta">No data for the {_e(alt)} plot.</p>'
    return f'<img data-plot="{name}" alt="{_e(alt)}" src="data:image/png;base64,{plots[name]}">'


def _section(sid: str, title: str, body: Iterable[str]) -> str:
    return f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n' + "\n".join(body) + "\n</section>"


def render(data: ReportData, plots: Mapping[str, str]) -> str:
    """The whole page; every text from the data is escaped."""
    parts = [
        _overview(data),
        _section("funnel", "Per-language funnel", _funnel_body(data, plots)),
        _section("drops", "Curation drops by reason", _drops_body(data, plots)),
        _section("failures", "Failed generation steps", _failures_body(data, plots)),
        _section("lid", "Language ID", _lid_body(data, plots)),
        _section("balance", "Balance", _balance_body(data, plots)),
        _section("dropped-samples", "Dropped examples", _dropped_body(data)),
        _section("kept-samples", "Kept conversations", _kept_body(data)),
        _section("config", "Config and versions", _config_body(data)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(data.title)}: m2l-ray report</title>\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def _overview(d: ReportData) -> str:
    s = d.stats
    total = (s.get("usage") or {}).get("total") or {}
    cost = total.get("cost")
    rows = s.get("rows") or {}
    items = [
        ("seeds read", "seeds_read", s.get("seeds_read")),
        ("seeds quarantined", "seeds_quarantined", s.get("seeds_quarantined")),
        ("seeds selected", "seeds_selected", s.get("seeds_selected")),
        ("generated rows", "conversations_raw", s.get("conversations_raw")),
        ("generation ok", "conversations_ok", s.get("conversations_ok")),
        ("kept after curation", "conversations_final", s.get("conversations_final")),
        *((f"rows in {n}", f"rows.{n}", rows.get(n)) for n in CONFIG_NAMES),
        ("prompt tokens", "prompt_tokens", s.get("prompt_tokens")),
        ("completion tokens", "completion_tokens", s.get("completion_tokens")),
    ]
    if cost is not None:
        items.append(("cost", "cost", cost))
    table = ["<table id=\"overview-table\"><tbody>"] + [
        f'<tr><th class="l">{_e(label)}</th>{_td(v, stat=key)}</tr>' for label, key, v in items
    ] + ["</tbody></table>"]
    return _section("overview", "Overview", [
        f"<h1>{_e(d.title)}</h1>",
        f'<p class="meta">{_e(d.output_uri)} · config hash <code>{_e(d.config_hash)}</code> · '
        f'report made <span id="generated-at">{_e(d.generated_at)}</span></p>',
        "<p>Where each language lost its rows: the funnel from seeds to kept rows, the "
        "generation failures and curation drops behind it, and samples of what was kept and dropped.</p>",
        *table,
    ]).replace("<h2>Overview</h2>\n", "", 1)


def _funnel_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    head = "".join(f"<th>{_e(label)}</th>" for _, label in STAGES)
    out = ["<p>Seeds are counted in seeds; from <em>generated</em> on, in generated rows "
           "(evolved pairs and multi-turn conversations). Each curation column takes that "
           "filter group's drops off the one before; <em>kept</em> is what the output holds. "
           "Seed rows (the validated input) are not curated and not counted here.</p>"]
    if not d.seeds_per_language_known:
        out.append('<p class="meta">stats.json of this output has no per-language seed counts: '
                   "<em>seeds selected</em> is counted from raw/, <em>seeds usable</em> is unknown "
                   f"(all languages: {_num(d.stats.get('seeds_usable'))}).</p>")
    out.append(f'<table id="funnel-table"><thead><tr><th class="l">language</th>{head}'
               "<th>kept / generated</th></tr></thead><tbody>")
    level = object()
    for code in d.languages:
        if d.resource.get(code) != level:
            level = d.resource.get(code)
            out.append(f'<tr class="level"><td colspan="{len(STAGES) + 2}">{_e(level or "unknown")}-resource'
                       "</td></tr>")
        f = d.funnel.get(code, {})
        rate = (f"{f['kept'] / f['generated']:.0%}" if f.get("generated") and f.get("kept") is not None
                else "—")
        cells = "".join(_td(f.get(k), lang=code, stage=k) for k, _ in STAGES)
        out.append(f'<tr data-resource="{_e(level)}">{_td(code, "l")}{cells}<td>{rate}</td></tr>')
    out.append("</tbody></table>")
    out.append(_img(plots, "funnel", "funnel per language"))
    return out


def _drops_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    reasons = reason_order(d.stats)
    if not reasons:
        return ["<p>Nothing was dropped.</p>"]
    head = "".join(f"<th>{_e(r)}</th>" for r in reasons)
    out = ["<p>Rows per language by the reason they were dropped for (each row counts once, "
           "under its first problem in curation's order: generation failure, heuristics, LID, "
           "repetition heuristics, near-duplicate).</p>",
           f'<table id="drops-table"><thead><tr><th class="l">language</th>{head}</tr></thead><tbody>']
    for code in d.languages:
        cells = "".join(_td(d.drops.get(code, {}).get(r, 0), lang=code, reason=r) for r in reasons)
        out.append(f"<tr>{_td(code, 'l')}{cells}</tr>")
    totals = d.stats.get("drop_reasons") or {}
    out.append('<tr><th class="l">all</th>' + "".join(
        _td(totals.get(r, 0), total_reason=r) for r in reasons) + "</tr>")
    out.append("</tbody></table>")
    out.append(_img(plots, "drops", "drops by reason"))
    return out


def _failures_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    totals = d.stats.get("failed_steps") or {}
    if not d.failures and not totals:
        return ["<p>No generation step failed.</p>"]
    head = "".join(f"<th>{_e(c)}</th>" for c in d.languages)
    out = ["<p>Every problem a generation step (evolution, answer, user turn) recorded, by "
           "step:reason and language, counted in raw/ (stats.json's <code>failed_steps</code>). "
           "An evolution is retried up to <code>engine.evol_attempts</code> times and an answer "
           "cut at max_tokens is kept but recorded, so a row can carry failures and still be ok; "
           "a row whose step failed for good is dropped as <code>generation_failed</code>.</p>",
           f'<table id="failures-table"><thead><tr><th class="l">step:reason</th>{head}<th>all</th>'
           "</tr></thead><tbody>"]
    for reason in sorted(set(d.failures) | set(totals)):
        cells = "".join(_td(d.failures.get(reason, {}).get(c, 0), lang=c, failure=reason) for c in d.languages)
        out.append(f"<tr>{_td(reason, 'l')}{cells}{_td(totals.get(reason, 0), total_failure=reason)}</tr>")
    out.append("</tbody></table>")
    out.append(_img(plots, "failures", "failures heatmap"))
    return out


def _lid_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    if not d.lid:
        return ["<p>No curated turn was checked (LID off, or nothing reached curation).</p>"]
    out = ["<p>The probability fastText gives each curated turn's expected language (kept and "
           "dropped rows), against the language's threshold; languages the model has no "
           "label for are judged by their script alone. Turns shorter than "
           "<code>curation.lid.min_chars</code> are scored but not judged.</p>",
           '<table id="lid-table"><thead><tr><th class="l">language</th><th class="l">mode</th>'
           "<th>threshold</th><th>turns scored</th><th>below threshold</th><th>median score</th>"
           "<th>turns judged by script only</th><th>script-only share</th></tr></thead><tbody>"]
    for code in [c for c in d.languages if c in d.lid]:
        st = d.lid[code]
        scores = sorted(st.expected_scores)
        median = scores[len(scores) // 2] if scores else None
        share = st.script_share
        out.append(f"<tr>{_td(code, 'l')}{_td(st.mode, 'l', lang=code, lid='mode')}"
                   f"{_td(st.threshold, lang=code, lid='threshold')}"
                   f"{_td(st.turns_model, lang=code, lid='turns_model')}"
                   f"{_td(st.below_threshold, lang=code, lid='below')}{_td(median)}"
                   f"{_td(st.turns_script, lang=code, lid='turns_script')}"
                   f"<td>{'—' if share is None else f'{share:.0%}'}</td></tr>")
    judged = sum(s.turns_model + s.turns_script for s in d.lid.values())
    script = sum(s.turns_script for s in d.lid.values())
    out.append("</tbody></table>")
    out.append(f'<p>All languages: <span data-lid="script_share_all">{script / judged if judged else 0:.1%}'
               f"</span> of {judged:,} judged turns were judged by script only.</p>")
    out.append(_img(plots, "lid", "LID scores"))
    return out


def _counter_table(tid: str, counts: Counter, head: str) -> str:
    rows = "".join(f"<tr>{_td(k, 'l')}{_td(v, item=k)}</tr>"
                   for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))
    return f'<table id="{tid}"><thead><tr><th class="l">{_e(head)}</th><th>rows</th></tr></thead>' \
           f"<tbody>{rows}</tbody></table>"


def _balance_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    head = "".join(f"<th>{n}</th>" for n in CONFIG_NAMES)
    out = ["<h3>Rows per language and config</h3>",
           f'<table id="rows-language-table"><thead><tr><th class="l">language</th>{head}</tr></thead><tbody>']
    for code in d.languages:
        cells = "".join(_td(d.rows.get(n, {}).get("language", Counter()).get(code, 0), config=n, lang=code)
                        for n in CONFIG_NAMES)
        out.append(f"<tr>{_td(code, 'l')}{cells}</tr>")
    totals = d.stats.get("rows") or {}
    out.append('<tr><th class="l">all</th>' + "".join(_td(totals.get(n, 0), config_total=n)
                                                      for n in CONFIG_NAMES) + "</tr></tbody></table>")
    out.append(_img(plots, "rows_language", "rows per language"))
    tasks = sorted({t for n in CONFIG_NAMES for t in d.rows.get(n, {}).get("task", {})})
    out += ["<h3>Rows per task and config</h3>",
            f'<table id="rows-task-table"><thead><tr><th class="l">task</th>{head}</tr></thead><tbody>']
    for task in tasks:
        cells = "".join(_td(d.rows.get(n, {}).get("task", Counter()).get(task, 0), config=n, task=task)
                        for n in CONFIG_NAMES)
        out.append(f"<tr>{_td(task, 'l')}{cells}</tr>")
    out.append("</tbody></table>")
    out.append(_img(plots, "rows_task", "rows per task"))
    out += ["<h3>Task-evol types (kept evolved pairs)</h3>",
            _counter_table("evol-types-table", d.evol_types, "task-evol type"),
            _img(plots, "evol_types", "evol types"),
            "<h3>Multi-turn evol types (further user turns of kept multi-turn conversations)</h3>",
            _counter_table("multiturn-types-table", d.multiturn_types, "multi-turn evol type"),
            _img(plots, "multiturn_types", "multi-turn types"),
            "<h3>Turns per multi-turn conversation</h3>",
            _counter_table("turns-table", d.turns, "user turns"),
            _img(plots, "turns", "turns per conversation")]
    out += _tokens_body(d, plots)
    return out


def _tokens_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    usage = d.stats.get("usage") or {}
    total = usage.get("total") or {}
    has_cost = any("cost" in e for e in d.tokens.values()) or "cost" in total
    head = "<th>prompt tokens</th><th>completion tokens</th><th>requests</th>" + (
        "<th>cost</th>" if has_cost else "")
    out = ["<h3>Tokens per language</h3>",
           "<p>Every request that made the output's rows, including failed ones and those "
           "served from a cache (what the dataset cost to make).</p>",
           f'<table id="tokens-table"><thead><tr><th class="l">language</th>{head}</tr></thead><tbody>']

    def cells(e: Mapping[str, Any], **attrs: Any) -> str:
        out = "".join(_td(e.get(f"{k}_tokens" if k != "requests" else k, 0), tokens=k, **attrs)
                      for k in ("prompt", "completion", "requests"))
        return out + (_td(e.get("cost"), tokens="cost", **attrs) if has_cost else "")

    for code in [c for c in d.languages if c in d.tokens]:
        out.append(f"<tr>{_td(code, 'l')}{cells(d.tokens[code], lang=code)}</tr>")
    out.append(f'<tr><th class="l">all</th>{cells(total, lang="all")}</tr></tbody></table>')
    if not has_cost:
        out.append('<p class="meta">No prices set (engine.openai.price_per_1k_*), so no cost.</p>')
    out.append(_img(plots, "tokens", "tokens per language"))
    return out


def _sample_html(s: Sample) -> str:
    head = [f"<b>{_e(s.language)}</b>", _e(s.task), _e(s.kind)]
    if s.evol_type:
        head.append(f"evol: {_e(s.evol_type)}")
    if s.multiturn_types:
        head.append("multi-turn: " + _e(", ".join(s.multiturn_types)))
    head.append(f"<code>{_e(s.key)}</code>")
    if s.drop_reason:
        turn = f" at turn {s.drop_turn}" if s.drop_turn is not None else ""
        head.append(f'<span class="bad">dropped: {_e(s.drop_reason)}{turn}</span>')
    lines = [f'<div class="conv" data-lang="{_e(s.language)}" data-key="{_e(s.key)}"'
             + (f' data-reason="{_e(s.drop_reason)}"' if s.drop_reason else "") + ">",
             f'<div class="hd">{" · ".join(head)}</div>']
    for i, (role, text) in enumerate(s.turns):
        mark = " bad" if s.drop_turn == i else ""
        lines.append(f'<div class="turn{mark}"><span class="role {_e(role)}">{_e(role)}</span>{_e(text)}</div>')
    if s.hidden_turns:
        lines.append(f'<div class="meta">… {s.hidden_turns} more turns</div>')
    if s.failures:
        lines.append('<div class="bad">failures: ' + _e("; ".join(s.failures)) + "</div>")
    if s.flags:
        lines.append('<div class="meta">curation flags: ' + _e(", ".join(s.flags)) + "</div>")
    lines.append("</div>")
    return "\n".join(lines)


def _dropped_body(d: ReportData) -> list[str]:
    if not d.dropped_samples:
        return ["<p>Nothing was dropped.</p>"]
    out = [f"<p>Up to {SAMPLES_PER_REASON} rows per reason, from as many languages as "
           f"possible; turns cut at {TURN_CHARS} characters.</p>"]
    for reason, samples in d.dropped_samples.items():
        out.append(f'<h3 data-reason="{_e(reason)}">{_e(reason)}</h3>')
        out += [_sample_html(s) for s in samples]
    return out


def _kept_body(d: ReportData) -> list[str]:
    if not d.kept_samples:
        return ["<p>No generated row was kept.</p>"]
    out = [f"<p>Up to {SAMPLES_PER_LANGUAGE} kept generated rows per language (multi-turn first).</p>"]
    for code in [c for c in d.languages if c in d.kept_samples]:
        out.append(f'<h3 data-lang="{_e(code)}">{_e(code)} ({_e(d.resource.get(code) or "?")}-resource)</h3>')
        out += [_sample_html(s) for s in d.kept_samples[code]]
    return out


def _config_body(d: ReportData) -> list[str]:
    import yaml

    versions = "".join(f"<tr>{_td(k, 'l')}{_td(v, 'l')}</tr>" for k, v in sorted(d.versions.items()))
    return [f"<p>config hash <code>{_e(d.config_hash)}</code></p>",
            f'<table id="versions-table"><tbody>{versions}</tbody></table>',
            "<pre>" + _e(yaml.safe_dump(d.config, sort_keys=False, allow_unicode=True)) + "</pre>"]


# ====================================================================== entry points


def build_report(store: Any, manifest: Mapping[str, Any] | None = None,
                 stats: Mapping[str, Any] | None = None) -> str:
    """The page of an output, as text."""
    data = gather(store, manifest, stats)
    return render(data, make_plots(data))


def write_report(store: Any, manifest: Mapping[str, Any] | None = None,
                 stats: Mapping[str, Any] | None = None) -> str:
    """Write ``report.html`` beside the output; returns its URI."""
    store.put_bytes(REPORT_KEY, build_report(store, manifest, stats).encode("utf-8"))
    return store.key_uri(REPORT_KEY)


def open_output(uri: str, endpoint_url: str | None = None, path_style: bool = False) -> Any:
    """The store of an output named on the command line (s3 settings from flags or env)."""
    from m2l_ray.storage import StorageOptions, Store

    return Store.open(uri, StorageOptions(endpoint_url=endpoint_url, path_style=path_style))


def add_storage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", metavar="OUTPUT", help="output folder or s3://bucket/prefix of a finished run")
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (default: M2L_S3_ENDPOINT / AWS_ENDPOINT_URL*)")
    p.add_argument("--path-style", action="store_true", help="path-style S3 addressing (SeaweedFS, MinIO)")


def _report_command(args: argparse.Namespace) -> int:
    store = open_output(args.output, args.endpoint_url, args.path_style)
    print(write_report(store))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``m2l report`` to the ``m2l`` parser."""
    p = sub.add_parser("report", help="(re)write report.html of a finished output",
                       description="Write report.html (funnel per language, failures, LID, balance, "
                                   "samples) beside a finished output, local or s3://.")
    add_storage_arguments(p)
    p.set_defaults(func=_report_command)
