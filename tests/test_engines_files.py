"""File sets through LocalTransport: tar round trip with checksums, refusals, the tar parser."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from crmmaint.engines import RestoreTargetExists
from crmmaint.engines.files import FileSetSource, TarDigest, compare_checksums
from crmmaint.errors import EngineError
from crmmaint.inventory import FileSet
from crmmaint.transport.local import LocalTransport


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "app"
    (root / "conf" / "deep" / ("d" * 120)).mkdir(parents=True)
    (root / "conf" / "app.conf").write_text("key = value\n")
    (root / "conf" / "tab\tand space.txt").write_bytes(os.urandom(5000))
    (root / "conf" / "deep" / ("d" * 120) / ("f" * 150)).write_bytes(b"long names need pax")
    (root / "conf" / "empty").write_bytes(b"")
    (root / "logs").mkdir()
    (root / "logs" / "x.log").write_text("excluded")
    os.link(root / "conf" / "app.conf", root / "conf" / "hardlink.conf")
    os.symlink("app.conf", root / "conf" / "link")
    return root


def source(tree) -> FileSetSource:
    fs = FileSet(name="appfiles", host="local", paths=[str(tree)], exclude=["*.log"])
    return FileSetSource(fs, LocalTransport())


def test_tar_round_trip_with_checksums(tree, tmp_path):
    src = source(tree)
    out = io.BytesIO()
    with src.dump(timeout=60) as stream:
        while chunk := stream.read(4096):
            out.write(chunk)
        facts = stream.finish()
    expected = {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tree.rglob("*")
        if p.is_file() and not p.is_symlink() and p.suffix != ".log"
    }
    assert {k: v["sha256"] for k, v in facts["checksums"].items()} == expected
    assert facts["files"] == 5
    target = tmp_path / "restore"
    restored = src.restore(io.BytesIO(out.getvalue()), str(target))
    assert compare_checksums(facts["checksums"], restored["checksums"]) == []
    assert os.readlink(target / str(tree).lstrip("/") / "conf" / "link") == "app.conf"
    with pytest.raises(RestoreTargetExists):
        src.restore(io.BytesIO(out.getvalue()), str(target))
    again = src.restore(io.BytesIO(out.getvalue()), str(target), force=True)
    assert compare_checksums(facts["checksums"], again["checksums"]) == []


def test_missing_path_fails_the_dump_for_good(tmp_path):
    """A configured path that does not exist is named, and no retry is spent on it."""
    (tmp_path / "here").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    paths = [str(tmp_path / "here"), str(tmp_path / "absent"), str(tmp_path / "dangling")]
    fs = FileSet(name="gone", host="local", paths=[*paths, str(tmp_path / "it's gone")])
    with pytest.raises(EngineError) as info, FileSetSource(fs, LocalTransport()).dump():
        pass
    message = str(info.value)
    assert f"paths {tmp_path}/absent, {tmp_path}/it's gone do not exist" in message
    assert info.value.retryable is False


def test_truncated_stream_fails_restore(tree, tmp_path):
    src = source(tree)
    with src.dump() as stream:
        data = b"".join(iter(stream.read, b""))
        stream.finish()
    with pytest.raises(EngineError):
        src.restore(io.BytesIO(data[:3000]), str(tmp_path / "half"))


def test_tar_digest_matches_python_tarfile(tree):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(tree, arcname="app")
    for size in (1, 511, 512, 513, 100_000):
        digest = TarDigest()
        data = buf.getvalue()
        for i in range(0, len(data), size):
            digest.feed(data[i : i + size])
        assert digest.ended
        assert (
            digest.files["/app/conf/app.conf"]["sha256"]
            == hashlib.sha256(b"key = value\n").hexdigest()
        )
        assert digest.files["/app/conf/empty"]["size"] == 0
        long_name = "/app/conf/deep/" + "d" * 120 + "/" + "f" * 150
        assert digest.files[long_name]["size"] == len(b"long names need pax")
        assert digest.files["/app/conf/hardlink.conf"] == digest.files["/app/conf/app.conf"]
