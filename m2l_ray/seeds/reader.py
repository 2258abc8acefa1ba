"""Seed readers: JSONL and Parquet rows of any seed shape, normalised to one schema.

Shapes (``seeds.shapes``): the project's own (``language, task, instruction,
reference_answer``), the Aya Dataset (``inputs, targets, language, language_code,
annotation_type, user_id``) and the Aya Collection (``id, inputs, targets, dataset_name,
sub_dataset_name, task_type, template_id, language, script, split``). A row that can't
be used goes to the quarantine with its file, row, field and reason; the job goes on,
because one bad row in 13K seeds must not cost the run.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from m2l_ray.config import SeedsConfig, SeedSource
from m2l_ray.errors import SeedError
from m2l_ray.io.formats import format_of
from m2l_ray.languages import LanguageRegistry
from m2l_ray.seeds.files import _open_stream, _text_lines, parquet_file, source_files
from m2l_ray.seeds.records import Quarantined, ReadCounts, Seed, SeedReadResult, duplicate_of, seed_id
from m2l_ray.seeds.shapes import shape_for


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
    quarantined. The distributed reader (``seeds.intake``) gives the same answer.
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
                shape = shape_for(source, row)
                if shape is not None and keep.drops(*shape.route(row, source)):
                    counts.pruned += 1
                    continue
            yield i, row or {}, problem


def _parquet_rows(
    fs: Any, path: str, source: SeedSource, keep: RowFilter | None, counts: ReadCounts,
    row_groups: tuple[int, int] | None,
) -> Iterator[tuple[int, dict[str, Any], Quarantined | None]]:
    pf = parquet_file(fs, path)
    meta = pf.metadata
    names = pf.schema_arrow.names
    shape = shape_for(source, names)
    cols = [c for c in shape.route_columns if c in names] if keep is not None and shape is not None else []
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
                        verdict = verdicts[vals] = not keep.drops(*shape.route(dict(zip(cols, vals, strict=True)), source))
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

    shape = shape_for(source, row)
    if shape is None:
        return bad("(row)", "unknown_shape", f"columns {sorted(row)} match no known seed shape")
    missing = sorted(shape.required - set(row))
    if missing:
        return bad(missing[0], "missing_field", f"{shape.name} rows need {missing[0]}")

    lang_raw, task = shape.route(row, source)
    text_field, ref_field, lang_field = shape.text, shape.reference, shape.language[0]
    instruction, reference = row.get(text_field), row.get(ref_field, "")
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
        source=shape.origin(row, path),
        source_file=path,
        source_row=row_no,
    )


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
