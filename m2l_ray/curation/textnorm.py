"""Text as the curation checks should see it.

fastText LID reads one line of words: it rejects newlines outright, and code,
URLs, Markdown symbols and LaTeX are words of no language that pull short turns
towards English (or towards nothing). ``for_lid`` removes them and collapses all
whitespace; what is left is the prose a reader would call "the language of the
turn". The conversation helpers turn the schema's ``list<struct<role, content>>``
into the text a dedup field names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_FENCED = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|\$[^$\n]{1,200}\$", re.S)
_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+|\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_HTML = re.compile(r"</?[A-Za-z][^<>]{0,200}>|&[a-zA-Z]{2,8};|&#\d{1,6};")
_MD_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_LINE_MARK = re.compile(r"(?m)^\s*(?:#{1,6}\s+|>+\s?|[-*+•]\s+|\d{1,3}[.)]\s+|\|)")
_SYMBOLS = re.compile(r"[*_~#|=^<>\[\]{}\\]+|-{2,}|:-+:?")
_SPACE = re.compile(r"\s+")


def for_lid(text: str | None) -> str:
    """The prose of a turn on one line: no code, markup, URLs or newlines.

    Text that is entirely in capitals is lowered (see below); other case is kept,
    since lowering costs fastText a little confidence on ordinary text.
    """
    if not text:
        return ""
    t = _FENCED.sub(" ", text)
    t = _INLINE_CODE.sub(" ", t)
    t = _MATH.sub(" ", t)
    t = _URL.sub(" ", t)
    t = _HTML.sub(" ", t)
    t = _MD_LINK.sub(r"\1", t)
    t = _LINE_MARK.sub(" ", t)
    t = _SYMBOLS.sub(" ", t)
    t = _SPACE.sub(" ", t).strip()
    # fastText reads an all-capitals English sentence as Japanese (p=0.41 vs 0.19):
    # shouting carries no language, so it is lowered; mixed case is left alone
    return t.lower() if t.isupper() else t


def collapse(text: str | None) -> str:
    """Whitespace-collapsed, case-folded text: two turns equal under this are duplicates."""
    if not text:
        return ""
    return _SPACE.sub(" ", text).strip().casefold()


def turns(conversation: Sequence[Mapping[str, Any]] | None) -> list[tuple[str, str]]:
    """(role, content) pairs of a conversation, None-safe."""
    out = []
    for msg in conversation or ():
        if msg is None:
            continue
        out.append((str(msg.get("role") or ""), str(msg.get("content") or "")))
    return out


def field_text(value: Any, field: str) -> str:
    """The text of one row's dedup field.

    ``value`` is a conversation (list of role/content mappings) for the special
    fields; for any other column it is a string, a list of strings (joined by
    newlines), a conversation (all contents), or None (empty).
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return str(value.get("content") or "")
    if isinstance(value, Sequence) or hasattr(value, "__iter__"):
        items = list(value)
        if items and isinstance(items[0], Mapping):
            pairs = turns(items)
            if field == "first_user_turn":
                return next((c for r, c in pairs if r == "user"), "")
            if field == "user_turns":
                return "\n".join(c for r, c in pairs if r == "user")
            if field == "assistant_turns":
                return "\n".join(c for r, c in pairs if r == "assistant")
            return "\n".join(c for _, c in pairs)
        return "\n".join("" if x is None else str(x) for x in items)
    return str(value)
