"""One contract for every Transport: LocalTransport and SSHTransport against a real sshd."""

from __future__ import annotations

import hashlib
import io
import os
import resource
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from crmmaint.errors import CommandTimeout, TransportError
from crmmaint.transport import LocalTransport, SSHTransport, Transport
from crmmaint.transport.base import COLLECT_STDOUT_LIMIT


@pytest.fixture(params=["local", "ssh"])
def transport(request) -> Transport:
    if request.param == "local":
        t: Transport = LocalTransport("local-test")
    else:
        host = request.getfixturevalue("sshd_hosts")[1]
        t = SSHTransport(host.name, host.address, **host.ssh_options())
    yield t
    t.close()


def _no_process_matching(token: str, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", token], capture_output=True).stdout
        if not found:
            return True
        time.sleep(0.1)
    return False


class _Zeros(io.RawIOBase):
    """A file-like stdin of ``size`` zero bytes that never exists in memory at once."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return b"\0" * n


def test_exit_status(transport):
    assert transport.run("exit 3").exit_status == 3
    assert transport.run(["true"]).ok
    assert not transport.run(["false"]).ok


def test_stdout_and_stderr_captured(transport):
    result = transport.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert result.host == transport.host


def test_list_commands_are_quoted(transport):
    result = transport.run(["printf", "%s|", "a b", "it's", "$HOME", ";echo x"])
    assert result.stdout == b"a b|it's|$HOME|;echo x|"


def test_stdin_bytes_and_file(transport):
    assert transport.run(["cat"], stdin=b"payload\x00\xff").stdout == b"payload\x00\xff"
    assert transport.run("wc -c", stdin=io.BytesIO(b"x" * 3_000_000)).text.strip() == "3000000"


def test_stdin_source_failure_kills_command(transport):
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            raise OSError("source broke")

    with pytest.raises(OSError, match="source broke"):
        transport.run("cat >/dev/null; echo consumed", stdin=Broken())


def test_check_raises_with_stderr_tail(transport):
    with pytest.raises(TransportError, match=r"exit status 4: first \| second") as info:
        transport.run("echo first >&2; echo second >&2; exit 4", check=True)
    assert transport.host in str(info.value)


def test_env_passed_without_command_line(transport):
    secret = "s3cr3t-" + secrets.token_hex(6)
    value = f'{secret} it\'s "quoted"\nsecond line $HOME `x`'
    result = transport.run('printf %s "$CRM_VALUE"', env={"CRM_VALUE": value})
    assert result.text == value
    listing = transport.run("ps -eo args", env={"CRM_SECRET": secret})
    assert listing.ok and secret not in listing.text


def test_env_and_stdin_payload_together(transport):
    result = transport.run('printf "%s:" "$A"; wc -c', env={"A": "1"}, stdin=b"12345")
    assert result.text.split() == ["1:5"]


def test_large_stdout_streams_in_bounded_memory(transport):
    size = 200_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with transport.start(f"head -c {size} /dev/zero | cat", stdout="stream") as proc:
        total = 0
        while chunk := proc.read():
            total += len(chunk)
        result = proc.wait(timeout=60)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert (total, result.exit_status, result.stdout) == (size, 0, b"")
    assert grown_mb < 100


def test_stdin_streams_into_command(transport):
    with transport.start(["wc", "-c"], stdout="stream") as proc:
        block = b"\0" * (1 << 20)
        for _ in range(100):
            proc.write(block)
        proc.close_stdin()
        assert proc.read().strip() == b"104857600"
        assert proc.wait(timeout=30).ok
    assert transport.run("wc -c", stdin=_Zeros(5_000_000)).text.strip() == "5000000"


@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_streamed_output_waits_for_a_late_reader(transport, tmp_path, delay):
    """A streamed command writing far more than any buffer, read only after a pause and then
    slowly, loses nothing: the pipe holds it back (it has not finished when reading starts)."""
    count = 7_000_000  # `seq` prints ~55 MB, over three times the collect limit
    expected = hashlib.sha256("".join(f"{i}\n" for i in range(1, count + 1)).encode()).digest()
    marker = tmp_path / "finished"
    with transport.start(f"seq 1 {count}; touch {marker}", stdout="stream") as proc:
        time.sleep(delay)
        assert not marker.exists()  # held back: nobody has read the pipe yet
        digest, total = hashlib.sha256(), 0
        while chunk := proc.read(1 << 16):
            digest.update(chunk)
            total += len(chunk)
            if total < COLLECT_STDOUT_LIMIT:
                time.sleep(0.0002)  # a slow reader, too
        result = proc.wait(timeout=60)
    assert result.ok, result.stderr_tail()
    assert total > COLLECT_STDOUT_LIMIT * 3
    assert digest.digest() == expected
    assert marker.exists()


def test_collected_output_cannot_be_read(transport):
    with transport.start("echo hi", stdout="collect") as proc:
        with pytest.raises(RuntimeError, match="stdout='stream'"):
            proc.read()
        assert proc.wait(timeout=10).stdout == b"hi\n"


def test_collected_output_past_the_limit_is_counted(transport):
    size = COLLECT_STDOUT_LIMIT + 5 * (1 << 20)
    with transport.start(f"head -c {size} /dev/zero", stdout="collect") as proc:
        proc.close_stdin()
        result = proc.wait(timeout=60)
    assert result.ok
    assert len(result.stdout) + result.stdout_dropped == size
    assert len(result.stdout) <= COLLECT_STDOUT_LIMIT


def test_unread_output_does_not_block_the_command(transport):
    with transport.start("cat >/dev/null; seq 1 200000", stdout="collect") as proc:
        proc.write(b"input\n" * 100_000)
        proc.close_stdin()
        result = proc.wait(timeout=20)
    assert result.ok and result.stdout.endswith(b"199999\n200000\n")


def test_timeout_kills_the_whole_command(transport):
    token = f"crmtok{secrets.token_hex(4)}"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        transport.run(f"sleep 30 | cat; echo {token}", timeout=1)
    assert time.monotonic() - started < 4
    message = str(info.value)
    assert transport.host in message and "sleep 30" in message and "1s" in message
    assert _no_process_matching(token)


def test_wait_timeout_on_started_command(transport):
    token = f"crmtok{secrets.token_hex(4)}"
    with (
        transport.start(f"sleep 30; echo {token}", stdout="stream") as proc,
        pytest.raises(CommandTimeout),
    ):
        proc.wait(timeout=0.5)
    assert _no_process_matching(token)


def test_leaving_start_block_kills_command(transport):
    token = f"crmtok{secrets.token_hex(4)}"
    with transport.start(f"sleep 30; echo {token}", stdout="collect"):
        pass
    assert _no_process_matching(token)


def test_concurrent_commands_on_one_transport(transport):
    def work(i: int) -> bytes:
        return transport.run(["sh", "-c", f"sleep 0.2; echo {i}"], check=True).stdout

    with ThreadPoolExecutor(10) as pool:
        outputs = list(pool.map(work, range(10)))
    assert outputs == [f"{i}\n".encode() for i in range(10)]


def test_put_get_round_trip(transport, tmp_path):
    data = os.urandom(3_000_000)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    remote = tmp_path / "remote" / "copy.bin"
    remote.parent.mkdir()
    transport.put(str(source), str(remote), mode=0o640)
    assert (remote.stat().st_mode & 0o777) == 0o640
    assert sorted(os.listdir(remote.parent)) == ["copy.bin"]  # no temp file left
    back = tmp_path / "back.bin"
    transport.get(str(remote), str(back))
    assert back.read_bytes() == data


def test_put_into_missing_directory_fails_clearly(transport, tmp_path):
    source = tmp_path / "f"
    source.write_bytes(b"x")
    with pytest.raises(TransportError, match=transport.host):
        transport.put(str(source), str(tmp_path / "missing" / "f"))


KILLED_RUNNER = """
import sys, time
from crmmaint.transport.local import LocalTransport
t = LocalTransport("local")
with t.start(["sleep", sys.argv[1]], stdout="stream") as proc:
    print("started", flush=True)
    time.sleep(60)
"""


def test_a_killed_crmmaint_leaves_no_command_running():
    """kill -9 of the process that started a command (a backup's pg_dump, tar, psql): the
    command dies with it instead of running on in its own session."""
    seconds = f"{300 + secrets.randbelow(10_000)}.{secrets.randbelow(1000):03d}"
    runner = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUNNER, seconds], stdout=subprocess.PIPE, text=True
    )
    try:
        assert runner.stdout.readline().strip() == "started"
        assert not _no_process_matching(f"sleep {seconds}", within=0.2)
    finally:
        runner.kill()
        runner.wait(10)
        runner.stdout.close()
    assert _no_process_matching(f"sleep {seconds}")


def test_run_keeps_a_bounded_output_and_says_when_it_overflowed(transport):
    """run() is for small outputs: one far larger fails clearly instead of filling memory."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TransportError, match="exceeded 64 MiB by 127 MiB and was not kept"):
        transport.run("head -c 200000000 /dev/zero")
    # kept: 64 MiB and its join; all of it would be 200 MB and its join
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 250


def test_stderr_tail_says_a_repeated_line_once() -> None:
    """redis-cli prints "Could not connect …" twice: a failure's message says it once; lines
    that differ, or repeat later, stay."""
    from crmmaint.transport.base import CommandResult

    err = b"Could not connect: refused\nCould not connect: refused\nother\nCould not connect: refused\n"
    result = CommandResult("h", "redis-cli ping", 1, b"", err, 0.1)
    assert result.stderr_tail() == (
        "Could not connect: refused | other | Could not connect: refused"
    )
