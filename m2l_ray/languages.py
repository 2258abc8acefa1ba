"""The language registry: codes, names, scripts, LID labels and refusal phrases.

Seeds, prompts, LID and reports all name languages, and data sets disagree on how
(Aya writes "swh", "arb", "zho" and "Swahili"; GlotLID says ``swh_Latn``; lid.176 says
``__label__sw``). Everything in m2l-ray goes through one registry so that a language
is one ``Language`` with one canonical ``code`` wherever it appears.

The built-in languages live in ``data/languages.yaml`` (refusal phrases in
``data/refusals.yaml``) and are validated on every load, so a bad edit to a data file
fails at start-up rather than as silently missing languages. A job config can add
languages the registry lacks (``LanguageRegistry.load(extra=...)``); those are
validated too and every problem names its config key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import yaml

from m2l_ray import scripts
from m2l_ray.errors import ConfigError
from m2l_ray.validation import knob, need, parse

LANGUAGES_FILE = "m2l_ray/data/languages.yaml"
REFUSALS_FILE = "m2l_ray/data/refusals.yaml"

RESOURCE_LEVELS = ("high", "mid", "low")
SEGMENTATIONS = ("space", "char")
#: Scripts whose languages are written without spaces between words.
CHAR_SEGMENTED_SCRIPTS = frozenset({"Hans", "Hant", "Hani", "Jpan", "Thai", "Laoo", "Khmr",
                                    "Mymr", "Tibt"})
LABEL_PREFIX = "__label__"
#: refusals.yaml key whose phrases every language gets (models often refuse in English).
ALL_LANGUAGES_KEY = "_all"

_APOSTROPHES = ("\u2019", "\u02bc")  # ’ and ʼ, as typed by models and keyboards


class FrozenMap(Mapping[str, str]):
    """A small immutable, hashable, picklable str->str mapping (Language.lid).

    ``types.MappingProxyType`` would do, but it cannot be pickled, and Languages
    travel to Ray workers.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __getstate__(self) -> dict[str, str]:
        return self._data

    def __setstate__(self, state: dict[str, str]) -> None:
        self._data = state


@dataclass(frozen=True)
class Language:
    """One language as m2l-ray knows it. ``code`` is the only identifier to store."""

    code: str
    iso639_1: str | None
    iso639_3: str
    name: str
    script: str
    resource: str  # "high" | "mid" | "low"
    lid: Mapping[str, str]  # model family -> label, e.g. {"lid176": "__label__sw"}
    segmentation: str  # "space" | "char"
    in_paper: bool
    aliases: tuple[str, ...] = ()
    refusals: tuple[str, ...] = ()  # lowercase, NFC; includes the _all phrases

    def refusal_in(self, text: str) -> str | None:
        """The first refusal phrase found in ``text`` (matched lowercased and NFC), or None."""
        from m2l_ray.textchecks import RefusalCheck  # the one refusal match (synthesis, curation)

        return RefusalCheck(window=None).phrase(text, self.refusals)


# --------------------------------------------------------------------------- loading


def _read_data(name: str) -> Any:
    text = resources.files("m2l_ray").joinpath("data", name).read_text("utf-8")
    return yaml.safe_load(text)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v.strip() == v and v != ""


def _phrase_variants(phrases: Sequence[str]) -> tuple[str, ...]:
    """Normalise phrases (NFC, lowercase) and add typographic-apostrophe variants."""
    out: dict[str, None] = {}
    for p in phrases:
        p = unicodedata.normalize("NFC", p).lower()
        out[p] = None
        if "'" in p:
            for apo in _APOSTROPHES:
                out[p.replace("'", apo)] = None
    return tuple(out)


def _normalise_label(label: str) -> str:
    return label if label.startswith(LABEL_PREFIX) else LABEL_PREFIX + label


# An entry of data/languages.yaml and one of a job's ``languages.extra`` are dataclasses read
# by the one config validator (``validation.parse``: types, choices, missing and unknown
# fields, each error naming its key); ``_check_entry`` adds what field metadata can't say.


@dataclass(frozen=True)
class _BuiltinEntry:
    """One entry of data/languages.yaml: every field but aliases is required, so that a
    forgotten field fails the load rather than taking a default nobody chose."""

    code: str
    iso639_1: str | None
    iso639_3: str
    name: str
    script: str
    resource: str = knob(choices=RESOURCE_LEVELS)
    lid: dict[str, str]  # model family -> label, "__label__" optional
    segmentation: str = knob(choices=SEGMENTATIONS)
    in_paper: bool
    aliases: tuple[str, ...] = ()

    def check(self, prefix: str, source: str | None) -> None:
        _check_entry(self, prefix, source)
        iso1, iso3 = self.iso639_1, self.iso639_3
        need(iso1 is None or bool(re.fullmatch("[a-z]{2}", iso1)), f"{prefix}.iso639_1",
             f"must be null or two lowercase letters, got {iso1!r}", source)
        need(bool(re.fullmatch("[a-z]{3}", iso3)), f"{prefix}.iso639_3",
             f"must be three lowercase letters, got {iso3!r}", source)
        need(self.code == (iso1 or iso3), f"{prefix}.code",
             f"{self.code!r} is not canonical: use ISO 639-1 where one exists, else ISO 639-3 "
             f"({iso1 or iso3!r})", source)


_FROM_CODE = ""  # iso639_1 not given: the code, if it is two letters (a user can't write "")


@dataclass(frozen=True)
class _ExtraEntry:
    """One language a job config adds: code, name and script; the rest has defaults."""

    code: str
    name: str
    script: str
    iso639_1: str | None = _FROM_CODE
    iso639_3: str | None = None  # None: the code
    resource: str = knob("low", choices=RESOURCE_LEVELS)
    lid: dict[str, str] = knob(default_factory=dict)
    segmentation: str | None = knob(None, choices=SEGMENTATIONS)  # None: by the script
    aliases: tuple[str, ...] = ()
    refusals: tuple[str, ...] = ()

    def check(self, prefix: str, source: str | None) -> None:
        _check_entry(self, prefix, source)


_Entry = TypeVar("_Entry", _BuiltinEntry, _ExtraEntry)


def _parse_entry(cls: type[_Entry], raw: Any, prefix: str, source: str | None) -> _Entry:
    """``validation.parse`` of one entry; a field the entry lacks is named an "unknown
    field" with the allowed ones in file order, as the data files' messages always said."""
    if isinstance(raw, Mapping):
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = next((k for k in raw if k not in allowed), None)
        need(unknown is None, f"{prefix}.{unknown}", f"unknown field; allowed: {', '.join(allowed)}", source)
    return parse(cls, raw, prefix, source)


def _check_entry(entry: _BuiltinEntry | _ExtraEntry, prefix: str, source: str | None) -> None:
    """What the validator can't say of either entry: no text with surrounding spaces (a
    name " Swahili" would be a lookup key nobody types), a code without spaces, a known
    script (with close matches)."""
    for f in dataclasses.fields(entry):
        value = getattr(entry, f.name)
        items = (
            [(f"{f.name}.{k}", s) for k, v in value.items() for s in (k, v)] if isinstance(value, Mapping)
            else [(f"{f.name}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, tuple)
            else [(f.name, value)]
        )
        for key, v in items:
            need(not isinstance(v, str) or v.strip() == v, f"{prefix}.{key}",
                 f"must be a non-empty string without surrounding spaces, got {v!r}", source)
    need(not any(ch.isspace() for ch in entry.code), f"{prefix}.code",
         f"must not contain spaces, got {entry.code!r}", source)
    known = scripts.known_scripts()
    if entry.script not in known:
        close = difflib.get_close_matches(entry.script, sorted(known), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{prefix}.script", f"unknown script {entry.script!r}{hint}; known scripts: "
                                              f"{', '.join(sorted(known))}", source)


def _lid(labels: Mapping[str, str]) -> FrozenMap:
    return FrozenMap({fam: _normalise_label(label) for fam, label in labels.items()})


def _keys_of(lang: Language) -> list[str]:
    """Lowercased lookup keys of a language, strongest first, without duplicates."""
    keys = [lang.code, lang.iso639_1, lang.iso639_3, lang.name, *lang.aliases]
    return list(dict.fromkeys(k.lower() for k in keys if k))


@functools.cache
def _builtin_refusals() -> Mapping[str, tuple[str, ...]]:
    data = _read_data("refusals.yaml")
    if not isinstance(data, dict):
        raise ConfigError("<root>", "must map language codes to lists of phrases", REFUSALS_FILE)
    out: dict[str, tuple[str, ...]] = {}
    for code, phrases in data.items():
        if not isinstance(phrases, list) or not all(_is_str(p) for p in phrases):
            raise ConfigError(str(code), "must be a list of non-empty phrases", REFUSALS_FILE)
        for p in phrases:
            if p != p.lower():
                raise ConfigError(str(code), f"phrases must be lowercase: {p!r}", REFUSALS_FILE)
        out[str(code)] = _phrase_variants(phrases)
    return out


def _with_common(
    own: Sequence[str], refusals: Mapping[str, tuple[str, ...]] | None = None
) -> tuple[str, ...]:
    """``own`` phrases followed by the phrases every language gets."""
    common = (refusals if refusals is not None else _builtin_refusals()).get(
        ALL_LANGUAGES_KEY, ()
    )
    return tuple(dict.fromkeys([*own, *common]))


@functools.cache
def _builtin_languages() -> tuple[Language, ...]:
    """Parse and validate data/languages.yaml (once per process)."""
    return _parse_builtin(_read_data("languages.yaml"), _builtin_refusals())


def _parse_builtin(data: Any, refusals: Mapping[str, tuple[str, ...]]) -> tuple[Language, ...]:
    """Validate the built-in registry; every problem names the entry and field."""
    if not isinstance(data, list) or not data:
        raise ConfigError("<root>", "must be a list of language entries", LANGUAGES_FILE)
    langs: list[Language] = []
    owner: dict[str, str] = {}
    for i, raw in enumerate(data):
        prefix = f"languages[{i}]"
        e = _parse_entry(_BuiltinEntry, raw, prefix, LANGUAGES_FILE)
        code, iso1, iso3 = e.code, e.iso639_1, e.iso639_3
        lang = Language(
            code=code,
            iso639_1=iso1,
            iso639_3=iso3,
            name=e.name,
            script=e.script,
            resource=e.resource,
            lid=_lid(e.lid),
            segmentation=e.segmentation,
            in_paper=e.in_paper,
            aliases=e.aliases,
            refusals=_with_common(refusals.get(code, ()), refusals),
        )
        fields = {code.lower(): "code", lang.name.lower(): "name", iso3: "iso639_3",
                  (iso1 or iso3): "iso639_1" if iso1 else "iso639_3"}
        for key in _keys_of(lang):
            if key in owner:
                raise ConfigError(f"{prefix}.{fields.get(key, 'aliases')}",
                                  f"{key!r} of {code} is already used by {owner[key]}", LANGUAGES_FILE)
            owner[key] = code
        langs.append(lang)
    codes = {lang.code for lang in langs}
    for key in refusals:
        if key != ALL_LANGUAGES_KEY and key not in codes:
            raise ConfigError(key, "is not a language code in languages.yaml", REFUSALS_FILE)
    return tuple(langs)


def _extra_language(raw: Any, i: int, source: str | None) -> Language:
    e = _parse_entry(_ExtraEntry, raw, f"languages.extra[{i}]", source)
    iso1 = e.iso639_1
    if iso1 == _FROM_CODE:
        iso1 = e.code if re.fullmatch("[a-z]{2}", e.code) else None
    return Language(
        code=e.code,
        iso639_1=iso1,
        iso639_3=e.iso639_3 or e.code,
        name=e.name,
        script=e.script,
        resource=e.resource,
        lid=_lid(e.lid),
        segmentation=e.segmentation or ("char" if e.script in CHAR_SEGMENTED_SCRIPTS else "space"),
        in_paper=False,
        aliases=e.aliases,
        refusals=_with_common(_phrase_variants(e.refusals)),
    )


_SUBTAG = re.compile(r"[-_]")


# --------------------------------------------------------------------------- registry


class LanguageRegistry:
    """All languages a job can use: the built-in registry plus the job's extras."""

    def __init__(self, languages: Sequence[Language]) -> None:
        self._langs: tuple[Language, ...] = tuple(languages)
        # strong keys (code, aliases) and, where not taken, 639-1/639-3/name -> language
        self._exact: dict[str, Language] = {}
        # every key of every language, in order, for script-qualified lookups
        self._multi: dict[str, list[Language]] = {}
        # family -> label -> languages carrying it
        self._by_label: dict[str, dict[str, list[Language]]] = {}
        for lang in self._langs:
            for key in _keys_of(lang):
                self._exact.setdefault(key, lang)
                self._multi.setdefault(key, []).append(lang)
            for fam, label in lang.lid.items():
                self._by_label.setdefault(fam, {}).setdefault(label, []).append(lang)

    @classmethod
    def load(
        cls, extra: Sequence[Mapping[str, Any]] | None = (), source: str | None = None
    ) -> LanguageRegistry:
        """The built-in languages plus ``extra`` (a job config's ``languages.extra`` list).

        ``source`` names the config file in error messages. Raises ConfigError for
        any invalid extra, and for an extra whose code or alias is already taken.
        """
        langs = list(_builtin_languages())
        taken: dict[str, str] = {k: lang.code for lang in langs for k in _keys_of(lang)}
        if isinstance(extra, str) or (extra is not None and not isinstance(extra, Sequence)):
            raise ConfigError("languages.extra", "must be a list of language mappings", source)
        for i, raw in enumerate(extra or ()):
            lang = _extra_language(raw, i, source)
            clash = taken.get(lang.code.lower())
            if clash is not None:
                what = "a built-in language" if clash in _builtin_codes() else "another extra"
                raise ConfigError(
                    f"languages.extra[{i}].code",
                    f"{lang.code!r} is already {what} ({clash}); use that code, or pick "
                    f"a new one such as '{lang.code}-x'",
                    source,
                )
            for alias in lang.aliases:
                clash = taken.get(alias.lower())
                if clash is not None:
                    raise ConfigError(
                        f"languages.extra[{i}].aliases",
                        f"alias {alias!r} already names language {clash}",
                        source,
                    )
            for key in _keys_of(lang):
                taken.setdefault(key, lang.code)
            langs.append(lang)
        return cls(langs)

    # ----------------------------------------------------------------- lookups

    def resolve(self, code_or_alias: str) -> Language | None:
        """The language a code or name means, or None.

        Case-insensitive. Accepts the canonical code, ISO 639-1, ISO 639-3, aliases,
        the English name, LID labels (``__label__sw``), and tags with a script or
        region: ``swh_Latn``, ``cmn_Hani``, ``zh-Hans``, ``pt-BR``. A script subtag
        must fit the language's script (Hani fits Hans, Hang fits Kore): ``srp_Latn``
        resolves to None rather than to Cyrillic Serbian, so that a script check
        cannot reject every row of a mislabelled data set in silence.
        """
        if not isinstance(code_or_alias, str):
            return None
        key = code_or_alias.strip().removeprefix(LABEL_PREFIX).lower()
        if not key:
            return None
        if key in self._exact:
            return self._exact[key]
        parts = _SUBTAG.split(key)
        if len(parts) < 2 or parts[0] not in self._multi:
            return None
        script = next((p.title() for p in parts[1:] if len(p) == 4 and p.isalpha()), None)
        candidates = self._multi[parts[0]]
        if script is None:
            return candidates[0]
        if script not in scripts.known_scripts():
            return None
        for lang in candidates:
            if scripts.covers(lang.script, script):
                return lang
        return None

    def get(self, code_or_alias: str) -> Language:
        """Like resolve(), but raises KeyError naming close matches and how to add one."""
        lang = self.resolve(code_or_alias)
        if lang is not None:
            return lang
        raise KeyError(self._unknown_message(code_or_alias))

    def _unknown_message(self, query: Any) -> str:
        msg = f"unknown language {query!r}"
        parts = _SUBTAG.split(str(query).strip())
        if len(parts) > 1 and parts[0].lower() in self._multi:
            known = self._multi[parts[0].lower()][0]
            msg += (f": {known.code} ({known.name}) is registered in script {known.script}, "
                    f"which does not match {'-'.join(parts[1:])!r}")
        else:
            text = str(query).strip().lower()
            close = difflib.get_close_matches(text, list(self._exact), n=5, cutoff=0.6)
            named = list(dict.fromkeys(f"{self._exact[c].code} ({self._exact[c].name})"
                                       for c in close))
            if named:
                msg += f" (did you mean {', '.join(named)}?)"
        return msg + ". A job config can add it under languages.extra (code, name, script)."

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and self.resolve(code) is not None

    def __iter__(self) -> Iterator[Language]:
        return iter(self._langs)

    def __len__(self) -> int:
        return len(self._langs)

    def codes(self) -> list[str]:
        """Canonical codes, built-in file order first, then the job's extras."""
        return [lang.code for lang in self._langs]

    def paper_languages(self) -> list[Language]:
        """The 70 languages of the M2Lingual paper (the Aya Dataset languages)."""
        return [lang for lang in self._langs if lang.in_paper]

    def lid_label(self, code: str, family: str) -> str | None:
        """The label model ``family`` uses for this language, or None if it has none.

        Raises KeyError for an unknown language (a typo should not look like
        "this model cannot detect it").
        """
        return self.get(code).lid.get(family)

    def language_for_lid_label(self, label: str, family: str) -> Language | None:
        """The language a predicted label means (``__label__`` prefix optional), or None.

        Several languages may share a label (lid.176 has one Arabic label for MSA and
        the dialects); the one whose own code or alias is the label wins, so
        ``__label__ar`` gives ar, not ary.
        """
        full = _normalise_label(label)
        cands = self._by_label.get(family, {}).get(full)
        if not cands:
            return None
        core = full[len(LABEL_PREFIX):].lower()
        base = _SUBTAG.split(core)[0]
        for lang in cands:
            keys = _keys_of(lang)
            if core in keys or base in keys:
                return lang
        return cands[0]


@functools.cache
def _builtin_codes() -> frozenset[str]:
    return frozenset(lang.code for lang in _builtin_languages())
