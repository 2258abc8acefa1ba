"""The report page: ``ReportData`` and its plots as one self-contained HTML document.

Every text from the data is escaped; every number that comes from stats.json sits in a
cell with ``data-*`` attributes that name it, so a reader (or a test) can check the page
against stats.json.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from m2l_ray.layout import CONFIG_NAMES
from m2l_ray.report.data import (
    SAMPLES_PER_LANGUAGE,
    SAMPLES_PER_REASON,
    STAGES,
    TURN_CHARS,
    ReportData,
    Sample,
    reason_order,
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
padding:1rem 2rem;color:#1d232a;background:#fff}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dfe3e8;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:right}
th{background:#f3f5f7}td.l,th.l{text-align:left}
tr.level td{background:#eef4fb;font-weight:600;text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.4rem 0}
.meta{color:#57606a;font-size:.9rem}
.conv{border:1px solid #d0d7de;border-radius:6px;margin:.7rem 0;padding:.5rem .8rem;background:#fbfcfd}
.conv .hd{font-size:.85rem;color:#57606a;margin-bottom:.3rem}
.turn{margin:.25rem 0;white-space:pre-wrap;word-break:break-word}
.role{display:inline-block;min-width:5.5rem;font-weight:600}
.role.user{color:#0550ae}.role.assistant{color:#116329}
.bad{color:#cf222e}.zero{color:#aab}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else _e(value)


def _td(value: Any, cls: str = "", **attrs: Any) -> str:
    extra = "".join(f' data-{k.replace("_", "-")}="{_e(v)}"' for k, v in attrs.items())
    klass = f' class="{cls}"' if cls else ""
    return f"<td{klass}{extra}>{_num(value) if cls != 'l' else _e(value)}</td>"


def _img(plots: Mapping[str, str], name: str, alt: str) -> str:
    if name not in plots:
        return f'<p class="meta">No data for the {_e(alt)} plot.</p>'
    return f'<img data-plot="{name}" alt="{_e(alt)}" src="data:image/png;base64,{plots[name]}">'


def _section(sid: str, title: str, body: Iterable[str]) -> str:
    return f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n' + "\n".join(body) + "\n</section>"


def render(data: ReportData, plots: Mapping[str, str]) -> str:
    """The whole page; every text from the data is escaped."""
    parts = [
        _overview(data),
        _section("funnel", "Per-language funnel", _funnel_body(data, plots)),
        _section("drops", "Curation drops by reason", _drops_body(data, plots)),
        _section("failures", "Failed generation steps", _failures_body(data, plots)),
        _section("lid", "Language ID", _lid_body(data, plots)),
        _section("balance", "Balance", _balance_body(data, plots)),
        _section("dropped-samples", "Dropped examples", _dropped_body(data)),
        _section("kept-samples", "Kept conversations", _kept_body(data)),
        _section("config", "Config and versions", _config_body(data)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(data.title)}: m2l-ray report</title>\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def _overview(d: ReportData) -> str:
    s = d.stats
    total = (s.get("usage") or {}).get("total") or {}
    cost = total.get("cost")
    rows = s.get("rows") or {}
    items = [
        ("seeds read", "seeds_read", s.get("seeds_read")),
        ("seeds quarantined", "seeds_quarantined", s.get("seeds_quarantined")),
        ("seeds selected", "seeds_selected", s.get("seeds_selected")),
        ("generated rows", "conversations_raw", s.get("conversations_raw")),
        ("generation ok", "conversations_ok", s.get("conversations_ok")),
        ("kept after curation", "conversations_final", s.get("conversations_final")),
        *((f"rows in {n}", f"rows.{n}", rows.get(n)) for n in CONFIG_NAMES),
        ("prompt tokens", "prompt_tokens", s.get("prompt_tokens")),
        ("completion tokens", "completion_tokens", s.get("completion_tokens")),
    ]
    if cost is not None:
        items.append(("cost", "cost", cost))
    table = ["<table id=\"overview-table\"><tbody>"] + [
        f'<tr><th class="l">{_e(label)}</th>{_td(v, stat=key)}</tr>' for label, key, v in items
    ] + ["</tbody></table>"]
    return _section("overview", "Overview", [
        f"<h1>{_e(d.title)}</h1>",
        f'<p class="meta">{_e(d.output_uri)} · config hash <code>{_e(d.config_hash)}</code> · '
        f'report made <span id="generated-at">{_e(d.generated_at)}</span></p>',
        "<p>Where each language lost its rows: the funnel from seeds to kept rows, the "
        "generation failures and curation drops behind it, and samples of what was kept and dropped.</p>",
        *table,
    ]).replace("<h2>Overview</h2>\n", "", 1)


def _funnel_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    head = "".join(f"<th>{_e(label)}</th>" for _, label in STAGES)
    out = ["<p>Seeds are counted in seeds; from <em>generated</em> on, in generated rows "
           "(evolved pairs and multi-turn conversations). Each curation column takes that "
           "filter group's drops off the one before; <em>kept</em> is what the output holds. "
           "Seed rows (the validated input) are not curated and not counted here.</p>"]
    if not d.seeds_per_language_known:
        out.append('<p class="meta">stats.json of this output has no per-language seed counts: '
                   "<em>seeds selected</em> is counted from raw/, <em>seeds usable</em> is unknown "
                   f"(all languages: {_num(d.stats.get('seeds_usable'))}).</p>")
    out.append(f'<table id="funnel-table"><thead><tr><th class="l">language</th>{head}'
               "<th>kept / generated</th></tr></thead><tbody>")
    level = object()
    for code in d.languages:
        if d.resource.get(code) != level:
            level = d.resource.get(code)
            out.append(f'<tr class="level"><td colspan="{len(STAGES) + 2}">{_e(level or "unknown")}-resource'
                       "</td></tr>")
        f = d.funnel.get(code, {})
        rate = (f"{f['kept'] / f['generated']:.0%}" if f.get("generated") and f.get("kept") is not None
                else "—")
        cells = "".join(_td(f.get(k), lang=code, stage=k) for k, _ in STAGES)
        out.append(f'<tr data-resource="{_e(level)}">{_td(code, "l")}{cells}<td>{rate}</td></tr>')
    out.append("</tbody></table>")
    out.append(_img(plots, "funnel", "funnel per language"))
    return out


def _drops_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    reasons = reason_order(d.stats)
    if not reasons:
        return ["<p>Nothing was dropped.</p>"]
    head = "".join(f"<th>{_e(r)}</th>" for r in reasons)
    out = ["<p>Rows per language by the reason they were dropped for (each row counts once, "
           "under its first problem in curation's order: generation failure, heuristics, LID, "
           "repetition heuristics, near-duplicate).</p>",
           f'<table id="drops-table"><thead><tr><th class="l">language</th>{head}</tr></thead><tbody>']
    for code in d.languages:
        cells = "".join(_td(d.drops.get(code, {}).get(r, 0), lang=code, reason=r) for r in reasons)
        out.append(f"<tr>{_td(code, 'l')}{cells}</tr>")
    totals = d.stats.get("drop_reasons") or {}
    out.append('<tr><th class="l">all</th>' + "".join(
        _td(totals.get(r, 0), total_reason=r) for r in reasons) + "</tr>")
    out.append("</tbody></table>")
    out.append(_img(plots, "drops", "drops by reason"))
    return out


def _failures_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    totals = d.stats.get("failed_steps") or {}
    if not d.failures and not totals:
        return ["<p>No generation step failed.</p>"]
    head = "".join(f"<th>{_e(c)}</th>" for c in d.languages)
    out = ["<p>Every problem a generation step (evolution, answer, user turn) recorded, by "
           "step:reason and language, counted in raw/ (stats.json's <code>failed_steps</code>). "
           "An evolution is retried up to <code>engine.evol_attempts</code> times and an answer "
           "cut at max_tokens is kept but recorded, so a row can carry failures and still be ok; "
           "a row whose step failed for good is dropped as <code>generation_failed</code>.</p>",
           f'<table id="failures-table"><thead><tr><th class="l">step:reason</th>{head}<th>all</th>'
           "</tr></thead><tbody>"]
    for reason in sorted(set(d.failures) | set(totals)):
        cells = "".join(_td(d.failures.get(reason, {}).get(c, 0), lang=c, failure=reason) for c in d.languages)
        out.append(f"<tr>{_td(reason, 'l')}{cells}{_td(totals.get(reason, 0), total_failure=reason)}</tr>")
    out.append("</tbody></table>")
    out.append(_img(plots, "failures", "failures heatmap"))
    return out


def _lid_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    if not d.lid:
        return ["<p>No curated turn was checked (LID off, or nothing reached curation).</p>"]
    out = ["<p>The probability fastText gives each curated turn's expected language (kept and "
           "dropped rows), against the language's threshold; languages the model has no "
           "label for are judged by their script alone. Turns shorter than "
           "<code>curation.lid.min_chars</code> are scored but not judged.</p>",
           '<table id="lid-table"><thead><tr><th class="l">language</th><th class="l">mode</th>'
           "<th>threshold</th><th>turns scored</th><th>below threshold</th><th>median score</th>"
           "<th>turns judged by script only</th><th>script-only share</th></tr></thead><tbody>"]
    for code in [c for c in d.languages if c in d.lid]:
        st = d.lid[code]
        scores = sorted(st.expected_scores)
        median = scores[len(scores) // 2] if scores else None
        share = st.script_share
        out.append(f"<tr>{_td(code, 'l')}{_td(st.mode, 'l', lang=code, lid='mode')}"
                   f"{_td(st.threshold, lang=code, lid='threshold')}"
                   f"{_td(st.turns_model, lang=code, lid='turns_model')}"
                   f"{_td(st.below_threshold, lang=code, lid='below')}{_td(median)}"
                   f"{_td(st.turns_script, lang=code, lid='turns_script')}"
                   f"<td>{'—' if share is None else f'{share:.0%}'}</td></tr>")
    judged = sum(s.turns_model + s.turns_script for s in d.lid.values())
    script = sum(s.turns_script for s in d.lid.values())
    out.append("</tbody></table>")
    out.append(f'<p>All languages: <span data-lid="script_share_all">{script / judged if judged else 0:.1%}'
               f"</span> of {judged:,} judged turns were judged by script only.</p>")
    out.append(_img(plots, "lid", "LID scores"))
    return out


def _counter_table(tid: str, counts: Counter, head: str) -> str:
    rows = "".join(f"<tr>{_td(k, 'l')}{_td(v, item=k)}</tr>"
                   for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))
    return f'<table id="{tid}"><thead><tr><th class="l">{_e(head)}</th><th>rows</th></tr></thead>' \
           f"<tbody>{rows}</tbody></table>"


def _balance_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    head = "".join(f"<th>{n}</th>" for n in CONFIG_NAMES)
    out = ["<h3>Rows per language and config</h3>",
           f'<table id="rows-language-table"><thead><tr><th class="l">language</th>{head}</tr></thead><tbody>']
    for code in d.languages:
        cells = "".join(_td(d.rows.get(n, {}).get("language", Counter()).get(code, 0), config=n, lang=code)
                        for n in CONFIG_NAMES)
        out.append(f"<tr>{_td(code, 'l')}{cells}</tr>")
    totals = d.stats.get("rows") or {}
    out.append('<tr><th class="l">all</th>' + "".join(_td(totals.get(n, 0), config_total=n)
                                                      for n in CONFIG_NAMES) + "</tr></tbody></table>")
    out.append(_img(plots, "rows_language", "rows per language"))
    tasks = sorted({t for n in CONFIG_NAMES for t in d.rows.get(n, {}).get("task", {})})
    out += ["<h3>Rows per task and config</h3>",
            f'<table id="rows-task-table"><thead><tr><th class="l">task</th>{head}</tr></thead><tbody>']
    for task in tasks:
        cells = "".join(_td(d.rows.get(n, {}).get("task", Counter()).get(task, 0), config=n, task=task)
                        for n in CONFIG_NAMES)
        out.append(f"<tr>{_td(task, 'l')}{cells}</tr>")
    out.append("</tbody></table>")
    out.append(_img(plots, "rows_task", "rows per task"))
    out += ["<h3>Task-evol types (kept evolved pairs)</h3>",
            _counter_table("evol-types-table", d.evol_types, "task-evol type"),
            _img(plots, "evol_types", "evol types"),
            "<h3>Multi-turn evol types (further user turns of kept multi-turn conversations)</h3>",
            _counter_table("multiturn-types-table", d.multiturn_types, "multi-turn evol type"),
            _img(plots, "multiturn_types", "multi-turn types"),
            "<h3>Turns per multi-turn conversation</h3>",
            _counter_table("turns-table", d.turns, "user turns"),
            _img(plots, "turns", "turns per conversation")]
    out += _tokens_body(d, plots)
    return out


def _tokens_body(d: ReportData, plots: Mapping[str, str]) -> list[str]:
    usage = d.stats.get("usage") or {}
    total = usage.get("total") or {}
    has_cost = any("cost" in e for e in d.tokens.values()) or "cost" in total
    head = "<th>prompt tokens</th><th>completion tokens</th><th>requests</th>" + (
        "<th>cost</th>" if has_cost else "")
    out = ["<h3>Tokens per language</h3>",
           "<p>Every request that made the output's rows, including failed ones and those "
           "served from a cache (what the dataset cost to make).</p>",
           f'<table id="tokens-table"><thead><tr><th class="l">language</th>{head}</tr></thead><tbody>']

    def cells(e: Mapping[str, Any], **attrs: Any) -> str:
        out = "".join(_td(e.get(f"{k}_tokens" if k != "requests" else k, 0), tokens=k, **attrs)
                      for k in ("prompt", "completion", "requests"))
        return out + (_td(e.get("cost"), tokens="cost", **attrs) if has_cost else "")

    for code in [c for c in d.languages if c in d.tokens]:
        out.append(f"<tr>{_td(code, 'l')}{cells(d.tokens[code], lang=code)}</tr>")
    out.append(f'<tr><th class="l">all</th>{cells(total, lang="all")}</tr></tbody></table>')
    if not has_cost:
        out.append('<p class="meta">No prices set (engine.openai.price_per_1k_*), so no cost.</p>')
    out.append(_img(plots, "tokens", "tokens per language"))
    return out


def sample_html(s: Sample) -> str:
    head = [f"<b>{_e(s.language)}</b>", _e(s.task), _e(s.kind)]
    if s.evol_type:
        head.append(f"evol: {_e(s.evol_type)}")
    if s.multiturn_types:
        head.append("multi-turn: " + _e(", ".join(s.multiturn_types)))
    head.append(f"<code>{_e(s.key)}</code>")
    if s.drop_reason:
        turn = f" at turn {s.drop_turn}" if s.drop_turn is not None else ""
        head.append(f'<span class="bad">dropped: {_e(s.drop_reason)}{turn}</span>')
    lines = [f'<div class="conv" data-lang="{_e(s.language)}" data-key="{_e(s.key)}"'
             + (f' data-reason="{_e(s.drop_reason)}"' if s.drop_reason else "") + ">",
             f'<div class="hd">{" · ".join(head)}</div>']
    for i, (role, text) in enumerate(s.turns):
        mark = " bad" if s.drop_turn == i else ""
        lines.append(f'<div class="turn{mark}"><span class="role {_e(role)}">{_e(role)}</span>{_e(text)}</div>')
    if s.hidden_turns:
        lines.append(f'<div class="meta">… {s.hidden_turns} more turns</div>')
    if s.failures:
        lines.append('<div class="bad">failures: ' + _e("; ".join(s.failures)) + "</div>")
    if s.flags:
        lines.append('<div class="meta">curation flags: ' + _e(", ".join(s.flags)) + "</div>")
    lines.append("</div>")
    return "\n".join(lines)


def _dropped_body(d: ReportData) -> list[str]:
    if not d.dropped_samples:
        return ["<p>Nothing was dropped.</p>"]
    out = [f"<p>Up to {SAMPLES_PER_REASON} rows per reason, from as many languages as "
           f"possible; turns cut at {TURN_CHARS} characters.</p>"]
    for reason, samples in d.dropped_samples.items():
        out.append(f'<h3 data-reason="{_e(reason)}">{_e(reason)}</h3>')
        out += [sample_html(s) for s in samples]
    return out


def _kept_body(d: ReportData) -> list[str]:
    if not d.kept_samples:
        return ["<p>No generated row was kept.</p>"]
    out = [f"<p>Up to {SAMPLES_PER_LANGUAGE} kept generated rows per language (multi-turn first).</p>"]
    for code in [c for c in d.languages if c in d.kept_samples]:
        out.append(f'<h3 data-lang="{_e(code)}">{_e(code)} ({_e(d.resource.get(code) or "?")}-resource)</h3>')
        out += [sample_html(s) for s in d.kept_samples[code]]
    return out


def _config_body(d: ReportData) -> list[str]:
    import yaml

    versions = "".join(f"<tr>{_td(k, 'l')}{_td(v, 'l')}</tr>" for k, v in sorted(d.versions.items()))
    return [f"<p>config hash <code>{_e(d.config_hash)}</code></p>",
            f'<table id="versions-table"><tbody>{versions}</tbody></table>',
            "<pre>" + _e(yaml.safe_dump(d.config, sort_keys=False, allow_unicode=True)) + "</pre>"]

