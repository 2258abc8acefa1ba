"""The run lock: one writer per output prefix.

Two runs writing the same prefix would clobber each other's shards (Ray once lost data
this way), so a run holds a lock object naming it. Locally the lock is created with a
hard link from a complete temp file (``link()`` fails if the lock exists). On S3 it is
created with the conditional put (``If-None-Match: *``), which SeaweedFS 4.x and AWS
honour. Servers that ignore the header are covered by a check-before-put and a read-back
after a settle delay; on those the residual race is two runs starting within that delay
of each other, both seeing no lock, and the earlier reader taking the read-back before
the later write lands.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2l_ray.errors import StorageError
from m2l_ray.io.keys import TMP_PREFIX
from m2l_ray.io.retry import NotFound, wrap

if TYPE_CHECKING:
    from m2l_ray.io.local import LocalStore
    from m2l_ray.io.s3 import S3Store
    from m2l_ray.io.store import Store

log = logging.getLogger(__name__)


def lock_body(run_id: str) -> bytes:
    """What a lock holds: the run, its host and pid (so a dead holder can be told), when."""
    body = {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return json.dumps(body, sort_keys=True).encode()


def holder_text(holder: Mapping[str, Any] | None) -> str:
    if not holder:
        return "an unknown run (unreadable lock)"
    return (
        f"run {holder.get('run_id')!r} (host {holder.get('host')}, pid {holder.get('pid')}, "
        f"started {holder.get('started_at')})"
    )


def locked_error(uri: str, key: str, holder: Mapping[str, Any] | None) -> StorageError:
    return StorageError(
        f"output {uri} is locked by {holder_text(holder)} (lock object {key}); another "
        "run is writing there. Wait for it to finish, use another output, or, if that run "
        "is dead, rerun with the force option to take the lock over."
    )


def read_lock(store: Store, key: str) -> dict[str, Any] | None:
    """The lock's content; None if there is no lock, {} if it is unreadable garbage."""
    try:
        data = store.get_bytes(key)
    except NotFound:
        return None
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def release_lock(store: Store, key: str, run_id: str) -> None:
    """Delete the lock if ``run_id`` still holds it; leave a taken-over lock alone."""
    holder = read_lock(store, key)
    if holder is None:
        return
    if holder.get("run_id") != run_id:
        log.warning("not releasing lock %s: it is now held by %s",
                    store.key_uri(key), holder_text(holder))
        return
    store.delete(key)


# ------------------------------------------------------------------ local


def acquire_local(store: LocalStore, path: Path, key: str, run_id: str, force: bool) -> None:
    """Create the lock with a hard link from a complete temp file: link() fails if
    the lock exists, so creation is atomic and the lock is never seen half-written.
    (On filesystems without hard links, O_EXCL creation is the fallback.)"""
    body = lock_body(run_id)
    for _ in range(3):
        try:
            _create_lock_file(path, body, force)
        except FileExistsError:
            holder = read_lock(store, key)
            if holder is None:
                continue  # released between our attempt and the read: try again
            if holder.get("run_id") == run_id:
                return  # our own lock: a resumed run
            raise locked_error(store.uri, key, holder) from None
        except OSError as exc:
            raise wrap("cannot create lock", str(path), exc) from None
        if force:
            log.warning("took over lock %s for run %s", path, run_id)
        return
    raise StorageError(f"lock {path} keeps appearing and vanishing; is another run "
                       "starting and stopping there?")


def _create_lock_file(path: Path, body: bytes, force: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:
            excl = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(excl, "wb") as fh:
                fh.write(body)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------------ S3


def acquire_s3(store: S3Store, key: str, run_id: str, force: bool) -> None:
    """Create the lock only if absent; refuse naming the holder; ``force`` takes over.

    With conditional put (probed once per server) creation is atomic. Without it, a
    check-before-put plus a read-back after ``store.lock_settle_seconds`` narrows the
    race to two runs starting within that window (see the module docstring).
    """
    body = lock_body(run_id)
    if force:
        previous = read_lock(store, key)
        store.put_bytes(key, body)
        if previous and previous.get("run_id") != run_id:
            log.warning("took over lock %s from %s", store.key_uri(key), holder_text(previous))
        _verify(store, key, run_id)
        return
    holder = read_lock(store, key)
    if holder is not None:
        if holder.get("run_id") == run_id:
            return  # our own lock: a resumed run or a retried acquire
        raise locked_error(store.uri, key, holder)
    full = store.full_key(key)
    created = store.call("create lock", key, lambda: store._put_if_absent(full, body))
    if created is False:
        # Someone else won, or our own earlier attempt landed before a lost response.
        _verify(store, key, run_id)
        return
    if created is None:
        store.put_bytes(key, body)  # server rejects the header: plain put
    elif store.supports_conditional_put():
        return
    log.warning("%s ignores conditional put; lock %s is checked by read-back only",
                store.options.resolved_endpoint() or "S3", store.key_uri(key))
    time.sleep(store.lock_settle_seconds)
    _verify(store, key, run_id)


def _verify(store: Store, key: str, run_id: str) -> None:
    holder = read_lock(store, key)
    if not holder or holder.get("run_id") != run_id:
        raise locked_error(store.uri, key, holder)
