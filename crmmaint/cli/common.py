"""What every command group of the CLI shares: the ``@command`` wrapper (errors, exit codes,
logging), the common flags' help, opening the inventory and the journal, ``execute``, which runs,
journals and reports a playbook, and ``execute_adhoc`` for the one-step commands. Every command
module of the package builds on it; none imports another command module."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import io
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from invoke import Argument, Config, Exit, Task, task

from crmmaint.audit import CURRENT, AuditTrail, current_trail
from crmmaint.errors import (
    INTERNAL_ERROR_EXIT,
    OUTPUT_LOSS_SAID,
    ConfigError,
    CrmMaintError,
    OutputWriteError,
    os_reason,
)
from crmmaint.inventory import Inventory, load_inventory
from crmmaint.journal import Journal, current_user, default_journal_path
from crmmaint.reporting.console import (
    ConsoleReporter,
    JsonReporter,
    TransferProgressReporter,
    make_console,
    visible,
)

if TYPE_CHECKING:
    from crmmaint.playbook.runner import RunSummary, TargetResult

log = logging.getLogger("crmmaint")

#: Exit code for a failure that is a bug in crmmaint rather than bad input.
INTERNAL_ERROR = INTERNAL_ERROR_EXIT
INTERRUPTED = 130


class CrmConfig(Config):
    """invoke's layered config with our prefix: /etc/crmmaint.yaml < ~/.crmmaint.yaml <
    ./crmmaint.yaml < CRMMAINT_* env < -f file < flags."""

    prefix = "crmmaint"
    env_prefix = "CRMMAINT"

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        defaults = Config.global_defaults()
        defaults.update({"inventory": None, "journal": None, "forks": 10})
        return defaults


# --- shared plumbing ---------------------------------------------------------------------


def _debug_enabled(kwargs: dict[str, Any]) -> bool:
    return bool(kwargs.get("debug")) or os.environ.get("CRMMAINT_DEBUG") == "1"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes: while a progress bar is live,
    that is rich's proxy, which prints the line above the bar instead of through it."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING
    root = logging.getLogger("crmmaint")
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    # paramiko logs a failed handshake (a port that never sends a banner) with a traceback
    # from its own thread; the error crmmaint raises for it says what and where in one line.
    logging.getLogger("paramiko").setLevel(logging.INFO if debug else logging.CRITICAL)


def program_name() -> str:
    """How the user ran crmmaint, for commands we suggest: ``.venv/bin/crmmaint`` when run
    by path (``make demo``), ``crmmaint`` when found on PATH."""
    name = sys.argv[0] if sys.argv and sys.argv[0] else "crmmaint"
    return name if "/" in name and Path(name).name == "crmmaint" else "crmmaint"


def format_error(exc: CrmMaintError) -> str:
    return f"crmmaint: error: {exc}"


#: Exit code when the reader of our output went away (``crmmaint history | head``): the
#: shell's code for a process ended by SIGPIPE (128 + 13), as git and coreutils give.
CLOSED_PIPE = 141
#: Exit code when the output cannot be written (``crmmaint history > /dev/full``: no space,
#: an I/O error): sysexits.h's EX_IOERR, beside its EX_SOFTWARE (70) for a bug.
OUTPUT_ERROR = 74

#: The only short flags: one meaning in every command. Every other flag is long only.
SHORT_FLAGS = {"inventory": "i"}


class CommandTask(Task):  # type: ignore[misc]
    """invoke's ``Task`` without its automatic short flags (``-d`` was ``--debug`` in one
    command and ``--database`` in the next; ``--keep-monthly`` came out as ``--``): only
    ``SHORT_FLAGS`` have one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        if short is not None and short not in taken_names:
            opts["names"] = [*opts["names"], short]
        return opts

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        """invoke's arguments, with each parameter that is both positional and iterable made a
        ``PositionalList``: ``invoke playbook.check FILE`` works as ``--file FILE`` does."""
        args: list[Argument] = super().get_arguments(ignore_unknown_help=ignore_unknown_help)
        return [
            PositionalList.like(arg) if arg.positional and arg.kind is list else arg for arg in args
        ]


class PositionalList(Argument):  # type: ignore[misc]
    """A repeatable flag (``--file A --file B``) whose first value may also come positionally
    (``playbook.check A``), as plain ``invoke`` parses it. invoke's parser fills a positional
    only while its value is ``None`` and never fills a list one (it starts as ``[]``), so the
    value reads ``None`` until something is given; one given neither way is a usage error."""

    @classmethod
    def like(cls, arg: Argument) -> PositionalList:
        """The same argument (names, help, default) as a ``PositionalList``."""
        return cls(
            names=arg.names, kind=list, default=arg.default, help=arg.help, positional=True,
            attr_name=arg.attr_name,
        )  # fmt: skip

    @property
    def value(self) -> list[str] | None:
        return self._value or None

    @value.setter
    def value(self, arg: str) -> None:
        self.set_value(arg)

    def set_value(self, value: Any, cast: bool = True) -> None:
        self.raw_value = value
        self._value = [*(self._value or []), value]


def to_devnull(fd: int) -> None:
    """Point ``fd`` (stdout's, stderr's) at /dev/null: what is still written there, Python's
    own flush at exit included, goes nowhere instead of failing again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def end_on_closed_pipe() -> None:
    """The reader of stdout is gone (``| head``): end quietly with ``CLOSED_PIPE`` (stdout
    goes to /dev/null, so the flush at exit is quiet too)."""
    to_devnull(sys.stdout.fileno())
    raise Exit(code=CLOSED_PIPE)


class StderrWithoutReader:
    """sys.stderr for the whole program: when its reader has gone (``crmmaint run daily 2>&1
    | true``), what crmmaint says there is dropped and the work goes on (a run still does all
    its work and exits with its own code); before, the first notice on stderr ended the run
    with nothing done."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return int(self._stream.write(text))
            except OSError:  # a closed pipe, a full disk (`2>/dev/full`)
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except OSError:  # a closed pipe, a full disk (`2>/dev/full`)
                self._drop()

    def _drop(self) -> None:
        self._gone = True
        with contextlib.suppress(OSError, ValueError):
            to_devnull(self._stream.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _refuse_help_as_a_value(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``--help`` (or ``-h``) taken as an argument's value, as plain invoke's parser does
    (``invoke keys.generate --help`` gave FILE the value ``--help``, and an identity file of
    that name was written): a configuration error before the command does anything. The
    ``crmmaint`` program prints the command's help instead (``normalize_argv``)."""
    values = [*args, *kwargs.values()]
    if any(isinstance(v, str) and v in ("--help", "-h") for v in values):
        raise ConfigError(
            "--help was taken as an argument's value, so nothing was run",
            hint=f"for the command's help run `crmmaint {name.replace('_', ' ')} --help` or "
            "`invoke --help COMMAND`",
        )


def _internal_error(exc: BaseException, debug: bool) -> NoReturn:
    """A bug: one line naming it and exit 70 (the traceback with ``--debug``)."""
    if debug:
        traceback.print_exception(exc)
        raise Exit(f"crmmaint: internal error: {exc!r}", code=INTERNAL_ERROR) from None
    raise Exit(
        f"crmmaint: internal error: {exc!r} (run again with --debug for the traceback"
        " and report it)",
        code=INTERNAL_ERROR,
    ) from None


class _GuardedStdout:
    """sys.stdout while a command runs: a failed write or flush raises ``OutputWriteError``,
    so the command's error handling tells the output's failure from a bug (both are an
    ``OSError`` to Python). A closed pipe stays ``BrokenPipeError``."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputWriteError(exc) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputWriteError(exc) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class ClosedStdout(io.TextIOBase):
    """sys.stdout when crmmaint was started with stdout closed (``crmmaint run daily >&-``):
    every write fails as a write to ``/dev/full`` does, so a listing ends with exit 74 and a
    run does all its work, saying once that its report was lost. File descriptor 1 itself
    holds ``/dev/null`` (``occupy_closed_descriptors``)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    def fileno(self) -> int:
        return 1


def occupy_closed_descriptors() -> None:
    """Open ``/dev/null`` on each of file descriptors 0, 1 and 2 that crmmaint was started
    without (``>&-``, ``2>&-``): else the first file crmmaint opens (the journal) would
    take the number, and a command it starts would write its output into that file. A
    closed stdout becomes ``ClosedStdout``, a closed stderr writes to ``/dev/null``."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
    if sys.stdout is None:
        sys.stdout = ClosedStdout()
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 (the process's own stderr)


def end_on_output_error(failed: OutputWriteError) -> NoReturn:
    """stdout cannot be written (no space, an I/O error): say so on stderr in one line and end
    with ``OUTPUT_ERROR``; stdout goes to /dev/null so Python's own flush at exit is quiet."""
    to_devnull(sys.stdout.fileno())
    reason = os_reason(failed.errno_error)
    raise Exit(
        f"crmmaint: error: cannot write the output: {reason} (check where stdout goes)",
        code=OUTPUT_ERROR,
    )


def command(
    *args: Any,
    audit: str | None = None,
    dry_run: Callable[[dict[str, Any]], bool] | None = None,
    **kwargs: Any,
) -> Any:
    """``invoke.task`` plus the top-level error handling every command shares.

    ``audit``: the command changes something and is recorded in the audit trail under this
    name (``crmmaint.audit``): its start row when it opens its journal (or calls
    ``audit_begins``), its end row with the exit code however it ends. ``dry_run(kwargs)``
    says when an invocation changes nothing and is not recorded (default: ``--check``)."""

    def decorate(func: Callable[..., Any]) -> Any:
        defaults = {
            name: p.default
            for name, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty
        }

        @functools.wraps(func)
        def wrapper(c: Any, *a: Any, **k: Any) -> Any:
            if audit is None or (dry_run or _checking)(k):
                return _run_command(func, c, a, k)
            given = {
                name: value
                for name, value in k.items()
                if name not in ("debug", "json")
                and value != defaults.get(name, inspect.Parameter.empty)
            }
            trail = AuditTrail(audit, list(sys.argv), given)
            token = CURRENT.set(trail)
            code = INTERNAL_ERROR
            try:
                done = _run_command(func, c, a, k)
                code = 0
                return done
            except Exit as exc:
                code = exc.code
                raise
            finally:
                CURRENT.reset(token)
                _end_audit(c, trail, code)

        params = inspect.signature(func).parameters
        help_ = {k: v for k, v in {**COMMON_HELP, **kwargs.pop("help", {})}.items() if k in params}
        return task(wrapper, *args, help=help_, klass=CommandTask, **kwargs)

    return decorate


def _checking(kwargs: dict[str, Any]) -> bool:
    return bool(kwargs.get("check"))


def _end_audit(c: Any, trail: AuditTrail, code: int) -> None:
    """The end row of an audited command. One that ended before it began to act (refused
    once its inventory was read: a bad playbook, a prune without a policy) gets its start
    row now; one refused before that is not recorded (there is no journal to know of)."""
    if not trail.begun and code != 0 and trail.inventory_read:
        try:
            trail.begin(journal_path(c, trail.inventory))
        except Exception as exc:  # the command's own error is the one to report
            log.debug("could not record %s in the audit trail: %s", trail.command, exc)
            return
    trail.end(code)


def _run_command(func: Callable[..., Any], c: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    """Run one command with the top-level error handling: a ``CrmMaintError`` as one line and
    its exit code, Ctrl-C as 130, a closed pipe 141, lost output 74, a bug 70."""
    debug = _debug_enabled(k)
    setup_logging(debug)
    stdout = sys.stdout
    sys.stdout = _GuardedStdout(stdout)  # type: ignore[assignment]
    try:
        _refuse_help_as_a_value(func.__name__, a, k)
        done = func(c, *a, **k)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's exit
        return done
    except Exit:
        raise
    except CrmMaintError as exc:
        if debug:
            traceback.print_exc()
        raise Exit(format_error(exc), code=exc.exit_code) from None
    except KeyboardInterrupt as exc:
        describe = getattr(exc, "describe", None)
        what = f": {describe()}" if describe else ""
        raise Exit(f"crmmaint: interrupted{what}", code=INTERRUPTED) from None
    except BrokenPipeError:
        end_on_closed_pipe()
    except OutputWriteError as exc:
        end_on_output_error(exc)
    except Exception as exc:
        _internal_error(exc, debug)
    finally:
        if isinstance(sys.stdout, _GuardedStdout):
            sys.stdout = stdout


def audit_begins(c: Any, inv: Inventory | None, targets: list[str] | None = None) -> None:
    """An audited command that never opens its journal (``repo init``, ``keys generate``) is
    about to act on ``targets``: its start row goes into the journal of ``inv`` (``None``:
    the configured or the user's journal). Nothing outside an audited command."""
    trail = current_trail()
    if trail is None:
        return
    trail.targets.extend(targets or [])
    trail.inventory, trail.inventory_read = inv, True
    trail.begin(journal_path(c, inv))


REPO_HELP = "repository name from the inventory (default: the default repository)"

COMMON_HELP = {
    "inventory": "inventory file (default: config 'inventory', $CRMMAINT_INVENTORY, ./inventory.yml)",
    "json": "print machine-readable JSON",
    "debug": "show tracebacks of errors",
}


def helps(**extra: str) -> dict[str, str]:
    return {**COMMON_HELP, **extra}


def inventory_path(c: Any, given: str | None) -> Path:
    """Flag, then config/env, then ./inventory.yml; a clear error when there is none."""
    candidates = [given, _config_get(c, "inventory"), os.environ.get("CRMMAINT_INVENTORY")]
    for cand in candidates:
        if cand:
            return Path(cand).expanduser()
    if Path("inventory.yml").exists():
        # Said on stderr: the file decides which hosts are reached and which cmd: secrets run.
        print(f"crmmaint: using {Path('inventory.yml').absolute()} (no -i given)", file=sys.stderr)
        return Path("inventory.yml")
    raise ConfigError(
        "no inventory given",
        hint="pass -i FILE, set CRMMAINT_INVENTORY, or run `crmmaint demo` for a sample estate",
    )


def open_inventory(c: Any, given: str | None) -> Inventory:
    inv = load_inventory(inventory_path(c, given))
    _inventory_read(inv)
    return inv


#: The help of ``--override`` on every command a blackout stops.
OVERRIDE_HELP = (
    'act during a blackout of the schedule anyway, saying why ("hotfix 4711"); recorded in'
    " the audit trail with who"
)


def honour_blackout(
    c: Any,
    inv: Inventory,
    what: str,
    *,
    override: str | None,
    check: bool,
    command: str | None = None,
) -> None:
    """Refuse a command that changes something (``what``: ``playbook daily``, ``backup``;
    ``command``: its name in the audit trail, default ``what``)
    while a blackout of the inventory's schedule is in force (``BlackoutError``, exit 11),
    unless ``override`` gives a reason: then the override is recorded in the audit trail and
    said on stderr (the reason redacted and cut: ``audit.override_reason``). ``check``
    (changes nothing) is never refused. An override outside any blackout is said to be
    needless and recorded nowhere. Nothing is imported or read for an inventory without a
    schedule."""
    if inv.schedule is None and override is None:
        return
    from datetime import datetime

    from crmmaint.audit import override_reason, record_override
    from crmmaint.schedule.plan import check_blackout

    overridden = check_blackout(
        inv, datetime.now().astimezone(), what=what, override=override, check=check
    )
    if overridden is None:
        if override is not None and not check:
            print(
                "crmmaint: no blackout is in force: --override is not needed (no override recorded)",
                file=sys.stderr,
            )
        return
    with open_journal(c, inv) as journal:
        record_override(
            journal,
            reason=override or "",
            blackout=overridden.name,
            argv=list(sys.argv),
            command=command or what,
        )
    print(
        f"crmmaint: blackout {visible(overridden.name)!r} overridden by"
        f" {visible(current_user())}: {visible(override_reason(override or ''))}",
        file=sys.stderr,
    )


def _inventory_read(inv: Inventory | None) -> None:
    """The audited command running now has read its inventory: its journal is known."""
    trail = current_trail()
    if trail is not None:
        trail.inventory, trail.inventory_read = inv, True


def journal_path(c: Any, inventory: Inventory | None) -> Path:
    """Journal path: config/env, then the inventory's ``settings.journal``, then the user data dir."""
    path = _config_get(c, "journal") or os.environ.get("CRMMAINT_JOURNAL")
    if not path and inventory is not None and inventory.settings.get("journal"):
        path = str(
            Path(inventory.path).parent / Path(str(inventory.settings["journal"])).expanduser()
        )
    return Path(path) if path else default_journal_path()


def open_journal(c: Any, inventory: Inventory | None) -> Journal:
    """The journal (``journal_path``). An audited command opening it begins to act: its
    start row is written here (``crmmaint.audit``)."""
    journal = Journal(journal_path(c, inventory))
    trail = current_trail()
    if trail is not None and not trail.begun:
        trail.inventory, trail.inventory_read = inventory, True
        trail.begin(journal.path)
    return journal


def _config_get(c: Any, key: str) -> Any:
    config = getattr(c, "config", None)
    if config is None:
        return None
    try:
        return config.get(key)
    except (AttributeError, KeyError):
        return None


def split_list(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


# --- commands ----------------------------------------------------------------------------


def execute(
    c: Any,
    inv: Inventory,
    book: Any,
    *,
    check: bool = False,
    limit: list[str] | None = None,
    tags: list[str] | None = None,
    steps: list[str] | None = None,
    forks: int = 0,
    json: bool = False,
    verbose: bool = False,
    one_target: bool = False,
    ends_at: datetime | None = None,
) -> RunSummary:
    """Plan and run a playbook (``ends_at``: its deadline), journal it, report it; exit with the run's code when not 0
    (``one_target``: the code of the one target's failure, ``RunSummary.exit_code``), else
    return the run's summary."""
    summary = _run_reported(
        c,
        inv,
        book,
        JsonReporter() if json else ConsoleReporter(verbose=verbose, check=check),
        check=check,
        limit=limit,
        tags=tags,
        steps=steps,
        forks=forks,
        footer=not json,
        one_target=one_target,
        ends_at=ends_at,
    )
    if summary.exit_code:
        raise Exit(code=summary.exit_code)
    return summary


def execute_adhoc(
    c: Any,
    inv: Inventory,
    name: str,
    steps: list[Any],
    *,
    check: bool = False,
    json: bool = False,
) -> RunSummary:
    """Run a command's one-step playbook (``steps``: ``AdhocStep`` s) like ``execute``; a
    failure of its only target exits with that failure's code."""
    from crmmaint.playbook.run import adhoc_playbook

    book = adhoc_playbook(name, steps, inv)
    return execute(c, inv, book, check=check, json=json, one_target=True)


def execute_one(
    c: Any, inv: Inventory, name: str, step: Any, *, check: bool = False, json: bool = False
) -> TargetResult:
    """Run a command that acts on one target (``restore``) as a journaled one-step playbook.

    Prints the result's message on stdout (a failure: the one line ``crmmaint: error:
    MESSAGE`` on stderr), then the journal line on stderr as every run does; a progress bar
    of a long transfer on stderr when it is a TTY is gone before anything else is printed.
    A failure exits with the code of the error the task raised (the README's table), so a
    wrapper can tell a wrong key (8) from a damaged backup (9). ``json``: the run's JSON only.
    """
    from crmmaint.playbook.run import adhoc_playbook
    from crmmaint.playbook.runner import MultiReporter

    book = adhoc_playbook(name, [step], inv)
    bars = TransferProgressReporter()
    summary = _run_reported(
        c,
        inv,
        book,
        MultiReporter(JsonReporter(), bars) if json else bars,
        check=check,
        footer=not json,
        one_target=True,
        before_footer=None if json else _say_result,
    )
    row = summary.results[0]
    if row.status == "failed":
        raise Exit(code=summary.exit_code)
    return row


def _say_result(summary: RunSummary) -> None:
    """The one result of a one-target command: its message on stdout, or an error line."""
    row = summary.results[0]
    if row.status == "failed":
        print(f"crmmaint: error: {row.result.message}", file=sys.stderr)
        return
    with output_after_work():
        print(row.result.message)


@contextlib.contextmanager
def output_after_work() -> Iterator[None]:
    """Around what a command prints once its work is done and journaled (a restore's result
    line, prune's table): output that cannot be written (a closed pipe, a full disk, a closed
    stdout) is said once on stderr and the command keeps its exit code, as a run does
    (README, exit codes 74 and 141)."""
    try:
        yield
        sys.stdout.flush()
    except (OSError, OutputWriteError) as exc:
        reason = os_reason(exc.errno_error if isinstance(exc, OutputWriteError) else exc)
        with contextlib.suppress(OSError, ValueError):
            to_devnull(sys.stdout.fileno())
        if not OUTPUT_LOSS_SAID.is_set() and not isinstance(exc, BrokenPipeError):
            OUTPUT_LOSS_SAID.set()
            print(f"crmmaint: the result could not be written ({reason}); it is in the journal",
                  file=sys.stderr)  # fmt: skip


def _run_reported(
    c: Any,
    inv: Inventory,
    book: Any,
    reporter: Any,
    *,
    footer: bool,
    before_footer: Callable[[RunSummary], None] | None = None,
    one_target: bool = False,
    check: bool = False,
    limit: list[str] | None = None,
    tags: list[str] | None = None,
    steps: list[str] | None = None,
    forks: int = 0,
    ends_at: datetime | None = None,
) -> RunSummary:
    from crmmaint.playbook.run import run_playbook

    with open_journal(c, inv) as journal:
        try:
            summary = run_playbook(
                book,
                inv,
                journal,
                check=check,
                limit=limit,
                tags=tags,
                steps=steps,
                forks=forks or int(_config_get(c, "forks") or 10),
                reporter=reporter,
                argv=sys.argv,
                one_target=one_target,
                ends_at=ends_at,
            )
        finally:  # an interrupted run ends without on_run_end: its live bars go here
            for each in getattr(reporter, "reporters", (reporter,)):
                if (close := getattr(each, "close", None)) is not None:
                    close()
        if before_footer is not None:
            before_footer(summary)
        if footer:
            again = f" -i {inv.path}" if inv.path else ""
            make_console(sys.stderr).print(  # one line to copy, whatever the width; a path
                f"journal: {journal.path} ({program_name()} show {summary.run_id}{again})",
                soft_wrap=True,  # is never read as markup
                markup=False,
                highlight=False,
            )
    return summary


def typed_here(inv: Inventory, kind: str, name: str, value: str) -> str:
    """A restore or drill target typed on the command line for the ``kind`` (database,
    fileset) ``name``: a relative path for a SQLite file or a directory on this machine is
    from the current directory (the engines read one beside the source); anything else
    (a database name, a remote path) as typed."""
    target = inv.target(kind, name)
    is_path = kind == "fileset" or getattr(target.obj, "engine", "") == "sqlite"
    if is_path and target.host.is_local and not value.startswith("/"):
        return os.path.abspath(value)
    return value


def maybe_inventory(c: Any, given: str | None) -> Inventory | None:
    """The inventory when one is given or found, else ``None`` (commands that work without,
    reading the user's own journal). One named (``-i``, ``$CRMMAINT_INVENTORY``, the config's
    ``inventory``) that is missing or invalid is an error: quietly reading another, empty
    journal would look like success to a wrapper."""
    named = given or _config_get(c, "inventory") or os.environ.get("CRMMAINT_INVENTORY")
    try:
        return open_inventory(c, given)
    except ConfigError:
        if named:
            raise
        _inventory_read(None)
        return None


#: The largest whole number the journal (SQLite INTEGER) stores.
MAX_INTEGER = 2**63 - 1


def parse_int(text: str, what: str, *, low: int = 1, high: int = MAX_INTEGER) -> int:
    """``text`` as a whole number from ``low`` to ``high``; a ``ConfigError`` (exit 3)
    naming ``what`` otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number, not {text!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{what} must be a whole number from {low} to {high}, not {text!r}")
    return value


def local_time(ts: float | None) -> str:
    """A journal timestamp (seconds since the epoch) in local time, ``-`` for none."""
    from datetime import datetime

    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
