"""The seed records every reader produces: a usable ``Seed``, a ``Quarantined`` row, and counts.

One home for them because both readers (``seeds.reader`` in one process,
``seeds.intake`` on Ray Data) must write the same records and the same quarantine file.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Seed:
    """A usable seed, whatever shape it came in."""

    seed_id: str  # content hash: stable across files, runs and machines
    language_code: str
    task: str
    instruction: str
    reference_answer: str
    source: str  # dataset or file the seed came from
    source_file: str
    source_row: int


@dataclass(frozen=True)
class Quarantined:
    """A rejected row and why: enough to find and fix it."""

    file: str
    row: int
    field: str
    reason: str
    detail: str
    raw: str = ""


def quarantine_jsonl(records: Iterable[Quarantined]) -> bytes:
    """The quarantine file format (one JSON object per line), whichever reader wrote it."""
    return "".join(json.dumps(asdict(q), ensure_ascii=False) + "\n" for q in records).encode("utf-8")


def duplicate_of(path: str, row_no: int, first_file: str, first_row: int) -> Quarantined:
    """A later copy of a seed already read at (first_file, first_row): both readers say it alike."""
    return Quarantined(path, row_no, "instruction", "duplicate_seed",
                       f"same language, task and text as {first_file}:{first_row}")


@dataclass
class ReadCounts:
    """What a reader saw besides seeds and quarantine: the pool size and how much of it
    the language/task filter spared from normalisation."""

    rows_read: int = 0  # rows and non-blank lines in the files opened (pruned ones included)
    pruned: int = 0  # rows dropped by seeds.languages / seeds.tasks before normalisation
    normalised: int = 0  # rows that went through normalise_row
    files_pruned: int = 0  # files skipped unopened by a partition folder (language=xx/)


@dataclass
class SeedReadResult(ReadCounts):
    seeds: list[Seed] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def quarantine_jsonl(self) -> bytes:
        return quarantine_jsonl(self.quarantine)


def seed_id(language_code: str, task: str, instruction: str) -> str:
    """Content hash of what makes a seed the same seed: language, task and text."""
    text = " ".join(unicodedata.normalize("NFC", instruction).split())
    return hashlib.sha256(f"{language_code}\x1f{task}\x1f{text}".encode()).hexdigest()[:16]
