"""The host adapter (crmmaint/engines/host.py): its parsers as pure functions, and HostOS over a
real LocalTransport and a real SSHTransport (sshd on 127.0.0.x, same machine, same files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crmmaint.engines.host import (
    FileListing,
    FileStat,
    HostError,
    HostOS,
    ToolMissing,
    parse_curl_answer,
    parse_df,
    parse_file_listing,
    parse_loadavg,
    parse_meminfo,
    parse_process_counts,
    parse_unit_states,
)
from crmmaint.errors import CommandTimeout
from crmmaint.transport import LocalTransport, SSHTransport, Transport

# --- parsers ---------------------------------------------------------------------------------

DF = """\
Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/vda1        100000000 85000000  15000000      85% /
devtmpfs           4000000        0   4000000       0% /dev
tmpfs              4000000     1000   3999000       1% /run
/dev/vdb1          2000000   100000   1900000       6% /srv/crm data
/dev/vda1        100000000 85000000  15000000      85% /etc/hosts
overlay           50000000 10000000  40000000      20% /var/lib/docker/overlay2/x/merged
proc                     0        0         0        - /proc
"""


def test_parse_df_skips_pseudo_filesystems_and_bind_mounts() -> None:
    disks = parse_df(DF)
    assert [d.mount for d in disks] == ["/", "/srv/crm data", "/var/lib/docker/overlay2/x/merged"]
    root = disks[0]
    assert root.size_bytes == 100000000 * 1024
    assert root.used_pct == pytest.approx(85.0)


def test_parse_df_ignores_lines_that_are_not_rows() -> None:
    text = DF + "df: /mnt/gone: Transport endpoint is not connected\n/dev/x - 1 1 1% /y\n"
    assert [d.mount for d in parse_df(text)] == [d.mount for d in parse_df(DF)]
    assert parse_df("") == []
    with pytest.raises(ValueError):
        parse_df(DF + "/dev/x 12 ab 1 1% /y\n")


def test_used_pct_of_an_empty_filesystem_is_zero() -> None:
    (disk,) = parse_df("header\n/dev/z 10 0 0 0% /z\n")
    assert disk.used_pct == 0.0


def test_parse_loadavg_and_meminfo() -> None:
    assert parse_loadavg("0.50 1.25 2.00 3/456 789\n") == (0.5, 1.25, 2.0)
    mem = parse_meminfo("MemTotal:       16000 kB\nMemAvailable:    4000 kB\nHugePages_Total: 0\n")
    assert mem == {"MemTotal": 16000 * 1024, "MemAvailable": 4000 * 1024, "HugePages_Total": 0}


def test_parse_loadavg_rejects_short_text() -> None:
    with pytest.raises(ValueError):
        parse_loadavg("0.5 1.0\n")


def test_parse_unit_states_keeps_order_and_fills_gaps() -> None:
    assert parse_unit_states("active\n\nfailed\n", 3) == ["active", "", "failed"]
    assert parse_unit_states("active\n", 3) == ["active", "", ""]
    assert parse_unit_states("active\ninactive\nextra\n", 2) == ["active", "inactive"]


def test_parse_process_counts_keeps_order_and_fills_gaps() -> None:
    assert parse_process_counts("2\n0\n", 2) == [2, 0]
    assert parse_process_counts("      1\n", 3) == [1, 0, 0]
    with pytest.raises(ValueError):
        parse_process_counts("lots\n", 1)


def test_parse_curl_answer() -> None:
    assert parse_curl_answer("200 0.012345\n") == (200, 0.012345)
    assert parse_curl_answer("503") == (503, 0.0)
    with pytest.raises(ValueError):
        parse_curl_answer("curl: (7) refused")


def test_parse_file_listing_pairs_rotated_files_and_drops_repeats() -> None:
    records = [
        "f\t11\t100\t/l/a.log",
        "r\t10\t900\t/l/a.log.1",
        "f\t12\t5\t/l/new\nline.log",  # a name with a newline is one record
        "r\t13\t7\t/l/other.1",  # not the predecessor of the file before it
        "l\t/l/link.log",
        "l\t/l/link.log",
        "f\t11\t100\t/l/a.log",  # a second glob matching the same file
        "r\t10\t900\t/l/a.log.1",
        "f\tgarbage\t/l/b.log",
        "m\t/l/*.txt",
        "",
    ]
    listing = parse_file_listing("\0".join(records).encode())
    assert listing == FileListing(
        files=[
            (FileStat("/l/a.log", 11, 100), FileStat("/l/a.log.1", 10, 900)),
            (FileStat("/l/new\nline.log", 12, 5), None),
        ],
        missing=["/l/*.txt"],
        links=["/l/link.log"],
    )


def test_parse_file_listing_keeps_undecodable_names() -> None:
    listing = parse_file_listing(b"f\t1\t2\t/l/\xff.log\0")
    ((stat, _),) = listing.files
    assert stat.path.encode("utf-8", "surrogateescape") == b"/l/\xff.log"


# --- HostOS over real transports -------------------------------------------------------------


@pytest.fixture(params=["local", "ssh"])
def host_os(request: pytest.FixtureRequest) -> Iterator[HostOS]:
    transport: Transport
    if request.param == "local":
        transport = LocalTransport("local-test")
    else:
        sshd = request.getfixturevalue("sshd_hosts")[2]
        transport = SSHTransport(sshd.name, sshd.address, **sshd.ssh_options())
    try:
        yield HostOS(transport)
    finally:
        transport.close()


def test_name_is_the_transports_host(host_os: HostOS) -> None:
    assert host_os.name == host_os.transport.host


def test_disks_match_statvfs(host_os: HostOS) -> None:
    (root,) = host_os.disks(["/"])
    st = os.statvfs("/")
    assert root.mount == "/"
    assert root.size_bytes == pytest.approx(st.f_blocks * st.f_frsize, rel=0.01)
    assert 0 < root.used_bytes <= root.size_bytes
    assert 0.0 < root.used_pct <= 100.0
    assert any(d.mount == "/" for d in host_os.disks())


def test_disks_name_a_mount_that_is_not_there(host_os: HostOS) -> None:
    with pytest.raises(HostError, match="no mounted filesystem at /crmtest-absent, /zz"):
        host_os.disks(["/", "/zz", "/crmtest-absent"])


def test_load_cpus_and_memory(host_os: HostOS) -> None:
    load = host_os.load_average()
    assert len(load) == 3 and all(value >= 0 for value in load)
    assert 1 <= host_os.cpu_count() <= (os.cpu_count() or 1)
    mem = host_os.memory()
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert mem["MemTotal"] == pytest.approx(physical, rel=0.01)
    assert 0 < mem["MemAvailable"] <= mem["MemTotal"]


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[str]:
    """A running process with a distinctive name (a copy of sleep) for pgrep -x."""
    exe = shutil.which("sleep")
    assert exe is not None
    name = "crmtest-hostos"  # comm holds at most 15 characters
    shutil.copy(exe, tmp_path / name)
    proc = subprocess.Popen([str(tmp_path / name), "30"])
    try:
        yield name
    finally:
        proc.kill()
        proc.wait()


def test_process_counts_in_order_with_repeats(host_os: HostOS, sleeper: str) -> None:
    assert host_os.process_counts([sleeper, "crmtest-absent", sleeper]) == [1, 0, 1]


def test_names_are_arguments_never_shell_text(host_os: HostOS, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = [f"$(touch {marker})", f"x; touch {marker}", f"`touch {marker}`"]
    assert host_os.process_counts(hostile) == [0, 0, 0]
    probe = host_os.tcp_probe(f"127.0.0.1;touch {marker}", 22, connect_timeout=1)
    assert not probe.open
    if os.path.isdir("/run/systemd/system"):
        host_os.unit_states([f"$(touch {marker}).service"])
    assert not marker.exists()


def test_unit_states(host_os: HostOS) -> None:
    units = ["crmtest-absent.service", "crmtest-absent.service"]
    if not os.path.isdir("/run/systemd/system"):
        with pytest.raises(ToolMissing, match="systemctl not available"):
            host_os.unit_states(units)
        return
    states = host_os.unit_states(units)
    assert len(states) == 2 and "active" not in states


def test_tcp_probe_open_and_refused(host_os: HostOS, listening_port: int, closed_port: int) -> None:
    up = host_os.tcp_probe("127.0.0.1", listening_port, connect_timeout=3)
    assert up.open and not up.timed_out and 0 < up.seconds < 10
    down = host_os.tcp_probe("127.0.0.1", closed_port, connect_timeout=3)
    assert not down.open and not down.timed_out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_http_status(host_os: HostOS, http_url: str, closed_port: int) -> None:
    status, seconds = host_os.http_status(f"{http_url}/503", max_time=5)
    assert status == 503 and 0 <= seconds < 5
    assert host_os.http_status(f"{http_url}/302", max_time=5)[0] == 302
    assert host_os.http_status(f"{http_url}/302", max_time=5, follow_redirects=True)[0] == 204
    with pytest.raises(HostError, match=r"no answer within 0\.5s"):
        host_os.http_status(f"{http_url}/slow", max_time=0.5)
    with pytest.raises(HostError, match="curl exit 7"):
        host_os.http_status(f"http://127.0.0.1:{closed_port}/", max_time=5)
    with pytest.raises(CommandTimeout):  # the command's timeout, below curl's own
        host_os.http_status(f"{http_url}/slow", max_time=5, timeout=0.5)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    (tmp_path / "app.log").write_bytes(b"0123456789\nsecond line\n")
    (tmp_path / "app.log.1").write_bytes(b"rotated\n")
    (tmp_path / "two words.log").write_bytes(b"x\n")
    (tmp_path / "secret").write_bytes(b"not yours\n")
    (tmp_path / "link.log").symlink_to(tmp_path / "secret")
    return tmp_path


def test_log_files(host_os: HostOS, logs: Path) -> None:
    app, rotated = logs / "app.log", logs / "app.log.1"
    listing = host_os.log_files([f"{logs}/*.log", str(app), f"{logs}/*.gz"])
    assert listing.files == [
        (
            FileStat(str(app), app.stat().st_ino, 23),
            FileStat(str(rotated), rotated.stat().st_ino, 8),
        ),
        (FileStat(f"{logs}/two words.log", (logs / "two words.log").stat().st_ino, 2), None),
    ]
    assert listing.links == [f"{logs}/link.log"]
    assert listing.missing == [f"{logs}/*.gz"]
    followed = host_os.log_files([f"{logs}/link.log"], follow=True)
    assert [f.path for f, _ in followed.files] == [f"{logs}/link.log"]
    assert followed.files[0][0].size == len(b"not yours\n")


def test_open_range_streams_exact_bytes(host_os: HostOS, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "big.log").write_bytes(data)
    path = str(tmp_path / "big.log")
    with host_os.open_range(path, 3, 7, timeout=30) as stream:
        assert stream.read() + stream.read() == data[3:10]
        assert stream.read() == b""
    chunks: list[bytes] = []
    with host_os.open_range(path, 1000, len(data), timeout=30) as stream:
        while chunk := stream.read(1 << 16):
            assert len(chunk) <= 1 << 16
            chunks.append(chunk)
    assert b"".join(chunks) == data[1000:]


def test_open_range_refuses_a_symlink_unless_followed(host_os: HostOS, logs: Path) -> None:
    link = str(logs / "link.log")
    with (
        pytest.raises(HostError, match="became a symbolic link"),
        host_os.open_range(link, 0, 100, timeout=30) as stream,
    ):
        while stream.read():
            pass
    with host_os.open_range(link, 0, 100, follow=True, timeout=30) as stream:
        assert stream.read() == b"not yours\n"


def test_open_range_of_a_vanished_file_reads_nothing(host_os: HostOS, tmp_path: Path) -> None:
    with host_os.open_range(str(tmp_path / "gone.log"), 0, 10, timeout=30) as stream:
        assert stream.read() == b""


def test_open_range_timeout_bounds_the_stream(host_os: HostOS, tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.log"
    os.mkfifo(fifo)  # opening it blocks: nobody writes
    started = time.monotonic()
    with (
        pytest.raises(CommandTimeout),
        host_os.open_range(str(fifo), 0, 10, timeout=0.5) as stream,
    ):
        stream.read()
    assert time.monotonic() - started < 10
