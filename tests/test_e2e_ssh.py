"""Playbooks over real sshd hosts: fan-out, an unreachable host, a changed host key, check mode,
timeouts, retries and failure policy, and what lands in the journal."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from crmmaint.inventory import load_inventory
from crmmaint.journal import Journal
from crmmaint.playbook import load_playbook_text, plan
from crmmaint.playbook.runner import Runner
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import REGISTRY, Param, TaskContext, task


def write_inventory(tmp_path: Path, hosts, **extra) -> Path:
    doc = {
        "hosts": {
            h.name: {
                "address": h.address,
                "port": h.port,
                "user": h.user,
                "identity_file": str(h.identity_file),
                "known_hosts": str(h.known_hosts),
                "connect_timeout": 3,
                "groups": ["app"],
            }
            for h in hosts
        },
        **extra,
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_book(
    inv_path: Path, steps: list[dict], tmp_path: Path, *, check: bool = False, forks: int = 10
):
    inv = load_inventory(inv_path)
    text = yaml.safe_dump({"name": "e2e", "window": "adhoc", "steps": steps})
    book = load_playbook_text(text, inv)
    journal = Journal(tmp_path / "journal.sqlite")
    runner = Runner(inv, journal, forks=forks, check=check)
    summary = runner.run(book, plan(book, inv))
    return summary, journal


def by_target(summary):
    return {r.target: r for r in summary.results}


def test_health_fans_out_over_six_hosts_and_journals_every_result(sshd_hosts, tmp_path):
    inv = write_inventory(tmp_path, sshd_hosts)
    steps = [
        {
            "name": "host health",
            "task": "health.host",
            "hosts": "app",
            "with": {"load_warn": 1000.0},
        },
        {
            "name": "uptime",
            "task": "shell.command",
            "hosts": "all",
            "with": {"commands": ["cat /proc/uptime"]},
        },
    ]
    summary, journal = run_book(inv, steps, tmp_path)
    assert len(summary.results) == 2 * len(sshd_hosts)
    assert {r.result.status for r in summary.results} <= {Status.OK, Status.WARNING, Status.CHANGED}
    run = journal.run(summary.run_id)
    assert run is not None and run["status"] == str(summary.status)
    assert {r["target"] for r in run["results"]} == {h.name for h in sshd_hosts}
    health = [r for r in run["results"] if r["task"] == "health.host"]
    assert all("load1" in r["metrics"] for r in health)


def test_stopped_sshd_fails_within_timeout_and_others_finish(sshd_factory, sshd_hosts, tmp_path):
    down = sshd_factory()
    down.stop()
    inv = write_inventory(tmp_path, [*sshd_hosts[:3], down])
    steps = [
        {"name": "uptime", "task": "shell.command", "hosts": "all", "with": {"commands": ["true"]}}
    ]
    started = time.monotonic()
    summary, _ = run_book(inv, steps, tmp_path)
    elapsed = time.monotonic() - started
    results = by_target(summary)
    assert results[down.name].result.status is Status.FAILED
    assert down.address in results[down.name].result.message
    for host in sshd_hosts[:3]:
        assert results[host.name].result.status is not Status.FAILED
    assert elapsed < 30  # a generous bound: connect_timeout is 3 s
    assert summary.exit_code == 2


def test_changed_host_key_is_refused(sshd_factory, tmp_path):
    host = sshd_factory()
    host.rotate_host_key()
    inv = write_inventory(tmp_path, [host])
    steps = [
        {"name": "uptime", "task": "shell.command", "hosts": "all", "with": {"commands": ["true"]}}
    ]
    summary, _ = run_book(inv, steps, tmp_path)
    result = summary.results[0].result
    assert result.status is Status.FAILED
    assert "changed" in result.message.lower()


def test_check_mode_runs_nothing_on_hosts(sshd_hosts, tmp_path):
    marker = f"/tmp/crmmaint-check-{time.time_ns()}"
    inv = write_inventory(tmp_path, sshd_hosts[:2])
    steps = [
        {
            "name": "touch",
            "task": "shell.command",
            "hosts": "all",
            "with": {"commands": [f"touch {marker}"]},
        }
    ]
    summary, _ = run_book(inv, steps, tmp_path, check=True)
    assert all(r.result.status is Status.OK for r in summary.results)
    assert not Path(marker).exists()


def test_timeout_retries_and_failure_policy(sshd_hosts, tmp_path):
    inv = write_inventory(tmp_path, sshd_hosts[:2])
    counter = tmp_path / "attempts"
    steps = [
        {
            "name": "hangs",
            "task": "shell.command",
            "hosts": sshd_hosts[0].name,
            "timeout": "2s",
            "with": {"commands": ["sleep 30"]},
            "on_failure": "continue",
        },
        {
            "name": "flaky",
            "task": "shell.command",
            "hosts": sshd_hosts[1].name,
            "retries": 2,
            "retry_delay": "0.1s",
            # fails on the first two attempts, succeeds on the third
            "with": {"commands": [f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3"]},
        },
        {
            "name": "fails",
            "task": "shell.command",
            "hosts": sshd_hosts[1].name,
            "with": {"commands": ["exit 3"]},
            "on_failure": "stop",
        },
        {"name": "never", "task": "shell.command", "hosts": "all", "with": {"commands": ["true"]}},
    ]
    started = time.monotonic()
    summary, _ = run_book(inv, steps, tmp_path)
    assert time.monotonic() - started < 25
    rows = {r.step: r for r in summary.results}
    assert rows["hangs"].result.status is Status.FAILED
    # The step's 2 s run out either in the runner ("timed out after 2s") or, when the command
    # got what was left of them once the connection was made (1.8 s on a busy machine), in the
    # command ("did not finish within 1.8s").
    message = rows["hangs"].result.message
    assert "timed out after 2s" in message or "did not finish within" in message, message
    assert rows["flaky"].attempts == 3
    assert rows["flaky"].result.status is not Status.FAILED
    assert rows["fails"].result.status is Status.FAILED
    assert rows["never"].result.status is Status.SKIPPED
    assert summary.exit_code == 2


@pytest.mark.parametrize("forks", [1, 6])
def test_forks_bound_parallel_work(sshd_hosts, tmp_path, forks):
    inv = write_inventory(tmp_path, sshd_hosts)
    steps = [
        {
            "name": "sleep",
            "task": "shell.command",
            "hosts": "all",
            "with": {"commands": ["sleep 0.5"]},
        }
    ]
    started = time.monotonic()
    summary, _ = run_book(inv, steps, tmp_path, forks=forks)
    elapsed = time.monotonic() - started
    assert summary.exit_code == 0
    if forks == 1:
        assert elapsed >= 0.5 * len(sshd_hosts)


def _gone(token: str, within: float = 5.0) -> bool:
    import subprocess

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not subprocess.run(["pgrep", "-f", token], capture_output=True).stdout:
            return True
        time.sleep(0.1)
    return False


def test_a_timed_out_step_leaves_nothing_running_on_the_host(sshd_hosts, tmp_path):
    """The step's timeout (1s) is shorter than the command's own (60s): the command is killed
    on the SSH host when the step times out, not left to run under PID 1."""
    import secrets

    inv = write_inventory(tmp_path, sshd_hosts[:1])
    token = f"{100 + secrets.randbelow(800)}.{secrets.randbelow(10**6):06d}"
    steps = [
        {
            "name": "hangs",
            "task": "shell.command",
            "hosts": sshd_hosts[0].name,
            "timeout": "1s",
            "with": {"commands": [f"sleep {token}; echo after"], "timeout": "60s"},
        }
    ]
    started = time.monotonic()
    summary, _ = run_book(inv, steps, tmp_path)
    assert time.monotonic() - started < 10
    (row,) = summary.results
    assert row.result.status is Status.FAILED
    assert _gone(f"sleep {token}")


@task("test.stuck_with_a_command", targets=("hosts",))
def _stuck(ctx: TaskContext) -> TaskResult:
    """Starts a command, then hangs in Python without looking at its deadline."""
    with ctx.transport.start(["sleep", ctx.params.get("token", "77")], stdout="stream"):
        STUCK.wait(30)
    return TaskResult.ok()


STUCK = threading.Event()


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_the_runner_kills_what_a_stuck_task_started(sshd_hosts, tmp_path, where):
    import secrets

    token = f"{1000 + secrets.randbelow(8000)}.{secrets.randbelow(10**6):06d}"
    if where == "ssh":
        inv, target = write_inventory(tmp_path, sshd_hosts[:1]), sshd_hosts[0].name
    else:
        inv = tmp_path / "inventory.yml"
        inv.write_text(yaml.safe_dump({"hosts": {"here": {"connection": "local"}}}))
        target = "here"
    REGISTRY["test.stuck_with_a_command"].params["token"] = Param(str, default=token)
    STUCK.clear()
    try:
        summary, _ = run_book(
            inv,
            [{"name": "stuck", "task": "test.stuck_with_a_command", "hosts": target,
              "timeout": "1s"}],
            tmp_path,
        )  # fmt: skip
        assert summary.results[0].result.status is Status.FAILED
        assert _gone(f"sleep {token}")
    finally:
        STUCK.set()
        del REGISTRY["test.stuck_with_a_command"].params["token"]
