"""Fan-out benchmark: the daily host health check over many SSH hosts.

Three shell commands per host (load, root filesystem, memory) on N real sshd hosts on
127.0.0.2 .. (loopback only), with host keys checked against one known_hosts file everywhere:

- crmmaint ``run`` through the CLI as a subprocess (end to end: Python startup, imports,
  inventory and playbook loading, journal), and the same run in-process (imports warm);
- ansible-core from PyPI in its own venv (bench/.work/ansible-venv), the same three commands as
  three ``shell`` tasks, gather_facts off; once with its defaults (ControlMaster/ControlPersist
  on, interpreter discovery), once with pipelining;
- plain OpenSSH: a sequential loop and a parallel ``xargs -P`` run, one session per host.

Every parallel contender is bounded to the same ``--forks`` hosts at once (crmmaint ``--forks``,
ansible forks, ``xargs -P``); by default as many as there are hosts.

Every contender gets fresh connections in every run (ansible's ControlPersist masters are closed
between runs: a daily check would not find them). Each is run ``--runs`` times, interleaved;
the median wall time is reported with ratios, and whether the targets are met:
crmmaint >= 5x faster than ansible's defaults, >= 2x faster than ansible with pipelining,
and within 1.5x of parallel plain ssh. Every subprocess contender runs under GNU time
(``/usr/bin/time -f %M``, if installed); its peak RSS (``ru_maxrss``, highest over the runs) is
that of the largest single process it started: the whole of the crmmaint CLI (one process,
threads), the largest ``ssh``/``sh`` or ansible process for the others (not their sum).

    .venv/bin/python bench/fanout.py [--hosts 20] [--forks N] [--runs 3] [--no-ansible] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
ANSIBLE_VENV = WORK / "ansible-venv"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from _sshd import SshdHost, sshd_hosts  # noqa: E402

#: The daily health check: the same three commands for every contender.
COMMANDS = ["cat /proc/loadavg", "df -P -k /", "head -3 /proc/meminfo"]

TARGETS = (
    ("ansible defaults", "crmmaint CLI", 5.0, "crmmaint >= 5x faster than ansible (defaults)"),
    ("ansible pipelining", "crmmaint CLI", 2.0, "crmmaint >= 2x faster than ansible (pipelining)"),
)
SSH_TARGET = 1.5  # crmmaint within 1.5x of parallel plain ssh
#: OpenSSH >= 9.0 prefers sntrup761x25519 (post-quantum, CPU-heavy); paramiko has no sntrup and
#: settles on curve25519 with an OpenSSH 9.2 server. A second parallel row forces the same KEX.
CURVE25519 = "curve25519-sha256"
#: GNU time measures each subprocess contender's peak RSS (see ``check_run``).
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


@dataclass
class Contender:
    name: str
    #: One run; returns the peak RSS in KiB of the largest process it started, or None.
    run: Callable[[], int | None]
    note: str = ""
    times: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def peak_rss_mib(self) -> float | None:
        return max(self.rss_kib) / 1024 if self.rss_kib else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


class BenchError(Exception):
    """A contender failed: its output says why."""


def check_run(
    args: list[str], log: Path, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)
) -> int | None:
    """Run a command with output to ``log``; raise ``BenchError`` with its tail on failure.

    Returns the peak RSS in KiB of the largest single process of the command's tree (GNU time's
    ``%M``, that is ``ru_maxrss`` from its ``wait4``), or None without ``/usr/bin/time``.
    ``os.wait4`` from here would not do: a child forked from this process and exec'ing starts
    with this process's high-water mark (the kernel keeps it across ``execve``), and the bench
    holds crmmaint's imports for the in-process contender, ~60 MiB. GNU time is small, so the
    process it forks starts from ~1 MiB.
    """
    rss_file = log.with_suffix(".rss")
    timed = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *args] if GNU_TIME else args
    with log.open("wb") as out:
        proc = subprocess.run(timed, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    if proc.returncode not in ok:
        tail = log.read_text(errors="replace")[-1500:]
        raise BenchError(f"{shlex.join(args[:3])} ... exited {proc.returncode}:\n{tail}")
    if not GNU_TIME:
        return None
    # A non-zero exit puts "Command exited with non-zero status N" on a line before %M.
    lines = rss_file.read_text().split()
    return int(lines[-1]) if lines and lines[-1].isdigit() else None


# --- crmmaint ------------------------------------------------------------------------------


def write_crmmaint_files(work: Path, hosts: list[SshdHost]) -> tuple[Path, Path, Path]:
    """An inventory of the sshd hosts and two one-step playbooks (shell.command, health.host)."""
    lines = ["hosts:"]
    for h in hosts:
        lines += [
            f"  {h.name}:",
            f"    address: {h.address}",
            f"    port: {h.port}",
            f"    user: {h.user}",
            f"    identity_file: {h.identity_file}",
            f"    known_hosts: {h.known_hosts}",
            "    connection: ssh",
            "    groups: [bench]",
        ]
    inventory = work / "inventory.yml"
    inventory.write_text("\n".join(lines) + "\n")
    shell = work / "fanout-shell.yml"
    shell.write_text(
        "name: fanout\nsteps:\n"
        "  - name: health commands\n    task: shell.command\n    hosts: all\n"
        "    with:\n      commands:\n" + "".join(f"        - {c}\n" for c in COMMANDS)
    )
    health = work / "fanout-health.yml"
    health.write_text(
        "name: fanout-health\nsteps:\n"
        "  - name: host health\n    task: health.host\n    hosts: all\n"
    )
    return inventory, shell, health


def crmmaint_program() -> list[str]:
    script = Path(sys.executable).with_name("crmmaint")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from crmmaint.cli import main; main()"]


def crmmaint_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMMAINT_")}
    env.update(
        CRMMAINT_JOURNAL=str(work / "journal.sqlite"),
        HOME=str(work / "home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    return env


def crmmaint_cli(
    work: Path, inventory: Path, playbook: Path, forks: int, ok: tuple[int, ...] = (0,)
) -> Callable[[], int | None]:
    args = [*crmmaint_program(), "run", str(playbook), "-i", str(inventory)]
    args += ["--forks", str(forks), "--json"]
    env = crmmaint_env(work)
    log = work / f"crmmaint-{playbook.stem}.log"
    return lambda: check_run(args, log, env, ok)


def crmmaint_in_process(
    work: Path, inventory: Path, playbook: Path, forks: int
) -> Callable[[], int | None]:
    """The same run through ``crmmaint.cli.main`` in this process (imports already done)."""
    os.environ.update({k: v for k, v in crmmaint_env(work).items() if k.startswith("CRMMAINT_")})
    from crmmaint.cli import main
    from crmmaint.transport.ssh import default_pool

    argv = ["crmmaint", "run", str(playbook), "-i", str(inventory), "--forks", str(forks)]
    argv.append("--json")

    def run() -> int | None:  # no RSS of its own: it shares the bench process
        out = io.StringIO()
        code: object = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                main(argv)
        except SystemExit as exc:
            code = exc.code
        finally:
            default_pool.close_all()  # the next run connects afresh, like the CLI
        if code not in (0, None):
            raise BenchError(f"crmmaint run exited {code}:\n{out.getvalue()[-1500:]}")
        return None

    return run


# --- ansible -------------------------------------------------------------------------------


def ensure_ansible() -> Path:
    """ansible-playbook from a venv of its own (made on first use: python -m venv + pip)."""
    playbook = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        print(f"installing ansible-core into {ANSIBLE_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(ANSIBLE_VENV)], check=True)
        subprocess.run(
            [str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"], check=True
        )
    return playbook


def write_ansible_files(work: Path, hosts: list[SshdHost]) -> tuple[Path, Path]:
    kh = hosts[0].known_hosts
    common = f"-o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes"
    lines = ["all:", "  vars:", f"    ansible_ssh_common_args: '{common}'", "  hosts:"]
    for h in hosts:
        lines += [
            f"    {h.name}:",
            f"      ansible_host: {h.address}",
            f"      ansible_port: {h.port}",
            f"      ansible_user: {h.user}",
            f"      ansible_ssh_private_key_file: {h.identity_file}",
        ]
    inventory = work / "ansible-inventory.yml"
    inventory.write_text("\n".join(lines) + "\n")
    playbook = work / "ansible-fanout.yml"
    tasks = "".join(
        f"    - name: {c}\n      ansible.builtin.shell: {c}\n      changed_when: false\n"
        for c in COMMANDS
    )
    playbook.write_text(f"- hosts: all\n  gather_facts: false\n  tasks:\n{tasks}")
    return inventory, playbook


def ansible_run(
    work: Path, hosts: list[SshdHost], *, pipelining: bool, forks: int
) -> Callable[[], int | None]:
    program = ensure_ansible()
    inventory, playbook = write_ansible_files(work, hosts)
    label = "pipelining" if pipelining else "defaults"
    home = work / f"ansible-home-{label}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        HOME=str(home),  # no ~/.ansible.cfg, ~/.ssh/config or leftovers from the user
        ANSIBLE_CONFIG=str(work / "no-ansible.cfg"),  # not present: built-in defaults
        ANSIBLE_HOST_KEY_CHECKING="True",
        ANSIBLE_REMOTE_TMP=str(home / "remote-tmp"),  # the "remote" is this machine
        ANSIBLE_FORKS=str(forks),
        ANSIBLE_NOCOLOR="1",
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
    )
    if pipelining:
        env["ANSIBLE_PIPELINING"] = "1"
    args = [str(program), "-i", str(inventory), str(playbook)]
    log = work / f"ansible-{label}.log"

    def run() -> int | None:
        home.mkdir(exist_ok=True)
        try:
            return check_run(args, log, env)
        finally:
            close_control_masters(home / ".ansible" / "cp")

    return run


def close_control_masters(directory: Path) -> None:
    """Stop ansible's ControlPersist masters, so the next run connects afresh."""
    if not directory.is_dir():
        return
    for sock in directory.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench-unused"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
        with contextlib.suppress(OSError):
            sock.unlink()


# --- plain ssh -----------------------------------------------------------------------------


def ssh_script(
    work: Path, hosts: list[SshdHost], *, parallel: int | None, kex: str | None = None
) -> Callable[[], int | None]:
    """One ``ssh`` session per host running the three commands: a loop, or ``xargs -P``."""
    h = hosts[0]
    listing = work / "ssh-hosts.txt"
    listing.write_text("".join(f"{x.address} {x.port}\n" for x in hosts))
    ssh = (
        f"ssh -i {shlex.quote(h.identity_file)} -o UserKnownHostsFile={shlex.quote(h.known_hosts)}"
        f" -o StrictHostKeyChecking=yes -o BatchMode=yes -n"
    )
    if kex:
        ssh += f" -o KexAlgorithms={kex}"
    remote = shlex.quote("; ".join(COMMANDS))
    if parallel is None:
        script = (
            f"set -e; while read -r addr port; do {ssh} -p $port {h.user}@$addr {remote}; "
            f"done < {shlex.quote(str(listing))}"
        )
        label = "sequential"
    else:
        one = f'{ssh} -p "$2" {h.user}@"$1" {remote}'
        script = (
            f"xargs -P {parallel} -n 2 sh -c {shlex.quote(one)} sh < {shlex.quote(str(listing))}"
        )
        label = "parallel" + (f"-{kex}" if kex else "")
    log = work / f"ssh-{label}.log"
    env = dict(os.environ, HOME=str(work / "home"))
    return lambda: check_run(["sh", "-c", script], log, env)


# --- measuring and reporting ---------------------------------------------------------------


def measure(contenders: list[Contender], runs: int) -> None:
    for i in range(runs):
        for c in contenders:
            if c.error:
                continue
            start = time.perf_counter()
            try:
                rss = c.run()
            except BenchError as exc:
                c.error = str(exc)
                print(f"  {c.name}: FAILED\n{exc}", file=sys.stderr)
                continue
            c.times.append(time.perf_counter() - start)
            shown = ""
            if rss is not None:
                c.rss_kib.append(rss)
                shown = f"  peak RSS {rss / 1024:6.1f} MiB"
            print(f"  run {i + 1}/{runs} {c.name:<24} {c.times[-1]:7.2f} s{shown}", file=sys.stderr)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(contenders: list[Contender], hosts: int, forks: int, runs: int) -> bool:
    by = {c.name: c.median for c in contenders}
    base, ssh = by.get("crmmaint CLI"), by.get("ssh parallel (xargs -P)")
    print(
        f"\nfan-out: {hosts} sshd hosts on loopback, {forks} at once (--forks, xargs -P), "
        f"{len(COMMANDS)} commands per host, median of {runs} run(s), {os.cpu_count()} CPUs, "
        "load average now " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    print(
        f"{'tool':<32} {'median s':>9} {'/ crmmaint CLI':>15} {'/ ssh parallel':>15}"
        f" {'peak RSS MiB':>13}"
    )
    for c in contenders:
        m, rss = c.median, c.peak_rss_mib
        shown = f"{m:9.2f}" if m is not None else f"{'failed':>9}"
        mib = f"{rss:13.1f}" if rss is not None else f"{'-':>13}"
        print(f"{c.name:<32} {shown} {ratio(m, base):>15} {ratio(m, ssh):>15} {mib}  {c.note}")
    print(
        "peak RSS: the largest single process of each run (GNU time %M, ru_maxrss), highest "
        "over the runs; the crmmaint CLI is one process"
    )

    print("\ntargets (crmmaint through the CLI, end to end):")
    met_all = True
    for other, ours, factor, text in TARGETS:
        o, m = by.get(other), by.get(ours)
        if o is None or m is None:
            print(f"  n/a   {text} (not measured)")
            continue
        met = o / m >= factor
        met_all &= met
        print(f"  {'MET ' if met else 'MISS'}  {text}: {o / m:.2f}x")
    if base is not None and ssh is not None:
        met = base / ssh <= SSH_TARGET
        met_all &= met
        print(
            f"  {'MET ' if met else 'MISS'}  crmmaint within {SSH_TARGET}x of parallel plain ssh: "
            f"{base / ssh:.2f}x"
        )
    same_kex = by.get("ssh parallel, curve25519")
    if base is not None and same_kex is not None:
        print(
            f"  info  crmmaint vs parallel plain ssh with the same KEX (curve25519): "
            f"{base / same_kex:.2f}x"
        )
    return met_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=20, help="sshd hosts (default 20)")
    parser.add_argument(
        "--forks",
        type=int,
        default=None,
        help="hosts at once for every parallel contender: crmmaint --forks, ansible forks, "
        "xargs -P (default: as many as --hosts)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (default 3)")
    parser.add_argument("--no-ansible", action="store_true", help="skip the ansible contenders")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    forks = args.hosts if args.forks is None else args.forks
    if forks < 1:
        parser.error(f"--forks must be at least 1, not {forks}")

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop every sshd.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fanout-", dir=WORK))
    (work / "home").mkdir()
    contenders: list[Contender] = []
    try:
        with sshd_hosts(args.hosts, work) as hosts:
            inventory, shell_book, health_book = write_crmmaint_files(work, hosts)
            contenders += [
                Contender("crmmaint CLI", crmmaint_cli(work, inventory, shell_book, forks)),
                Contender(
                    "crmmaint in-process",
                    crmmaint_in_process(work, inventory, shell_book, forks),
                    "imports warm",
                ),
                Contender(
                    "crmmaint CLI health.host",
                    # exit 1 (warnings) is a result: a busy bench machine trips the load check
                    crmmaint_cli(work, inventory, health_book, forks, ok=(0, 1)),
                    "4 probes, parsing (info only)",
                ),
            ]
            if not args.no_ansible:
                contenders += [
                    Contender(
                        "ansible defaults", ansible_run(work, hosts, pipelining=False, forks=forks)
                    ),
                    Contender(
                        "ansible pipelining",
                        ansible_run(work, hosts, pipelining=True, forks=forks),
                    ),
                ]
            contenders += [
                Contender("ssh sequential", ssh_script(work, hosts, parallel=None)),
                Contender(
                    "ssh parallel, curve25519",
                    ssh_script(work, hosts, parallel=forks, kex=CURVE25519),
                    "paramiko's KEX with this sshd",
                ),
                Contender("ssh parallel (xargs -P)", ssh_script(work, hosts, parallel=forks)),
            ]
            print(
                f"warming up: {args.hosts} hosts, one parallel ssh round (-P {forks})",
                file=sys.stderr,
            )
            contenders[-1].run()
            measure(contenders, args.runs)
            met = report(contenders, args.hosts, forks, args.runs)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = [c.name for c in contenders if c.error]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
