"""Seed readers: JSONL and Parquet in three shapes, normalised to one schema.

Shapes: the project's own (``language, task, instruction, reference_answer``), the
Aya Dataset (``inputs, targets, language, language_code, annotation_type, user_id``)
and the Aya Collection (``id, inputs, targets, dataset_name, sub_dataset_name,
task_type, template_id, language, script, split``). A row that can't be used goes
to the quarantine with its file, row, field and reason; the job goes on, because
one bad row in 13K seeds must not cost the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from m2l_ray.config import PACKAGE_SEEDS, SeedsConfig, SeedSource
from m2l_ray.errors import SeedError
from m2l_ray.languages import LanguageRegistry

_SHAPE_KEYS = {
    "m2l": {"language", "task", "instruction"},
    "aya_collection": {"inputs", "targets", "task_type", "dataset_name"},
    "aya_dataset": {"inputs", "targets", "language_code"},
}


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


@dataclass
class SeedReadResult:
    seeds: list[Seed] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    rows_read: int = 0
    files: list[str] = field(default_factory=list)

    def quarantine_jsonl(self) -> bytes:
        return "".join(
            json.dumps(asdict(q), ensure_ascii=False) + "\n" for q in self.quarantine
        ).encode("utf-8")


def seed_id(language_code: str, task: str, instruction: str) -> str:
    """Content hash of what makes a seed the same seed: language, task and text."""
    text = " ".join(unicodedata.normalize("NFC", instruction).split())
    return hashlib.sha256(f"{language_code}\x1f{task}\x1f{text}".encode()).hexdigest()[:16]


@cache
def aya_task_map() -> dict[str, str]:
    """Aya Collection task_type -> our task id (data/aya_tasks.yaml)."""
    text = resources.files("m2l_ray").joinpath("data/aya_tasks.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return {str(k).lower(): v for k, v in data["task_type"].items()}


def package_seed_files() -> list[str]:
    root = resources.files("m2l_ray").joinpath("data/seeds")
    return sorted(str(p) for p in Path(str(root)).glob("*.jsonl"))


def read_seeds(
    cfg: SeedsConfig,
    registry: LanguageRegistry,
    task_ids: set[str],
    storage_options: Any = None,
) -> SeedReadResult:
    """Read every source, normalise, quarantine the unusable rows, drop exact duplicates."""
    result = SeedReadResult()
    seen: dict[str, str] = {}
    for source in cfg.sources:
        for fs, path in _expand(source, storage_options):
            result.files.append(path)
            for row_no, row, problem in _rows(fs, path, source):
                result.rows_read += 1
                if problem is not None:
                    result.quarantine.append(problem)
                    continue
                seed_or_q = normalise_row(row, source, path, row_no, registry, task_ids, cfg)
                if isinstance(seed_or_q, Quarantined):
                    result.quarantine.append(seed_or_q)
                    continue
                first = seen.get(seed_or_q.seed_id)
                if first is not None:
                    result.quarantine.append(
                        Quarantined(path, row_no, "instruction", "duplicate_seed",
                                    f"same language, task and text as {first}")
                    )
                    continue
                seen[seed_or_q.seed_id] = f"{path}:{row_no}"
                result.seeds.append(seed_or_q)
    return result


def _expand(source: SeedSource, storage_options: Any) -> list[tuple[Any, str]]:
    if source.path == PACKAGE_SEEDS:
        return [(None, p) for p in package_seed_files()]
    from m2l_ray.storage import open_input

    fs, paths = open_input(source.path, storage_options)
    fmt = source.format
    keep = []
    for p in paths:
        kind = fmt if fmt != "auto" else _format_of(p)
        if kind is not None:
            keep.append((fs, p))
    if not keep:
        raise SeedError(f"seed source {source.path}: no .jsonl/.json/.parquet files found")
    return keep


def _format_of(path: str) -> str | None:
    low = path.lower().removesuffix(".gz")
    if low.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    return None


def _open_bytes(fs: Any, path: str) -> bytes:
    """The file's bytes as stored: pyarrow would decompress by extension on its own,
    so compression=None keeps one place (``_decode_text``) that undoes gzip."""
    if fs is None:
        return Path(path).read_bytes()
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def _decode_text(path: str, data: bytes) -> bytes:
    """Gunzip a gzip file (told by its magic bytes, whatever its name) and drop a UTF-8
    byte-order mark, which editors on Windows write and json.loads rejects."""
    if data[:2] == b"\x1f\x8b":
        import gzip
        import zlib

        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise SeedError(f"seed file {path}: not a readable gzip file: {e}") from None
    elif path.lower().endswith(".gz"):
        raise SeedError(f"seed file {path}: named .gz but not gzip-compressed")
    return data.removeprefix(b"\xef\xbb\xbf")


def _rows(
    fs: Any, path: str, source: SeedSource
) -> Iterator[tuple[int, dict[str, Any], Quarantined | None]]:
    """Yield (row number, row, problem); row numbers are 1-based lines or 0-based Parquet rows."""
    kind = source.format if source.format != "auto" else _format_of(path)
    try:
        data = _open_bytes(fs, path)
    except OSError as e:
        raise SeedError(f"seed file {path}: can't read it: {e}") from None
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
            raise SeedError(f"seed file {path}: not a readable Parquet file: {e}") from None
        for i, row in enumerate(table.to_pylist()):
            yield i, row, None
        return
    data = _decode_text(path, data)
    for i, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i, {}, Quarantined(path, i, "(line)", "undecodable", str(e), repr(line[:200]))
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            yield i, {}, Quarantined(path, i, "(line)", "invalid_json", str(e), text[:500])
            continue
        if not isinstance(row, dict):
            yield i, {}, Quarantined(path, i, "(line)", "not_an_object", type(row).__name__, text[:500])
            continue
        yield i, row, None


_SHAPE_HINTS = {
    "m2l": {"language", "task", "instruction", "reference_answer"},
    "aya_collection": {"inputs", "targets", "task_type", "dataset_name", "sub_dataset_name", "template_id"},
    "aya_dataset": {"inputs", "targets", "language_code", "annotation_type", "user_id"},
}


def detect_shape(row: Mapping[str, Any]) -> str | None:
    """The shape whose columns the row shares most of (at least two), so that a row
    missing one required column is reported as missing that column, not as unknown."""
    keys = set(row)
    score, shape = max((len(keys & hints), name) for name, hints in _SHAPE_HINTS.items())
    return shape if score >= 2 else None


def normalise_row(
    row: Mapping[str, Any],
    source: SeedSource,
    path: str,
    row_no: int,
    registry: LanguageRegistry,
    task_ids: set[str],
    cfg: SeedsConfig,
) -> Seed | Quarantined:
    """One raw row -> a Seed, or the reason it can't be one."""

    def bad(fld: str, reason: str, detail: str) -> Quarantined:
        return Quarantined(path, row_no, fld, reason, detail, json.dumps(row, ensure_ascii=False, default=str)[:500])

    shape = source.shape if source.shape != "auto" else detect_shape(row)
    if shape is None:
        return bad("(row)", "unknown_shape", f"columns {sorted(row)} match no known seed shape")
    missing = sorted(_SHAPE_KEYS[shape] - set(row))
    if missing:
        return bad(missing[0], "missing_field", f"{shape} rows need {missing[0]}")

    if shape == "m2l":
        instruction, reference = row.get("instruction"), row.get("reference_answer", "")
        lang_raw, task = row.get("language"), row.get("task")
        origin = str(row.get("source") or Path(path).name)
        fields = ("instruction", "reference_answer", "language")
    elif shape == "aya_dataset":
        instruction, reference = row.get("inputs"), row.get("targets", "")
        lang_raw = row.get("language_code") or row.get("language")
        task = source.task or "open_ended"
        origin = "aya_dataset"
        fields = ("inputs", "targets", "language_code")
    else:  # aya_collection
        instruction, reference = row.get("inputs"), row.get("targets", "")
        lang_raw = row.get("language")
        tt = str(row.get("task_type") or "").strip().lower()
        task = source.task or aya_task_map().get(tt, "open_ended")
        origin = f"aya_collection/{row.get('dataset_name')}"
        fields = ("inputs", "targets", "language")

    text_field, ref_field, lang_field = fields
    if not isinstance(instruction, str):
        return bad(text_field, "missing_field" if instruction is None else "wrong_type",
                   f"expected text, got {type(instruction).__name__}")
    if reference is None:
        reference = ""
    if not isinstance(reference, str):
        return bad(ref_field, "wrong_type", f"expected text, got {type(reference).__name__}")
    instruction = unicodedata.normalize("NFC", instruction).strip()
    reference = unicodedata.normalize("NFC", reference).strip()
    if not instruction:
        return bad(text_field, "empty_text", "instruction is empty")
    if "\ufffd" in instruction or _has_surrogates(instruction):
        return bad(text_field, "undecodable", "text contains replacement or surrogate characters")
    if len(instruction) < cfg.min_chars:
        return bad(text_field, "too_short", f"{len(instruction)} chars < seeds.min_chars {cfg.min_chars}")
    if len(instruction) > cfg.max_chars:
        return bad(text_field, "too_long", f"{len(instruction)} chars > seeds.max_chars {cfg.max_chars}")
    if not isinstance(lang_raw, str) or not lang_raw.strip():
        return bad(lang_field, "missing_field", "no language")
    lang = registry.resolve(lang_raw.strip())
    if lang is None:
        return bad(lang_field, "unknown_language",
                   f"'{lang_raw}' is not in the registry; add it under languages.extra in the job config")
    if not isinstance(task, str) or task not in task_ids:
        return bad("task", "unknown_task", f"'{task}' is not a task of the taxonomy")
    return Seed(
        seed_id=seed_id(lang.code, task, instruction),
        language_code=lang.code,
        task=task,
        instruction=instruction,
        reference_answer=reference,
        source=origin,
        source_file=path,
        source_row=row_no,
    )


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
