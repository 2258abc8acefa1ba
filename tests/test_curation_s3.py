"""`m2l dedup` / `m2l langid` read and write s3:// on a real SeaweedFS server."""

from __future__ import annotations

import io
import json

import boto3
import pyarrow.parquet as pq

from m2l_ray.cli import build_parser


def _client(s3):
    return boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                        aws_secret_access_key=s3.secret_key, region_name="us-east-1")


def test_dedup_and_langid_on_s3(s3_env):
    import ray

    # as from a shell: Ray's workers must start with the AWS env the user exported
    # (a Ray instance started earlier in this test process would lack it)
    if ray.is_initialized():
        ray.shutdown()
    s3 = s3_env
    c = _client(s3)
    docs = [{"doc": f"d{i}", "text": " ".join(f"tok{i}w{j}" for j in range(40))} for i in range(10)]
    docs.append({"doc": "d3-copy", "text": docs[3]["text"].upper()})
    c.put_object(Bucket=s3.bucket, Key="cur/in/a.jsonl",
                 Body="".join(json.dumps(d) + "\n" for d in docs).encode())
    args = build_parser().parse_args([
        "dedup", f"s3://{s3.bucket}/cur/in", f"s3://{s3.bucket}/cur/out/dedup.parquet",
        "--text-field", "text", "--id-field", "doc"])
    assert args.func(args) == 0
    body = c.get_object(Bucket=s3.bucket, Key="cur/out/dedup.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    kept = table.column("doc").to_pylist()
    assert table.num_rows == 10 and ("d3" in kept) != ("d3-copy" in kept)

    args = build_parser().parse_args([
        "langid", f"s3://{s3.bucket}/cur/out/dedup.parquet", f"s3://{s3.bucket}/cur/out/lid",
        "--text-field", "text"])
    assert args.func(args) == 0
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=s3.bucket, Prefix="cur/out/lid/")["Contents"]]
    assert keys and all(k.endswith(".parquet") for k in keys)
    rows = sum(pq.read_table(io.BytesIO(c.get_object(Bucket=s3.bucket, Key=k)["Body"].read())).num_rows
               for k in keys)
    assert rows == 10


def test_validate_reads_s3_seed_sources(s3_env, tmp_path):
    """`m2l validate` (the console script) with s3:// seed sources, a folder and a gzip
    file, as a user with the AWS variables exported: rows counted and selected as from a
    local disk, the bad row quarantined, a missing prefix one error line, the secret nowhere."""
    import gzip

    from e2e_util import m2l, small_job, write_job

    s3, c = s3_env, _client(s3_env)
    rows = [{"language": lang, "task": "question_answering", "instruction": f"Question {lang} {i}: why?",
             "reference_answer": "Because."} for lang in ("en", "es") for i in range(3)]
    body = "".join(json.dumps(r) + "\n" for r in rows)
    c.put_object(Bucket=s3.bucket, Key="seeds/pool/a.jsonl", Body=body.encode())
    c.put_object(Bucket=s3.bucket, Key="seeds/pool/b.jsonl.gz",
                 Body=gzip.compress((body.replace("Question", "Query") + '{"language": "en"}\n').encode()))
    cfg = small_job(str(tmp_path / "out"))
    cfg["seeds"] = {"sources": [f"s3://{s3.bucket}/seeds/pool/"], "per_group_cap": 4}
    cfg["storage"] = {"path_style": True}
    job = write_job(tmp_path / "job.yaml", cfg)
    proc = m2l("validate", "--config", str(job), cwd=tmp_path, timeout=180, extra_env=s3.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["seeds_read"] == 13 and out["seeds_usable"] == 12, out
    assert sum(out["quarantined"].values()) == 1 and out["selected"] == 8, out  # 4 per language
    assert s3.secret_key not in proc.stdout + proc.stderr
    bad = small_job(str(tmp_path / "out"))
    bad["seeds"] = {"sources": [f"s3://{s3.bucket}/seeds/missing/"]}
    bad["storage"] = {"path_style": True}
    missing = m2l("validate", "--config", str(write_job(tmp_path / "bad.yaml", bad)), cwd=tmp_path,
                  timeout=180, extra_env=s3.env())
    assert missing.returncode == 2 and missing.stderr.startswith("m2l: error:"), missing.stderr[-2000:]
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr  # no library chatter
    assert f"s3://{s3.bucket}/seeds/missing/" in missing.stderr and "Traceback" not in missing.stderr
