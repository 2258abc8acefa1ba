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
import json
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
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
    """Read every source in one process, normalise, quarantine the unusable rows, drop
    exact duplicates (the first copy in source/file/row order stays).

    Rows outside ``seeds.languages`` / ``seeds.tasks`` are pruned before normalisation
    (``RowFilter``): they are counted, never checked, so they are neither usable nor
    quarantined. The distributed reader (``seed_intake``) gives the same answer.
    """
    result = SeedReadResult()
    keep = RowFilter.of(cfg, registry, task_ids)
    seen: dict[str, tuple[str, int]] = {}
    for source in cfg.sources:
        for fs, path in source_files(source, storage_options):
            result.files.append(path)
            for row_no, row, problem in iter_rows(fs, path, source, keep, result):
                if problem is not None:
                    result.quarantine.append(problem)
                    continue
                result.normalised += 1
                seed_or_q = normalise_row(row, source, path, row_no, registry, task_ids, cfg)
                if isinstance(seed_or_q, Quarantined):
                    result.quarantine.append(seed_or_q)
                    continue
                first = seen.get(seed_or_q.seed_id)
                if first is not None:
                    result.quarantine.append(duplicate_of(path, row_no, *first))
                    continue
                seen[seed_or_q.seed_id] = (path, row_no)
                result.seeds.append(seed_or_q)
    return result


def source_files(source: SeedSource, storage_options: Any) -> list[tuple[Any, str]]:
    """(filesystem, path) of every seed file of one source, in reading order (sorted);
    filesystem None for the package's own files."""
    if source.path == PACKAGE_SEEDS:
        return [(None, p) for p in package_seed_files()]
    from m2l_ray.storage import open_input

    fs, paths = open_input(source.path, storage_options)
    fmt = source.format
    keep = []
    for p in paths:
        kind = fmt if fmt != "auto" else format_of(p)
        if kind is not None:
            keep.append((fs, p))
    if not keep:
        raise SeedError(f"seed source {source.path}: no .jsonl/.json/.parquet files found")
    return keep


def format_of(path: str) -> str | None:
    low = path.lower().removesuffix(".gz")
    if low.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    return None


_CHUNK = 1 << 22  # bytes per read of a text file: lines are streamed, never the whole file
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


class _Prefixed:
    """A stream whose first bytes were already read (to sniff gzip's magic), for GzipFile."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head, self._rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = (self._head, b"") if n < 0 or n >= len(self._head) else (
                self._head[:n], self._head[n:])
            return out
        return self._rest.read() if n < 0 else self._rest.read(n)


def _open_stream(fs: Any, path: str) -> Any:
    """The file as stored: pyarrow would decompress by extension on its own, so
    compression=None keeps one place (``_text_lines``) that undoes gzip."""
    try:
        if fs is None:
            return open(path, "rb")  # noqa: SIM115 - closed by the caller's ``with``
        return fs.open_input_stream(path, compression=None)
    except OSError as e:
        raise SeedError(f"seed file {path}: can't read it: {e}") from None


def _text_lines(path: str, stream: Any) -> Iterator[bytes]:
    """The file's lines (split on b"\\n" exactly as ``bytes.split`` does), streamed: a
    gzip file is told by its magic bytes, whatever its name, and a UTF-8 byte-order mark
    (which editors on Windows write and json.loads rejects) is dropped."""
    import gzip
    import zlib

    head = stream.read(_CHUNK)
    gz = head[:2] == _GZIP_MAGIC
    if gz:
        source: Any = gzip.GzipFile(fileobj=_Prefixed(head, stream))
        head = b""
    elif path.lower().endswith(".gz"):
        raise SeedError(f"seed file {path}: named .gz but not gzip-compressed")
    else:
        source = stream
    rest, first = b"", True
    try:
        while True:
            chunk = head or source.read(_CHUNK)
            head = b""
            if not chunk:
                break
            if first:
                chunk, first = chunk.removeprefix(_BOM), False
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            yield from parts
    except (OSError, EOFError, zlib.error) as e:
        what = "not a readable gzip file" if gz else "can't read it"
        raise SeedError(f"seed file {path}: {what}: {e}") from None
    yield rest


def _parse_line(path: str, i: int, line: bytes) -> tuple[dict[str, Any] | None, Quarantined | None]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, Quarantined(path, i, "(line)", "undecodable", str(e), repr(line[:200]))
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return None, Quarantined(path, i, "(line)", "invalid_json", str(e), text[:500])
    if not isinstance(row, dict):
        return None, Quarantined(path, i, "(line)", "not_an_object", type(row).__name__, text[:500])
    return row, None


def iter_rows(
    fs: Any,
    path: str,
    source: SeedSource,
    keep: RowFilter | None = None,
    counts: ReadCounts | None = None,
    row_groups: tuple[int, int] | None = None,
) -> Iterator[tuple[int, dict[str, Any], Quarantined | None]]:
    """Yield (row number, row, problem) of one file; row numbers are 1-based lines or
    0-based Parquet rows. Both readers (in-memory and distributed) read through here.

    ``keep`` prunes rows outside the job's languages/tasks before anyone normalises
    them (for Parquet from the language/task columns alone, skipping a row group's other
    columns when none of its rows is kept); ``counts`` gets rows read and pruned.
    ``row_groups`` reads only Parquet row groups [start, stop) (one distributed chunk).
    """
    counts = counts if counts is not None else ReadCounts()
    if keep is not None and keep.drops_path(path):
        counts.files_pruned += 1
        return
    kind = source.format if source.format != "auto" else format_of(path)
    if kind == "parquet":
        yield from _parquet_rows(fs, path, source, keep, counts, row_groups)
        return
    with _open_stream(fs, path) as stream:
        for i, line in enumerate(_text_lines(path, stream), start=1):
            if not line.strip():
                continue
            counts.rows_read += 1
            row, problem = _parse_line(path, i, line)
            if row is not None and keep is not None:
                shape = source.shape if source.shape != "auto" else detect_shape(row)
                if shape is not None and keep.drops(*route(row, shape, source)):
                    counts.pruned += 1
                    continue
            yield i, row or {}, problem


def parquet_file(fs: Any, path: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` (footer read), or SeedError naming the file."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path if fs is None else fs.open_input_file(path))
    except OSError as e:
        raise SeedError(f"seed file {path}: can't read it: {e}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
        raise SeedError(f"seed file {path}: not a readable Parquet file: {e}") from None


def _parquet_rows(
    fs: Any, path: str, source: SeedSource, keep: RowFilter | None, counts: ReadCounts,
    row_groups: tuple[int, int] | None,
) -> Iterator[tuple[int, dict[str, Any], Quarantined | None]]:
    pf = parquet_file(fs, path)
    meta = pf.metadata
    names = pf.schema_arrow.names
    shape = source.shape if source.shape != "auto" else detect_shape(dict.fromkeys(names))
    cols = [c for c in _ROUTE_COLUMNS.get(shape or "", ()) if c in names] if keep is not None else []
    start, stop = row_groups or (0, meta.num_row_groups)
    offset = sum(meta.row_group(g).num_rows for g in range(start))
    verdicts: dict[tuple[Any, ...], bool] = {}
    for g in range(start, stop):
        n = meta.row_group(g).num_rows
        counts.rows_read += n
        try:
            kept: list[int] | None = None
            if cols:
                t = pf.read_row_group(g, columns=cols)
                kept = []
                for j, vals in enumerate(zip(*(t.column(c).to_pylist() for c in cols), strict=True)):
                    verdict = verdicts.get(vals)
                    if verdict is None:
                        verdict = verdicts[vals] = not keep.drops(*route(dict(zip(cols, vals, strict=True)), shape, source))
                    if verdict:
                        kept.append(j)
                counts.pruned += n - len(kept)
                if not kept:
                    continue
            table = pf.read_row_group(g)
            rows = (table if kept is None or len(kept) == n else table.take(kept)).to_pylist()
        except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
            raise SeedError(f"seed file {path}: not a readable Parquet file: {e}") from None
        for j, row in zip(kept if kept is not None else range(n), rows, strict=True):
            yield offset + j, row, None
        offset += n


@dataclass
class RowFilter:
    """``seeds.languages`` / ``seeds.tasks`` applied to a row's raw language and task,
    before normalisation: asking for 5 languages of a 70-language pool must not
    normalise the other 65. A row is dropped only when its language resolves to one the
    job did not ask for (or its task is a known one it did not ask for): a row whose
    language or task is unknown goes on to be quarantined for it, as without a filter.
    """

    languages: frozenset[str] | None
    tasks: frozenset[str] | None
    registry: LanguageRegistry
    task_ids: frozenset[str]
    _codes: dict[str, str | None] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, cfg: SeedsConfig, registry: LanguageRegistry, task_ids: Iterable[str]) -> RowFilter | None:
        if not cfg.languages and not cfg.tasks:
            return None
        return cls(frozenset(cfg.languages) if cfg.languages else None,
                   frozenset(cfg.tasks) if cfg.tasks else None, registry, frozenset(task_ids))

    def _code(self, raw: str) -> str | None:
        if raw not in self._codes:
            lang = self.registry.resolve(raw.strip())
            self._codes[raw] = lang.code if lang is not None else None
        return self._codes[raw]

    def drops(self, lang_raw: Any, task: Any) -> bool:
        if self.languages is not None and isinstance(lang_raw, str) and lang_raw.strip():
            code = self._code(lang_raw)
            if code is not None and code not in self.languages:
                return True
        return (self.tasks is not None and isinstance(task, str) and task in self.task_ids
                and task not in self.tasks)

    def drops_path(self, path: str) -> bool:
        """Partition pruning: a ``language=xx`` / ``language_code=xx`` / ``task=yy``
        folder (Hive style) of a language or task the job did not ask for is not opened.
        It assumes the folder agrees with its rows, as writers of such layouts ensure."""
        for part in path.split("/")[:-1]:
            key, sep, value = part.partition("=")
            if not sep or not value:
                continue
            if key in ("language", "language_code", "lang") and self.drops(value, None):
                return True
            if key == "task" and self.drops(None, value):
                return True
        return False


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


#: the columns ``route`` reads per shape: all a Parquet filter needs to read of a pruned row
_ROUTE_COLUMNS = {
    "m2l": ("language", "task"),
    "aya_dataset": ("language_code", "language"),
    "aya_collection": ("language", "task_type"),
}


def route(row: Mapping[str, Any], shape: str, source: SeedSource) -> tuple[Any, Any]:
    """(raw language, task) of a row of a known shape: what the filter prunes on and
    what ``normalise_row`` checks, from one place."""
    if shape == "m2l":
        return row.get("language"), row.get("task")
    if shape == "aya_dataset":
        return row.get("language_code") or row.get("language"), source.task or "open_ended"
    tt = str(row.get("task_type") or "").strip().lower()
    return row.get("language"), source.task or aya_task_map().get(tt, "open_ended")


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

    lang_raw, task = route(row, shape, source)
    if shape == "m2l":
        instruction, reference = row.get("instruction"), row.get("reference_answer", "")
        origin = str(row.get("source") or Path(path).name)
        fields = ("instruction", "reference_answer", "language")
    elif shape == "aya_dataset":
        instruction, reference = row.get("inputs"), row.get("targets", "")
        origin = "aya_dataset"
        fields = ("inputs", "targets", "language_code")
    else:  # aya_collection
        instruction, reference = row.get("inputs"), row.get("targets", "")
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
