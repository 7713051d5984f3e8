"""shell.command on this machine (LocalTransport): order, first failure stops, check mode."""

from __future__ import annotations

import pytest

from crmmaint.inventory import Host, Inventory, Target
from crmmaint.results import Status
from crmmaint.tasks.api import TaskContext, get_task
from crmmaint.transport.local import LocalTransport


def run_task(tmp_path, check: bool = False, **given):
    spec = get_task("shell.command")
    assert spec is not None
    host = Host(name="local", connection="local")
    transport = LocalTransport("local")
    ctx = TaskContext(
        target=Target("hosts", "local", host, host),
        inventory=Inventory(path=str(tmp_path / "inventory.yml"), hosts={"local": host}),
        params=spec.validate_params(given),
        check=check,
        journal=None,
        run_id=None,
        step="shell",
        transport_for=lambda _host: transport,
    )
    return spec.func(ctx)


def test_runs_commands_in_order_and_keeps_output(tmp_path):
    marker = tmp_path / "log"
    res = run_task(
        tmp_path,
        commands=[
            f"echo one >> {marker}",
            f"echo two >> {marker}; cat {marker}",
            "cat /proc/loadavg",
        ],
    )
    assert res.status is Status.OK
    assert res.metrics["commands_run"] == 3
    outputs = [c["stdout"] for c in res.details["commands"]]
    assert outputs[1] == "one\ntwo\n"
    assert len(outputs[2].split()) >= 3
    assert [c["exit_status"] for c in res.details["commands"]] == [0, 0, 0]


def test_first_failure_stops_the_rest(tmp_path):
    marker = tmp_path / "never"
    res = run_task(tmp_path, commands=["true", "echo broken >&2; exit 3", f"touch {marker}"])
    assert res.status is Status.FAILED
    assert "exited 3" in res.message and "broken" in res.message
    assert len(res.details["commands"]) == 2
    assert not marker.exists()


def test_timeout_fails_the_command(tmp_path):
    res = run_task(tmp_path, commands=["sleep 5"], timeout="0.3s")
    assert res.status is Status.FAILED
    assert res.details["commands"][0]["command"] == "sleep 5"


def test_check_mode_runs_nothing(tmp_path):
    marker = tmp_path / "never"
    res = run_task(tmp_path, check=True, commands=[f"touch {marker}", "df -P -k /"])
    assert res.status is Status.OK
    assert res.message.startswith("would run 2 commands")
    assert res.details["commands"] == [f"touch {marker}", "df -P -k /"]
    assert not marker.exists()


@pytest.mark.parametrize("bad", [{}, {"commands": [1, 2]}, {"commands": ["ls"], "shell": "bash"}])
def test_parameters_are_validated(bad):
    spec = get_task("shell.command")
    with pytest.raises((KeyError, ValueError)):
        spec.validate_params(bad)


def test_any_amount_of_output_is_read_and_its_tail_kept(tmp_path):
    """80 MB of output (more than a collected command may hold) is streamed: the command
    succeeds and its last bytes are kept."""
    res = run_task(tmp_path, commands=["head -c 80000000 /dev/zero | tr '\\0' x; echo; echo END"])
    assert res.status is Status.OK, res.message
    out = res.details["commands"][0]["stdout"]
    assert out.endswith("END\n") and len(out) <= 4096
