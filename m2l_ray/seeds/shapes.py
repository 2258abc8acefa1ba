"""Seed shapes: the input shapes a seed row can come in, one ``SeedShape`` entry each.

A shape says which columns a row of it must have (``required``), which columns tell it
apart when a source says ``shape: auto`` (``hints``), and where its row keeps what a
seed is made of: the text, the reference answer, the raw language and task, the origin.
The checks every shape shares (text, lengths, language registry, taxonomy) are done once,
by ``seeds.reader.normalise_row``. So a new shape is one ``register(SeedShape(...))``
below plus its test; ``config`` takes the allowed ``shape:`` names from this registry.

Kept light (no pyarrow, no ``config`` import at run time) because ``config`` imports it.
A shape registered outside this module exists only in the processes that import its
module: the distributed intake's Ray workers import this one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import yaml

if TYPE_CHECKING:
    from m2l_ray.config import SeedSource

AUTO = "auto"  # the ``shape:`` that asks for detection rather than naming a shape


@dataclass(frozen=True)
class SeedShape:
    """One input shape: how to recognise its rows and read a seed's fields out of one."""

    name: str  # the ``seeds.sources[].shape`` value that names it
    required: frozenset[str]  # a row lacking one is quarantined as missing_field (the first, sorted)
    hints: frozenset[str]  # columns that point to this shape under ``shape: auto`` (required ones too)
    text: str  # the column holding the instruction
    reference: str  # the column holding the reference answer (may be absent: "")
    language: tuple[str, ...]  # columns with the raw language, first non-empty wins; the first is reported
    task: Callable[[Mapping[str, Any], SeedSource], Any]  # the row's task id, before it is checked
    origin: Callable[[Mapping[str, Any], str], str]  # the seed's ``source`` label, given the row and file
    task_columns: tuple[str, ...] = ()  # the columns ``task`` reads

    @property
    def route_columns(self) -> tuple[str, ...]:
        """All ``route`` reads of a row: what a Parquet filter reads of a row it may prune."""
        return (*self.language, *self.task_columns)

    def route(self, row: Mapping[str, Any], source: SeedSource) -> tuple[Any, Any]:
        """(raw language, task) of a row: what the language/task filter prunes on and what
        ``normalise_row`` checks, from one place."""
        lang = None
        for col in self.language:
            lang = row.get(col)
            if lang:
                break
        return lang, self.task(row, source)


#: every known shape by name, in registration order
SHAPES: dict[str, SeedShape] = {}


def register(shape: SeedShape) -> SeedShape:
    """Add a shape (its name must be new and not ``auto``); returns it."""
    if shape.name == AUTO or shape.name in SHAPES:
        raise ValueError(f"seed shape name {shape.name!r} is reserved or already registered")
    SHAPES[shape.name] = shape
    return shape


class _ShapeChoices(Sequence[str]):
    """``auto`` then every registered shape name, read at each use: ``config`` validates
    ``shape:`` against it, so a shape registered after ``config`` was imported counts too."""

    def _names(self) -> tuple[str, ...]:
        return (AUTO, *SHAPES)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return self._names()[i]

    def __len__(self) -> int:
        return len(SHAPES) + 1

    def __contains__(self, value: object) -> bool:
        return value == AUTO or value in SHAPES

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


#: the allowed values of ``seeds.sources[].shape``
SHAPE_CHOICES: Sequence[str] = _ShapeChoices()


def detect_shape(columns: Iterable[str]) -> SeedShape | None:
    """The shape whose hints the columns share most of (at least two; ties to the later
    name), so that a row missing one required column is reported as missing that column,
    not as of no known shape."""
    keys = set(columns)
    score, name = max(((len(keys & s.hints), s.name) for s in SHAPES.values()), default=(0, ""))
    return SHAPES[name] if score >= 2 else None


def shape_for(source: SeedSource, columns: Iterable[str]) -> SeedShape | None:
    """The shape a source names, or the one its row's (or file's) columns look like."""
    return SHAPES[source.shape] if source.shape != AUTO else detect_shape(columns)


@cache
def aya_task_map() -> dict[str, str]:
    """Aya Collection task_type -> our task id (data/aya_tasks.yaml)."""
    text = resources.files("m2l_ray").joinpath("data/aya_tasks.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return {str(k).lower(): v for k, v in data["task_type"].items()}


def _aya_collection_task(row: Mapping[str, Any], source: SeedSource) -> str:
    tt = str(row.get("task_type") or "").strip().lower()
    return source.task or aya_task_map().get(tt, "open_ended")


# The project's own rows.
register(SeedShape(
    name="m2l",
    required=frozenset({"language", "task", "instruction"}),
    hints=frozenset({"language", "task", "instruction", "reference_answer"}),
    text="instruction", reference="reference_answer", language=("language",),
    task=lambda row, _source: row.get("task"), task_columns=("task",),
    origin=lambda row, path: str(row.get("source") or Path(path).name),
))

# The Aya Dataset: human-written, no task of ours (``task:`` of the source, else open_ended).
register(SeedShape(
    name="aya_dataset",
    required=frozenset({"inputs", "targets", "language_code"}),
    hints=frozenset({"inputs", "targets", "language_code", "annotation_type", "user_id"}),
    text="inputs", reference="targets", language=("language_code", "language"),
    task=lambda _row, source: source.task or "open_ended",
    origin=lambda _row, _path: "aya_dataset",
))

# The Aya Collection: templated datasets, task_type mapped by data/aya_tasks.yaml.
register(SeedShape(
    name="aya_collection",
    required=frozenset({"inputs", "targets", "task_type", "dataset_name"}),
    hints=frozenset({"inputs", "targets", "task_type", "dataset_name", "sub_dataset_name", "template_id"}),
    text="inputs", reference="targets", language=("language",),
    task=_aya_collection_task, task_columns=("task_type",),
    origin=lambda row, _path: f"aya_collection/{row.get('dataset_name')}",
))
