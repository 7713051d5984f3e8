"""patches.apply: the selection (pure), and live installs on this Debian machine of a package
from a local file repository (never the network): check mode and ``apply: none`` install
nothing; ``apply: security``/``all`` install exactly the chosen packages, read back from dpkg.

The live tests add ``/etc/apt/sources.list.d/crmmaint-test.list`` and install a small package
of their own (``crmmaint-test-*``), and remove both afterwards."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tasks_health import run_task
from test_tasks_patches import dpkg_quiet, host  # noqa: F401 (fixtures)

from crmmaint.engines.packages import (
    PackageUpdate,
    PendingUpdates,
    install_command,
    parse_versions,
)
from crmmaint.results import Status
from crmmaint.tasks.patches import select_updates

# --- the selection ----------------------------------------------------------------------


def _pending() -> PendingUpdates:
    return PendingUpdates(
        "apt",
        [
            PackageUpdate("openssl", "3.0.1", "3.0.2", "Debian-Security:12/stable-security", True),
            PackageUpdate("postgresql-15", "15.1", "15.2", "Debian:12/stable", False),
            PackageUpdate("linux-image-6.1.0-42", None, "6.1.0-42", "Debian-Security:12", True),
            PackageUpdate("bash", "5.2", "5.2.1", "Debian:12/stable", False),
        ],
        held=["redis-server"],
    )


@pytest.mark.parametrize(
    ("apply", "only", "exclude", "names"),
    [
        ("none", [], [], []),
        ("security", [], [], ["openssl"]),  # the new kernel comes in as a dependency
        ("all", [], [], ["openssl", "postgresql-15", "bash"]),
        ("all", [], ["postgresql*"], ["openssl", "bash"]),
        ("all", ["postgresql*", "bash"], [], ["postgresql-15", "bash"]),
        ("security", ["bash"], [], []),
    ],
)
def test_select_updates(apply: str, only: list[str], exclude: list[str], names: list[str]) -> None:
    chosen = select_updates(_pending(), apply, only=only, exclude=exclude)
    assert [u.name for u in chosen] == names
    assert "redis-server" not in names  # held packages are never chosen


def test_install_command_pins_versions_and_refuses_odd_names() -> None:
    command = install_command("apt", [PackageUpdate("openssl", "1", "3.0.2-1~deb12u1", "x")])
    assert command[-1] == "openssl=3.0.2-1~deb12u1" and command[-2] == "--"
    assert "--only-upgrade" in command and "Dpkg::Options::=--force-confold" in command
    for name, version in [("-oAPT::x=1", "1"), ("a b", "1"), ("pkg", "1;rm"), ("pkg", "$(x)")]:
        with pytest.raises(ValueError, match="not a Debian package"):
            install_command("apt", [PackageUpdate(name, "0", version, "x")])
    with pytest.raises(ValueError, match="not an RPM package"):
        install_command("dnf", [PackageUpdate("--setopt=x", None, "1", "x")])


def test_parse_versions() -> None:
    text = "openssl\t3.0.2\nlibc6:i386\t2.36-9\npackage foo is not installed\nbash\t0:5.2-1\n"
    assert parse_versions(text) == {"openssl": "3.0.2", "libc6:i386": "2.36-9", "bash": "5.2-1"}


def test_apply_param_is_checked() -> None:
    from crmmaint.tasks.api import REGISTRY

    with pytest.raises(ValueError, match="expected one of none, security, all"):
        REGISTRY["patches.apply"].validate_params({"apply": "everything"})
    for only in ([], [""], ["  "]):
        with pytest.raises(ValueError, match="only: "):
            REGISTRY["patches.apply"].validate_params({"apply": "all", "only": only})


# --- live: a local file repository --------------------------------------------------------

needs_root_apt = pytest.mark.skipif(
    not (os.path.exists("/usr/bin/apt-get") and shutil.which("dpkg-deb") and os.geteuid() == 0),
    reason="needs a Debian host, dpkg-deb and root",
)
SOURCES = Path("/etc/apt/sources.list.d/crmmaint-test.list")


def _deb(root: Path, name: str, version: str) -> Path:
    build = root / f"build-{name}-{version}"
    (build / "DEBIAN").mkdir(parents=True)
    (build / "usr/share/doc" / name).mkdir(parents=True)
    (build / "usr/share/doc" / name / "README").write_text(f"{name} {version}\n")
    (build / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: crmmaint tests <tests@localhost>\nDescription: crmmaint test package\n"
    )
    out = root / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(build), str(out)], check=True, capture_output=True)
    return out


def _repository(root: Path, debs: list[tuple[str, str, Path]], label: str) -> None:
    """A flat apt repository (``deb [trusted=yes] file:ROOT ./``) of ``debs``."""
    stanzas = []
    for name, version, deb in debs:
        data = deb.read_bytes()
        stanzas.append(
            f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
            f"Maintainer: crmmaint tests <tests@localhost>\nFilename: ./{deb.name}\n"
            f"Size: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
            "Description: crmmaint test package\n"
        )
    (root / "Packages").write_text("\n".join(stanzas))
    (root / "Release").write_text(
        f"Origin: crmmaint-test\nLabel: {label}\nSuite: test-security\nCodename: test\n"
        "Date: Tue, 01 Dec 2026 00:00:00 UTC\n"
    )


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "-q", *args], capture_output=True, text=True, check=True, timeout=120
    )


def _installed(name: str) -> str | None:
    res = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status} ${Version}", name], capture_output=True, text=True
    )
    if res.returncode != 0 or not res.stdout.startswith("install ok installed"):
        return None
    return res.stdout.split()[-1]


@pytest.fixture
def local_update(dpkg_quiet: None) -> Iterator[str]:  # noqa: F811
    """A package of ours installed at 1.0 with 2.0 offered by a security-labelled local
    repository: its name. The repository is outside pytest's 0700 temporary directories, as
    apt's sandbox user reads it."""
    name = f"crmmaint-test-{uuid.uuid4().hex[:8]}"
    repo = Path(tempfile.mkdtemp(prefix="crmmaint-apt-"))
    repo.chmod(0o755)
    old, new = _deb(repo, name, "1.0"), _deb(repo, name, "2.0")
    _repository(repo, [(name, "2.0", new)], "crmmaint-test-Security")
    subprocess.run(["dpkg", "-i", str(old)], check=True, capture_output=True)
    SOURCES.write_text(f"deb [trusted=yes] file:{repo} ./\n")
    only_ours = [
        "-o", f"Dir::Etc::sourcelist={SOURCES}", "-o", "Dir::Etc::sourceparts=-",
        "-o", "APT::Get::List-Cleanup=0",
    ]  # fmt: skip
    try:
        _apt(*only_ours, "update")
        yield name
    finally:
        subprocess.run(["dpkg", "--purge", name], capture_output=True)
        SOURCES.unlink(missing_ok=True)
        for lists in Path("/var/lib/apt/lists").glob(f"*{repo.name}*"):
            lists.unlink(missing_ok=True)
        shutil.rmtree(repo, ignore_errors=True)


def _status_digest() -> str:
    return hashlib.sha256(Path("/var/lib/dpkg/status").read_bytes()).hexdigest()


@needs_root_apt
@pytest.mark.parametrize("apply", ["security", "all"])
def test_check_mode_installs_nothing(local_update: str, apply: str) -> None:
    before = _status_digest()
    result = run_task("patches.apply", {"apply": apply, "only": [local_update]}, check=True)
    assert result.status is Status.CHANGED, result.message
    assert result.message == f"would install 1 update: {local_update}"
    assert [p["name"] for p in result.details["chosen"]] == [local_update]
    assert result.details["chosen"][0]["security"] is True
    assert _status_digest() == before and _installed(local_update) == "1.0"


@needs_root_apt
def test_apply_none_installs_nothing(local_update: str) -> None:
    before = _status_digest()
    result = run_task("patches.apply", {"only": [local_update]})
    assert result.status is Status.OK and result.message.startswith("nothing applied")
    assert _status_digest() == before and _installed(local_update) == "1.0"


@needs_root_apt
def test_apply_installs_the_chosen_update(local_update: str, host: dict[str, Any]) -> None:  # noqa: F811
    result = run_task("patches.apply", {"apply": "security", "only": [local_update]}, **host)
    assert result.status in (Status.CHANGED, Status.WARNING), result.message
    assert result.message.startswith(f"installed 1 update: {local_update}")
    assert _installed(local_update) == "2.0"
    assert result.details["installed"] == [{"name": local_update, "before": "1.0", "after": "2.0"}]
    assert result.metrics["updates_applied"] == 1
    reboot = os.path.exists("/var/run/reboot-required")
    assert result.details["reboot_required"] is reboot
    assert result.status is (Status.WARNING if reboot else Status.CHANGED)
    again = run_task("patches.apply", {"apply": "security", "only": [local_update]}, **host)
    assert again.status is Status.OK and again.message.startswith("no security update to apply")


@needs_root_apt
def test_excluded_and_unmatched_are_left(local_update: str) -> None:
    result = run_task(
        "patches.apply", {"apply": "all", "only": [local_update], "exclude": ["crmmaint-test-*"]}
    )
    assert result.status is Status.OK
    assert result.message.startswith("no update to apply: none of the ")
    assert "matches only/exclude" in result.message
    assert _installed(local_update) == "1.0"
