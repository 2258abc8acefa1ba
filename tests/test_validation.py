"""The one config validator: types from annotations, ranges/choices/hash exclusion from knobs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from m2l_ray.errors import ConfigError
from m2l_ray.validation import hashed, knob, need, parse, plain


@dataclass(frozen=True)
class Inner:
    ratio: float = knob(0.5, gt=0, le=1)
    where: str = knob("here", hashed=False)


@dataclass(frozen=True)
class Section:
    name: str = "x"
    count: int = knob(1, ge=1)
    share: float = knob(0.5, ge=0, le=1)
    mode: str = knob("a", choices=("a", "b"))
    maybe: str | None = knob(None, choices=("p", "q"))
    flag: bool = True
    tags: tuple[str, ...] = knob((), choices=("t1", "t2"))
    limits: dict[str, int] = knob(default_factory=dict, keys=("user", "assistant"), ge=0)
    lists: dict[str, tuple[str, ...]] = field(default_factory=dict)
    free: Mapping[str, Any] = knob(default_factory=dict, hashed=False)
    inner: Inner = field(default_factory=Inner)
    items: tuple[Inner, ...] = ()
    auto: int | None = knob(None, ge=1, convert=lambda v: None if v == "auto" else v)
    low: int = 0
    high: int = 1

    def check(self, prefix: str, source: str | None) -> None:
        need(self.low <= self.high, f"{prefix}.low", f"low ({self.low}) > high ({self.high})", source)


@dataclass(frozen=True)
class Required:
    path: str
    kind: str = "k"


def test_defaults_and_canonical_values():
    s = parse(Section, {"share": 1, "tags": ["t2"], "auto": "auto", "inner": {"ratio": 1},
                        "items": [{"ratio": 0.25}], "lists": {"x": ["a", "b"]}}, "sec")
    assert s.share == 1.0 and isinstance(s.share, float)
    assert s.tags == ("t2",) and s.auto is None and s.inner == Inner(1.0)
    assert s.items == (Inner(0.25),) and s.lists == {"x": ("a", "b")}
    assert parse(Section, None, "sec") == Section()
    assert parse(Section, {"inner": None, "count": None}, "sec") == Section()  # empty YAML value: default
    assert parse(Section, {"maybe": None}, "sec").maybe is None


@pytest.mark.parametrize(("raw", "key", "words"), [
    ({"bogus": 1}, "sec.bogus", "unknown key (allowed here: auto, count, flag, free, high,"),
    ({"count": 0}, "sec.count", "must be >= 1, got 0"),
    ({"count": True}, "sec.count", "must be int, got True"),
    ({"count": 1.5}, "sec.count", "must be int"),
    ({"share": 1.5}, "sec.share", "must be between 0 and 1, got 1.5"),
    ({"share": "half"}, "sec.share", "must be a number"),
    ({"share": float("nan")}, "sec.share", "must be a number"),
    ({"mode": "c"}, "sec.mode", "'c' is not one of a, b"),
    ({"maybe": "r"}, "sec.maybe", "'r' is not one of p, q"),
    ({"flag": "yes"}, "sec.flag", "must be true or false"),
    ({"name": ""}, "sec.name", "non-empty string"),
    ({"tags": "t1"}, "sec.tags", "must be a list of strings"),
    ({"tags": ["t1", "t3"]}, "sec.tags[1]", "'t3' is not one of t1, t2"),
    ({"limits": {"bot": 1}}, "sec.limits.bot", "'bot' is not one of user, assistant"),
    ({"limits": {"user": -1}}, "sec.limits.user", "must be >= 0"),
    ({"lists": {"x": [1]}}, "sec.lists.x[0]", "non-empty string"),
    ({"free": [1]}, "sec.free", "must be a mapping, got list"),
    ({"inner": {"ratio": 0}}, "sec.inner.ratio", "must be in (0, 1], got 0"),
    ({"inner": "x"}, "sec.inner", "must be a mapping, got str"),
    ({"items": [{"ratio": 2}]}, "sec.items[0].ratio", "(0, 1]"),
    ({"items": [{"where": "a", "bogus": 1}]}, "sec.items[0].bogus", "unknown key"),
    ({"auto": 0}, "sec.auto", ">= 1"),
    ({"low": 3, "high": 2}, "sec.low", "low (3) > high (2)"),
])
def test_every_error_names_its_full_key(raw, key, words):
    with pytest.raises(ConfigError) as e:
        parse(Section, raw, "sec", "job.yaml")
    assert e.value.key == key
    assert words in str(e.value) and "job.yaml" in str(e.value)


def test_required_field_and_top_level_paths():
    with pytest.raises(ConfigError) as e:
        parse(Required, {"kind": "z"}, "seeds.sources[0]")
    assert e.value.key == "seeds.sources[0].path" and "missing" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse(Required, {"path": "p", "nope": 1}, "")
    assert e.value.key == "nope"  # no leading dot at the top level
    assert parse(Required, {"path": "p"}, "") == Required("p")


def test_hash_leaves_out_unhashed_fields_at_any_depth():
    s = parse(Section, {"free": {"a": 1}, "items": [{"ratio": 0.2, "where": "w"}]}, "sec")
    h = hashed(s)
    assert "free" not in h and "where" not in h["inner"] and h["items"] == [{"ratio": 0.2}]
    assert h["tags"] == [] and plain(s)["free"] == {"a": 1} and plain(s)["inner"]["where"] == "here"
    moved = parse(Section, {"free": {"b": 2}, "inner": {"where": "there"}}, "sec")
    assert hashed(moved) == hashed(Section()) and plain(moved) != plain(Section())


def test_live_choices_are_read_at_each_use():
    names = ["a"]

    @dataclass(frozen=True)
    class Live:
        kind: str = knob("a", choices=names)

    with pytest.raises(ConfigError, match="'b' is not one of a"):
        parse(Live, {"kind": "b"}, "x")
    names.append("b")
    assert parse(Live, {"kind": "b"}, "x").kind == "b"
