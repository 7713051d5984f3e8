"""patches.check: the apt and dnf parsers (crmmaint/engines/packages.py) against captured
output in tests/data/patches/, the status decision, and live runs on this Debian machine
through the local transport and over SSH (sshd on 127.0.0.x: same machine, same packages)."""

from __future__ import annotations

import calendar
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_tasks_health import make_ctx, run_task

from crmmaint.engines.host import HostOS
from crmmaint.engines.packages import (
    PackageUpdate,
    PendingUpdates,
    apt_origin_is_security,
    dnf_pending,
    nevra_name,
    parse_apt_simulation,
    parse_dnf_advisory_dates,
    parse_dnf_check_update,
    parse_dnf_security,
    parse_needs_restarting,
    parse_package_facts,
)
from crmmaint.inventory import Host, Inventory
from crmmaint.results import Status
from crmmaint.tasks.patches import SERVER_PACKAGES, highlighted, judge
from crmmaint.transport import LocalTransport, SSHTransport, Transport

DATA = Path(__file__).parent / "data" / "patches"


def capture(name: str) -> str:
    return (DATA / name).read_text()


# --- apt ------------------------------------------------------------------------------------


def test_apt_debian12_updates_security_new_and_kept_back() -> None:
    pending = parse_apt_simulation(capture("apt-debian12.txt"))
    by_name = {u.name: u for u in pending.updates}
    assert len(pending.updates) == 16  # 15 upgraded + 1 newly installed
    assert pending.held == ["redis-server", "redis-tools"]
    assert pending.deferred == []
    assert by_name["bash"] == PackageUpdate(
        "bash", "5.2.15-2+b8", "5.2.15-2+b13", "Debian:12.15/oldstable", security=False
    )
    # a candidate in both the point release and the security archive is a security update
    assert by_name["libgnutls30"].security
    assert by_name["openssh-server"].candidate == "1:9.2p1-2+deb12u9"
    assert not by_name["openssh-server"].security
    assert not by_name["tzdata"].security  # oldstable-updates is not a security pocket
    new_kernel = by_name["linux-image-6.1.0-41-amd64"]
    assert new_kernel.current is None and new_kernel.security
    assert {u.name for u in pending.security} == {
        "libgnutls30", "libpam0g", "libpam-modules-bin", "libpam-modules", "libssl3", "openssl",
        "linux-image-6.1.0-41-amd64", "linux-image-amd64", "postgresql-client-15",
        "postgresql-15",
    }  # fmt: skip


def test_apt_ubuntu2204_security_pocket_and_phasing() -> None:
    pending = parse_apt_simulation(capture("apt-ubuntu2204.txt"))
    names = [u.name for u in pending.updates]
    assert "ubuntu-advantage-tools" not in names  # its Inst line is [phased]
    assert len(names) == 9
    assert pending.deferred == [
        "python3-software-properties",
        "software-properties-common",
        "ubuntu-advantage-tools",
    ]
    assert pending.held == ["mysql-server-8.0"]
    assert {u.name for u in pending.security} == {
        "apache2-data", "apache2-utils", "apache2-bin", "apache2", "libssl3", "openssl",
    }  # fmt: skip
    assert highlighted(names, SERVER_PACKAGES) == [
        "apache2-data", "apache2-utils", "apache2-bin", "apache2", "nginx-common", "nginx",
    ]  # fmt: skip


def test_apt_nothing_to_upgrade() -> None:
    pending = parse_apt_simulation(capture("apt-none.txt"))
    assert (pending.updates, pending.held, pending.deferred) == ([], [], [])


@pytest.mark.parametrize(
    ("origin", "security"),
    [
        ("Debian-Security:12/oldstable-security", True),
        ("Debian:12.15/oldstable, Debian-Security:12/oldstable-security", True),
        ("Ubuntu:22.04/jammy-updates, Ubuntu:22.04/jammy-security", True),
        ("Debian:12.15/oldstable", False),
        ("Ubuntu:22.04/jammy-updates", False),
        ("PostgreSQL for Debian:bookworm-pgdg/bookworm-pgdg", False),
        ("", False),
    ],
)
def test_apt_origin_is_security(origin: str, security: bool) -> None:
    assert apt_origin_is_security(origin) is security


_APT_FRAGMENTS = st.sampled_from(
    [
        "Inst ", "Conf ", "Remv ", "[", "]", "(", ")", " ", ",", ":", "/", "-security", "pkg",
        "1.0", "[amd64]", "[phased]", "\n", "  ", "The following packages have been kept back:",
        "The following upgrades have been deferred due to phasing:", "\t", "\x00", "é",
    ]
)  # fmt: skip


@given(st.text() | st.lists(_APT_FRAGMENTS).map("".join))
def test_apt_parser_never_raises(text: str) -> None:
    pending = parse_apt_simulation(text)
    assert all(isinstance(u.name, str) and u.name for u in pending.updates)


# --- dnf ------------------------------------------------------------------------------------


def test_dnf_check_update_wrapped_rows_and_obsoletes() -> None:
    updates, obsoleting = parse_dnf_check_update(capture("dnf-check-update.txt"))
    names = [u.name for u in updates]
    assert names == [
        "kernel", "kernel-core", "openssl", "openssl-libs", "postgresql-server", "httpd",
        "tzdata", "python3-libdnf-plugin-very-long-name-for-wrapping", "grub2-tools", "redis6",
    ]  # fmt: skip
    assert updates[2] == PackageUpdate("openssl", None, "1:3.2.2-6.el9_5", "baseos")
    assert updates[7].candidate == "0.69.0-12.el9_5"
    assert obsoleting == ["grub2-tools <- grub2-tools-efi", "redis6 <- redis"]


def test_dnf_check_update_none() -> None:
    assert parse_dnf_check_update(capture("dnf-check-update-none.txt")) == ([], [])
    assert parse_dnf_check_update("Last metadata expiration check: 0:01:02 ago.\n") == ([], [])


def test_dnf_security_severities() -> None:
    assert parse_dnf_security(capture("dnf-updateinfo-security.txt")) == {
        "kernel": "Important",
        "kernel-core": "Important",
        "openssl": "Moderate",
        "openssl-libs": "Moderate",
        "httpd": "Low",
        "postgresql-server": "Critical",
    }
    # the most severe advisory of a package wins, whatever the order
    text = "A-1 Low/Sec. curl-7.76.1-31.el9.x86_64\nA-2 Important/Sec. curl-7.76.1-31.el9.x86_64\n"
    assert parse_dnf_security(text) == {"curl": "Important"}


@pytest.mark.parametrize(
    ("nevra", "name"),
    [
        ("openssl-libs-1:3.2.2-6.el9_5.x86_64", "openssl-libs"),
        ("kernel-5.14.0-503.15.1.el9_5.x86_64", "kernel"),
        ("tzdata-2024b-2.el9.noarch", "tzdata"),
    ],
)
def test_nevra_name(nevra: str, name: str) -> None:
    assert nevra_name(nevra) == name


def test_needs_restarting_both_answers() -> None:
    assert parse_needs_restarting(capture("needs-restarting-yes.txt"), 1) == (
        True,
        ["kernel", "openssl-libs"],
    )
    assert parse_needs_restarting(capture("needs-restarting-no.txt"), 0) == (False, [])


def test_dnf_pending_flags_security_updates() -> None:
    pending = dnf_pending(
        capture("dnf-check-update.txt"),
        capture("dnf-updateinfo-security.txt"),
        parse_needs_restarting(capture("needs-restarting-yes.txt"), 1),
    )
    assert pending.manager == "dnf"
    assert {u.name: u.severity for u in pending.security} == {
        "kernel": "Important", "kernel-core": "Important", "openssl": "Moderate",
        "openssl-libs": "Moderate", "postgresql-server": "Critical", "httpd": "Low",
    }  # fmt: skip
    assert pending.reboot_required and pending.reboot_packages == ["kernel", "openssl-libs"]
    names = [u.name for u in pending.updates]
    assert highlighted(names, SERVER_PACKAGES) == ["postgresql-server", "httpd", "redis6"]


def test_package_facts() -> None:
    text = (
        "manager=apt\nnow=1000\nlists_mtime=400\nlists_mtime=700\nreboot_required=1\n"
        "reboot_pkg=linux-image-6.1.0-41-amd64\nreboot_pkg=libc6\nnow=garbage\nnonsense\n"
    )
    facts = parse_package_facts(text)
    assert facts.manager == "apt" and facts.lists_age_seconds == 300.0
    assert facts.reboot_required and facts.reboot_packages == [
        "linux-image-6.1.0-41-amd64",
        "libc6",
    ]
    assert parse_package_facts("").lists_age_seconds is None
    assert parse_package_facts("manager=none\n").manager == "none"


# --- the decision ---------------------------------------------------------------------------


def _pending(security: int, other: int, *, reboot: bool = False) -> PendingUpdates:
    updates = [PackageUpdate(f"s{i}", "1", "2", "x-security", True) for i in range(security)]
    updates += [PackageUpdate(f"o{i}", "1", "2", "x", False) for i in range(other)]
    return PendingUpdates("apt", updates, reboot_required=reboot, reboot_packages=["libc6"])


@pytest.mark.parametrize(
    ("pending", "limits", "statuses"),
    [
        (_pending(0, 3), {}, []),
        (_pending(1, 0), {}, [Status.WARNING]),
        (_pending(9, 0), {"security_critical": 10}, [Status.WARNING]),
        (_pending(10, 0), {"security_critical": 10}, [Status.FAILED]),
        (_pending(0, 5), {"total_warn": 5}, [Status.WARNING]),
        (_pending(0, 4), {"total_warn": 5}, []),
        (_pending(0, 0, reboot=True), {}, [Status.WARNING]),
        (_pending(2, 0), {"security_warn": 3}, []),
    ],
)
def test_judge(pending: PendingUpdates, limits: dict[str, int], statuses: list[Status]) -> None:
    kw: dict[str, Any] = {"security_warn": 1, "security_critical": None, "total_warn": None}
    problems = judge(pending, **{**kw, **limits})
    assert [s for s, _ in problems] == statuses
    if pending.reboot_required:
        assert "reboot required (for libc6)" in problems[0][1]


def test_dnf_advisory_dates_oldest_issued() -> None:
    oldest = parse_dnf_advisory_dates(capture("dnf-updateinfo-info-security.txt"))
    assert oldest == calendar.timegm((2024, 11, 7, 0, 0, 0))  # curl's, not openssl's
    assert parse_dnf_advisory_dates("Updated: 2023-01-02 10:00\n  Updated : 2022-12-31") == (
        calendar.timegm((2022, 12, 31, 0, 0, 0))
    )
    assert parse_dnf_advisory_dates("") is None
    assert parse_dnf_advisory_dates("Issued: 2024-13-45\nDescription: Issued: soon") is None


@given(st.text())
def test_dnf_advisory_dates_never_raise(text: str) -> None:
    parse_dnf_advisory_dates(text)


@pytest.mark.parametrize(
    ("age_days", "limits", "statuses"),
    [
        (None, {"security_age_warn": 86400.0}, [Status.WARNING]),  # apt: no date, counts only
        (3, {"security_age_warn": 7 * 86400.0}, [Status.WARNING]),
        (8, {"security_age_warn": 7 * 86400.0}, [Status.WARNING, Status.WARNING]),
        (31, {"security_age_warn": 7 * 86400.0, "security_age_critical": 30 * 86400.0},
         [Status.WARNING, Status.FAILED]),
    ],
)  # fmt: skip
def test_judge_security_age(
    age_days: int | None, limits: dict[str, float], statuses: list[Status]
) -> None:
    pending = _pending(1, 0)
    pending.oldest_security_age_seconds = None if age_days is None else age_days * 86400.0
    problems = judge(pending, security_warn=1, security_critical=None, total_warn=None, **limits)
    assert [s for s, _ in problems] == statuses
    if len(problems) > 1:
        assert f"oldest security advisory {age_days} days old" in problems[1][1]


def test_thresholds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="security_critical"):
        make_ctx("patches.check", {"security_critical": 0})


# --- live: this Debian machine, locally and over SSH -----------------------------------------

needs_apt = pytest.mark.skipif(not os.path.exists("/usr/bin/apt-get"), reason="not a Debian host")


def _fingerprint() -> tuple[str, int, int]:
    """What an upgrade or a refresh would change: dpkg's status and the lists' mtime."""
    status = Path("/var/lib/dpkg/status")
    return (
        hashlib.sha256(status.read_bytes()).hexdigest(),
        status.stat().st_mtime_ns,
        Path("/var/lib/apt/lists").stat().st_mtime_ns,
    )


@pytest.fixture
def dpkg_quiet() -> Iterator[None]:
    """Hold this machine's package state still: the tests that install a package of their
    own (test_tasks_patches_apply.py, maybe on another worker) and those that check nothing
    changed it take turns (an flock on a file of the tests' own)."""
    import fcntl

    with open("/tmp/crmmaint-tests-dpkg.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(params=["local", "ssh"])
def host(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Keyword arguments of ``run_task`` for the local host or an SSH host (sshd on 127.0.0.x)."""
    if request.param == "local":
        yield {}
        return
    sshd = request.getfixturevalue("sshd_hosts")[3]
    inv = Inventory(path="/nonexistent/inventory.yml")
    inv.hosts["app1"] = Host(name="app1", address=sshd.address, port=sshd.port, connection="ssh")
    transport: Transport = SSHTransport("app1", sshd.address, **sshd.ssh_options())
    try:
        yield {"inventory": inv, "name": "app1", "transport": transport}
    finally:
        transport.close()


@needs_apt
@pytest.mark.parametrize("check", [False, True], ids=["run", "check-mode"])
def test_live_check_changes_nothing(host: dict[str, Any], check: bool, dpkg_quiet: None) -> None:
    before = _fingerprint()
    result = run_task("patches.check", {"refresh": check}, check=check, **host)
    assert _fingerprint() == before
    assert result.status in (Status.OK, Status.WARNING), result.message
    for metric in ("updates_pending", "security_updates", "reboot_required", "lists_age_seconds"):
        value = result.metrics[metric]
        assert isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    assert result.metrics["security_updates"] <= result.metrics["updates_pending"]
    assert result.metrics["reboot_required"] == int(os.path.exists("/var/run/reboot-required"))
    assert result.details["read_only"] is True and result.details["check_mode"] is check
    assert result.details["manager"] == "apt" and result.details["refreshed"] is False
    assert len(result.details["packages"]) == result.metrics["updates_pending"]
    for package in result.details["packages"]:
        assert set(package) >= {"name", "current", "candidate", "origin", "security"}
    if check:  # refresh asked for, but check mode runs nothing that changes the host
        assert result.details["refresh_skipped_in_check_mode"] is True


@needs_apt
def test_live_local_and_ssh_agree(sshd_hosts: list[Any], dpkg_quiet: None) -> None:
    sshd = sshd_hosts[3]
    ssh = SSHTransport("app1", sshd.address, **sshd.ssh_options())
    local = LocalTransport("local")
    try:
        over_ssh, here = HostOS(ssh).package_updates(), HostOS(local).package_updates()
    finally:
        ssh.close()
        local.close()
    assert over_ssh.updates == here.updates
    assert over_ssh.manager == here.manager == "apt"


@needs_apt
def test_live_security_critical_fails_when_reached() -> None:
    result = run_task("patches.check", {"security_warn": 1, "security_critical": 1})
    if result.metrics["security_updates"] >= 1:
        assert result.status is Status.FAILED
        assert "security update" in result.message
    else:
        assert result.status in (Status.OK, Status.WARNING)
