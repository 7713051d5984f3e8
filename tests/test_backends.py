"""One contract suite for every storage backend (local dir, S3 on moto, SFTP on sshd), then the
failure modes specific to each: disk full, endpoint down, aborted multipart, unknown host key."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crmmaint.errors import BackendError, ObjectNotFound, RepositoryMissing
from crmmaint.repository.backends import Backend, ObjectInfo, open_backend
from crmmaint.repository.backends.base import TEMP_DIR
from crmmaint.repository.backends.local import LocalBackend
from crmmaint.repository.backends.s3 import S3Backend
from crmmaint.repository.backends.sftp import SFTPBackend

MiB = 1 << 20


class PatternStream(io.RawIOBase):
    """A deterministic, non-repeating-per-part byte stream of ``size`` bytes, made on the fly.

    Reads are short on purpose (at most one pattern period), so backends must loop. ``on_read``
    runs once, after ``fire_at`` bytes, to look at the backend mid-upload or to fail the source.
    """

    PERIOD = MiB + 7  # not a divisor of any part size: every part differs

    def __init__(
        self, size: int, on_read: Callable[[], None] | None = None, fire_at: int = 0
    ) -> None:
        self.size, self.pos = size, 0
        block = hashlib.shake_256(b"crmmaint").digest(self.PERIOD)
        self._buf = block + block
        self._on_read, self._fire_at = on_read, fire_at

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._on_read is not None and self.pos >= self._fire_at:
            hook, self._on_read = self._on_read, None
            hook()
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        n = min(n, self.PERIOD)
        start = self.pos % self.PERIOD
        self.pos += n
        return self._buf[start : start + n]

    @classmethod
    def expected(cls, offset: int, size: int) -> bytes:
        stream = cls(offset + size)
        stream.pos = offset
        out = bytearray()
        while chunk := stream.read(size - len(out)):
            out += chunk
        return bytes(out)


# -- backends under test -------------------------------------------------------------------------


def _make_local(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Backend, Backend]:
    backend = open_backend(str(tmp_path / "repo"))
    missing = open_backend(f"file://{tmp_path}/nowhere")
    return backend, missing


def _make_s3(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Backend, Backend]:
    loc = request.getfixturevalue("s3_bucket")
    backend = open_backend(loc.url, **loc.options)
    missing = open_backend(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", **loc.options)
    return backend, missing


def _sftp_url(host: object, path: Path) -> str:
    return f"sftp://{host.user}@{host.address}:{host.port}{path}"  # type: ignore[attr-defined]


def _sftp_options(host: object) -> dict[str, object]:
    return {
        "identity_file": str(host.identity_file),  # type: ignore[attr-defined]
        "known_hosts": str(host.known_hosts),  # type: ignore[attr-defined]
        "connect_timeout": 5,
    }


def _sshd_host(request: pytest.FixtureRequest) -> object:
    try:
        hosts = request.getfixturevalue("sshd_hosts")
    except pytest.FixtureLookupError:
        pytest.skip("sshd_hosts fixture not available yet (tests/sshd_fixture.py)")
    return hosts[0]


def _make_sftp(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Backend, Backend]:
    host = _sshd_host(request)
    backend = open_backend(_sftp_url(host, tmp_path / "repo"), **_sftp_options(host))
    missing = open_backend(_sftp_url(host, tmp_path / "nowhere"), **_sftp_options(host))
    return backend, missing


MAKERS = {"local": _make_local, "s3": _make_s3, "sftp": _make_sftp}


@pytest.fixture(params=sorted(MAKERS))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Backend]]:
    """(created and opened backend, backend whose location does not exist)."""
    tmp_path.chmod(0o755)  # an sshd user other than the test runner must reach it
    backend, missing = MAKERS[request.param](request, tmp_path)
    backend.create()
    backend.open()
    try:
        yield backend, missing
    finally:
        backend.close()
        missing.close()


@pytest.fixture
def backend(pair: tuple[Backend, Backend]) -> Backend:
    return pair[0]


def names(backend: Backend, prefix: str = "") -> list[str]:
    return sorted(info.name for info in backend.list(prefix))


# -- the contract --------------------------------------------------------------------------------


def test_store_load_round_trip(backend: Backend) -> None:
    data = bytes(range(256)) * 40
    backend.store("data/ab/abcdef", data)
    backend.store("empty", b"")
    assert backend.load("data/ab/abcdef") == data
    assert backend.load("empty") == b""


def test_store_overwrites(backend: Backend) -> None:
    backend.store("config", b"first version, longer")
    backend.store("config", b"second")
    assert backend.load("config") == b"second"
    assert names(backend) == ["config"]


def test_ranged_load(backend: Backend) -> None:
    backend.store("obj", b"0123456789")
    assert backend.load("obj", 0, 4) == b"0123"
    assert backend.load("obj", 3, 4) == b"3456"
    assert backend.load("obj", 7) == b"789"
    assert backend.load("obj", 8, 100) == b"89"
    assert backend.load("obj", 4, 0) == b""
    assert backend.load("obj", 10) == b""
    assert backend.load("obj", 50, 5) == b""


def test_info_and_exists(backend: Backend) -> None:
    backend.store("data/00/x", b"12345")
    assert backend.info("data/00/x") == ObjectInfo("data/00/x", 5)
    assert backend.exists("data/00/x")
    assert backend.info("data/00/y") is None
    assert not backend.exists("data/00/y")
    assert backend.info("data/00") is None  # a "directory" is not an object
    assert not backend.exists("nowhere/at/all")


def test_list_by_prefix_nested(backend: Backend) -> None:
    for name in ("data/3f/3f01", "data/3f/3f02", "data/a0/a0ff", "backups/2026-01-01", "config"):
        backend.store(name, name.encode())
    assert names(backend) == sorted(
        ["data/3f/3f01", "data/3f/3f02", "data/a0/a0ff", "backups/2026-01-01", "config"]
    )
    assert names(backend, "data/") == ["data/3f/3f01", "data/3f/3f02", "data/a0/a0ff"]
    assert names(backend, "data/3f/") == ["data/3f/3f01", "data/3f/3f02"]
    assert names(backend, "data/3") == ["data/3f/3f01", "data/3f/3f02"]
    assert names(backend, "data/3f/3f02") == ["data/3f/3f02"]
    assert names(backend, "con") == ["config"]
    assert names(backend, "missing/") == []
    sizes = {info.name: info.size for info in backend.list("backups/")}
    assert sizes == {"backups/2026-01-01": len("backups/2026-01-01")}


def test_delete(backend: Backend) -> None:
    backend.store("locks/a", b"x")
    backend.delete("locks/a")
    assert not backend.exists("locks/a")
    assert names(backend) == []
    with pytest.raises(ObjectNotFound, match="locks/a"):
        backend.delete("locks/a")
    with pytest.raises(ObjectNotFound, match="locks/a"):
        backend.load("locks/a")
    with pytest.raises(ObjectNotFound):
        backend.load("locks/a", 2, 3)


def test_move(backend: Backend) -> None:
    backend.store("data/aa/1", b"payload")
    backend.store("quarantine/1", b"older")
    backend.move("data/aa/1", "quarantine/1")
    assert backend.load("quarantine/1") == b"payload"
    assert not backend.exists("data/aa/1")
    backend.move("quarantine/1", "deep/new/dir/1")
    assert names(backend) == ["deep/new/dir/1"]
    with pytest.raises(ObjectNotFound, match="data/aa/1"):
        backend.move("data/aa/1", "elsewhere")


def test_store_file_streams_40_mib(backend: Backend) -> None:
    """On S3 this is the multipart path (16 MiB parts); short reads from the source are joined."""
    size = 40 * MiB
    stream = PatternStream(size)
    backend.store_file("packs/big", stream, size)
    assert backend.info("packs/big") == ObjectInfo("packs/big", size)
    whole = backend.load("packs/big")
    assert (
        hashlib.sha256(whole).digest() == hashlib.sha256(PatternStream.expected(0, size)).digest()
    )
    del whole
    edge = 16 * MiB - 10  # across the first part boundary
    assert backend.load("packs/big", edge, 20) == PatternStream.expected(edge, 20)
    assert backend.load("packs/big", size - 5, 100) == PatternStream.expected(size - 5, 5)


def test_no_partial_or_temp_names_visible_while_storing(backend: Backend) -> None:
    seen: list[list[str]] = []
    backend.store("packs/big", b"old")
    size = 20 * MiB
    stream = PatternStream(size, on_read=lambda: seen.append(names(backend)), fire_at=18 * MiB)
    backend.store_file("packs/big", stream, size)
    assert seen == [["packs/big"]]
    assert backend.info("packs/big") == ObjectInfo("packs/big", size)
    assert names(backend) == ["packs/big"]


def test_failed_source_leaves_old_object(backend: Backend) -> None:
    backend.store("packs/p", b"old contents")

    def fail() -> None:
        raise OSError("source device went away")

    with pytest.raises(OSError, match="source device went away"):
        backend.store_file("packs/p", PatternStream(40 * MiB, on_read=fail, fire_at=20 * MiB))
    assert backend.load("packs/p") == b"old contents"
    assert names(backend) == ["packs/p"]


def test_threads_share_a_backend(backend: Backend) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(4):
                name = f"data/{n}/{i}"
                backend.store(name, name.encode() * 100)
                assert backend.load(name, 0, len(name)) == name.encode()
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(names(backend, "data/")) == 16


def _leave_leftover(backend: Backend) -> Callable[[], bool]:
    """Leave what a killed writer leaves; returns a check that it is still there."""
    if isinstance(backend, S3Backend):
        key = backend.prefix + "data/ab/killed-pack"
        upload = backend.client.create_multipart_upload(Bucket=backend.bucket, Key=key)
        backend.client.upload_part(
            Bucket=backend.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
        )

        def s3_present() -> bool:
            found = backend.client.list_multipart_uploads(Bucket=backend.bucket)
            return any(u["UploadId"] == upload["UploadId"] for u in found.get("Uploads", ()))

        return s3_present
    temp = Path(backend.root) / TEMP_DIR  # type: ignore[attr-defined]
    temp.mkdir(exist_ok=True)
    leftover = temp / "0123abcd.tmp"
    leftover.write_bytes(b"half a pack")
    return leftover.exists


def test_leftovers_of_killed_writers_are_removed_only_when_old(backend: Backend) -> None:
    backend.store("data/ab/live", b"a committed object")
    present = _leave_leftover(backend)
    assert present()
    if not isinstance(backend, S3Backend):  # moto reports every upload as started in 2010
        assert backend.remove_stale_temp(time.time() - 3600) == 0  # may be a live writer's
        assert present()
    assert backend.remove_stale_temp(time.time() + 10) == 1
    assert not present()
    assert names(backend) == ["data/ab/live"]
    assert backend.remove_stale_temp(time.time() + 10) == 0


def test_invalid_names_rejected(backend: Backend) -> None:
    for bad in ("", "/etc/passwd", "../escape", "a//b", "a/./b", f"{TEMP_DIR}/x", "trailing/"):
        with pytest.raises(BackendError, match="invalid object name"):
            backend.store(bad, b"x")


def test_create_is_idempotent(backend: Backend) -> None:
    backend.store("keep", b"1")
    backend.create()
    backend.open()
    assert backend.load("keep") == b"1"


def test_open_of_missing_location_fails(pair: tuple[Backend, Backend]) -> None:
    """For every backend: the missing location is named, with the remedy, and it is a
    ``RepositoryMissing`` (exit 6) that no retry is spent on."""
    _, missing = pair
    with pytest.raises(RepositoryMissing) as info:
        missing.open()
    assert "repo init" in str(info.value)
    assert info.value.exit_code == 6 and not info.value.retryable


# -- factory -------------------------------------------------------------------------------------


def test_factory_schemes(tmp_path: Path) -> None:
    assert isinstance(open_backend(str(tmp_path)), LocalBackend)
    local = open_backend(f"file://{tmp_path}")
    assert isinstance(local, LocalBackend) and local.url == f"file://{tmp_path}"
    s3 = open_backend("s3://bucket/some/prefix", region="eu-west-1", part_size=8 * MiB)
    assert isinstance(s3, S3Backend) and s3.url == "s3://bucket/some/prefix/"
    assert s3.part_size == 8 * MiB
    sftp = open_backend("sftp://backup@127.0.0.9:2222/srv/repo", connect_timeout=3)
    assert isinstance(sftp, SFTPBackend) and sftp.url == "sftp://backup@127.0.0.9:2222/srv/repo"


def test_factory_rejects_unknown_scheme_and_options() -> None:
    with pytest.raises(BackendError, match=r"file:///abs/path .*s3://bucket/prefix.*sftp://"):
        open_backend("ftp://user:hunter2@host/x")
    with pytest.raises(BackendError) as info:
        open_backend("ftp://user:hunter2@host/x")
    assert "hunter2" not in str(info.value)
    with pytest.raises(BackendError, match=r"unknown s3 backend option.*bogus"):
        open_backend("s3://bucket/p", bogus=1)
    with pytest.raises(BackendError, match="no bucket"):
        open_backend("s3:///p")
    with pytest.raises(BackendError, match="host and a path"):
        open_backend("sftp://host")
    with pytest.raises(BackendError, match="takes no options"):
        open_backend("/tmp/x", endpoint_url="http://127.0.0.1:1")


# -- local ---------------------------------------------------------------------------------------


def test_local_create_mode_and_stale_temp_files(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "repo"))
    backend.create()
    assert (tmp_path / "repo").stat().st_mode & 0o777 == 0o700
    # A process killed mid-store leaves its temp file behind; it must never look like an object.
    (tmp_path / "repo" / TEMP_DIR / "deadbeef.tmp").write_bytes(b"half")
    backend.store("a", b"1")
    assert names(backend) == ["a"]


def test_local_open_missing_hints_repo_init(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"does not exist.*crmmaint repo init"):
        open_backend(str(tmp_path / "absent")).open()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so a write really fails with ENOSPC."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_local_disk_full_leaves_nothing(tiny_fs: Path) -> None:
    backend = open_backend(str(tiny_fs / "repo"))
    backend.create()
    backend.store("packs/p", b"old")
    with pytest.raises(BackendError, match=r"disk full writing packs/p to file://.*free space"):
        backend.store("packs/p", os.urandom(2 * MiB))
    with pytest.raises(BackendError, match="disk full writing packs/q"):
        backend.store_file("packs/q", PatternStream(2 * MiB))
    assert backend.load("packs/p") == b"old"
    assert names(backend) == ["packs/p"]
    assert os.listdir(tiny_fs / "repo" / TEMP_DIR) == []


# -- S3 ------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the with block ends


def test_s3_endpoint_down_fails_fast_and_clearly() -> None:
    port = closed_port()
    backend = open_backend(
        "s3://crm-backups/repo",
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        access_key_id="AKIAEXAMPLEKEY",
        secret_access_key="very-secret-value",
        connect_timeout=1,
        max_attempts=2,
    )
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.open()
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "crm-backups" in message
    assert "unreachable" in message and "check" in message
    assert "very-secret-value" not in message and "very-secret-value" not in repr(backend)


class _AlwaysBusy(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with 503 SlowDown."""

    hits = 0

    def _busy(self) -> None:
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _busy

    def log_message(self, *args: object) -> None:
        pass


def test_s3_throttling_is_retried_a_bounded_number_of_times() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysBusy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = open_backend(
            "s3://crm-backups/repo",
            endpoint_url=f"http://127.0.0.1:{server.server_port}",
            region="us-east-1",
            access_key_id="AKIAEXAMPLEKEY",
            secret_access_key="very-secret-value",
            max_attempts=2,
        )
        _AlwaysBusy.hits = 0
        with pytest.raises(
            BackendError, match=r"kept failing .*bucket crm-backups.*2 attempts"
        ) as info:
            backend.store("config", b"x")
        assert _AlwaysBusy.hits == 2
        assert "very-secret-value" not in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


def test_s3_multipart_aborted_on_failure(s3_bucket) -> None:
    backend = open_backend(s3_bucket.url, **s3_bucket.options)
    backend.open()

    def fail() -> None:
        raise OSError("source device went away")

    with pytest.raises(OSError, match="source device went away"):
        backend.store_file("packs/p", PatternStream(64 * MiB, on_read=fail, fire_at=17 * MiB))
    client = s3_bucket.server.client()
    assert client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3_bucket.bucket).get("KeyCount") == 0


def test_s3_missing_bucket_has_hint(s3_bucket) -> None:
    backend = open_backend(f"s3://absent-{uuid.uuid4().hex[:8]}/p", **s3_bucket.options)
    with pytest.raises(BackendError, match=r"does not exist .*check the bucket name"):
        backend.open()
    with pytest.raises(BackendError, match="does not exist"):
        backend.store("x", b"1")


def test_s3_create_makes_bucket_and_keys_use_prefix(s3_bucket) -> None:
    name = f"fresh-{uuid.uuid4().hex[:8]}"
    backend = open_backend(f"s3://{name}/crm/prod", **s3_bucket.options)
    backend.create()
    backend.store("data/x", b"1")
    keys = [o["Key"] for o in s3_bucket.server.client().list_objects_v2(Bucket=name)["Contents"]]
    assert keys == ["crm/prod/data/x"]
    assert names(backend) == ["data/x"]


def test_s3_secrets_never_logged(s3_bucket, caplog: pytest.LogCaptureFixture) -> None:
    options = {**s3_bucket.options, "secret_access_key": "s3cr3t-do-not-log", "part_size": 5 * MiB}
    caplog.set_level(logging.DEBUG)
    backend = open_backend(s3_bucket.url, **options)
    backend.open()
    backend.store("a", b"1")
    backend.store_file("b", PatternStream(6 * MiB))
    with pytest.raises(ObjectNotFound):
        backend.load("missing")
    assert caplog.records
    assert "s3cr3t-do-not-log" not in caplog.text
    assert "s3cr3t-do-not-log" not in repr(backend) + repr(backend.options)  # type: ignore[attr-defined]


# -- SFTP ----------------------------------------------------------------------------------------


def test_sftp_unknown_host_key_refused(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    host = _sshd_host(request)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = {**_sftp_options(host), "known_hosts": str(empty)}
    backend = open_backend(_sftp_url(host, tmp_path), **options)
    with pytest.raises(BackendError, match=r"(?i)host key"):
        backend.open()
    backend.close()


def test_sftp_reconnects_after_a_dropped_connection(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    host = _sshd_host(request)
    tmp_path.chmod(0o755)
    backend = open_backend(_sftp_url(host, tmp_path / "repo"), **_sftp_options(host))
    backend.create()
    backend.store("a", b"1")
    backend._client.get_transport().close()  # type: ignore[attr-defined]  # the network drops
    assert backend.load("a") == b"1"
    backend.close()


def test_objects_are_readable_by_their_owner_only(backend: Backend) -> None:
    """Packs and metadata are encrypted, but their sizes and names are not for others to list."""
    if isinstance(backend, S3Backend):
        pytest.skip("S3 has no file modes")
    backend.store("data/ab/" + "ab" * 32, b"pack")
    root = Path(backend.root)  # type: ignore[attr-defined]
    obj = root / "data" / "ab" / ("ab" * 32)
    assert obj.stat().st_mode & 0o077 == 0
    assert (root / "data").stat().st_mode & 0o077 == 0
    assert (root / "data" / "ab").stat().st_mode & 0o077 == 0
