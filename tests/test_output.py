"""What crmmaint prints, as users see it from the installed program: colour only where it may
be (a terminal without ``NO_COLOR``), tables on a terminal, tab-separated lines in a pipe, JSON
with ``--json`` (``argv`` a list), sizes in IEC units, and each failure said once."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from clirun import BIN, run_cli
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.reporting.console import tsv_cell

#: SGR parameters that set a colour (foreground, background, bright, 256/true colour); bold
#: (1) and italic (3) are not colour, and NO_COLOR lets them stay.
_COLOUR_PARAMS = {*range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)}
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
#: A size as crmmaint prints it.
_SIZE = r"\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB|PiB)"


def colours(text: str) -> list[str]:
    """The ANSI escape sequences in ``text`` that set a colour."""
    found = []
    for m in _SGR.finditer(text):
        params = [int(p) for p in m.group(1).split(";") if p]
        if any(p in _COLOUR_PARAMS for p in params):
            found.append(m.group(0))
    return found


def on_tty(*args: str, no_color: str | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run ``crmmaint ARGS`` with stdout and stderr on a pseudo-terminal, as a user at a
    terminal does; ``no_color``: the value of ``NO_COLOR`` (``None``: unset)."""
    import pty

    env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm-256color"}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    if no_color is not None:
        env["NO_COLOR"] = no_color
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), *args], stdin=child, stdout=child, stderr=child, env=env
    )
    os.close(child)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([parent], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(parent, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            out += data
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(parent)
    return code, out.decode("utf-8", "replace")


def cli(*args: str) -> tuple[int, str, str]:
    done = run_cli(*args)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo estate with a daily and a weekly run: two runs in the journal, two
    backups (one drilled) in the repository. Returns its inventory."""
    where = tmp_path_factory.mktemp("demo") / "estate"
    done = run_cli("demo", "--dir", str(where), "--rows", "2000", "--playbooks", "daily,weekly")
    assert done.returncode == 0, done.stdout + done.stderr
    return where / "inventory.yml"


# --- NO_COLOR and terminals ------------------------------------------------------------------

#: Commands that print a rich table on a terminal; the ones with a status column colour it.
LISTINGS = {
    "history": (["history"], True),
    "show": (["show", "1"], True),
    "backups list": (["backups", "list"], False),
    "verify": (["verify"], True),
    "prune": (["prune", "--check"], True),
}


@pytest.mark.parametrize("name", list(LISTINGS))
def test_no_color_turns_colour_off_on_a_terminal(demo: Path, name: str) -> None:
    args, coloured = LISTINGS[name]
    code, plain = on_tty(*args, "-i", str(demo), no_color="1")
    assert code in (0, 1), plain
    assert "───" in plain, plain  # still a table: NO_COLOR is about colour, not layout
    assert colours(plain) == [], plain
    code, styled = on_tty(*args, "-i", str(demo))
    assert "───" in styled, styled
    if coloured:
        assert colours(styled), styled


def test_an_empty_no_color_leaves_colour_on(demo: Path) -> None:
    """no-color.org: only a NO_COLOR that is set and not empty turns colour off."""
    _, out = on_tty("history", "-i", str(demo), no_color="")
    assert colours(out), out


def test_no_color_holds_for_a_run_and_its_live_lines(demo: Path) -> None:
    code, out = on_tty("run", "daily", "-i", str(demo), no_color="1")
    assert code in (0, 1), out
    assert "step" in out and colours(out) == [], out


def test_a_pipe_gets_no_escape_codes(demo: Path) -> None:
    for args, _ in LISTINGS.values():
        code, out, err = cli(*args, "-i", str(demo))
        assert code in (0, 1), out + err
        assert "\x1b" not in out + err, out + err


# --- tables on a terminal, tab-separated lines in a pipe, JSON with --json --------------------


@pytest.mark.parametrize(
    ("args", "header"),
    [
        (["history"], "run\tplaybook\tstarted\tduration\tstatus\tcheck\tuser"),
        (["backups", "list"], "id\tsource\thost\ttime\tsize\tnew\tdedup\tduration\tdrilled"),
        (["show", "2"], "step\ttask\ttarget\tstatus\tmessage\ttime"),
    ],
)
def test_listings_are_tab_separated_in_a_pipe(demo: Path, args: list[str], header: str) -> None:
    code, out, err = cli(*args, "-i", str(demo))
    assert code == 0, err
    lines = out.splitlines()
    assert header in lines, out
    rows = lines[lines.index(header) + 1 :]
    assert rows and all(row.count("\t") == header.count("\t") for row in rows), out
    assert "───" not in out and "│" not in out


@pytest.mark.parametrize(("args", "kind"), [(["verify"], "ok"), (["prune", "--check"], "ok")])
def test_run_commands_print_one_plain_line_per_result_in_a_pipe(
    demo: Path, args: list[str], kind: str
) -> None:
    code, out, _ = cli(*args, "-i", str(demo))
    assert code == 0, out
    assert "───" not in out and "│" not in out
    assert any(line.startswith(f"  {kind} ") for line in out.splitlines()), out


@pytest.mark.parametrize(
    "args", [["history"], ["show", "last"], ["backups", "list"], ["verify"], ["prune", "--check"]]
)
def test_json_is_one_document(demo: Path, args: list[str]) -> None:
    code, out, _ = cli(*args, "-i", str(demo), "--json")
    assert code == 0, out
    json.loads(out)


# --- argv in JSON --------------------------------------------------------------------------


def test_history_and_show_give_argv_as_a_list(demo: Path) -> None:
    _, out, _ = cli("history", "-i", str(demo), "--json")
    runs = json.loads(out)
    assert runs and all(isinstance(r["argv"], list) for r in runs), out
    assert {tuple(r["argv"]) for r in runs} >= {("demo", "daily"), ("demo", "weekly")}
    _, out, _ = cli("show", str(runs[-1]["id"]), "-i", str(demo), "--json")
    assert json.loads(out)["argv"] == runs[-1]["argv"]


def test_argv_of_runs_already_in_a_journal_reads_as_a_list(tmp_path: Path) -> None:
    """Runs stored as earlier versions stored them (argv as JSON text), and rows holding no
    JSON list at all, read back as lists."""
    from crmmaint.journal import Journal

    path = tmp_path / "journal.sqlite"
    Journal(path).close()  # the schema
    db = sqlite3.connect(path)
    for argv in ('["crmmaint", "run", "daily"]', None, "run weekly", '"one string"'):
        db.execute(
            "INSERT INTO runs (playbook, started, finished, status, user, machine, argv)"
            " VALUES ('daily', 1.0, 2.0, 'ok', 'ops', 'db1', ?)",
            (argv,),
        )
    db.commit()
    db.close()
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump({"settings": {"journal": str(path)}, "hosts": {"local": {}}})
    )
    code, out, err = cli("history", "-i", str(inventory), "--json")
    assert code == 0, err
    by_id = {r["id"]: r["argv"] for r in json.loads(out)}
    assert by_id == {
        1: ["crmmaint", "run", "daily"],
        2: [],
        3: ["run weekly"],
        4: ["one string"],
    }
    code, out, err = cli("show", "1", "-i", str(inventory), "--json")
    assert code == 0, err
    assert json.loads(out)["argv"] == ["crmmaint", "run", "daily"]


# --- sizes ---------------------------------------------------------------------------------


def test_sizes_are_printed_in_iec_units_and_metrics_stay_bytes(demo: Path) -> None:
    _, out, _ = cli("backups", "list", "-i", str(demo), "--json")
    listed = json.loads(out)
    sizes = {b["id"]: b["size"] for b in listed}
    assert all(isinstance(s, int) for s in sizes.values()), listed

    _, out, _ = cli("backups", "list", "-i", str(demo))
    rows = [line.split("\t") for line in out.splitlines()[1:]]
    for row in rows:
        assert re.fullmatch(_SIZE, row[4]) and re.fullmatch(_SIZE, row[5]), row

    code, out, err = cli("verify", "--read-data", "-i", str(demo))
    assert code == 0, out + err
    assert re.search(rf"\b{_SIZE} read\b", out), out

    code, out, err = cli("backup", "-i", str(demo), "--json")
    assert code in (0, 1), out + err
    results = json.loads(out)["results"]
    for r in results:
        assert isinstance(r["metrics"]["size_bytes"], int), r  # raw bytes for machines
        assert re.search(rf": {_SIZE}, {_SIZE} new ", r["message"]), r["message"]

    _, show, _ = cli("show", "last", "-i", str(demo))
    for text in (show, *(cli(a, "-i", str(demo))[1] for a in ("verify", "prune"))):
        assert not re.search(r"\d bytes\b", text), text
        assert not re.search(r"\b0\.0+ [KMGTP]i?B\b", text), text


# --- each failure said once ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _failing_estate(tmp_path: Path, demo: Path) -> Path:
    """The demo's inventory plus a PostgreSQL database nothing listens for and a repository
    whose folder does not exist."""
    inv = yaml.safe_load(demo.read_text())
    root = demo.parent
    inv["databases"]["crm"]["path"] = str(root / inv["databases"]["crm"]["path"])
    inv["databases"]["down"] = {
        "engine": "postgresql",
        "host": "local",
        "address": "127.0.0.1",
        "port": _free_port(),
        "name": "crm",
        "user": "postgres",
    }
    inv["filesets"]["attachments"]["paths"] = [str(root / "attachments")]
    repo = inv["repositories"]["local"]
    for key in ("write_key", "identity"):
        repo[key] = str(root / repo[key])
    repo["recipients"] = [f"file:{root / 'keys/ops.pub'}"]
    repo["url"] = str(root / repo["url"])
    inv["repositories"]["gone"] = {**repo, "url": str(tmp_path / "no-such-repo")}
    inv["settings"] = {"journal": str(tmp_path / "journal.sqlite")}
    inv["hosts"]["local"]["vars"]["log_paths"] = [str(root / "logs/crm.log")]
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


def _said_once(args: list[str]) -> tuple[str, str]:
    """Run ``crmmaint ARGS`` as a cron job would (no --json, output piped) and check that each
    failed result's message is printed once, on its result line, and nowhere else (no log
    line repeats it). ``--json`` first says which steps and targets fail."""
    code, out, err = cli(*args, "--json")
    assert code not in (0, 1), out + err
    failed = [
        (r["step"], r["target"]) for r in json.loads(out)["results"] if r["status"] == "failed"
    ]
    assert failed, out
    code, out, err = cli(*args)
    both = out + err
    messages = []
    for step, target in failed:
        prefix = f"  failed   {step} {target}: "
        line = next((x for x in out.splitlines() if x.startswith(prefix)), None)
        assert line is not None, both
        messages.append(re.sub(r" \(\d+\.\ds( after \d+ attempts)?\)$", "", line[len(prefix) :]))
    for message, targets in Counter(messages).items():  # once per target it failed on
        assert both.count(message) == targets, both
    assert "WARNING" not in err and "ERROR" not in err, err
    return out, err


@pytest.mark.parametrize(
    "args",
    [["--database", "down"], ["--repository", "gone"]],
    ids=["database down", "repository missing"],
)
def test_a_failing_backup_says_its_failure_once(
    tmp_path: Path, demo: Path, args: list[str]
) -> None:
    inventory = _failing_estate(tmp_path, demo)
    _said_once(["backup", "-i", str(inventory), *args])


def test_a_failing_run_says_each_failure_once(tmp_path: Path, demo: Path) -> None:
    """A command that fails, one past its own timeout and one past its step's timeout."""
    inventory = _failing_estate(tmp_path, demo)
    playbook = tmp_path / "failing.yml"
    playbook.write_text(
        yaml.safe_dump(
            {
                "name": "failing",
                "defaults": {"on_failure": "continue"},
                "steps": [
                    {
                        "name": "exits 3",
                        "task": "shell.command",
                        "hosts": "all",
                        "with": {"commands": ["echo broke >&2; exit 3"]},
                    },
                    {
                        "name": "command timeout",
                        "task": "shell.command",
                        "hosts": "all",
                        "with": {"commands": ["sleep 30"], "timeout": "1s"},
                    },
                    {
                        "name": "step timeout",
                        "task": "shell.command",
                        "hosts": "all",
                        "timeout": "1s",
                        "with": {"commands": ["sleep 30"]},
                    },
                    {
                        "name": "database down",
                        "task": "health.database",
                        "database": "down",
                    },
                ],
            }
        )
    )
    out, _ = _said_once(["run", str(playbook), "-i", str(inventory)])
    assert out.count("failed ") >= 4, out


@given(st.text())
def test_a_tsv_cell_is_one_printable_field(text: str) -> None:
    """Whatever a name or message holds, its TSV cell has no tab, newline or other control
    or format character, and distinct texts stay distinct."""
    cell = tsv_cell(text)
    assert cell.isprintable() and "\t" not in cell and "\n" not in cell
    assert tsv_cell(text + "\t") != tsv_cell(text + "\\t")


@given(st.text(max_size=40), st.text(max_size=20))
def test_a_result_line_shows_hostile_text_without_obeying_it(message: str, name: str) -> None:
    """A log line, a server's error or a step name holding ESC sequences, U+202E or rich's
    markup brackets: printed as escapes and literally, never as control or markup."""
    import io
    from types import SimpleNamespace

    from crmmaint.reporting.console import ConsoleReporter

    out = io.StringIO()
    reporter = ConsoleReporter(out)
    step = SimpleNamespace(name=name, task="logs.scan")
    target = SimpleNamespace(label=f"{name}@local")
    result = SimpleNamespace(status="warning", message=message)
    reporter.on_step_start(step, [target])
    reporter.on_result(step, target, result, 0.1, 1)
    text = out.getvalue()
    assert all(line.isprintable() for line in text.splitlines()), text
    assert len(text.splitlines()) == 2
