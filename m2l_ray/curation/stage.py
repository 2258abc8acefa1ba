"""The curation stage of ``m2l run``: heuristics + LID per turn, then MinHash dedup.

``curate`` takes the raw conversations (RAW_SCHEMA) as a Ray dataset and returns
the kept and the dropped rows as Ray datasets plus per-language statistics:

* rows whose generation failed are dropped as ``generation_failed``;
* every other row gets every heuristic and LID check (so each filter has its own
  pass rate per language), and its drop reason is the first problem in
  ``REASON_ORDER``, derived from the ordered filter list in curation/filters/order.py
  (``drop_turn`` says which turn);
* rows that survive (all rows in annotate-only mode) are deduplicated; the member
  of each cluster with the smallest key hash is kept, so the same input keeps the
  same rows however it is split into blocks.

Annotation columns on both outputs: ``lid_labels`` / ``lid_scores`` /
``lid_expected_scores`` (one entry per turn, null for turns not checked),
``curation_flags`` (every problem found, as ``reason@turn``), ``dedup_cluster``.
The dropped rows also carry ``drop_reason`` and ``drop_turn``. Annotate-only
mode drops nothing but failed generations and records the would-be reasons in
``curation_flags``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from m2l_ray.curation import filters, langid
from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.dedup import CLUSTER, DUPLICATE, as_table, dedup
from m2l_ray.curation.filters import GENERATION_FAILED, NEAR_DUPLICATE, REASON_ORDER
from m2l_ray.curation.textnorm import turns as conversation_turns

#: Every filter's reasons and near_duplicate, each with its own pass rate in the stats.
RATED = REASON_ORDER[1:]

PRE_REASON = "_m2l_pre_reason"
PRE_TURN = "_m2l_pre_turn"
ELIGIBLE = "_m2l_eligible"
ANNOTATION_FIELDS = [
    pa.field("lid_labels", pa.list_(pa.string())),
    pa.field("lid_scores", pa.list_(pa.float32())),
    pa.field("lid_expected_scores", pa.list_(pa.float32())),
    pa.field("curation_flags", pa.list_(pa.string())),
    pa.field(CLUSTER, pa.string()),
]
DROP_FIELDS = [pa.field("drop_reason", pa.string()), pa.field("drop_turn", pa.int32())]


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs, decided on the driver (picklable, no registry)."""

    chain: filters.FilterChain
    annotate_only: bool
    enabled: bool


@dataclass
class CurationResult:
    """Kept and dropped rows (Ray datasets over one materialised result) and stats."""

    kept: Any
    dropped: Any
    _final: Any
    _base_stats: dict[str, Any] = field(default_factory=dict)
    _stats: dict[str, Any] | None = None

    def stats(self) -> dict[str, Any]:
        """Counts per reason per language and per-language pass rates of every filter.

        Computed on first call from the materialised result: one small task per
        block returns its counts, the driver adds them up.
        """
        if self._stats is None:
            parts = self._final.map_batches(_count_block, batch_size=None,
                                            batch_format="pyarrow").take_all()
            self._stats = _summarise(parts, self._base_stats)
        return self._stats


# ---------------------------------------------------------------------- driver


def curate(ds: Any, cfg: CurationConfig, registry: Any) -> CurationResult:
    """Curate raw conversations; see the module docstring for what happens to a row."""
    n_rows = ds.count()
    codes = _language_codes(ds) if n_rows else []
    warnings = cfg.validate_languages(registry, codes) if cfg.enabled else []
    ctx = _context(cfg, registry, codes)
    checked = ds.repartition(target_num_rows_per_block=cfg.block_rows).map_batches(
        _check_batch, batch_format="pyarrow", fn_kwargs={"ctx": ctx})
    dedup_stats: dict[str, Any] = {"enabled": False}
    if cfg.enabled and cfg.dedup.enabled and n_rows:
        res = dedup(checked, cfg.dedup, registry=registry, language_field="language_code",
                    eligible_field=ELIGIBLE, split_blocks=False)
        annotated = res.ds
        dedup_stats = {"enabled": True, **res.stats}
    else:
        annotated = checked.map_batches(_no_dedup, batch_format="pyarrow")
    final = annotated.map_batches(
        _finalize_batch, batch_format="pyarrow",
        fn_kwargs={"annotate_only": cfg.annotate_only}).materialize()
    drop_names = [f.name for f in DROP_FIELDS]
    kept = final.map_batches(_select, batch_format="pyarrow",
                             fn_kwargs={"dropped": False, "drop": drop_names})
    dropped = final.map_batches(_select, batch_format="pyarrow",
                                fn_kwargs={"dropped": True, "drop": []})
    base = {
        "enabled": cfg.enabled,
        "annotate_only": cfg.annotate_only,
        "warnings": warnings,
        "lid": {
            "enabled": cfg.enabled and cfg.lid.enabled,
            "model": cfg.lid.model,
            "family": cfg.lid.resolved_family(),
            "modes": {c: p.mode for c, p in langid.build_plans(cfg, registry, codes).items()},
        },
        "dedup": dedup_stats,
    }
    return CurationResult(kept=kept, dropped=dropped, _final=final, _base_stats=base)


def _language_codes(ds: Any) -> list[str]:
    """Distinct language codes, one small task per block (no shuffle)."""
    rows = ds.select_columns(["language_code"]).map_batches(
        _codes_block, batch_size=None, batch_format="pyarrow").take_all()
    return sorted({r["code"] for r in rows})


def _codes_block(batch: Any) -> pa.Table:
    t = as_table(batch)
    codes = pc.unique(t.column("language_code").drop_null()).to_pylist() if t.num_rows else []
    return pa.table({"code": pa.array(codes, pa.string())})


def _context(cfg: CurationConfig, registry: Any, codes: list[str]) -> _Context:
    return _Context(
        chain=filters.build_chain(cfg, registry, codes),
        annotate_only=cfg.annotate_only,
        enabled=cfg.enabled,
    )


# ---------------------------------------------------------------------- workers


def _check_row(status: str | None, conversation: Any, code: str | None, task: str | None,
               ctx: _Context) -> tuple[list, list, list, list, str | None, int | None]:
    """(lid labels, lid scores, expected scores, flags, first reason, its turn) of a row."""
    pairs = conversation_turns(conversation)
    if status != "ok":
        return [], [], [], [], GENERATION_FAILED, None
    none = [None] * len(pairs)
    if not ctx.enabled:
        return none, none, none, [], None, None
    conv = filters.Conversation(pairs, code, task)
    problems = ctx.chain.check(conv)
    labels, scores, expected = conv.notes.get("lid", (none, none, none))
    flags = [f"{r}@{i}" if i is not None else r for r, i in problems]
    first = filters.first_problem(problems)
    return labels, scores, expected, flags, first[0], first[1]


def _check_batch(batch: Any, ctx: _Context) -> pa.Table:
    t = as_table(batch)
    status = t.column("status").to_pylist()
    convs = t.column("conversation").to_pylist()
    codes = t.column("language_code").to_pylist()
    tasks = t.column("task").to_pylist() if "task" in t.column_names else [None] * t.num_rows
    cols: dict[str, list] = {k: [] for k in ("labels", "scores", "expected", "flags", "reason",
                                             "turn", "eligible")}
    for st, conv, code, task in zip(status, convs, codes, tasks, strict=True):
        labels, scores, expected, flags, reason, turn = _check_row(st, conv, code, task, ctx)
        cols["labels"].append(labels)
        cols["scores"].append(scores)
        cols["expected"].append(expected)
        cols["flags"].append(flags)
        cols["reason"].append(reason)
        cols["turn"].append(turn)
        cols["eligible"].append(st == "ok" and (ctx.annotate_only or reason is None))
    t = _drop(t, [f.name for f in ANNOTATION_FIELDS + DROP_FIELDS] + [PRE_REASON, PRE_TURN,
                                                                       ELIGIBLE])
    return (t.append_column(ANNOTATION_FIELDS[0], pa.array(cols["labels"], pa.list_(pa.string())))
            .append_column(ANNOTATION_FIELDS[1], pa.array(cols["scores"],
                                                          pa.list_(pa.float32())))
            .append_column(ANNOTATION_FIELDS[2], pa.array(cols["expected"],
                                                          pa.list_(pa.float32())))
            .append_column(ANNOTATION_FIELDS[3], pa.array(cols["flags"], pa.list_(pa.string())))
            .append_column(PRE_REASON, pa.array(cols["reason"], pa.string()))
            .append_column(PRE_TURN, pa.array(cols["turn"], pa.int32()))
            .append_column(ELIGIBLE, pa.array(cols["eligible"], pa.bool_())))


def _drop(t: pa.Table, names: list[str]) -> pa.Table:
    present = [n for n in names if n in t.column_names]
    return t.drop_columns(present) if present else t


def _no_dedup(batch: Any) -> pa.Table:
    t = as_table(batch)
    t = _drop(t, [CLUSTER, DUPLICATE])
    return (t.append_column(CLUSTER, pa.nulls(t.num_rows, pa.string()))
            .append_column(DUPLICATE, pa.array([False] * t.num_rows)))


def _finalize_batch(batch: Any, annotate_only: bool) -> pa.Table:
    t = as_table(batch)
    pre = t.column(PRE_REASON).to_pylist()
    pre_turn = t.column(PRE_TURN).to_pylist()
    dup = t.column(DUPLICATE).to_pylist()
    flags = t.column("curation_flags").to_pylist()
    reasons, turns = [], []
    for i, (r, turn, d) in enumerate(zip(pre, pre_turn, dup, strict=True)):
        if d:
            flags[i] = [*flags[i], NEAR_DUPLICATE]
        if r == GENERATION_FAILED:
            reasons.append(r)
            turns.append(None)
        elif annotate_only:
            reasons.append(None)
            turns.append(None)
        elif r is not None:
            reasons.append(r)
            turns.append(turn)
        else:
            reasons.append(NEAR_DUPLICATE if d else None)
            turns.append(None)
    t = _drop(t, ["curation_flags", PRE_REASON, PRE_TURN, DUPLICATE])
    t = t.append_column(ANNOTATION_FIELDS[3], pa.array(flags, pa.list_(pa.string())))
    t = t.append_column(DROP_FIELDS[0], pa.array(reasons, pa.string()))
    t = t.append_column(DROP_FIELDS[1], pa.array(turns, pa.int32()))
    return t


def _select(batch: Any, dropped: bool, drop: list[str]) -> pa.Table:
    t = as_table(batch)
    mask = pc.is_valid(t.column("drop_reason"))
    if not dropped:
        mask = pc.invert(mask)
    return _drop(t.filter(mask), drop + [ELIGIBLE])


def _count_block(batch: Any) -> pa.Table:
    """Counts of one block: (language, key, n) with keys rows, ok, kept, dedup_in,
    drop:<reason> and flag:<reason> (a row counts once per reason)."""
    t = as_table(batch)
    c: Counter[tuple[str, str]] = Counter()
    codes = t.column("language_code").to_pylist()
    reasons = t.column("drop_reason").to_pylist()
    status = t.column("status").to_pylist()
    eligible = t.column(ELIGIBLE).to_pylist()
    flags = t.column("curation_flags").to_pylist()
    for code, reason, st, el, fl in zip(codes, reasons, status, eligible, flags, strict=True):
        code = code or "?"
        c[(code, "rows")] += 1
        c[(code, "ok")] += st == "ok"
        c[(code, "dedup_in")] += bool(el)
        if reason is None:
            c[(code, "kept")] += 1
        else:
            c[(code, f"drop:{reason}")] += 1
        for r in {f.split("@", 1)[0] for f in fl or ()}:
            c[(code, f"flag:{r}")] += 1
    return pa.table({"language": [k[0] for k in c], "key": [k[1] for k in c],
                     "n": [int(v) for v in c.values()]})


def _summarise(parts: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for p in parts:
        per[p["language"]][p["key"]] += p["n"]
    languages: dict[str, Any] = {}
    totals: Counter[str] = Counter()
    drop_totals: Counter[str] = Counter()
    for code in sorted(per):
        c = per[code]
        totals.update({k: v for k, v in c.items() if k in ("rows", "ok", "kept", "dedup_in")})
        dropped = {k[5:]: v for k, v in sorted(c.items()) if k.startswith("drop:") and v}
        flagged = {k[5:]: v for k, v in sorted(c.items()) if k.startswith("flag:") and v}
        drop_totals.update(dropped)
        pass_rate = {}
        for f in RATED:
            denom = c["dedup_in"] if f == NEAR_DUPLICATE else c["ok"]
            pass_rate[f] = round(1.0 - flagged.get(f, 0) / denom, 4) if denom else None
        languages[code] = {
            "rows": c["rows"],
            "generated_ok": c["ok"],
            "kept": c["kept"],
            "dropped": dropped,
            "flagged": flagged,
            "pass_rate": pass_rate,
            "kept_rate": round(c["kept"] / c["rows"], 4) if c["rows"] else None,
        }
    rows = totals["rows"]
    return {
        **base,
        "rows": rows,
        "kept": totals["kept"],
        "dropped": rows - totals["kept"],
        "drop_reasons": {r: drop_totals[r] for r in REASON_ORDER if drop_totals.get(r)},
        "filters": list(RATED),
        "per_language": languages,
    }
