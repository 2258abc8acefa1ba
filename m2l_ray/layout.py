"""Where everything lives under ``output.uri``: the one home of the output's key names.

Steps hand tables to the runner and never build keys; the runner, the resume check,
the report and ``m2l show`` all read their keys from here, so the layout of a
finished output is defined once:

    _lock.json               the run's lock (released at the end)
    config.json              the config raw/ was made with (the resume check)
    raw/unit-00000.parquet   one object per work unit as it completes: the resume point
    seed_data/part-00000.parquet       the seeds as instruction-response pairs
    seed_evol_data/part-00000.parquet  every evolved pair that passed (single turn)
    full_data/part-00000.parquet       seeds + evolved pairs + multi-turn conversations
    quarantine/seeds.jsonl   seed rows that could not be used, with file, row, field, reason
                             (quarantine/seeds/*.jsonl shards when read on Ray Data)
    quarantine/curation-00000.parquet  conversations curation dropped, with the reason
    stats.json               counts per reason per language, tokens, timings
    README.md                the dataset card: HF configs header, config, counts, pass rates
    report.html              the run report
    manifest.json            the commit point, written last: every final shard with
                             rows, bytes and sha256; readers trust only what it lists
"""

from __future__ import annotations

import re

from m2l_ray.schema import CONFIGS

LOCK_KEY = "_lock.json"
CONFIG_KEY = "config.json"
MANIFEST_KEY = "manifest.json"
STATS_KEY = "stats.json"
CARD_KEY = "README.md"  # the dataset card; its YAML header makes the folder a HF dataset
REPORT_KEY = "report.html"

#: the public dataset's three configs (schema.CONFIGS), in the order card and report list them
CONFIG_NAMES = tuple(CONFIGS)

RAW_PREFIX = "raw/"
QUARANTINE_PREFIX = "quarantine/"
SEED_QUARANTINE_KEY = "quarantine/seeds.jsonl"  # the in-memory seed reader's one file
SEED_QUARANTINE_SHARDS = "quarantine/seeds/"  # the distributed seed reader's shards
CURATION_QUARANTINE_KEY = "quarantine/curation-00000.parquet"

_UNIT_RE = re.compile(r"^raw/unit-(\d{5,})\.parquet$")


def unit_key(unit: int) -> str:
    """The raw object of one work unit."""
    return f"{RAW_PREFIX}unit-{unit:05d}.parquet"


def unit_of(key: str) -> int | None:
    """The work unit a raw key holds, or None for any other key."""
    m = _UNIT_RE.match(key)
    return int(m.group(1)) if m else None


def shard_key(config: str, i: int, suffix: str = ".parquet") -> str:
    """The i-th shard of one output config (``suffix``: the shard writer's)."""
    return f"{config}/part-{i:05d}{suffix}"
