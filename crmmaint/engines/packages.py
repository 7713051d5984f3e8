"""Pending package updates as apt and dnf report them: the commands ``HostOS.package_updates``
runs and pure ``parse_*`` functions over their output (no I/O here, each parser unit-tested
against captured output in tests/data/patches/).

Debian/Ubuntu: ``apt-get -s dist-upgrade`` (a simulation: no root, no lock, no change; its
``Inst pkg [old] (new origin/pocket [arch])`` lines say what would be installed and from where).
RHEL family: ``dnf check-update`` (exit 100: updates pending), ``dnf updateinfo list --security``
and ``needs-restarting -r`` (exit 1: reboot needed). Neither refreshes the package lists unless
asked: apt is never told to update them, dnf runs from its cache (``-C``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Prints ``key=value`` lines about the host's packaging: ``manager`` (apt, dnf or none),
#: ``uid`` (who the commands run as), ``now`` (the host's clock), ``lists_mtime`` (newest of the package lists and apt's cache),
#: ``reboot_required`` (Debian's flag file) and one ``reboot_pkg`` per package that asked.
FACTS_SCRIPT = r"""
echo "uid=$(id -u)"
if command -v apt-get >/dev/null 2>&1; then echo manager=apt
elif command -v dnf >/dev/null 2>&1; then echo manager=dnf
else echo manager=none; fi
echo "now=$(date +%s)"
for f in /var/lib/apt/lists /var/cache/apt/pkgcache.bin /var/cache/dnf/*.solv; do
  [ -e "$f" ] && echo "lists_mtime=$(stat -c %Y -- "$f")"
done
[ -e /var/run/reboot-required ] && echo reboot_required=1
if [ -r /var/run/reboot-required.pkgs ]; then
  while IFS= read -r p; do [ -n "$p" ] && echo "reboot_pkg=$p"; done </var/run/reboot-required.pkgs
fi
true
"""

#: apt's simulated upgrade: offline, without root and without taking apt's lock.
APT_SIMULATE = ["env", "LC_ALL=C", "apt-get", "-s", "-o", "Debug::NoLocking=1", "dist-upgrade"]
APT_REFRESH = ["env", "LC_ALL=C", "apt-get", "-q", "update"]
#: dnf from its cache (``-C``): no metadata download unless a refresh is asked for.
DNF_CHECK_UPDATE = ["env", "LC_ALL=C", "dnf", "-q", "-C", "check-update"]
DNF_SECURITY = ["env", "LC_ALL=C", "dnf", "-q", "-C", "updateinfo", "list", "--security"]
#: The security advisories in full: their ``Issued``/``Updated`` dates (the age of the
#: oldest pending one; apt does not say when an update was published).
DNF_SECURITY_INFO = ["env", "LC_ALL=C", "dnf", "-q", "-C", "updateinfo", "info", "--security"]
DNF_REFRESH = ["env", "LC_ALL=C", "dnf", "-q", "makecache"]
NEEDS_RESTARTING = ["env", "LC_ALL=C", "needs-restarting", "-r"]
#: ``dnf check-update``'s exit status when updates are pending (0: none).
DNF_UPDATES_PENDING = 100
#: ``needs-restarting -r``'s exit status when a reboot is needed (0: not needed).
REBOOT_NEEDED = 1


@dataclass(frozen=True)
class PackageUpdate:
    """One package an upgrade would install: ``current`` version (``None`` for a package new
    to the host, or where the tool does not say), ``candidate`` version, ``origin`` (apt's
    ``Label:version/pocket`` list, dnf's repository) and whether it is a security update."""

    name: str
    current: str | None
    candidate: str
    origin: str
    security: bool = False
    #: dnf: the advisory's severity (Critical, Important, Moderate, Low); apt: ``None``.
    severity: str | None = None


@dataclass
class PendingUpdates:
    """What an upgrade of the host would do, and what it would leave."""

    manager: str
    updates: list[PackageUpdate] = field(default_factory=list)
    #: Upgradable but kept back (apt: held or blocked by dependencies).
    held: list[str] = field(default_factory=list)
    #: Upgradable, but the phased rollout has not reached this host yet (Ubuntu).
    deferred: list[str] = field(default_factory=list)
    #: dnf: installed packages a new one replaces, as "new <- old".
    obsoleting: list[str] = field(default_factory=list)
    reboot_required: bool = False
    #: Packages that asked for the reboot (Debian's .pkgs file, needs-restarting's list).
    reboot_packages: list[str] = field(default_factory=list)
    #: Seconds since the package lists were refreshed (by the host's clock); None: unknown.
    lists_age_seconds: float | None = None
    #: dnf: seconds since the oldest pending security advisory was issued (by the host's
    #: clock, from the UTC midnight of its date); None: no advisory dated, or a manager that
    #: does not say (apt).
    oldest_security_age_seconds: float | None = None

    @property
    def security(self) -> list[PackageUpdate]:
        return [u for u in self.updates if u.security]


@dataclass(frozen=True)
class PackageFacts:
    """The output of ``FACTS_SCRIPT``."""

    manager: str
    now: int | None
    lists_mtime: int | None
    reboot_required: bool
    reboot_packages: list[str]
    #: The user id the commands run as (0: root, as applying updates needs); None: unknown.
    uid: int | None = None

    @property
    def lists_age_seconds(self) -> float | None:
        if self.now is None or self.lists_mtime is None:
            return None
        return float(max(0, self.now - self.lists_mtime))


def parse_package_facts(text: str) -> PackageFacts:
    """``FACTS_SCRIPT`` output -> ``PackageFacts``; unknown or garbled lines are ignored."""
    manager, now, mtimes, reboot, pkgs = "none", None, [], False, []
    uid: int | None = None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "uid" and value.strip().isdigit():
            uid = int(value)
        elif key == "manager":
            manager = value.strip() or "none"
        elif key == "now" and value.strip().isdigit():
            now = int(value)
        elif key == "lists_mtime" and value.strip().isdigit():
            mtimes.append(int(value))
        elif key == "reboot_required":
            reboot = True
        elif key == "reboot_pkg" and value.strip():
            pkgs.append(value.strip())
    return PackageFacts(manager, now, max(mtimes, default=None), reboot, pkgs, uid)


# --- apt ------------------------------------------------------------------------------------

#: ``Inst NAME [CURRENT] (CANDIDATE ORIGINS [ARCH]) REST``; no ``[CURRENT]`` for a new package.
_APT_INST = re.compile(
    r"^Inst (?P<name>\S+)(?: \[(?P<current>[^\]]*)\])? \((?P<candidate>\S+)"
    r"(?: (?P<origin>.*?))? \[(?P<arch>[^\]]*)\]\)(?P<rest>.*)$"
)
_APT_KEPT_BACK = "The following packages have been kept back:"
_APT_PHASING = "The following upgrades have been deferred due to phasing:"


def apt_origin_is_security(origin: str) -> bool:
    """Whether an apt origin list (``Debian:12.15/oldstable, Debian-Security:12/…-security``)
    offers the candidate from a security archive: a ``…-Security`` label or a ``-security``
    pocket in any of its entries."""
    for entry in origin.split(","):
        label, _, rest = entry.strip().partition(":")
        pocket = rest.rpartition("/")[2]
        if label.lower().endswith("security") or pocket.lower().endswith("-security"):
            return True
    return False


def parse_apt_simulation(text: str) -> PendingUpdates:
    """``apt-get -s dist-upgrade`` output -> ``PendingUpdates``. Never raises: lines it does
    not know (notes, ``Conf``/``Remv`` lines, errors) are skipped.

    ``Inst`` lines are the updates (``[phased]`` after one: deferred, not counted); the names
    under "kept back" are ``held``, those under "deferred due to phasing" ``deferred``."""
    pending = PendingUpdates("apt")
    section: list[str] | None = None
    for line in text.splitlines():
        if section is not None and line.startswith(" "):
            section.extend(n for n in line.split() if n not in section)
            continue
        section = None
        if line.startswith(_APT_KEPT_BACK):
            section = pending.held
        elif line.startswith(_APT_PHASING):
            section = pending.deferred
        elif line.startswith("Inst "):
            m = _APT_INST.match(line)
            if m is None:
                continue
            if "[phased]" in m["rest"]:
                if m["name"] not in pending.deferred:
                    pending.deferred.append(m["name"])
                continue
            origin = (m["origin"] or "").strip()
            pending.updates.append(
                PackageUpdate(
                    m["name"],
                    m["current"] or None,
                    m["candidate"],
                    origin,
                    apt_origin_is_security(origin),
                )
            )
    return pending


# --- dnf ------------------------------------------------------------------------------------

#: Severities of dnf advisories, mildest first (``None`` sorts before them all).
SEVERITIES = ("Low", "Moderate", "Important", "Critical")


def _strip_arch(name_arch: str) -> str:
    name, dot, _arch = name_arch.rpartition(".")
    return name if dot else name_arch


def parse_dnf_check_update(text: str) -> tuple[list[PackageUpdate], list[str]]:
    """``dnf check-update`` output -> (updates, obsoleting as "new <- old").

    Rows are ``name.arch version repo``; a long name wraps its version and repository onto
    the next line. Under "Obsoleting Packages" an unindented row is the new package (counted
    as an update unless already listed) and each indented row below it an installed package
    it replaces. Lines that are not rows (the metadata note, blank lines) are skipped."""
    updates: list[PackageUpdate] = []
    obsoleting: list[str] = []
    seen: set[str] = set()
    in_obsoletes = False
    pending: list[str] = []  # the tokens of a row wrapped across lines
    last_new: str | None = None
    for line in text.splitlines():
        if line.strip() == "Obsoleting Packages":
            in_obsoletes, pending = True, []
            continue
        if not line.strip() or line.startswith(("Last metadata", "Security:")):
            continue
        indented = line[:1].isspace()
        tokens = line.split()
        if in_obsoletes and indented and not pending:
            if last_new is not None and len(tokens) == 3:
                obsoleting.append(f"{last_new} <- {_strip_arch(tokens[0])}")
            continue
        tokens = pending + tokens
        if len(tokens) < 3:
            pending = tokens if len(tokens) == 1 else []
            continue
        pending = []
        if len(tokens) != 3 or "." not in tokens[0]:
            continue
        name = _strip_arch(tokens[0])
        last_new = name
        if name not in seen:
            seen.add(name)
            updates.append(PackageUpdate(name, None, tokens[1], tokens[2]))
    return updates, obsoleting


def nevra_name(nevra: str) -> str:
    """``openssl-libs-1:3.2.2-6.el9_5.x86_64`` -> ``openssl-libs`` (name, version and release
    are the last two dashes' parts; the architecture follows the last dot)."""
    parts = _strip_arch(nevra).rsplit("-", 2)
    return parts[0] if len(parts) == 3 else nevra


def parse_dnf_security(text: str) -> dict[str, str]:
    """``dnf updateinfo list --security`` -> {package name: its most severe advisory's
    severity}; rows are ``ADVISORY SEVERITY/Sec. NEVRA`` (a severity-less ``Sec.`` counts as
    ``"unknown"``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) != 3 or not tokens[1].endswith("Sec."):
            continue
        severity = tokens[1].rpartition("/")[0] or "unknown"
        name = nevra_name(tokens[2])
        if _severity_rank(severity) >= _severity_rank(out.get(name)):
            out[name] = severity
    return out


def _severity_rank(severity: str | None) -> int:
    return SEVERITIES.index(severity) + 1 if severity in SEVERITIES else 0


_ADVISORY_DATE = re.compile(
    r"^\s*(?P<field>Issued|Updated)\s*:\s*(?P<date>\d{4}-\d{2}-\d{2})", re.MULTILINE
)


def parse_dnf_advisory_dates(text: str) -> float | None:
    """``dnf updateinfo info --security`` -> when the oldest advisory was issued (seconds
    since the epoch, the date's UTC midnight), or ``None`` when the text names no date.
    Each advisory block gives ``Issued`` (dnf 4) or only ``Updated`` (older yum); the
    earliest date of the whole text is the oldest advisory's. Never raises."""
    import calendar
    import time

    oldest: float | None = None
    for m in _ADVISORY_DATE.finditer(text):
        try:
            when = float(calendar.timegm(time.strptime(m["date"], "%Y-%m-%d")))
        except ValueError:
            continue
        oldest = when if oldest is None else min(oldest, when)
    return oldest


def parse_needs_restarting(text: str, exit_status: int) -> tuple[bool, list[str]]:
    """``needs-restarting -r`` -> (reboot needed, the ``* name`` packages it lists)."""
    packages = [
        line.strip()[2:].strip() for line in text.splitlines() if line.strip().startswith("* ")
    ]
    return exit_status == REBOOT_NEEDED, packages


def dnf_pending(
    check_update: str, security: str, needs_restarting: tuple[bool, list[str]]
) -> PendingUpdates:
    """The three dnf answers combined: each update flagged security (with its severity) when
    an advisory names its package."""
    updates, obsoleting = parse_dnf_check_update(check_update)
    advisories = parse_dnf_security(security)
    flagged = [
        PackageUpdate(
            u.name, u.current, u.candidate, u.origin, u.name in advisories, advisories.get(u.name)
        )
        for u in updates
    ]
    reboot, reboot_pkgs = needs_restarting
    return PendingUpdates(
        "dnf",
        flagged,
        obsoleting=obsoleting,
        reboot_required=reboot,
        reboot_packages=reboot_pkgs,
    )


# --- applying updates -----------------------------------------------------------------------


@dataclass
class AppliedUpdates:
    """What ``HostOS.apply_updates`` did: the installed versions of the chosen packages
    before and after (read from dpkg or rpm, not from the installer's output), the
    installer's failure (``None``: it succeeded), whether a reboot is now required and
    how long the install took (seconds)."""

    manager: str
    before: dict[str, str]
    after: dict[str, str]
    failed: str | None
    reboot_required: bool
    reboot_packages: list[str]
    seconds: float

    @property
    def changed(self) -> dict[str, tuple[str | None, str]]:
        """{package: (version before or None, version now)} for each one that changed."""
        return {
            name: (self.before.get(name), version)
            for name, version in self.after.items()
            if self.before.get(name) != version
        }


#: A Debian package name (Policy 5.6.1), with an optional ``:arch``, and a version (5.6.12):
#: anything else from a host's apt output is refused before it reaches a command line.
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$")
_APT_VERSION = re.compile(r"^[A-Za-z0-9.+~:-]+$")
#: An RPM package name as dnf prints it (no spaces, no shell or option characters first).
_RPM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")

#: apt-get install for updates: non-interactive; changed configuration files are kept
#: (``--force-confold``: the CRM's own settings are never replaced by a package's); services
#: needing a restart are listed, not restarted (``NEEDRESTART_MODE=l``); apt's lock is waited
#: for up to 2 minutes (another apt run, unattended-upgrades) instead of failing at once.
APT_INSTALL = [
    "env", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "NEEDRESTART_MODE=l", "apt-get", "-y",
    "-q", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
    "-o", "DPkg::Lock::Timeout=120", "install", "--only-upgrade", "--",
]  # fmt: skip
DNF_UPGRADE = ["env", "LC_ALL=C", "dnf", "-y", "-q", "upgrade", "--"]
#: The installed version of each named package, one ``name<TAB>version`` line each (a
#: package not installed prints nothing for it: ``dpkg-query`` exits 1, which is not an error).
DPKG_VERSIONS = ["dpkg-query", "-W", "-f", "${binary:Package}\\t${Version}\\n", "--"]
RPM_VERSIONS = ["rpm", "-q", "--qf", "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n", "--"]


def install_command(manager: str, updates: list[PackageUpdate]) -> list[str]:
    """The command that installs exactly ``updates`` (apt: each pinned to its simulated
    candidate, ``name=version``, upgraded only if installed; dnf: by name). Raises
    ``ValueError`` on a name or version that is not a package's (never passed to a shell)."""
    if manager == "apt":
        args = []
        for u in updates:
            if not _APT_NAME.match(u.name) or not _APT_VERSION.match(u.candidate):
                raise ValueError(f"not a Debian package and version: {u.name!r} {u.candidate!r}")
            args.append(f"{u.name}={u.candidate}")
        return [*APT_INSTALL, *args]
    if manager == "dnf":
        for u in updates:
            if not _RPM_NAME.match(u.name):
                raise ValueError(f"not an RPM package name: {u.name!r}")
        return [*DNF_UPGRADE, *(u.name for u in updates)]
    raise ValueError(f"no package manager {manager!r}")


def versions_command(manager: str, names: list[str]) -> list[str]:
    """The command printing the installed version of each of ``names`` (``parse_versions``)."""
    base = DPKG_VERSIONS if manager == "apt" else RPM_VERSIONS
    return [*base, *names]


def parse_versions(text: str) -> dict[str, str]:
    """``name<TAB>version`` lines -> {name: version}; other lines (rpm's "package x is not
    installed") are skipped. dpkg-query prints ``name:arch`` for foreign architectures only,
    as apt names them."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, tab, version = line.partition("\t")
        if tab and name and version and " " not in name:
            out[name] = version.removeprefix("0:")
    return out
