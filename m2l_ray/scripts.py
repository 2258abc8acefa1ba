"""Which writing system a text is in, from Unicode ranges alone.

fastText LID scores short turns poorly and cannot tell "Hindi in Devanagari" from
"Hindi in Latin letters" well, while a script check is exact and costs microseconds.
So every generated turn gets a script check first: ``script_ratio(text, lang.script)``
is the share of its letters that are in the expected script.

The ranges live in ``data/scripts.yaml``; they are read once per process and turned
into sorted start/end arrays so that each character costs one ``bisect``.
"""

from __future__ import annotations

import functools
import itertools
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from m2l_ray.errors import ConfigError

#: Where the range table comes from, for error messages.
SCRIPTS_FILE = "m2l_ray/data/scripts.yaml"

# A CJK text counts as Japanese (Korean) when at least this share of its CJK letters
# is kana (Hangul): a Chinese text quoting one Japanese word stays Chinese.
_KANA_SHARE = 0.05
_HANGUL_SHARE = 0.05


@dataclass(frozen=True)
class _Table:
    """Merged, sorted inclusive code-point ranges of one script."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]


def _read_yaml() -> Any:
    text = resources.files("m2l_ray").joinpath("data", "scripts.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _merge(ranges: list[tuple[int, int]]) -> _Table:
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return _Table(tuple(s for s, _ in merged), tuple(e for _, e in merged))


@dataclass(frozen=True)
class _Scripts:
    names: Mapping[str, str]
    base: Mapping[str, tuple[tuple[int, int], ...]]  # scripts with their own ranges
    components: Mapping[str, frozenset[str]]  # script -> base scripts it is made of
    tables: Mapping[str, _Table]
    # one table over all base scripts, for dominant_script()
    all_starts: tuple[int, ...]
    all_ends: tuple[int, ...]
    all_owner: tuple[str, ...]


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(key=key, problem=problem, source=SCRIPTS_FILE)


def _parse_ranges(code: str, raw: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(f"{code}.ranges", "must be a non-empty list of [start, end] pairs")
    out = []
    for j, pair in enumerate(raw):
        ok = (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            and 0 <= pair[0] <= pair[1] <= 0x10FFFF
        )
        if not ok:
            raise _fail(f"{code}.ranges[{j}]", f"not a [start, end] code-point pair: {pair!r}")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _build(data: Any) -> _Scripts:
    if not isinstance(data, dict) or not data:
        raise _fail("<root>", "must be a mapping of ISO 15924 code to script definition")
    names: dict[str, str] = {}
    base: dict[str, tuple[tuple[int, int], ...]] = {}
    includes: dict[str, list[str]] = {}
    for code, spec in data.items():
        if not isinstance(code, str) or len(code) != 4 or not code.isalpha():
            raise _fail(str(code), "script keys must be 4-letter ISO 15924 codes")
        if not isinstance(spec, dict):
            raise _fail(code, "must be a mapping with 'ranges' or 'includes'")
        names[code] = str(spec.get("name", code))
        has_ranges, has_includes = "ranges" in spec, "includes" in spec
        if has_ranges == has_includes:
            raise _fail(code, "needs exactly one of 'ranges' or 'includes'")
        if has_ranges:
            base[code] = _parse_ranges(code, spec["ranges"])
        else:
            inc = spec["includes"]
            if not isinstance(inc, list) or not inc or not all(isinstance(s, str) for s in inc):
                raise _fail(f"{code}.includes", "must be a non-empty list of script codes")
            includes[code] = inc
    components: dict[str, frozenset[str]] = {c: frozenset([c]) for c in base}
    for code, inc in includes.items():
        for part in inc:
            if part not in base:
                raise _fail(f"{code}.includes", f"'{part}' is not a script with its own ranges")
        components[code] = frozenset(inc)

    # Base scripts must not overlap, or dominant_script() would be order-dependent.
    flat = sorted((s, e, c) for c, rs in base.items() for s, e in rs)
    for (s1, e1, c1), (s2, _e2, c2) in itertools.pairwise(flat):
        if s2 <= e1:
            raise _fail(
                f"{c2}.ranges",
                f"range starting at {s2:#06x} overlaps {c1} range {s1:#06x}-{e1:#06x}",
            )
    tables = {
        code: _merge([r for part in sorted(parts) for r in base[part]])
        for code, parts in components.items()
    }
    return _Scripts(
        names=names,
        base=base,
        components=components,
        tables=tables,
        all_starts=tuple(s for s, _, _ in flat),
        all_ends=tuple(e for _, e, _ in flat),
        all_owner=tuple(c for _, _, c in flat),
    )


@functools.cache
def _scripts() -> _Scripts:
    return _build(_read_yaml())


def known_scripts() -> frozenset[str]:
    """All script codes defined in scripts.yaml (base and composite)."""
    return frozenset(_scripts().components)


def script_name(script: str) -> str:
    """English name of a script code, for reports."""
    return _scripts().names[_check(script)]


def _check(script: str) -> str:
    if script not in _scripts().components:
        known = ", ".join(sorted(_scripts().components))
        raise ValueError(f"unknown script {script!r}; known scripts: {known}")
    return script


def covers(script: str, other: str) -> bool:
    """True if every letter of ``other`` is also a letter of ``script``.

    Used to accept labels such as GlotLID's ``cmn_Hani`` or ``kor_Hang`` for a
    language registered as Hans or Kore: Han is part of Hans, Hangul part of Kore.
    """
    comps = _scripts().components
    return comps[_check(other)] <= comps[_check(script)]


def script_ratio(text: str, script: str) -> float:
    """Share of the letters in ``text`` that belong to ``script``.

    Only characters with ``str.isalpha()`` count, so digits, punctuation, spaces,
    emoji and combining marks neither help nor hurt. Letters of any other script
    count against the ratio (Latin words in a Chinese answer lower its Hans ratio).
    A text with no letters at all returns 1.0: there is nothing written in a wrong
    script, and callers judge emptiness separately.
    """
    table = _scripts().tables[_check(script)]
    starts, ends = table.starts, table.ends
    letters = hits = 0
    for ch in text:
        if not ch.isalpha():
            continue
        letters += 1
        cp = ord(ch)
        i = bisect_right(starts, cp) - 1
        if i >= 0 and cp <= ends[i]:
            hits += 1
    return 1.0 if letters == 0 else hits / letters


def script_counts(text: str) -> dict[str, int]:
    """Number of letters per base script (letters outside every known script are skipped)."""
    sc = _scripts()
    starts, ends, owner = sc.all_starts, sc.all_ends, sc.all_owner
    counts: dict[str, int] = {}
    for ch in text:
        if not ch.isalpha():
            continue
        cp = ord(ch)
        i = bisect_right(starts, cp) - 1
        if i >= 0 and cp <= ends[i]:
            code = owner[i]
            counts[code] = counts.get(code, 0) + 1
    return counts


def dominant_script(text: str) -> str | None:
    """The script most of the letters in ``text`` are written in, or None if it has none.

    Returns a base script code (Latn, Cyrl, Arab, Deva, Hani, ...) except for CJK,
    where the writing system is what can be told apart: "Jpan" when kana make up at
    least 5% of the Han+kana letters, "Kore" likewise for Hangul, and "Hani" for Han
    alone (code points cannot tell simplified from traditional, so never Hans/Hant;
    compare with ``covers(expected, found)``). Ties go to the alphabetically first code.
    """
    counts = script_counts(text)
    if not counts:
        return None
    han = counts.get("Hani", 0)
    kana = counts.pop("Hira", 0) + counts.pop("Kana", 0)
    hangul = counts.get("Hang", 0)
    if kana and kana >= _KANA_SHARE * (kana + han):
        counts["Jpan"] = kana + counts.pop("Hani", 0)
    elif kana:
        counts["Hani"] = han + kana
    if hangul and hangul >= _HANGUL_SHARE * (hangul + counts.get("Hani", 0)):
        counts["Kore"] = counts.pop("Hang") + counts.pop("Hani", 0)
    return min(counts, key=lambda c: (-counts[c], c))
