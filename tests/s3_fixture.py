"""A real S3 endpoint for tests: moto's standalone server on a free 127.0.0.1 port.

``s3_server`` (session) starts ``python -m moto.server`` and yields an ``S3Server``;
``s3_bucket`` (function) makes a fresh bucket and yields an ``S3Location`` whose ``url`` and
``options`` go straight into ``open_backend(loc.url, **loc.options)``.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

S3_REGION = "us-east-1"
S3_DUMMY_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}
STARTUP_TIMEOUT = 30.0


@dataclass
class S3Server:
    """A running moto server."""

    endpoint_url: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path

    @functools.cached_property
    def _client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_REGION,
            aws_access_key_id=S3_DUMMY_CREDENTIALS["access_key_id"],
            aws_secret_access_key=S3_DUMMY_CREDENTIALS["secret_access_key"],
        )

    def client(self) -> Any:
        """A plain boto3 client with the dummy credentials, for test setup and inspection."""
        return self._client


@dataclass
class S3Location:
    """A fresh bucket and prefix on the test server."""

    server: S3Server
    bucket: str
    prefix: str
    url: str
    options: dict[str, Any]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"moto server exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"moto server not ready after {STARTUP_TIMEOUT}s: {log_path.read_text()[-2000:]}"
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start moto's S3 server on loopback for the whole session; stop it at the end."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": S3_REGION,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_ready(proc, endpoint, log_path)
        yield S3Server(endpoint, port, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Location:
    """A new, empty bucket; dummy credentials are also exported for boto3's default chain."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_DUMMY_CREDENTIALS["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_DUMMY_CREDENTIALS["secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    bucket = f"crm-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    prefix = "repo"
    return S3Location(
        server=s3_server,
        bucket=bucket,
        prefix=prefix,
        url=f"s3://{bucket}/{prefix}",
        options={
            "endpoint_url": s3_server.endpoint_url,
            "region": S3_REGION,
            **S3_DUMMY_CREDENTIALS,
            "max_attempts": 2,
            "connect_timeout": 2,
            "read_timeout": 30,
        },
    )
