"""Reading an output into ``ReportData``: stats.json, manifest.json, raw/, the configs, quarantine/.

Everything goes through ``Store``, so a report can be rebuilt later from a local folder
or an s3:// prefix, and only the columns the page needs are read. Samples are chosen
deterministically (ranks include the row key): the same output gives the same page.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from m2l_ray.curation.filters import GENERATION_FAILED
from m2l_ray.errors import M2LError
from m2l_ray.layout import CONFIG_NAMES, MANIFEST_KEY, STATS_KEY
from m2l_ray.report.data import (
    RESOURCE_ORDER,
    SAMPLE_TURNS,
    SAMPLES_PER_LANGUAGE,
    SAMPLES_PER_REASON,
    LidStats,
    ReportData,
    Sample,
    drops_per_language,
    funnel,
    reason_order,
    truncate,
)

_SAMPLE_COLUMNS = ["key", "language_code", "task", "kind", "task_evol_type", "multiturn_evol_types",
                   "conversation", "failures", "no_of_turns"]
_KIND_ORDER = {"multiturn": 0, "evolved": 1, "seed": 2}


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
    from m2l_ray.io import NotFound

    try:
        return store.get_json(key)
    except NotFound:
        raise M2LError(f"{store.uri} has no {key}: not a finished m2l-ray output "
                       "(a run writes it at the end; rerun the job to finish it)") from None


def _resource_rank(level: str | None) -> int:
    return RESOURCE_ORDER.index(level) if level in RESOURCE_ORDER else len(RESOURCE_ORDER)



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
            t = read_columns(store, key, cols)
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


def read_columns(store: Any, key: str, columns: Sequence[str]) -> Any:
    """Those columns of a shard; of an older output lacking some, the ones it has."""
    from m2l_ray.errors import StorageError

    try:
        return store.read_table(key, columns=list(columns))
    except (StorageError, KeyError, ValueError, OSError):
        t = store.read_table(key)
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
        t = read_columns(store, key, cols)
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
