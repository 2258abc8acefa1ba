"""``m2l show OUTPUT``: read a few conversations of an output in the terminal.

Looking at the data should not need a notebook: this prints rows of one config (or
the rows curation dropped for a reason, from quarantine/) with their roles, turns,
evol types, failures and curation flags, filtered by language and task. It reads
through ``Store`` (local folder or s3://) and only as many shards as it needs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

from m2l_ray.errors import M2LError
from m2l_ray.io.writers import is_shard
from m2l_ray.layout import CONFIG_NAMES, MANIFEST_KEY, STATS_KEY
from m2l_ray.report import (
    add_storage_arguments,
    open_output,
    read_columns,
    reason_order,
)
from m2l_ray.schema import CONFIGS

_COLUMNS = ["id", "key", "kind", "language", "language_code", "task", "task_evol_type",
            "multiturn_evol_types", "no_of_turns", "status", "failures", "conversation"]
_DROP_COLUMNS = ["drop_reason", "drop_turn", "curation_flags"]
INDENT = "    "


def _shard_keys(store: Any, config: str) -> list[str]:
    """The config's shards: the manifest's list (what a reader may trust), else a listing."""
    if store.exists(MANIFEST_KEY):
        keys = [s["key"] for s in store.get_json(MANIFEST_KEY).get("shards", []) if s.get("config") == config]
        if keys:
            return sorted(keys)
    return sorted(k for k in store.list(f"{config}/") if is_shard(k.rsplit("/", 1)[-1]))


def _matches(row: Mapping[str, Any], language: str | None, task: str | None,
             kinds: tuple[str, ...] | None, reason: str | None) -> bool:
    if language and language.lower() not in (str(row.get("language_code")).lower(),
                                             str(row.get("language")).lower()):
        return False
    if task and row.get("task") != task:
        return False
    if kinds is not None and row.get("kind") not in kinds:
        return False
    return not (reason and row.get("drop_reason") != reason)


def _rows(store: Any, keys: list[str], columns: list[str], seen: set[str],
          **filters: Any) -> Iterator[dict[str, Any]]:
    """Matching rows in shard order, reading one shard at a time; ``seen`` collects the
    language codes passed over, to tell a misspelt language from an empty filter."""
    for key in keys:
        for row in read_columns(store, key, columns).to_pylist():
            seen.add(str(row.get("language_code")))
            if _matches(row, **filters):
                yield row


def _dropped_reasons(store: Any) -> list[str]:
    stats = store.get_json(STATS_KEY) if store.exists(STATS_KEY) else {}
    return reason_order(stats)


def format_row(row: Mapping[str, Any], n: int, width: int) -> str:
    """One conversation as readable text: a header line, its metadata, then each turn."""
    head = [f"{row.get('language_code')} ({row.get('language')})", str(row.get("task")), str(row.get("kind")),
            f"key={row.get('key')}"]
    if row.get("id") is not None:
        head.append(f"id={row['id']}")
    meta = [f"turns: {row.get('no_of_turns')}", f"status: {row.get('status')}"]
    if row.get("task_evol_type"):
        meta.insert(0, f"evol type: {row['task_evol_type']}")
    if row.get("multiturn_evol_types"):
        meta.insert(1, "multi-turn types: " + ", ".join(row["multiturn_evol_types"]))
    lines = [f"=== {n}. " + " · ".join(head), " | ".join(meta)]
    if row.get("drop_reason"):
        turn = f" at turn {row['drop_turn']}" if row.get("drop_turn") is not None else ""
        lines.append(f"DROPPED: {row['drop_reason']}{turn}"
                     + (f" (flags: {', '.join(row['curation_flags'])})" if row.get("curation_flags") else ""))
    for i, msg in enumerate(row.get("conversation") or ()):
        if not msg:
            continue
        mark = "  <- drop turn" if row.get("drop_reason") and row.get("drop_turn") == i else ""
        lines.append(f"  [{msg.get('role')}]{mark}")
        lines += _wrap(str(msg.get("content") or ""), width)
    for f in row.get("failures") or ():
        lines.append(f"  FAILED {f['step']}: {f['reason']}" + (f" ({f['detail']})" if f.get("detail") else ""))
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    if not text.strip():
        return [INDENT + "(empty)"]
    out: list[str] = []
    for para in text.splitlines() or [""]:
        out += textwrap.wrap(para, width=max(20, width - len(INDENT)), initial_indent=INDENT,
                             subsequent_indent=INDENT, replace_whitespace=False) or [""]
    return out


def show(args: argparse.Namespace) -> int:
    """Print up to ``-n`` matching rows; exit 1 when none matches, 2 on a bad argument."""
    if args.n < 1:
        raise M2LError(f"-n must be at least 1, not {args.n}")
    if args.config is not None and args.config not in CONFIG_NAMES:
        raise M2LError(f"unknown config {args.config!r}; an output has {', '.join(CONFIG_NAMES)}")
    store = open_output(args.output, args.endpoint_url, args.path_style)
    config = args.config or "full_data"
    if args.dropped:
        reasons = _dropped_reasons(store)
        if args.dropped not in reasons:
            raise M2LError(f"no rows were dropped as {args.dropped!r} in {store.uri}; "
                           f"its drop reasons: {', '.join(reasons) or 'none'}")
        keys = sorted(k for k in store.list("quarantine/") if k.endswith(".parquet"))
        columns = _COLUMNS + _DROP_COLUMNS
        kinds = CONFIGS[args.config] if args.config else None
        where = f"rows dropped as {args.dropped}"
    else:
        keys = _shard_keys(store, config)
        columns, kinds, where = _COLUMNS, None, config
    if not keys:
        raise M2LError(f"{store.uri} holds no {where}: is it the output of a finished m2l run?")
    width = min(shutil.get_terminal_size((100, 24)).columns, 120)
    shown = 0
    seen: set[str] = set()
    for row in _rows(store, keys, columns, seen, language=args.language, task=args.task, kinds=kinds,
                     reason=args.dropped):
        shown += 1
        print(format_row(row, shown, width) + "\n")
        if shown >= args.n:
            break
    filters = ", ".join(f"{k} {v}" for k, v in (("language", args.language), ("task", args.task)) if v)
    summary = f"{shown} row(s) of {where} at {store.uri}" + (f" ({filters})" if filters else "")
    if not shown:
        if args.language and args.language.lower() not in {c.lower() for c in seen}:
            raise M2LError(f"{where} of {store.uri} has no language {args.language!r}; "
                           f"it has {', '.join(sorted(seen)) or 'no rows'}")
        print(f"m2l: no rows match: {summary}", file=sys.stderr)
        return 1
    more = f"; asked for {args.n}, no more match" if shown < args.n else ""
    print(f"--- {summary}{more}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``m2l show`` to the ``m2l`` parser."""
    p = sub.add_parser("show", help="print conversations of an output readably",
                       description="Print conversations of a finished output (role, turns, evol "
                                   "types, failures), or the rows curation dropped for a reason.")
    add_storage_arguments(p)
    p.add_argument("--config", default=None, help=f"one of {', '.join(CONFIG_NAMES)} (default full_data)")
    p.add_argument("--language", default=None, help="language code or name, e.g. sw")
    p.add_argument("--task", default=None, help="task, e.g. question_answering")
    p.add_argument("-n", type=int, default=5, help="rows to print (5)")
    p.add_argument("--dropped", default=None, metavar="REASON",
                   help="rows curation dropped for REASON (quarantine/), e.g. lid_mismatch")
    p.set_defaults(func=show)
