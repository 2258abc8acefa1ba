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
