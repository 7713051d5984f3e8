"""logs.scan on real files through LocalTransport: offsets kept in a tmp journal across runs,
rotation (rename and copytruncate), check mode, and the pure read planning."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tasks_health import make_ctx

from crmmaint.engines.host import FileStat
from crmmaint.inventory import Host, Inventory
from crmmaint.journal import Journal
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import REGISTRY
from crmmaint.tasks.logs import Segment, normalise, plan_reads


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "crm app.log"  # a space: paths are arguments, not shell words
    path.parent.mkdir()
    path.write_text("INFO start\nERROR 1 disk 42 failed\nINFO ok\n")
    return path


def scan(journal: Journal | None, params: dict[str, Any], **kw: Any) -> TaskResult:
    ctx = make_ctx("logs.scan", params, journal=journal, **kw)
    return REGISTRY["logs.scan"].func(ctx)


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_reads_only_what_is_new(journal: Journal, log_file: Path) -> None:
    first = scan(journal, {"paths": [str(log_file)]})
    assert first.status is Status.WARNING
    assert first.metrics["matches"] == 1 and first.metrics["lines"] == 3
    assert first.details["top"] == [{"message": "ERROR N disk N failed", "count": 1}]

    again = scan(journal, {"paths": [str(log_file)]})
    assert again.status is Status.OK
    assert again.metrics["lines"] == 0

    append(log_file, "ERROR 2 disk 7 failed\nCRITICAL db down\nINFO fine\n")
    third = scan(journal, {"paths": [str(log_file)]})
    assert third.metrics["matches"] == 2 and third.metrics["lines"] == 3
    assert third.details["top"][0] == {"message": "ERROR N disk N failed", "count": 1}
    assert third.details["files"][0]["offset"] == log_file.stat().st_size


def test_unfinished_line_waits_for_its_end(journal: Journal, log_file: Path) -> None:
    scan(journal, {"paths": [str(log_file)]})
    append(log_file, "ERROR half a li")
    assert scan(journal, {"paths": [str(log_file)]}).metrics["lines"] == 0
    append(log_file, "ne\n")
    result = scan(journal, {"paths": [str(log_file)]})
    assert result.metrics["matches"] == 1
    assert result.details["top"][0]["message"] == "ERROR half a line"


def test_rotation_reads_rest_of_old_file_then_new(journal: Journal, log_file: Path) -> None:
    scan(journal, {"paths": [str(log_file)]})
    append(log_file, "ERROR written before rotation\n")
    os.rename(log_file, f"{log_file}.1")
    log_file.write_text("FATAL first line of the new file\nINFO ok\n")
    result = scan(journal, {"paths": [str(log_file)]})
    assert result.metrics["matches"] == 2
    messages = {t["message"] for t in result.details["top"]}
    assert messages == {"ERROR written before rotation", "FATAL first line of the new file"}
    assert result.details["files"][0]["rotated"] is True
    assert scan(journal, {"paths": [str(log_file)]}).metrics["lines"] == 0


def test_copytruncate_rereads_from_start(journal: Journal, log_file: Path) -> None:
    scan(journal, {"paths": [str(log_file)]})
    log_file.write_text("ERROR after truncate\n")  # same inode, shorter
    result = scan(journal, {"paths": [str(log_file)]})
    assert result.metrics["matches"] == 1 and result.metrics["lines"] == 1
    assert result.details["files"][0]["rotated"] is True


def test_check_mode_scans_without_advancing(journal: Journal, log_file: Path) -> None:
    checked = scan(journal, {"paths": [str(log_file)]}, check=True)
    assert checked.metrics["matches"] == 1
    assert "check mode" in checked.message
    assert checked.details["offsets_saved"] is False
    real = scan(journal, {"paths": [str(log_file)]})
    assert real.metrics["matches"] == 1
    assert scan(journal, {"paths": [str(log_file)]}, check=True).metrics["lines"] == 0


def test_thresholds_and_patterns(journal: Journal, log_file: Path) -> None:
    append(log_file, "ERROR again\nTraceback (most recent call last):\n")
    failed = scan(None, {"paths": [str(log_file)], "fail_at": 3})
    assert failed.status is Status.FAILED
    assert scan(None, {"paths": [str(log_file)], "warn_at": 10}).status is Status.OK
    only_ok = scan(None, {"paths": [str(log_file)], "patterns": [r"^INFO ok$"], "warn_at": 1})
    assert only_ok.metrics["matches"] == 1
    bad = scan(None, {"paths": [str(log_file)], "patterns": ["(unclosed"]})
    assert bad.status is Status.FAILED and "invalid pattern" in bad.message


def test_globs_missing_paths_and_host_vars(tmp_path: Path, log_file: Path) -> None:
    (log_file.parent / "worker-1.log").write_text("ERROR w1\n")
    (log_file.parent / "worker-2.log").write_text("INFO w2\n")
    inv = Inventory(path=str(tmp_path / "inventory.yml"))
    inv.hosts["local"] = Host(
        name="local",
        connection="local",
        vars={"log_paths": ["logs/worker-*.log", "logs/none-*.log"]},
    )
    result = scan(None, {}, inventory=inv)
    assert result.metrics["files"] == 2 and result.metrics["matches"] == 1
    assert result.details["missing"] == [str(tmp_path / "logs/none-*.log")]
    assert result.status is Status.WARNING and "nothing matches" in result.message
    nothing = scan(None, {"paths": [str(tmp_path / "nope.log")]})
    assert nothing.status is Status.WARNING and "no log file matches" in nothing.message
    assert scan(None, {}).status is Status.SKIPPED


def test_max_bytes_skips_ahead(journal: Journal, log_file: Path) -> None:
    log_file.write_text("ERROR old\n" * 100 + "INFO new\n")
    result = scan(journal, {"paths": [str(log_file)], "max_bytes": 18})
    assert result.details["files"][0]["skipped_bytes"] == log_file.stat().st_size - 18
    assert result.metrics["lines"] <= 2


# --- pure planning ---------------------------------------------------------------------------

BIG = 1 << 30


def test_plan_first_run_reads_all() -> None:
    segs, rotated, skipped = plan_reads(FileStat("a", 1, 100), None, None, BIG)
    assert segs == [Segment("a", 0, 100)] and not rotated and skipped == 0


def test_plan_continues_from_offset_and_nothing_new() -> None:
    assert plan_reads(FileStat("a", 1, 100), None, {"inode": 1, "offset": 40}, BIG)[0] == [
        Segment("a", 40, 100)
    ]
    assert plan_reads(FileStat("a", 1, 100), None, {"inode": 1, "offset": 100}, BIG)[0] == []


def test_plan_rotation_with_and_without_old_file() -> None:
    cursor = {"inode": 1, "offset": 40}
    segs, rotated, _ = plan_reads(FileStat("a", 2, 10), FileStat("a.1", 1, 60), cursor, BIG)
    assert rotated
    assert segs == [Segment("a.1", 40, 60, whole_lines=False), Segment("a", 0, 10)]
    other = plan_reads(FileStat("a", 2, 10), FileStat("a.1", 9, 60), cursor, BIG)[0]
    assert other == [Segment("a", 0, 10)]
    truncated = plan_reads(FileStat("a", 1, 10), None, cursor, BIG)
    assert truncated[0] == [Segment("a", 0, 10)] and truncated[1]


def test_plan_caps_bytes_per_run() -> None:
    segs, _, skipped = plan_reads(FileStat("a", 1, 1000), None, {"inode": 1, "offset": 100}, 300)
    assert segs == [Segment("a", 700, 1000)] and skipped == 600


@pytest.mark.parametrize(
    "line",
    [
        "  2024-05-01 12:00:01 ERROR job 17 failed\n",
        "2024-05-01 12:00:01,123 ERROR    job 9  failed",
        "2024-05-01T12:00:01.5Z ERROR job 1 failed",
        "[2024/05/01 12:00:01 +0200] ERROR job 3 failed",
    ],
)
def test_normalise_groups_messages(line: str) -> None:
    assert normalise(line) == "ERROR job N failed"


def test_normalise_keeps_messages_without_timestamp() -> None:
    assert normalise("Traceback (most recent call last):") == "Traceback (most recent call last):"
    assert normalise("disk 42 at 2024-05-01") == "disk N at N-N-N"


def test_scan_over_ssh(sshd_hosts: list[Any], journal: Journal, log_file: Path) -> None:
    """The sshd test hosts share this machine's files: same log, read through SSH."""
    from crmmaint.transport import SSHTransport

    host = sshd_hosts[0]
    inv = Inventory(path="/nonexistent/inventory.yml")
    inv.hosts["app1"] = Host(name="app1", address=host.address, port=host.port, connection="ssh")
    with SSHTransport("app1", host.address, **host.ssh_options()) as transport:
        kw: dict[str, Any] = {"inventory": inv, "name": "app1", "transport": transport}
        first = scan(journal, {"paths": [str(log_file.parent / "*.log")]}, **kw)
        assert first.metrics["matches"] == 1, first.message
        append(log_file, "FATAL over ssh\n")
        second = scan(journal, {"paths": [str(log_file.parent / "*.log")]}, **kw)
        assert second.metrics == {"matches": 1, "lines": 1, "bytes": 15, "files": 1}


def test_a_log_path_that_is_a_symlink_is_not_read_unless_asked(
    journal: Journal, tmp_path: Path
) -> None:
    """A link to a file the scanning user may read but the log's owner may not (a root-only
    file) must not turn logs.scan into a way to read it, even in check mode."""
    secret = tmp_path / "shadow"
    secret.write_text("ERROR root:$6$secret-hash\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("INFO fine\n")
    (logs / "evil.log").symlink_to(secret)
    for check in (True, False):
        result = scan(journal, {"paths": [str(logs / "*.log")]}, check=check)
        assert result.metrics["files"] == 1 and result.metrics["matches"] == 0
        assert result.details["symlinks_skipped"] == [str(logs / "evil.log")]
        assert "skipped symlinks" in result.message and "secret-hash" not in str(result)
    followed = scan(journal, {"paths": [str(logs / "*.log")], "follow_symlinks": True})
    assert followed.metrics["files"] == 2 and followed.metrics["matches"] == 1


@pytest.mark.parametrize(
    "name", ["new\nline.log", "tab\tname.log", "fake\x01record.log", "m\tfake.log", "é.log"]
)
def test_no_file_name_crashes_or_forges_a_record(journal: Journal, tmp_path: Path, name) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / name).write_text("ERROR one\nINFO two\n")
    result = scan(journal, {"paths": [str(logs / "*.log")]})
    assert result.status is Status.WARNING, result.message
    assert result.metrics["files"] == 1 and result.metrics["matches"] == 1
    assert result.details["missing"] == []
    assert result.details["files"][0]["path"] == str(logs / name)


def test_a_pattern_is_matched_on_a_bounded_prefix_of_each_line(journal, tmp_path: Path) -> None:
    log = tmp_path / "long.log"
    log.write_text("x" * 300_000 + " ERROR late\nERROR early " + "y" * 300_000 + "\n")
    result = scan(journal, {"paths": [str(log)], "patterns": ["ERROR.*timeout", "ERROR"]})
    assert result.metrics["matches"] == 1  # only the line whose match lies in its first 8 KiB


def test_a_log_reached_through_a_symlinked_folder_is_not_read_unless_asked(
    journal: Journal, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "secret.log").write_text("ERROR the root-only line\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "linkdir").symlink_to(private)
    result = scan(journal, {"paths": [str(logs / "linkdir" / "*.log")]})
    assert result.metrics["matches"] == 0
    assert result.details["symlinks_skipped"] == [str(logs / "linkdir" / "secret.log")]
    followed = scan(journal, {"paths": [str(logs / "linkdir" / "*.log")], "follow_symlinks": True})
    assert followed.metrics["matches"] == 1


def test_a_file_two_globs_match_is_scanned_once(journal: Journal, log_file: Path) -> None:
    rotated = Path(f"{log_file}.1")
    rotated.write_text("ERROR old\n")
    globs = [str(log_file), str(log_file.parent / "*.log"), str(log_file.parent / "crm*.log")]
    result = scan(journal, {"paths": globs})
    assert result.metrics["files"] == 1 and result.metrics["matches"] == 1, result.details
