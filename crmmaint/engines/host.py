"""The host's operating system, spoken through a transport: what tasks ask of a Linux host.

``HostOS(transport)`` runs every command on the host behind the transport (this machine or an
SSH host), each with a timeout, with names, paths and addresses passed as separate arguments
(``sh -c SCRIPT sh ARG…``), never spliced into a shell line. Turning command output into data is
done by the pure ``parse_*`` functions, which hold no I/O and get their own unit tests.

The adapter is grouped by what it knows about, one section each:

- resources: filesystems (``df``), memory (``/proc/meminfo``), load and CPUs;
- services: systemd units, processes, TCP ports, HTTP endpoints (curl on the host);
- files: log files listed by glob with their rotated predecessors, byte ranges read as a stream;
- packages: pending updates from apt or dnf, whichever the host has (commands and parsers in
  ``engines/packages.py``);
- accounts: who can reach the host over SSH (authorized_keys) and who can become root (uid 0,
  sudo groups, sudoers as sudo reports them), as a baseline snapshot (script and parsers in
  ``engines/accounts.py``).

File hashes belong here as further sections when tasks need them; past
~800 lines this module becomes ``engines/host/`` with one module per section.

Errors: every failure is a ``HostError`` (the command failed or printed nonsense), naming the
host; ``ToolMissing``, a ``HostError``, says a program a check needs is not installed (the
command exited 127), so a caller can treat it apart (skip systemd checks in a container).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from crmmaint.engines import accounts, config_files, packages
from crmmaint.engines.packages import AppliedUpdates, PackageUpdate, PendingUpdates
from crmmaint.errors import HostError, ToolMissing
from crmmaint.transport.base import Command, CommandResult, Process, Transport

log = logging.getLogger(__name__)

#: Seconds any single short probe command may take by default.
PROBE_TIMEOUT = 30.0

#: The exit status of a shell whose command is not installed.
NOT_INSTALLED = 127


# --- resources: filesystems, memory, load ---------------------------------------------------

#: Filesystems that hold no persistent data; their usage says nothing about capacity.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "tmpfs", "devtmpfs", "udev", "proc", "sysfs", "devpts", "cgroup", "cgroup2", "none",
        "shm", "efivarfs", "securityfs", "debugfs", "tracefs", "mqueue", "hugetlbfs", "pstore",
        "bpf", "configfs", "fusectl", "binfmt_misc", "autofs", "ramfs", "nsfs", "overlay-tmp",
    }
)  # fmt: skip
PSEUDO_MOUNT_ROOTS = ("/proc", "/sys", "/dev", "/run", "/snap")


@dataclass(frozen=True)
class DiskUsage:
    """One mounted filesystem as ``df -P -k`` reports it, in bytes."""

    filesystem: str
    mount: str
    size_bytes: int
    used_bytes: int
    available_bytes: int

    @property
    def used_pct(self) -> float:
        """Used share of what non-root users can fill (df's "Capacity" column, unrounded)."""
        usable = self.used_bytes + self.available_bytes
        return 100.0 * self.used_bytes / usable if usable else 0.0


def parse_df(text: str) -> list[DiskUsage]:
    """Parse ``df -P -k`` output (sizes in KiB) into filesystems with sizes in bytes.

    Pseudo filesystems, mounts under ``PSEUDO_MOUNT_ROOTS`` and repeated (bind) mounts of a
    filesystem already listed are skipped, and so are lines whose size column is not a number
    (df's own messages). ``ValueError`` on a row whose other figures are not numbers.
    """
    disks: list[DiskUsage] = []
    seen: set[tuple[str, int, int]] = set()
    for line in text.splitlines()[1:]:
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[1].isdigit():
            continue
        fs, blocks, used, avail, _cap, mount = parts
        if fs in PSEUDO_FILESYSTEMS or int(blocks) == 0:
            continue
        if any(mount == r or mount.startswith(r + "/") for r in PSEUDO_MOUNT_ROOTS):
            continue
        key = (fs, int(blocks), int(used))
        if key in seen:  # a bind mount of a filesystem already listed
            continue
        seen.add(key)
        disks.append(DiskUsage(fs, mount, int(blocks) * 1024, int(used) * 1024, int(avail) * 1024))
    return disks


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """``/proc/loadavg`` -> (load1, load5, load15), runnable tasks averaged over 1, 5 and 15
    minutes; ``ValueError`` when the text has fewer than three numbers."""
    one, five, fifteen = text.split()[:3]
    return float(one), float(five), float(fifteen)


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> {field: value}: bytes for ``kB`` fields, plain counts otherwise."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            factor = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            out[name.strip()] = int(fields[0]) * factor
    return out


# --- services: systemd, processes, TCP, HTTP ------------------------------------------------

#: Reports one ``systemctl is-active`` state per unit, or exits 127 when systemd is not running.
_SYSTEMD_SCRIPT = (
    "command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] || exit 127; "
    'for u; do printf "%s\\n" "$(systemctl is-active -- "$u" 2>/dev/null || true)"; done'
)
#: Prints one process count per name (``pgrep -x``), or exits 127 when pgrep is missing.
_PROCESS_SCRIPT = (
    'command -v pgrep >/dev/null 2>&1 || exit 127; for p; do pgrep -x -- "$p" | wc -l; done'
)
#: Connects to $1:$2 within $3 seconds with bash's /dev/tcp (else ``nc -z``); the address and
#: port are arguments, never interpolated into the script.
_TCP_SCRIPT = (
    "if command -v bash >/dev/null 2>&1; then"
    ' exec timeout "$3" bash -c \'exec 3<>"/dev/tcp/$1/$2"\' bash "$1" "$2"; fi; '
    'command -v nc >/dev/null 2>&1 || exit 127; exec nc -z -w "$3" "$1" "$2"'
)
#: Runs "$@" if its program exists on the host, else exits 127 (as over SSH, also locally).
_IF_INSTALLED = 'command -v "$1" >/dev/null 2>&1 || exit 127; exec "$@"'
#: curl's exit status when ``--max-time`` expired.
CURL_TIMED_OUT = 28


def parse_unit_states(text: str, count: int) -> list[str]:
    """One ``systemctl is-active`` line per unit -> ``count`` states in the same order; a unit
    without a line (or with an empty one) gets ``""``."""
    return (text.splitlines() + [""] * count)[:count]


def parse_process_counts(text: str, count: int) -> list[int]:
    """One ``pgrep -x NAME | wc -l`` line per name -> ``count`` numbers of processes running,
    in the same order; a name without a line gets 0. ``ValueError`` on a line that is not a
    number."""
    return ([int(line.strip() or 0) for line in text.splitlines()] + [0] * count)[:count]


def parse_curl_answer(text: str) -> tuple[int, float]:
    """curl's ``-w "%{http_code} %{time_total}"`` -> (HTTP status, seconds the request took);
    ``ValueError`` when the status is not a number."""
    code, _, seconds = text.strip().partition(" ")
    return int(code), float(seconds or 0)


@dataclass(frozen=True)
class TcpProbe:
    """The outcome of one TCP connect made from the host."""

    open: bool
    #: The connect gave up at its timeout (as opposed to refused or unreachable).
    timed_out: bool
    #: Seconds from starting the probe command to its end, transport overhead included.
    seconds: float


# --- files: log files and byte ranges -------------------------------------------------------

#: $1 = follow|nofollow, then globs (IFS is empty: a glob is expanded, never split at spaces).
#: NUL-terminated records, since a file name may hold a newline: "f<TAB>inode<TAB>size<TAB>path"
#: per matching file, "r…" for its rotated predecessor PATH.1, "l<TAB>path" for a symlink not
#: followed, "m<TAB>glob" when nothing matches.
_LIST_SCRIPT = r"""
mode=$1; shift; IFS=
# true when an absolute path reaches its file through a symlinked folder
linked() { case $1 in /*) [ "$(readlink -f -- "$1")" != "$1" ];; *) false;; esac; }
st() { if [ "$mode" = follow ]; then stat -L --printf "$1" -- "$2"; else stat --printf "$1" -- "$2"; fi; }
for pat do
  n=0
  for f in $pat; do
    if [ "$mode" != follow ] && { [ -L "$f" ] || linked "$f"; }; then
      printf 'l\t%s\0' "$f"; n=1; continue
    fi
    [ -f "$f" ] || continue
    n=1; st 'f\t%i\t%s\t%n\0' "$f"
    if [ -f "$f.1" ] && { [ "$mode" = follow ] || [ ! -L "$f.1" ]; }; then
      st 'r\t%i\t%s\t%n\0' "$f.1"
    fi
  done
  [ $n = 1 ] || printf 'm\t%s\0' "$pat"
done
true
"""
#: Bytes $1.. (1-based) of file $2, at most $3 of them; $4 = follow|nofollow.
_READ_SCRIPT = (
    '[ "$4" = follow ] || [ ! -L "$2" ] || { echo "$2 became a symbolic link" >&2; exit 3; }; '
    'tail -c +"$1" -- "$2" | head -c "$3"'
)


@dataclass(frozen=True)
class FileStat:
    """A regular file on the host: its path, inode number and size in bytes."""

    path: str
    inode: int
    size: int


@dataclass
class FileListing:
    """What globs matched on the host."""

    files: list[tuple[FileStat, FileStat | None]]  # (file, its rotated PATH.1 or None)
    missing: list[str]  # globs that matched nothing
    links: list[str]  # symlinks skipped (not followed)


def parse_file_listing(data: bytes) -> FileListing:
    """The NUL-terminated records of the listing script -> a ``FileListing``.

    A file two globs match is listed once; a rotated ``PATH.1`` record belongs to the file
    record just before it. An unreadable record (a name that broke the format) is skipped.
    """
    listing = FileListing([], [], [])
    seen: set[str] = set()  # a file two globs match is listed once
    current = False  # the last "f" record was new (its rotated ".1" belongs to it)
    for record in data.decode("utf-8", "surrogateescape").split("\0"):
        kind, _, rest = record.partition("\t")
        if kind == "m":
            listing.missing.append(rest)
        elif kind == "l":
            if rest not in listing.links:
                listing.links.append(rest)
        elif kind in ("f", "r"):
            inode, _, rest = rest.partition("\t")
            size, _, path = rest.partition("\t")
            if not (inode.isdigit() and size.isdigit() and path):
                log.debug("skipping an unreadable file listing record %r", record[:200])
                continue
            stat = FileStat(path, int(inode), int(size))
            if kind == "f":
                current = path not in seen
                if current:
                    seen.add(path)
                    listing.files.append((stat, None))
            elif current and listing.files and listing.files[-1][0].path + ".1" == path:
                listing.files[-1] = (listing.files[-1][0], stat)
    return listing


class ByteStream:
    """Bytes of one file on the host as they arrive (see ``HostOS.open_range``)."""

    def __init__(self, proc: Process, path: str) -> None:
        self._proc = proc
        self._result: CommandResult | None = None
        self.path = path

    def read(self, size: int = 1 << 16) -> bytes:
        """Up to ``size`` bytes; ``b""`` at the end. Raises ``HostError`` at the end when the
        read failed (the file vanished or became a symlink), ``CommandTimeout`` past the
        stream's timeout."""
        if self._result is not None:
            return b""
        chunk = self._proc.read(size)
        if not chunk:
            res = self._result = self._proc.wait(timeout=PROBE_TIMEOUT)
            if not res.ok:
                raise HostError(
                    f"reading {self.path} failed (exit {res.exit_status}): {res.stderr_tail()}"
                )
        return chunk


# --- the adapter ----------------------------------------------------------------------------


class HostOS:
    """A Linux host reached through ``transport``: read-only questions about its state.

    Every method takes ``timeout``, the seconds its command may take (``None``: no limit), and
    raises ``HostError`` (naming the host) when a command fails, besides the transport's own
    ``TransportError`` / ``CommandTimeout``.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def name(self) -> str:
        """The host's inventory name, as used in messages."""
        return self.transport.host

    def _run(
        self, command: Command, *, what: str, timeout: float | None = PROBE_TIMEOUT
    ) -> CommandResult:
        """Run a read-only command; a non-zero exit raises ``HostError`` with stderr's tail."""
        res = self.transport.run(command, timeout=timeout)
        if not res.ok:
            raise HostError(
                f"{what} failed (exit {res.exit_status}): {res.stderr_tail() or 'no output'}"
            )
        return res

    # -- resources ----------------------------------------------------------------------------

    def disks(
        self, mounts: Sequence[str] | None = None, *, timeout: float | None = PROBE_TIMEOUT
    ) -> list[DiskUsage]:
        """Real filesystems of the host (sizes in bytes), only those at ``mounts`` when given.

        Raises ``HostError`` when ``df`` fails or a mount in ``mounts`` is not a mounted
        filesystem.
        """
        disks = parse_df(self._run(["df", "-P", "-k"], what="df", timeout=timeout).text)
        if mounts:
            missing = sorted(set(mounts) - {d.mount for d in disks})
            if missing:
                raise HostError(f"no mounted filesystem at {', '.join(missing)}")
            disks = [d for d in disks if d.mount in mounts]
        return disks

    def free_bytes(self, path: str, *, timeout: float | None = PROBE_TIMEOUT) -> tuple[int, str]:
        """``(bytes, mount)``: what non-root users can still write on the filesystem that
        holds ``path`` (or, when it does not exist yet, its nearest existing parent), from
        ``df -P -k``. Raises ``HostError`` when df fails, ``ValueError`` on output that is
        not df's."""
        script = 'p=$1; while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done; exec df -P -k -- "$p"'
        text = self._run(["sh", "-c", script, "sh", path], what=f"df {path}", timeout=timeout)
        fields = text.text.strip().splitlines()[-1].split(None, 5)
        if len(fields) < 6:
            raise ValueError(f"df printed no filesystem for {path}")
        return int(fields[3]) * 1024, fields[5]

    def load_average(self, *, timeout: float | None = PROBE_TIMEOUT) -> tuple[float, float, float]:
        """(load1, load5, load15) from ``/proc/loadavg``; ``HostError`` when unreadable."""
        text = self._run(["cat", "/proc/loadavg"], what="reading /proc/loadavg", timeout=timeout)
        return parse_loadavg(text.text)

    def cpu_count(self, *, timeout: float | None = PROBE_TIMEOUT) -> int:
        """Online CPUs (``getconf _NPROCESSORS_ONLN``), at least 1; ``HostError`` on failure,
        ``ValueError`` when getconf prints something that is not a number."""
        text = self._run(["getconf", "_NPROCESSORS_ONLN"], what="getconf", timeout=timeout).text
        return max(int(text.strip() or 1), 1)

    def memory(self, *, timeout: float | None = PROBE_TIMEOUT) -> dict[str, int]:
        """``/proc/meminfo`` as {field: bytes} (``MemTotal``, ``MemAvailable`` …); counts
        without a unit stay counts. ``HostError`` when unreadable."""
        res = self._run(["cat", "/proc/meminfo"], what="reading /proc/meminfo", timeout=timeout)
        return parse_meminfo(res.text)

    # -- services -----------------------------------------------------------------------------

    def unit_states(
        self, units: Sequence[str], *, timeout: float | None = PROBE_TIMEOUT
    ) -> list[str]:
        """The ``systemctl is-active`` state of each unit, in order (``active``, ``inactive``,
        ``failed`` …; ``""`` when systemctl printed nothing for it).

        Raises ``ToolMissing`` where systemd is not running (containers), ``HostError`` when
        the command fails otherwise.
        """
        res = self.transport.run(["sh", "-c", _SYSTEMD_SCRIPT, "sh", *units], timeout=timeout)
        if res.exit_status == NOT_INSTALLED:
            raise ToolMissing("systemctl not available")
        if not res.ok:
            raise HostError(f"systemctl failed (exit {res.exit_status}): {res.stderr_tail()}")
        return parse_unit_states(res.text, len(units))

    def process_counts(
        self, names: Sequence[str], *, timeout: float | None = PROBE_TIMEOUT
    ) -> list[int]:
        """How many processes run with exactly each name, in order (``pgrep -x``, names of at
        most 15 characters). Raises ``ToolMissing`` without pgrep, ``HostError`` when it fails."""
        res = self.transport.run(["sh", "-c", _PROCESS_SCRIPT, "sh", *names], timeout=timeout)
        if res.exit_status == NOT_INSTALLED:
            raise ToolMissing("pgrep not available; install procps")
        if not res.ok:
            raise HostError(f"pgrep failed (exit {res.exit_status}): {res.stderr_tail()}")
        return parse_process_counts(res.text, len(names))

    def tcp_probe(
        self,
        address: str,
        port: int,
        *,
        connect_timeout: float,
        timeout: float | None = PROBE_TIMEOUT,
    ) -> TcpProbe:
        """Try a TCP connection from the host to ``address:port`` within ``connect_timeout``
        seconds (at least 0.1 s); ``timeout`` bounds the whole command.

        A refused, unreachable or timed-out port is a result, not an error. Raises
        ``ToolMissing`` when the host has neither bash nor nc.
        """
        seconds = f"{max(connect_timeout, 0.1):g}"
        started = time.monotonic()
        res = self.transport.run(
            ["sh", "-c", _TCP_SCRIPT, "sh", address, str(port), seconds], timeout=timeout
        )
        if res.exit_status == NOT_INSTALLED:
            raise ToolMissing("neither bash nor nc available for TCP checks")
        return TcpProbe(
            open=res.ok, timed_out=res.exit_status == 124, seconds=time.monotonic() - started
        )

    def http_status(
        self,
        url: str,
        *,
        max_time: float,
        follow_redirects: bool = False,
        timeout: float | None = PROBE_TIMEOUT,
    ) -> tuple[int, float]:
        """Request ``url`` with curl on the host: (HTTP status, seconds the request took).

        ``max_time`` bounds the request (curl ``--max-time``), ``timeout`` the command. Raises
        ``ToolMissing`` without curl, ``HostError`` when no answer came within ``max_time``
        or the request failed (connection refused, TLS, DNS).
        """
        cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"]
        cmd += ["--max-time", f"{max_time:g}"] + (["-L"] if follow_redirects else []) + [url]
        res = self.transport.run(["sh", "-c", _IF_INSTALLED, "sh", *cmd], timeout=timeout)
        if res.exit_status == NOT_INSTALLED:
            raise ToolMissing(f"curl not available on {self.name}")
        if res.exit_status == CURL_TIMED_OUT:
            raise HostError(f"no answer within {max_time:g}s")
        if not res.ok:
            raise HostError(f"curl exit {res.exit_status}: {res.stderr_tail() or 'request failed'}")
        return parse_curl_answer(res.text)

    # -- files --------------------------------------------------------------------------------

    def log_files(
        self,
        globs: Sequence[str],
        *,
        follow: bool = False,
        timeout: float | None = PROBE_TIMEOUT,
    ) -> FileListing:
        """Regular files matching ``globs`` (expanded on the host), each with its rotated
        predecessor ``PATH.1`` when there is one (logrotate's naming).

        Symlinks, and files reached through a symlinked folder, are skipped and listed in
        ``links`` unless ``follow``: a path must not become a way to read any file the user
        can (a link to a root-only file). Any file name, newlines included, is one record.
        Raises ``HostError`` when the listing command fails.
        """
        mode = "follow" if follow else "nofollow"
        res = self._run(
            ["sh", "-c", _LIST_SCRIPT, "sh", mode, *globs],
            what="listing log files",
            timeout=timeout,
        )
        return parse_file_listing(res.stdout)

    @contextmanager
    def open_range(
        self, path: str, start: int, length: int, *, follow: bool = False, timeout: float
    ) -> Iterator[ByteStream]:
        """Stream ``length`` bytes of ``path`` from byte offset ``start`` (0-based), never the
        whole file in memory; ``timeout`` seconds bound the whole stream.

        Without ``follow`` a path that has become a symlink is refused (``HostError`` from
        ``read`` at the end); a file that has vanished reads as empty. Leaving the block early
        stops the command on the host.
        """
        command = [
            "sh", "-c", _READ_SCRIPT, "sh",
            str(start + 1), path, str(length), "follow" if follow else "nofollow",
        ]  # fmt: skip
        with self.transport.start(command, stdout="stream") as proc:
            proc.close_stdin()
            proc.set_timeout(timeout)
            yield ByteStream(proc, path)

    # -- packages -----------------------------------------------------------------------------

    def package_updates(
        self, *, refresh: bool = False, timeout: float | None = PROBE_TIMEOUT
    ) -> PendingUpdates:
        """What an upgrade of the host would install, from apt's simulation (``apt-get -s
        dist-upgrade``) or dnf (``check-update``, ``updateinfo --security``,
        ``needs-restarting -r``), with the reboot flag and the age of the package lists.

        Changes nothing unless ``refresh``, which first updates the package lists (``apt-get
        update`` / ``dnf makecache``, root and network needed). Raises ``ToolMissing`` on a
        host with neither apt-get nor dnf, ``HostError`` when a command fails.
        """
        facts = self._package_facts(timeout)
        if facts.manager == "apt":
            if refresh:
                self._run(packages.APT_REFRESH, what="apt-get update", timeout=timeout)
                facts = self._package_facts(timeout)  # the lists' new age
            text = self._run(packages.APT_SIMULATE, what="apt-get -s dist-upgrade", timeout=timeout)
            pending = packages.parse_apt_simulation(text.text)
            pending.reboot_required = facts.reboot_required
            pending.reboot_packages = facts.reboot_packages
        elif facts.manager == "dnf":
            if refresh:
                self._run(packages.DNF_REFRESH, what="dnf makecache", timeout=timeout)
                facts = self._package_facts(timeout)  # the lists' new age
            check = self.transport.run(packages.DNF_CHECK_UPDATE, timeout=timeout)
            if check.exit_status not in (0, packages.DNF_UPDATES_PENDING):
                raise HostError(
                    f"dnf check-update failed (exit {check.exit_status}): {check.stderr_tail()}"
                )
            security = self._run(packages.DNF_SECURITY, what="dnf updateinfo", timeout=timeout)
            reboot = self._dnf_reboot(timeout)
            pending = packages.dnf_pending(check.text, security.text, reboot)
            if pending.security and facts.now is not None:
                info = self.transport.run(packages.DNF_SECURITY_INFO, timeout=timeout)
                issued = packages.parse_dnf_advisory_dates(info.text) if info.ok else None
                if issued is not None:  # a refinement: without it the counts still stand
                    pending.oldest_security_age_seconds = max(0.0, facts.now - issued)
        else:
            raise ToolMissing(f"neither apt-get nor dnf on {self.name}")
        pending.lists_age_seconds = facts.lists_age_seconds
        return pending

    def apply_updates(
        self, manager: str, updates: list[PackageUpdate], *, timeout: float | None
    ) -> AppliedUpdates:
        """Install exactly ``updates`` (from ``package_updates``; apt pins each to its
        simulated candidate) and read back what is installed and whether a reboot is now
        required. Needs root (the login user, or ``become: sudo``).

        Raises ``HostError`` when the commands do not run as root, or ``ToolMissing``
        when the host's package manager is not ``manager``, both before anything is
        installed; a failed install is not raised but returned (``failed``), with the
        versions read after it, so a partial upgrade is recorded as what it is."""
        facts = self._package_facts(timeout)
        if facts.manager != manager:
            raise ToolMissing(f"{manager} is not the package manager on {self.name} any more")
        if facts.uid != 0:
            raise HostError(
                f"applying updates on {self.name} needs root, and the commands run as uid"
                f" {facts.uid if facts.uid is not None else 'unknown'}: connect as root or set"
                " become: sudo on the host"
            )
        names = [u.name for u in updates]
        before = self._installed_versions(manager, names, timeout)
        started = time.monotonic()
        res = self.transport.run(packages.install_command(manager, updates), timeout=timeout)
        seconds = time.monotonic() - started
        after = self._installed_versions(manager, names, timeout)
        if manager == "apt":
            facts = self._package_facts(timeout)
            reboot, reboot_pkgs = facts.reboot_required, facts.reboot_packages
        else:
            reboot, reboot_pkgs = self._dnf_reboot(timeout)
        failed = None if res.ok else f"exit {res.exit_status}: {res.stderr_tail() or 'no output'}"
        return AppliedUpdates(manager, before, after, failed, reboot, reboot_pkgs, seconds)

    def _installed_versions(
        self, manager: str, names: list[str], timeout: float | None
    ) -> dict[str, str]:
        if not names:
            return {}
        res = self.transport.run(packages.versions_command(manager, names), timeout=timeout)
        return packages.parse_versions(res.text)

    def _dnf_reboot(self, timeout: float | None) -> tuple[bool, list[str]]:
        """``needs-restarting -r``: (reboot needed, the packages it names); (False, []) when
        dnf-utils is not installed (the reboot is then unknown, not judged)."""
        restart = self.transport.run(
            ["sh", "-c", _IF_INSTALLED, "sh", *packages.NEEDS_RESTARTING], timeout=timeout
        )
        if restart.exit_status == NOT_INSTALLED:
            return False, []
        return packages.parse_needs_restarting(restart.text, restart.exit_status)

    def _package_facts(self, timeout: float | None) -> packages.PackageFacts:
        """The package manager, the host's clock, the lists' age and the reboot flag."""
        res = self._run(["sh", "-c", packages.FACTS_SCRIPT], what="package facts", timeout=timeout)
        return packages.parse_package_facts(res.text)

    # -- accounts: SSH keys and root ---------------------------------------------------------

    def ssh_access(
        self,
        *,
        authorized_keys: Sequence[str] | None = None,
        sshd_config: str | None = None,
        timeout: float | None = PROBE_TIMEOUT,
    ) -> accounts.Snapshot:
        """Who can log in over SSH with a key and who can become root, as a snapshot for a
        baseline (sections and shapes: ``engines/accounts.py``), from one script on the host.

        ``authorized_keys``: the files to read, as sshd's ``AuthorizedKeysFile`` patterns
        (``%h``, ``%u``, ``%U``, ``%%``; relative to each home); default: what ``sshd -T``
        says (of ``sshd_config`` when given), or sshd's default when it cannot run (not
        root). ``Match`` blocks are not seen. Run as root (``become: sudo``) to see every
        file, sudoers rules and password states; what was not seen is said in the snapshot.
        Raises ``ToolMissing`` without ``base64``, ``HostError`` when the script fails or
        lists no account.
        """
        mode = "sshd" if authorized_keys is None else "given"
        command = [
            "sh", "-c", accounts.ACCESS_SCRIPT, "sh",
            str(accounts.READ_LIMIT), sshd_config or "", mode, *(authorized_keys or ()),
        ]  # fmt: skip
        res = self.transport.run(command, timeout=timeout)
        if res.exit_status == NOT_INSTALLED:
            raise ToolMissing(f"base64 not available on {self.name}; install coreutils")
        if not res.ok:
            raise HostError(
                f"listing SSH access failed (exit {res.exit_status}): {res.stderr_tail()}"
            )
        probe = accounts.parse_probe(res.stdout, read_limit=accounts.READ_LIMIT)
        if not probe.accounts:
            raise HostError(f"no accounts listed on {self.name} (getent passwd printed none)")
        return accounts.build_snapshot(probe)

    # -- configuration files ------------------------------------------------------------------

    def config_files(
        self,
        patterns: Sequence[str],
        *,
        max_bytes: int,
        budget: int,
        timeout: float | None = PROBE_TIMEOUT,
    ) -> list[config_files.ConfigFile]:
        """The files at ``patterns`` (absolute paths and globs, expanded on the host), each with
        its mode, owner, group, size, the host's sha256 of the whole file and, up to
        ``max_bytes`` each and ``budget`` in all, its raw content (script and symlink rules in
        ``engines/config_files.py``). Missing, unreadable and non-regular paths are results.
        Raises ``ToolMissing`` without sha256sum/base64/stat, ``HostError`` when it fails."""
        command = ["sh", "-c", config_files.READ_SCRIPT, "sh", str(max_bytes), str(budget)]
        res = self.transport.run([*command, *patterns], timeout=timeout)
        if res.exit_status == NOT_INSTALLED:
            raise ToolMissing(f"sha256sum, base64, stat or readlink missing on {self.name}")
        if not res.ok:
            raise HostError(
                f"reading configuration files failed (exit {res.exit_status}):"
                f" {res.stderr_tail() or 'no output'}"
            )
        try:
            return config_files.parse_config_files(res.stdout)
        except ValueError as exc:
            raise HostError(f"reading configuration files: {exc}") from exc
