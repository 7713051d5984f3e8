"""Progress of long transfers: the byte meter tasks count with (throttled, thread-safe), the
reporters that show it (a live bar with a total, throughput and time left on a TTY, a plain line
every half minute or nothing when piped), and the CLI end to end under a pseudo-terminal: a
restore and a backup (whose total is the previous backup's size, estimated) of a SQLite
database, a drill, and the piped and ``--json`` cases staying clean."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from estates import estate_inventory
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.playbook import MultiReporter
from crmmaint.reporting.console import (
    PLAIN_PROGRESS_EVERY,
    ConsoleReporter,
    TransferProgressReporter,
    grown_total,
    progress_line,
)
from crmmaint.tasks.api import ByteMeter
from crmmaint.tasks.restore import IterReader
from crmmaint.units import parse_size

BIN = Path(sys.executable).parent
MIB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


STEP = SimpleNamespace(name="restore")
TARGET = SimpleNamespace(label="crm@local")
RESULT = SimpleNamespace(status="changed", message="restored")


# --- the meter ------------------------------------------------------------------------------


def test_meter_reports_at_most_once_per_interval_and_the_total_at_once():
    clock, sent = FakeClock(), []
    meter = ByteMeter(lambda *a: sent.append(a), 100 * MIB, interval=0.25, clock=clock)
    for _ in range(99):  # 99 MiB in 0.99 s, one MiB every 10 ms
        meter.add(MIB)
        clock.now += 0.01
    assert len(sent) == 4  # at 0, 0.25, 0.5, 0.75 s
    assert sent[0] == (MIB, 100 * MIB, False)
    meter.add(MIB)  # the total reached: reported at once, whatever the time
    assert sent[-1] == (100 * MIB, 100 * MIB, False)
    meter.add(MIB)  # a range read twice at a seam: capped at the exact total, not repeated
    assert sent[-1] == (100 * MIB, 100 * MIB, False) and len(sent) == 5


def test_meter_estimate_is_reported_uncapped_and_flush_sends_the_last_count():
    clock, sent = FakeClock(), []
    meter = ByteMeter(lambda *a: sent.append(a), 10, estimated=True, clock=clock)
    meter.set(5)
    meter.set(25)  # bigger than the estimate, within the interval: not yet
    assert sent == [(5, 10, True)]
    meter.flush()
    assert sent[-1] == (25, 10, True)


def test_meter_without_a_total_is_no_estimate_and_without_a_reporter_only_counts():
    sent: list[tuple] = []
    meter = ByteMeter(lambda *a: sent.append(a), 0, estimated=True)  # an empty last backup
    meter.add(3)
    assert sent == [(3, None, False)]
    quiet = ByteMeter(None, 10)
    quiet.add(4)
    quiet.flush()
    assert quiet.done == 4


def test_meter_counts_every_byte_from_several_threads():
    meter = ByteMeter(lambda *a: None, None, interval=0.0)

    def read() -> None:
        for _ in range(5000):
            meter.add(3)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert meter.done == 4 * 5000 * 3


def test_a_restore_reader_counts_what_the_engine_takes_and_flushes_at_its_end():
    """The ranges of a parallel load may leave the count a few bytes short of the total (the
    COPY terminators at the seams are not read): each reader's end reports the last count."""
    clock, sent = FakeClock(), []
    meter = ByteMeter(lambda *a: sent.append(a), 1000, interval=60.0, clock=clock)
    reader = IterReader(iter([b"x" * 400, b"y" * 594]), meter)
    got = b""
    while chunk := reader.read(100):
        got += chunk
    assert len(got) == 994 and meter.done == 994
    assert sent == [(100, 1000, False), (994, 1000, False)]
    assert reader.read(100) == b"" and len(sent) == 2  # flushed once


# --- pure reporter logic --------------------------------------------------------------------


@given(st.integers(1, 10**12), st.lists(st.integers(0, 10**6), max_size=50))
def test_grown_total_never_shrinks_and_keeps_room_past_the_estimate(estimate, steps):
    shown, done = estimate, 0
    for step in steps:
        done += step
        new = grown_total(done, shown)
        assert new >= shown and new >= done
        assert new == estimate or new > done  # grown only when passed, then with room
        shown = new


def test_progress_line_says_how_far_how_fast_and_how_long():
    line = progress_line("restore crm@local", 30 * MIB, 120 * MIB, False, 10.0)
    assert line == (
        "  progress restore crm@local: 30 MiB of 120 MiB (25%), 3 MiB/s, about 30s left"
    )
    line = progress_line("backup crm@local", 30 * MIB, 120 * MIB, True, 10.0)
    assert "30 MiB of about 120 MiB (25%)" in line
    line = progress_line("backup crm@local", 130 * MIB, 120 * MIB, True, 10.0)
    assert "130 MiB, past the estimated 120 MiB, 13 MiB/s" in line and "left" not in line
    assert progress_line("backup x", MIB, None, False, 0.0).endswith(": 1 MiB, 0 B/s")


def test_piped_console_prints_a_line_per_half_minute_and_nothing_for_short_transfers():
    out, clock = io.StringIO(), FakeClock()
    reporter = ConsoleReporter(out, clock=clock)
    reporter.on_target_start(STEP, TARGET)
    for second in range(20):  # a 20 s restore: no line
        reporter.on_progress(STEP, TARGET, second * MIB, 100 * MIB)
        clock.now += 1
    assert out.getvalue() == ""
    assert PLAIN_PROGRESS_EVERY == 30.0
    for tick in range(4 * 100):  # another 100 s, four reports a second
        reporter.on_progress(STEP, TARGET, (20 + tick // 4) * MIB, 200 * MIB)
        clock.now += 0.25
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at 30, 60 and 90 s of 120: never a flood
    assert lines[0] == (
        "  progress restore crm@local: 30 MiB of 200 MiB (15%), 1 MiB/s, about 2m 50s left"
    )
    assert all(line.startswith("  progress restore crm@local: ") for line in lines)
    reporter.on_result(STEP, TARGET, RESULT, 120.0, 1)
    clock.now += 60
    reporter.on_progress(STEP, TARGET, 500 * MIB, 200 * MIB)  # an abandoned thread
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[3].startswith("  changed  restore crm@local: restored")


def test_tty_bar_has_total_speed_and_time_left_and_grows_a_passed_estimate():
    out = FakeTTY()
    reporter = ConsoleReporter(out)
    step = SimpleNamespace(name="backup")
    reporter.on_progress(step, TARGET, 10 * MIB, 40 * MIB, True)
    reporter.on_progress(step, TARGET, 20 * MIB, 40 * MIB, True)
    (task,) = reporter._live().tasks
    assert (task.completed, task.total, task.fields["estimated"]) == (20 * MIB, 40 * MIB, True)
    reporter.on_progress(step, TARGET, 50 * MIB, 40 * MIB, True)  # bigger than its estimate
    assert task.total == 55 * MIB and task.completed == 50 * MIB
    reporter.on_progress(step, TARGET, 52 * MIB, 40 * MIB, True)
    assert task.total == 55 * MIB  # grown once, then kept until passed again
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "backup crm@local" in drawn and "estimated" in drawn and "/ 40 MiB" in drawn
    reporter.on_result(step, TARGET, RESULT, 3.0, 1)
    assert reporter._progress is None  # the bar is gone before the result line
    assert drawn.count("changed") == 0 and "changed" in out.getvalue()


def test_transfer_reporter_shows_only_bars_on_a_tty_and_nothing_when_piped():
    piped = io.StringIO()
    reporter = TransferProgressReporter(piped)
    for _ in range(3):
        reporter.on_progress(STEP, TARGET, MIB, 2 * MIB)
    reporter.on_result(STEP, TARGET, RESULT, 1.0, 1)
    reporter.on_run_end(None)
    assert piped.getvalue() == ""

    tty = FakeTTY()
    reporter = TransferProgressReporter(tty)
    both = MultiReporter(reporter)  # as `restore --json` combines it with the JSON writer
    both.on_progress(STEP, TARGET, MIB, 2 * MIB, False)
    assert "1 MiB / 2 MiB" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty.getvalue())
    both.on_result(STEP, TARGET, RESULT, 1.0, 1)
    assert reporter._progress is None and "restored" not in tty.getvalue()
    reporter.close()
    reporter.close()  # idempotent
    both.on_progress(STEP, SimpleNamespace(label="late@local"), MIB, 2 * MIB, False)
    assert reporter._progress is None  # a task thread winding down after close: not shown


# --- end to end under a pseudo-terminal -----------------------------------------------------

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def run_tty(
    args: list[str],
    *,
    stdout_tty: bool = True,
    stderr_tty: bool = True,
    interrupt_on: re.Pattern[bytes] | None = None,
):
    """Run ``crmmaint ARGS`` with stdout and/or stderr on pseudo-terminals of their own
    (160 columns), the others piped; returns (exit code, stdout bytes, stderr bytes).
    ``interrupt_on``: send SIGINT (Ctrl-C) once stderr shows it."""
    ends: dict[str, tuple[int, int]] = {}
    for name, wanted in (("out", stdout_tty), ("err", stderr_tty)):
        if wanted:
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
            ends[name] = (master, slave)
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), *args],
        stdin=subprocess.DEVNULL,
        stdout=ends["out"][1] if "out" in ends else subprocess.PIPE,
        stderr=ends["err"][1] if "err" in ends else subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        | {"TERM": "xterm-256color"},
    )
    got = {name: b"" for name in ("out", "err")}
    readers = {master: name for name, (master, slave) in ends.items()}
    for _, slave in ends.values():
        os.close(slave)
    if proc.stdout is not None:
        readers[proc.stdout.fileno()] = "out"
    if proc.stderr is not None:
        readers[proc.stderr.fileno()] = "err"
    while readers:
        ready, _, _ = select.select(list(readers), [], [], 300)
        assert ready, "crmmaint gave no output for 300 s"
        for fd in ready:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # EIO: the pseudo-terminal's other end closed
                data = b""
            if data:
                got[readers[fd]] += data
            else:
                del readers[fd]
        if interrupt_on is not None and interrupt_on.search(got["err"]):
            proc.send_signal(signal.SIGINT)
            interrupt_on = None
    code = proc.wait(timeout=60)
    for master, _ in ends.values():
        os.close(master)
    return code, got["out"], got["err"]


def frames(raw: bytes) -> list[str]:
    """What a terminal showed, redraw by redraw: escape codes dropped, split at \\r and \\n."""
    text = ANSI.sub(b"", raw).decode()
    return [f.strip() for f in re.split(r"[\r\n]+", text) if f.strip()]


BAR = re.compile(r"(\d[\d.]* [KMGT]?i?B) / (\d[\d.]* [KMGT]?i?B)")


def bar_sizes(frame: str) -> tuple[int, int]:
    """(done, total) bytes of a bar's ``146 MiB / 1.2 GiB``, as read back by ``parse_size``."""
    found = BAR.search(frame)
    assert found, frame
    return parse_size(found.group(1)), parse_size(found.group(2))


@pytest.fixture(scope="module")
def big_estate(tmp_path_factory) -> Path:
    """A SQLite CRM of ~40 MB that does not compress (a restore takes long enough to draw),
    a repository with a key, and one backup made piped (its size is the next one's estimate)."""
    home = tmp_path_factory.mktemp("progress")
    db = sqlite3.connect(home / "crm.sqlite")
    db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB)")
    db.executemany(
        "INSERT INTO notes(body) VALUES (?)", ((os.urandom(4000),) for _ in range(10000))
    )
    db.commit()
    db.close()
    (home / "keys").mkdir()
    inv = estate_inventory()
    (home / "inventory.yml").write_text(yaml.safe_dump(inv))
    inv_path = str(home / "inventory.yml")
    for args in (
        ["keys", "generate", "--output", str(home / "keys" / "ops.key")],
        ["repo", "init", "-i", inv_path],
    ):
        done = subprocess.run([str(BIN / "crmmaint"), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    first = subprocess.run(
        [str(BIN / "crmmaint"), "backup", "-i", inv_path], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "progress" not in first.stdout and "━" not in first.stdout  # piped: no bar
    return home


def test_backup_on_a_tty_shows_a_bar_with_the_estimated_total(big_estate):
    code, out, err = run_tty(["backup", "-i", str(big_estate / "inventory.yml")])
    assert code == 0, out + err
    shown = frames(out)
    bars = [f for f in shown if f.startswith("backup databases crm@local") and BAR.search(f)]
    assert bars, shown
    size = (big_estate / "crm.sqlite").stat().st_size
    _, total = bar_sizes(bars[-1])
    assert abs(total - size) < 0.01 * size  # the previous backup's size, as the total
    assert all("estimated" in f for f in bars)
    assert any(f.startswith("changed  crm@local: backup ") for f in shown)  # after the bar


def test_restore_on_a_tty_shows_a_bar_with_total_on_stderr_and_stdout_stays_the_result(
    big_estate,
):
    inv = str(big_estate / "inventory.yml")
    target = big_estate / "tty.sqlite"
    code, out, err = run_tty(["restore", "database:crm@latest", "--to", str(target), "-i", inv])
    assert code == 0, out + err
    bars = [f for f in frames(err) if f.startswith("restore crm@local") and BAR.search(f)]
    assert bars, err
    done, total = bar_sizes(bars[-1])
    assert done == total and abs(total - target.stat().st_size) < 0.01 * total
    assert "estimated" not in err.decode()  # the manifest's size is exact
    assert re.search(r"[KMG]iB/s", bars[-1]) and "left" in bars[-1]
    assert frames(out) == [f for f in frames(out) if f.startswith("restored ")] and frames(out)
    assert b"\x1b[?25h" in err  # the cursor is given back


def test_restore_json_stays_one_clean_document_with_a_bar_on_the_terminal(big_estate):
    inv = str(big_estate / "inventory.yml")
    code, out, err = run_tty(
        [
            "restore",
            "database:crm@latest",
            "--to",
            str(big_estate / "j.sqlite"),
            "-i",
            inv,
            "--json",
        ],
        stdout_tty=False,
    )
    assert code == 0, err
    assert json.loads(out)["results"][0]["status"] == "changed"
    assert any(BAR.search(f) for f in frames(err))


def test_restore_piped_prints_its_result_line_only(big_estate):
    inv = str(big_estate / "inventory.yml")
    done = subprocess.run(
        [str(BIN / "crmmaint"), "restore", "database:crm@latest", "--to",
         str(big_estate / "p.sqlite"), "-i", inv],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr.startswith("journal: "), done.stderr
    assert done.stderr.count("\n") == 1  # no progress bar when piped, the journal line only
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("restored ")


def test_a_restore_failing_mid_stream_ends_with_the_one_error_line(big_estate, tmp_path):
    """A damaged pack found while the bar is up: the bar goes, then `crmmaint: error:` on a
    line of its own, exit 9."""
    import shutil

    copy = tmp_path / "estate"
    shutil.copytree(big_estate, copy)
    packs = sorted((copy / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size)
    packs = [p for p in packs if p.is_file()]
    damaged = packs[len(packs) // 2]  # neither the first chunk read nor a tiny pack
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    code, out, err = run_tty(
        ["restore", "database:crm@latest", "--to", str(copy / "x.sqlite"),
         "-i", str(copy / "inventory.yml")]
    )  # fmt: skip
    assert code == 9, out + err
    shown = frames(err)
    errors = [i for i, line in enumerate(shown) if line.startswith("crmmaint: error: ")]
    assert len(errors) == 1 and "Traceback" not in err.decode(), shown
    assert shown[errors[0] + 1].startswith("journal: "), shown  # then the journal line
    # On a line of its own: the bar's line is cleared (and the cursor shown) right before it.
    assert re.search(rb"\x1b\[2K(\x1b\[\?25h)?\r?crmmaint: error: ", err), err[-400:]
    assert err.count(b"crmmaint: error: ") == 1


def test_an_interrupted_restore_takes_its_bar_away_and_gives_the_cursor_back(big_estate):
    inv = str(big_estate / "inventory.yml")
    code, out, err = run_tty(
        ["restore", "database:crm@latest", "--to", str(big_estate / "i.sqlite"), "-i", inv],
        interrupt_on=re.compile(rb"restore crm@local"),
    )
    if code == 0:  # the restore ended before the signal came: nothing to check
        pytest.skip("the restore finished before it could be interrupted")
    assert code == 130, out + err
    # The bar is cleared and the cursor shown, then the one line; warnings logged meanwhile
    # are printed above the bar, each at the start of a line of its own.
    assert re.search(
        rb"\x1b\[\?25h.*(\x1b\[2K|\n)crmmaint: interrupted: step .restore. cut short on crm@local; run \d+ is journaled as interrupted\r\n$",
        err,
        re.S,
    ), err[-300:]
    for warning in re.finditer(rb"WARNING ", err):
        assert err[: warning.start()].endswith((b"\x1b[2K", b"\n")), err
    assert not (big_estate / "i.sqlite").exists()


def test_drill_on_a_tty_shows_the_restore_bar(big_estate, tmp_path):
    book = tmp_path / "drill.yml"
    book.write_text(
        "name: drill\nsteps:\n  - name: drill crm\n    task: drill.restore\n    database: crm\n"
    )
    code, out, err = run_tty(["run", str(book), "-i", str(big_estate / "inventory.yml")])
    assert code == 0, out + err
    bars = [f for f in frames(out) if f.startswith("drill crm crm@local") and BAR.search(f)]
    assert bars, frames(out)
    _, total = bar_sizes(bars[-1])
    assert total > 30 * 2**20
