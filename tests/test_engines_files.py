"""File sets through LocalTransport: tar round trip with checksums, refusals, the tar parser."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time

import pytest

from crmmaint.engines import RestoreTargetExists
from crmmaint.engines.files import FileSetSource, TarDigest, compare_checksums, tar_differences
from crmmaint.errors import EngineError, IntegrityError
from crmmaint.inventory import FileSet
from crmmaint.transport.base import CommandResult
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
    assert (
        f"paths {tmp_path}/absent, {tmp_path}/dangling, {tmp_path}/it's gone do not exist"
        in message
    )
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
        assert digest.links == {"/app/conf/link": "app.conf"}
        mode = format((tree / "conf" / "app.conf").stat().st_mode & 0o7777, "o")
        assert digest.files["/app/conf/app.conf"]["mode"] == mode


def test_a_restore_keeps_modes_and_links_and_reads_them_back(tree, tmp_path):
    """What a file-set drill compares beyond content: each file's mode (restored with tar -p,
    whatever the umask) and each symbolic link's target, as the dump recorded them."""
    from crmmaint.engines import compare_facts

    (tree / "conf" / "app.conf").chmod(0o600)
    (tree / "conf" / "empty").chmod(0o751)
    data, facts = dump_all(source(tree))
    assert facts["links"] == {f"{tree}/conf/link": "app.conf"}
    assert facts["checksums"][f"{tree}/conf/empty"]["mode"] == "751"
    restored = source(tree).restore(io.BytesIO(data), str(tmp_path / "back"))
    assert compare_facts(facts, restored) == []
    (tmp_path / "back" / str(tree).lstrip("/") / "conf" / "empty").chmod(0o644)
    link = tmp_path / "back" / str(tree).lstrip("/") / "conf" / "link"
    link.unlink()
    link.symlink_to("elsewhere")
    files, links = source(tree).tree(str(tmp_path / "back"))
    problems = compare_facts(facts, {"checksums": files, "links": links})
    assert problems == [
        f"mode differs: {tree}/conf/empty is 644, expected 751",
        f"link {tree}/conf/link points to 'elsewhere', expected 'app.conf'",
    ], problems


def dump_all(src: FileSetSource) -> tuple[bytes, dict]:
    with src.dump(timeout=60) as stream:
        data = b"".join(iter(stream.read, b""))
        facts = stream.finish()
    return data, facts


HOSTILE_NAMES = ["plain", "with space", "new\nline", "star*[x]^$.&\\", "ünï cödé", "it's"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_root_that_is_a_link_is_followed_and_links_inside_stay_links(tmp_path, name):
    real = tmp_path / "real" / name
    (real / "sub").mkdir(parents=True)
    for i in range(20):
        (real / "sub" / f"doc{i}.txt").write_text(f"document {i}\n")
    os.symlink("sub/doc0.txt", real / "inner-link")
    conf = tmp_path / "real" / f"{name}.conf"
    conf.write_text("secret = none\n")
    (tmp_path / "srv").mkdir()
    os.symlink(real, tmp_path / "srv" / name)  # the configured directory is a link
    os.symlink(conf, tmp_path / "srv" / f"{name}.conf")  # and so is a configured file
    paths = [str(tmp_path / "srv" / name), str(tmp_path / "srv" / f"{name}.conf")]
    src = FileSetSource(FileSet(name="docs", host="local", paths=paths), LocalTransport())
    data, facts = dump_all(src)
    assert facts["files"] == 21
    assert f"{paths[0]}/sub/doc7.txt" in facts["checksums"]
    assert facts["checksums"][paths[1]]["sha256"] == hashlib.sha256(b"secret = none\n").hexdigest()
    assert facts["roots"] == {
        paths[0]: {"files": 20, "bytes": sum(len(f"document {i}\n") for i in range(20))},
        paths[1]: {"files": 1, "bytes": 14},
    }
    assert facts["followed_links"] == paths
    target = tmp_path / "restored"
    restored = src.restore(io.BytesIO(data), str(target))
    assert compare_checksums(facts["checksums"], restored["checksums"]) == []
    back = target / paths[0].lstrip("/")
    assert back.is_dir() and not back.is_symlink()  # the real directory, not the link
    assert os.readlink(back / "inner-link") == "sub/doc0.txt"  # links inside stay links
    assert (target / paths[1].lstrip("/")).read_text() == "secret = none\n"


def test_a_file_changed_while_read_keeps_the_backup_and_names_it(tmp_path):
    root = tmp_path / "attachments"
    root.mkdir()
    for i in range(40):
        (root / f"a{i}.pdf").write_bytes(os.urandom(200_000))
    log = root / "app.log"
    log.write_bytes(b"x" * 30_000_000)
    stop = threading.Event()

    def append() -> None:
        with open(log, "ab") as out:
            while not stop.is_set():
                out.write(b"another line\n")
                out.flush()

    writer = threading.Thread(target=append)
    src = FileSetSource(FileSet(name="att", host="local", paths=[str(root)]), LocalTransport())
    writer.start()
    try:
        with src.dump(timeout=60) as stream:
            chunks = []
            while chunk := stream.read(1 << 16):
                chunks.append(chunk)
                time.sleep(0.0005)  # a slow reader: tar is held back while the log grows
            facts = stream.finish()
    finally:
        stop.set()
        writer.join()
    assert f"{log}: file changed as we read it" in "\n".join(facts["warnings"])
    assert facts["files"] == 41
    assert facts["checksums"][f"{root}/a3.pdf"]["size"] == 200_000
    restored = src.restore(io.BytesIO(b"".join(chunks)), str(tmp_path / "back"))
    assert compare_checksums(facts["checksums"], restored["checksums"]) == []  # what was stored


def test_only_tars_exit_1_is_tolerated() -> None:
    def result(status: int, stderr: bytes) -> CommandResult:
        return CommandResult("h", "tar", status, b"", stderr, 0.1)

    assert tar_differences(result(2, b"tar: x: Cannot open: Permission denied\n")) is None
    assert tar_differences(result(137, b"")) is None
    assert tar_differences(result(1, b"tar: ./a: File removed before we read it\n")) == [
        "./a: File removed before we read it"
    ]
    many = b"".join(b"tar: ./f%d: file changed as we read it\n" % i for i in range(60))
    listed = tar_differences(result(1, many))
    assert listed is not None and len(listed) == 51 and listed[-1] == "and 10 more"
    assert tar_differences(result(1, b"")) == [
        "tar reported that some files differ (exit 1) without naming them"
    ]


@pytest.mark.parametrize("target", ["relative/dir", "/", "/.", "/tmp/.."])
def test_a_restore_target_must_be_an_absolute_directory_other_than_root(tree, target):
    from crmmaint.errors import RestoreError

    with pytest.raises(RestoreError, match="must be an absolute path other than /") as info:
        source(tree).restore(io.BytesIO(b""), target)
    assert info.value.exit_code == 6


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_restore_leaves_no_partial_files(tree, tmp_path, existing):
    """A stream that breaks after some files were extracted (a damaged chunk met mid-way):
    what was extracted into a new or empty directory is removed."""
    src = source(tree)
    data, _ = dump_all(src)
    target = tmp_path / "restore"
    if existing:
        target.mkdir()

    class Breaks(io.RawIOBase):
        def __init__(self) -> None:
            self.inner = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            if self.inner.tell() > len(data) // 2:
                raise IntegrityError("object data/ab/cd failed authentication")
            return self.inner.read(min(size, 4096))

    with pytest.raises(IntegrityError):
        src.restore(Breaks(), str(target))
    assert (not target.exists()) if not existing else list(target.iterdir()) == []


def test_a_forced_restore_replaces_the_target_and_writes_through_no_symlink(tree, tmp_path):
    """An existing target holding a symlink where the archive's folders go: extracting over it
    would write into wherever the link points. --force replaces the target instead."""
    src = source(tree)
    data, facts = dump_all(src)
    target = tmp_path / "restore"
    outside = tmp_path / "outside"
    outside.mkdir()
    first = str(tree).lstrip("/").split("/")[0]  # the archive's top folder (no member of its own)
    target.mkdir()
    (target / first).symlink_to(outside)
    (target / "old-file").write_text("from before")
    restored = src.restore(io.BytesIO(data), str(target), force=True)
    assert compare_checksums(facts["checksums"], restored["checksums"]) == []
    assert list(outside.iterdir()) == []  # nothing written through the link
    assert not (target / first).is_symlink() and not (target / "old-file").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["app", "outside", "restore"])


@pytest.mark.parametrize("where", ["root", "parent", "dotted"])
def test_a_restore_into_the_file_sets_own_paths_is_refused_even_with_force(tree, where):
    """With force, the file set's own directory, or one holding it, would be replaced."""
    src = source(tree)
    data, _ = dump_all(src)
    target = {"root": str(tree), "parent": str(tree.parent), "dotted": f"{tree}/../app/."}[where]
    with pytest.raises(EngineError, match="refusing to restore over the source"):
        src.restore(io.BytesIO(data), target, force=True)
    assert (tree / "conf" / "app.conf").read_text() == "key = value\n"
