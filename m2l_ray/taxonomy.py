"""The M2Lingual two-step Evol prompt taxonomy, loaded from YAML data files.

Step 1 (task evols) rewrites a seed instruction into a harder, more specific one in the
seed's language; step 2 (multi-turn evols) drives each further user turn of a conversation.

Why data, not code: the prompts are the product. Keeping them in YAML lets a job ship its
own taxonomy directory (``Taxonomy.load(path)``) without a code change, and lets
``fingerprint()`` tie every generated row to the exact prompt set that produced it.

Why validate everything at load time: the taxonomy is loaded once on the driver, so a typo
in a template (an unknown placeholder, a stray brace, a duplicated evol name) fails the job
before any GPU time is spent, instead of as a ``KeyError`` inside a vLLM actor hours later.

Every evol records its ``origin``: ``m2lingual`` if the type is seen in the paper's released
data (ServiceNow-AI/M2Lingual; only multi-turn types are), ``m2l-ray`` if it is this
project's extension. ``Taxonomy.restrict(origin="m2lingual")`` keeps only the paper's
multi-turn types, for runs that should match the published method.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from m2l_ray.errors import ConfigError

__all__ = [
    "ALLOWED_PLACEHOLDERS",
    "DEFAULT_DIRECTORY",
    "ORIGINS",
    "ORIGIN_M2LINGUAL",
    "ORIGIN_PROJECT",
    "Evol",
    "Task",
    "Taxonomy",
    "template_placeholders",
]

DEFAULT_DIRECTORY = Path(__file__).resolve().parent / "data" / "taxonomy"
TASKS_FILE = "tasks.yaml"
GENERAL_FILE = "general_evols.yaml"
MULTITURN_FILE = "multiturn_evols.yaml"
GENERAL_REF = "general"  # `evols: general` in tasks.yaml means "use general_evols.yaml"

_STEP1 = frozenset({"language", "task", "seed", "reference"})
ALLOWED_PLACEHOLDERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "task": _STEP1,
        "general": _STEP1,
        "multiturn": frozenset({"language", "history", "last_user", "last_assistant"}),
    }
)
# A template lacking these could not do its job (a rewrite that never sees the seed, a
# prompt that never names the output language), so their absence is a load error.
_REQUIRED: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "task": frozenset({"language", "seed"}),
        "general": frozenset({"language", "seed"}),
        "multiturn": frozenset({"language"}),
    }
)
_MULTITURN_CONTEXT = frozenset({"history", "last_user", "last_assistant"})
# Documented as optional for callers; rendering fills it with "" when not given.
_OPTIONAL_DEFAULTS: Mapping[str, str] = MappingProxyType({"reference": ""})

_EVOL_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")
_TASK_ID = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_EVOL_FIELDS = ("name", "origin", "description", "prompt")
_TASK_FIELDS = ("display_name", "description", "evols")

ORIGIN_M2LINGUAL = "m2lingual"  # seen in the paper's released data (ServiceNow-AI/M2Lingual)
ORIGIN_PROJECT = "m2l-ray"  # this project's extension
ORIGINS: tuple[str, ...] = (ORIGIN_M2LINGUAL, ORIGIN_PROJECT)


def template_placeholders(template: str) -> frozenset[str]:
    """Return the placeholder names a ``str.format`` template uses.

    Only plain ``{name}`` fields are accepted: positional ``{}``, attribute or index access
    (``{seed.x}``, ``{seed[0]}``), conversions and format specs raise ``ValueError``,
    because they would let a data file run arbitrary lookups on the values or fail only at
    render time. Unbalanced single braces raise ``ValueError`` too.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced single brace
        raise ValueError(f"{exc} (write literal braces as '{{{{' and '}}}}')") from exc
    names: set[str] = set()
    for _literal, field, format_spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(
                f"placeholder {{{field}}} is not a plain name "
                "(write literal braces as '{{' and '}}')"
            )
        if conversion is not None or format_spec:
            raise ValueError(f"placeholder {{{field}}} may not use a conversion or format spec")
        names.add(field)
    return frozenset(names)


@dataclass(frozen=True)
class Evol:
    """One evol type: a named prompt template and the step it belongs to."""

    name: str
    description: str
    prompt: str
    kind: str  # "task" | "general" | "multiturn"
    # "m2lingual" (seen in the paper's released data) | "m2l-ray" (this project's extension).
    # Required in the YAML files; an Evol built in code is, by default, our own.
    origin: str = ORIGIN_PROJECT

    def __post_init__(self) -> None:
        if self.kind not in ALLOWED_PLACEHOLDERS:
            raise ValueError(f"evol kind must be one of {sorted(ALLOWED_PLACEHOLDERS)}")
        if self.origin not in ORIGINS:
            raise ValueError(f"evol origin must be one of {', '.join(ORIGINS)}, not {self.origin!r}")

    @cached_property
    def placeholders(self) -> frozenset[str]:
        """Placeholder names the template uses (validated at load time)."""
        return template_placeholders(self.prompt)

    def render(self, **values: str) -> str:
        """Fill the template; only this kind's placeholders may be passed.

        ``reference`` defaults to the empty string because seeds often have no reference
        answer; every other placeholder the template uses must be given, else ``KeyError``
        naming it. Values are inserted verbatim (braces in a seed are safe).
        """
        allowed = ALLOWED_PLACEHOLDERS[self.kind]
        unexpected = sorted(set(values) - allowed)
        if unexpected:
            raise TypeError(
                f"evol {self.name} ({self.kind}): unexpected value(s) {', '.join(unexpected)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        merged = {k: v for k, v in _OPTIONAL_DEFAULTS.items() if k in allowed}
        merged.update(values)
        missing = sorted(self.placeholders - merged.keys())
        if missing:
            raise KeyError(
                f"evol {self.name} ({self.kind}): missing value for placeholder(s) "
                f"{', '.join(missing)}"
            )
        return self.prompt.format(**merged)

    def as_dict(self) -> dict[str, str]:
        """Plain-data form, used for the fingerprint and for dataset cards."""
        return {
            "name": self.name,
            "description": self.description,
            "prompt": self.prompt,
            "kind": self.kind,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class Task:
    """A seed task type and the evols that may evolve its seeds."""

    id: str
    display_name: str
    description: str
    evols: tuple[Evol, ...]  # for open_ended (uses_general): the general evols
    uses_general: bool = False

    def evol(self, name: str) -> Evol:
        """The evol of this task called ``name``; ``KeyError`` with close matches if absent."""
        for evol in self.evols:
            if evol.name == name:
                return evol
        raise KeyError(_unknown(f"evol for task {self.id!r}", name, [e.name for e in self.evols]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "display_name": self.display_name,
            "description": self.description,
            "uses_general": self.uses_general,
            "evols": [e.as_dict() for e in self.evols],
        }


class Taxonomy:
    """The full two-step taxonomy: tasks with their evols, general and multi-turn evols.

    Immutable once built; picklable so it can be shipped to Ray actors as-is.
    """

    def __init__(
        self,
        tasks: Mapping[str, Task],
        general_evols: Sequence[Evol],
        multiturn_evols: Sequence[Evol],
        directory: Path | None = None,
    ) -> None:
        self._tasks: dict[str, Task] = dict(tasks)
        self.general_evols: tuple[Evol, ...] = tuple(general_evols)
        self.multiturn_evols: tuple[Evol, ...] = tuple(multiturn_evols)
        self.directory = directory
        self._fingerprint: str | None = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path | None = None) -> Taxonomy:
        """Load and validate ``tasks.yaml``, ``general_evols.yaml``, ``multiturn_evols.yaml``.

        ``directory`` defaults to the package's ``data/taxonomy``; a job may point at its
        own copy. Any problem raises ``ConfigError`` whose key locates it, for example
        ``taxonomy.tasks.summarization.LENGTH_LIMIT.prompt``.
        """
        root = Path(directory) if directory is not None else DEFAULT_DIRECTORY
        if not root.is_dir():
            raise ConfigError("taxonomy", "directory not found", source=str(root))
        general = _load_evol_file(root / GENERAL_FILE, "general")
        multiturn = _load_evol_file(root / MULTITURN_FILE, "multiturn")
        tasks = _load_tasks(root / TASKS_FILE, general)
        return cls(tasks, general, multiturn, directory=root)

    # -- lookups ------------------------------------------------------------------------

    @property
    def tasks(self) -> Mapping[str, Task]:
        """Task id -> Task, in file order (read-only view)."""
        return MappingProxyType(self._tasks)

    def task(self, task_id: str) -> Task:
        """The task ``task_id``; ``KeyError`` naming close matches if unknown."""
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(_unknown("task", task_id, list(self._tasks))) from None

    def evols_for(self, task_id: str) -> tuple[Evol, ...]:
        """The evols that may evolve a seed of ``task_id`` (general ones for open_ended)."""
        return self.task(task_id).evols

    def multiturn(self, name: str) -> Evol:
        """The multi-turn evol ``name``; ``KeyError`` naming close matches if unknown."""
        for evol in self.multiturn_evols:
            if evol.name == name:
                return evol
        raise KeyError(_unknown("multi-turn evol", name, [e.name for e in self.multiturn_evols]))

    # -- provenance ---------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """Canonical plain-data form (what the fingerprint covers; no file paths)."""
        return {
            "tasks": {tid: t.as_dict() for tid, t in self._tasks.items()},
            "general_evols": [e.as_dict() for e in self.general_evols],
            "multiturn_evols": [e.as_dict() for e in self.multiturn_evols],
        }

    def fingerprint(self) -> str:
        """Hex sha256 of the canonical content.

        Evol order is kept (a planner may pick by index), task order is not (tasks are
        looked up by id), and YAML comments and formatting do not count.
        """
        if self._fingerprint is None:
            blob = json.dumps(
                self.as_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":")
            )
            self._fingerprint = hashlib.sha256(blob.encode("utf-8")).hexdigest()
        return self._fingerprint

    # -- subsetting ---------------------------------------------------------------------

    def restrict(
        self,
        tasks: Sequence[str] | None = None,
        task_evols: Sequence[str] | None = None,
        multiturn_evols: Sequence[str] | None = None,
        *,
        origin: str | None = None,
    ) -> Taxonomy:
        """A taxonomy limited to the named tasks and evols (``None`` keeps everything).

        ``task_evols`` names step-1 evols (task-specific or general) and filters every kept
        task's list and the general list. Unknown names, or a kept task left with no evol,
        raise ``ValueError`` naming them: a silent empty list would fail much later.

        ``origin`` (``"m2lingual"`` or ``"m2l-ray"``) keeps only the multi-turn evols of that
        origin; ``"m2lingual"`` leaves the 13 types seen in the paper's released data. It
        applies to the multi-turn evols only: task and general evols are all this project's
        (none is ``m2lingual``), so filtering them by origin would leave nothing, and they
        are left as they are. ``multiturn_evols`` then picks among the multi-turn evols of
        that origin; naming one of another origin is a ``ValueError``.
        """
        keep_tasks = list(self._tasks)
        if tasks is not None:
            wanted = _as_names(tasks, "tasks")
            _check_known("task", wanted, keep_tasks)
            keep_tasks = [tid for tid in keep_tasks if tid in wanted]

        general = self.general_evols
        new_tasks = {tid: self._tasks[tid] for tid in keep_tasks}
        if task_evols is not None:
            wanted = _as_names(task_evols, "task_evols")
            known = {e.name for tid in keep_tasks for e in self._tasks[tid].evols}
            known.update(e.name for e in self.general_evols)
            _check_known("task evol (for the selected tasks)", wanted, sorted(known))
            general = tuple(e for e in general if e.name in wanted)
            new_tasks = {
                tid: _replace_evols(t, tuple(e for e in t.evols if e.name in wanted))
                for tid, t in new_tasks.items()
            }
            empty = [tid for tid, t in new_tasks.items() if not t.evols]
            if empty:
                raise ValueError(
                    f"restrict: task(s) {', '.join(empty)} would have no evols left; "
                    "name one of their evols in task_evols or drop them from tasks"
                )

        multiturn = self.multiturn_evols
        what = "multi-turn evol"
        if origin is not None:
            if origin not in ORIGINS:
                raise ValueError(
                    f"restrict: {_unknown('origin', origin, ORIGINS)}; "
                    f"allowed: {', '.join(ORIGINS)}"
                )
            multiturn = tuple(e for e in multiturn if e.origin == origin)
            if not multiturn:
                raise ValueError(f"restrict: no multi-turn evol has origin {origin!r}")
            what = f"multi-turn evol of origin {origin!r}"
        if multiturn_evols is not None:
            wanted = _as_names(multiturn_evols, "multiturn_evols")
            _check_known(what, wanted, [e.name for e in multiturn])
            multiturn = tuple(e for e in multiturn if e.name in wanted)

        return Taxonomy(new_tasks, general, multiturn, directory=self.directory)

    # -- dunder -------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Taxonomy):
            return NotImplemented
        return self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        n_task_evols = sum(len(t.evols) for t in self._tasks.values() if not t.uses_general)
        return (
            f"Taxonomy({len(self._tasks)} tasks, {n_task_evols} task evols, "
            f"{len(self.general_evols)} general, {len(self.multiturn_evols)} multi-turn, "
            f"fingerprint={self.fingerprint()[:12]})"
        )


# -- helpers ---------------------------------------------------------------------------


def _unknown(what: str, name: str, choices: Sequence[str]) -> str:
    name = str(name)
    prefixed = [c for c in choices if c.lower().startswith(name.lower())] if name else []
    close = list(dict.fromkeys(prefixed + difflib.get_close_matches(name, list(choices), n=3)))[:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {what} {name!r}{hint}"


def _as_names(names: Sequence[str], arg: str) -> set[str]:
    if isinstance(names, str):  # a bare string would silently become a set of letters
        raise TypeError(f"restrict: {arg} must be a sequence of names, not a string")
    wanted = set(names)
    if not wanted:
        raise ValueError(f"restrict: {arg} is empty; pass None to keep all")
    return wanted


def _check_known(what: str, wanted: set[str], known: Sequence[str]) -> None:
    unknown = sorted(wanted - set(known), key=str)
    if unknown:
        hints = "; ".join(_unknown(what, name, known) for name in unknown)
        raise ValueError(f"restrict: {hints}")


def _replace_evols(task: Task, evols: tuple[Evol, ...]) -> Task:
    return Task(task.id, task.display_name, task.description, evols, task.uses_general)


_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # C is ~5x faster


class _UniqueKeyLoader(_SafeBase):  # type: ignore[misc]
    """Safe loader that rejects duplicate mapping keys (plain PyYAML keeps the last one,
    which would silently drop a whole task or evol field)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key; let the normal constructor report it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _read_yaml(path: Path) -> Any:
    key = f"taxonomy.{path.stem}"
    if not path.is_file():
        raise ConfigError(key, "file not found", source=str(path))
    try:
        with path.open(encoding="utf-8") as fh:
            loader = _UniqueKeyLoader(fh)  # what yaml.load does, with our safe loader
            try:
                return loader.get_single_data()
            finally:
                loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"not valid YAML: {exc}", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(key, f"not UTF-8 text: {exc}", source=str(path)) from exc


def _require_mapping(data: Any, top_key: str, key: str, source: str) -> Any:
    if not isinstance(data, dict) or set(data) != {top_key}:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(key, f"expected a mapping with the single key '{top_key}', "
                          f"found {found}", source=source)
    return data[top_key]


def _check_fields(
    raw: Any, fields: Sequence[str], key: str, source: str, later: Sequence[str] = ()
) -> None:
    """Reject a non-mapping, missing and unknown fields; ``later`` fields (allowed, but
    checked for presence by the caller, which can name the entry by then) are skipped."""
    if not isinstance(raw, dict):
        raise ConfigError(key, f"expected a mapping with {', '.join(fields)}", source=source)
    missing = [f for f in fields if f not in raw and f not in later]
    if missing:
        raise ConfigError(key, f"missing field(s) {', '.join(missing)}", source=source)
    extra = sorted(str(f) for f in raw if f not in fields)
    if extra:
        raise ConfigError(key, f"unknown field(s) {', '.join(extra)}; allowed: "
                          f"{', '.join(fields)}", source=source)


def _text(raw: dict[str, Any], field: str, key: str, source: str) -> str:
    value = raw[field]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}.{field}", "must be a non-empty string", source=source)
    return value


def _origin(raw: dict[str, Any], key: str, source: str) -> str:
    allowed = " or ".join(ORIGINS)
    if "origin" not in raw:
        raise ConfigError(
            f"{key}.origin",
            f"missing field origin; must be {allowed} "
            f"({ORIGIN_M2LINGUAL} = seen in the paper's released data, "
            f"{ORIGIN_PROJECT} = this project's extension)",
            source=source,
        )
    value = raw["origin"]
    if value not in ORIGINS:
        raise ConfigError(f"{key}.origin", f"{value!r} is not one of {allowed}", source=source)
    return str(value)


def _parse_evol(raw: Any, kind: str, key: str, source: str) -> Evol:
    _check_fields(raw, _EVOL_FIELDS, key, source, later=("origin",))
    name = _text(raw, "name", key, source)
    if not _EVOL_NAME.match(name):
        raise ConfigError(f"{key}.name", f"{name!r} is not UPPER_SNAKE_CASE", source=source)
    key = key.rsplit("[", 1)[0] + f".{name}"  # locate later problems by name, not index
    origin = _origin(raw, key, source)
    description = _text(raw, "description", key, source)
    prompt = _text(raw, "prompt", key, source)
    try:
        used = template_placeholders(prompt)
    except ValueError as exc:
        raise ConfigError(f"{key}.prompt", str(exc), source=source) from exc
    allowed = ALLOWED_PLACEHOLDERS[kind]
    unknown = sorted(used - allowed)
    if unknown:
        raise ConfigError(
            f"{key}.prompt",
            f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; allowed: "
            f"{', '.join('{' + a + '}' for a in sorted(allowed))} "
            "(write literal braces as '{{' and '}}')",
            source=source,
        )
    missing = sorted(_REQUIRED[kind] - used)
    if missing:
        raise ConfigError(
            f"{key}.prompt",
            f"must use placeholder(s) {', '.join('{' + m + '}' for m in missing)}",
            source=source,
        )
    if kind == "multiturn" and not used & _MULTITURN_CONTEXT:
        raise ConfigError(
            f"{key}.prompt",
            "must use at least one of {history}, {last_user}, {last_assistant}",
            source=source,
        )
    return Evol(name=name, description=description, prompt=prompt, kind=kind, origin=origin)


def _parse_evol_list(raw: Any, kind: str, key: str, source: str) -> tuple[Evol, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(key, "must be a non-empty list of evols", source=source)
    evols: list[Evol] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        evol = _parse_evol(item, kind, f"{key}[{i}]", source)
        if evol.name in seen:
            raise ConfigError(f"{key}.{evol.name}", "duplicate evol name in this list",
                              source=source)
        seen.add(evol.name)
        evols.append(evol)
    return tuple(evols)


def _load_evol_file(path: Path, kind: str) -> tuple[Evol, ...]:
    key = f"taxonomy.{path.stem}"
    raw = _require_mapping(_read_yaml(path), "evols", key, str(path))
    return _parse_evol_list(raw, kind, key, str(path))


def _load_tasks(path: Path, general: tuple[Evol, ...]) -> dict[str, Task]:
    source = str(path)
    key = f"taxonomy.{path.stem}"
    raw_tasks = _require_mapping(_read_yaml(path), "tasks", key, source)
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        raise ConfigError(f"{key}.tasks", "must be a non-empty mapping of task id -> task",
                          source=source)
    tasks: dict[str, Task] = {}
    for task_id, raw in raw_tasks.items():
        task_key = f"{key}.{task_id}"
        if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
            raise ConfigError(task_key, f"task id {task_id!r} is not snake_case", source=source)
        _check_fields(raw, _TASK_FIELDS, task_key, source)
        display_name = _text(raw, "display_name", task_key, source)
        description = _text(raw, "description", task_key, source)
        raw_evols = raw["evols"]
        if raw_evols == GENERAL_REF:
            evols, uses_general = general, True
        elif isinstance(raw_evols, str):
            raise ConfigError(f"{task_key}.evols", f"must be a list of evols or "
                              f"'{GENERAL_REF}', not {raw_evols!r}", source=source)
        else:
            evols, uses_general = _parse_evol_list(raw_evols, "task", task_key, source), False
        tasks[task_id] = Task(task_id, display_name, description, evols, uses_general)
    return tasks
