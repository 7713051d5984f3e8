"""The command line: one invoke Collection, used by ``tasks.py`` and the ``crmmaint`` program.

Thin by design: parse flags, call the library, print through the writers in
``crmmaint.reporting``. Every command translates ``CrmMaintError`` into a one-line message and the
error's exit code (no traceback unless ``--debug``), so ``invoke`` and ``crmmaint`` behave alike.
``crmmaint playbook check`` is accepted as well as invoke's ``crmmaint playbook.check``.

One module per command group (``runs``, ``playbooks``, ``backup``, ``keys``, ``repo``,
``demo``), all built on ``common``; this module assembles them and parses ``argv``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, Program
from invoke.exceptions import ParseError
from invoke.parser import Argument

from crmmaint import __version__
from crmmaint.cli import (
    audit,
    backup,
    baselines,
    demo,
    drills,
    keys,
    playbooks,
    repo,
    runs,
    schedule,
)
from crmmaint.cli.common import (
    OUTPUT_ERROR,
    CrmConfig,
    StderrWithoutReader,
    end_on_closed_pipe,
    format_error,
    occupy_closed_descriptors,
    to_devnull,
)
from crmmaint.errors import ConfigError, os_reason
from crmmaint.units import MAX_COUNT

# --- the collection ----------------------------------------------------------------------


def build_collection() -> Collection:
    """The whole CLI: every command module of this package adds its commands."""
    ns = Collection()
    for module in (runs, demo, playbooks, backup, drills, keys, repo, baselines, schedule, audit):
        module.register(ns)
    ns.configure({"inventory": None, "journal": None, "forks": 10})
    return ns


ns = build_collection()

#: Commands spoken as two words beside a command of the first word's name (``drill
#: report`` beside ``drill``): registered with a dash, as invoke cannot have a command and a
#: group of one name.
_SUBCOMMANDS = {"drill-report"}


def spoken(name: str) -> str:
    """A command's name as it is typed: ``backups.list`` -> ``backups list``,
    ``drill-report`` -> ``drill report``."""
    return name.replace(".", " ") if name not in _SUBCOMMANDS else name.replace("-", " ")


#: Commands invoked as ``crmmaint GROUP VERB`` and their variadic positional flag.
_VARIADIC = {"playbook.check": "--file", "drill": "--source"}
#: Commands whose single positional may be left out, and what it then means.
_OPTIONAL_POSITIONAL = {"show": "last", "drill": "all"}
_HELP_FLAGS = {"--help", "-h"}
_CORE_VALUE_FLAGS = {"-f", "--config", "-T", "--command-timeout", "--hide", "-r", "--search-root"}


def normalize_argv(argv: list[str]) -> list[str]:
    """Accept ``GROUP VERB`` for invoke's ``GROUP.VERB``, ``--debug`` anywhere, ``-i FILE``
    before the command as well as after it, and several files after ``playbook check``.

    Raises ``ConfigError`` for a flag given twice (which of two values was meant cannot be
    guessed; invoke would take the second as a command).
    """
    args = _inventory_after_command(list(argv))
    i = 1
    while i < len(args) and args[i].startswith("-"):
        _check_option(args[i])
        i += 2 if args[i] in _CORE_VALUE_FLAGS else 1
    # ``-d`` is invoke's core debug flag only before the command: after it, it is the command's
    # own short flag (``backup -d NAME`` is ``--database``).
    if "--debug" in args[1:] or "-d" in args[1:i]:
        os.environ["CRMMAINT_DEBUG"] = "1"
    if (
        i + 1 < len(args)
        and args[i] in ns.collections
        and args[i + 1] in ns.collections[args[i]].tasks
    ):
        args[i : i + 2] = [f"{args[i]}.{args[i + 1]}"]
    elif i + 1 < len(args) and f"{args[i]}-{args[i + 1]}" in _SUBCOMMANDS:
        args[i : i + 2] = [f"{args[i]}-{args[i + 1]}"]  # ``drill report``
    if i < len(args) and _HELP_FLAGS & set(args[1:i] + args[i + 1 :]):
        # ``--help`` anywhere with a command: its help, and nothing runs (before,
        # ``keys generate --help`` wrote an identity file named ``--help``).
        return [args[0], *(a for a in args[1:i] if a not in _HELP_FLAGS), "--help", args[i]]
    if i < len(args):
        # ``--debug`` before a command is crmmaint's (set above), not invoke's own debug
        # logging of its parser.
        before = [a for a in args[1:i] if a not in ("--debug", "-d")]
        args[1:i] = before
        i = 1 + len(before)
    if i < len(args) and args[i] in ns.task_names:
        _check_arguments(args[i], args[i + 1 :])
    if i < len(args) and args[i] in _VARIADIC:
        flag = _VARIADIC[args[i]]
        valued = _valued_flags(args[i])
        rest, out, j = args[i + 1 :], [], 0
        while j < len(rest):
            tok = rest[j]
            if tok.startswith("-"):
                out.append(tok)
                if j + 1 < len(rest) and tok in valued:  # the flag's value, whatever it is
                    out.append(rest[j + 1])
                    j += 1
            else:
                out += [flag, tok]
            j += 1
        args[i + 1 :] = out
    if i < len(args) and args[i] in _OPTIONAL_POSITIONAL:
        name = args[i]
        if name in _VARIADIC:  # its words became flags above
            if _VARIADIC[name] not in args[i + 1 :]:
                args += [_VARIADIC[name], _OPTIONAL_POSITIONAL[name]]
        elif not _has_positional(args[i + 1 :], _valued_flags(name)):
            args.append(_OPTIONAL_POSITIONAL[name])
    return args


def _valued_flags(command: str) -> set[str]:
    """The flags of ``command`` that take a value (``--backup ID``), as typed."""
    return {
        ("-" if len(name) == 1 else "--") + name
        for arg in ns[command].get_arguments()
        if arg.takes_value
        for name in arg.names
    }


#: The options crmmaint takes before a command (``print_help`` lists them); invoke's other core
#: options (``--echo``, ``--dry``, ``--prompt-for-sudo-password`` …) are about running shell
#: commands through invoke, which crmmaint's commands do not do.
_OPTIONS = {"--help", "-h", "--version", "-V", "--debug", "-d", "-f", "--config"}


def _check_option(word: str) -> None:
    """A word before the command: one of ``_OPTIONS`` (or ``--config=FILE``), else exit 3."""
    if word in _OPTIONS or word.startswith("--config="):
        return
    if word == "--":
        raise ConfigError("'--' before a command: crmmaint takes no words after '--'")
    raise ConfigError(
        f"unknown option {word!r} (see `crmmaint --help`; a command's flags go after it)"
    )


def _inventory_after_command(args: list[str]) -> list[str]:
    """``crmmaint -i FILE history`` as ``crmmaint history -i FILE``: ``-i`` is every command's
    flag, not one of invoke's core options, so it moves behind the command."""
    moved: list[str] = []
    i = 1
    while i < len(args) and args[i].startswith("-"):
        flag = args[i]
        if flag in ("-i", "--inventory") and i + 1 >= len(args):
            raise ConfigError(f"{flag} needs a FILE: the inventory", hint="see `crmmaint --help`")
        if flag in ("-i", "--inventory"):
            moved += args[i : i + 2]
            del args[i : i + 2]
        elif flag.startswith("--inventory="):
            moved.append(args.pop(i))
        else:
            i += 2 if flag in _CORE_VALUE_FLAGS else 1
    if not moved or i >= len(args):
        return args
    two_words = i + 1 < len(args) and (
        f"{args[i]}.{args[i + 1]}" in ns.task_names or f"{args[i]}-{args[i + 1]}" in _SUBCOMMANDS
    )
    end = i + 2 if two_words else i + 1
    return [*args[:end], *moved, *args[end:]]


#: ``-1``, ``-0.5``: a negative number, never a flag.
_NEGATIVE = re.compile(r"-\d+(\.\d*)?")


def _check_arguments(name: str, rest: list[str]) -> None:
    """The words after command ``name``, checked before anything runs (exit 3, one line):
    no flag twice (which of two values was meant cannot be guessed), no empty value (``--tags
    ''`` would mean every tag), counts whole numbers in range (``--limit 99…9`` would overflow
    the journal's integers), no negative number where a flag is read, and no more positional
    words than the command takes (invoke would run a second word as another command)."""
    command = f"crmmaint {spoken(name)}"
    see = f"see `{command} --help`"
    arguments = ns[name].get_arguments()
    flags: dict[str, Argument] = {}
    for arg in arguments:
        for flag in arg.names:
            flags[("-" if len(flag) == 1 else "--") + flag] = arg
    seen: set[str] = set()
    words: list[str] = []
    flagged: list[Argument] = []  # positionals given as flags (``--output FILE``)
    j = 0
    while j < len(rest):
        word = rest[j]
        j += 1
        if word == "--":
            raise ConfigError(
                f"'--' after `{command}`: crmmaint takes no words after '--' (they would be "
                "dropped, and the command run without them)",
                hint=see,
            )
        if not word.startswith("-") or word == "-":
            words.append(word)
            continue
        if _NEGATIVE.fullmatch(word):
            raise ConfigError(
                f"{word!r} is not a flag of `{command}`",
                hint=f"counts and run ids are whole numbers from 1; {see}",
            )
        flag, eq, value = word.partition("=")
        arg = flags.get(flag)
        if arg is None:  # invoke would take its own core options here (`-d`, `--list` …)
            raise ConfigError(f"unknown flag {flag!r} for `{command}`", hint=see)
        canonical = "--" + arg.names[0]
        if arg.kind is not list:
            if canonical in seen:
                raise ConfigError(
                    f"{canonical} is given twice to `{command}`",
                    hint="give it once; a flag that takes several values takes them "
                    "comma-separated",
                )
            seen.add(canonical)
        if not arg.takes_value:
            if eq:
                raise ConfigError(f"{canonical} takes no value, got {word!r}", hint=see)
            continue
        if not eq:
            if j >= len(rest):
                raise ConfigError(f"{canonical} needs a value", hint=see)
            value = rest[j]
            j += 1
        if arg.positional:
            arguments = [a for a in arguments if a is not arg]
            flagged.append(arg)
        if not value.strip():
            raise ConfigError(f"{canonical} is given an empty value", hint=see)
        _check_count(arg, canonical, value, see)
    takes = [a for a in arguments if a.positional]
    if name in _VARIADIC or len(words) <= len(takes):
        return
    extra = words[len(takes)]
    if flagged:
        arg = flagged[0]
        raise ConfigError(
            f"{_metavar(arg)} is given twice to `{command}`: as {extra!r} and as --{arg.names[0]}",
            hint="give it once",
        )
    if extra in ns.task_names or extra in ns.collections:
        raise ConfigError(
            f"one command at a time: {extra!r} after `{command}` is another command",
            hint="run them one after the other",
        )
    wanted = " ".join(_metavar(a) for a in takes)
    raise ConfigError(
        f"unexpected argument {extra!r}: `{command}` takes "
        + (f"one {wanted}" if wanted else "no positional argument"),
        hint=see,
    )


def _check_count(arg: Argument, flag: str, value: str, see: str) -> None:
    """A count flag's value: a whole number from 1 (from 0 for a ``--keep-*`` rule, where 0
    turns the rule off) to ``MAX_COUNT``."""
    if arg.kind is int:
        low = 1
    elif arg.names[0].startswith("keep-") and arg.names[0] != "keep-within":
        low = 0
    else:
        return
    if not re.fullmatch(r"\+?\d+", value.strip()) or not low <= int(value) <= MAX_COUNT:
        raise ConfigError(
            f"{flag} takes a whole number from {low} to {MAX_COUNT}, not {value!r}", hint=see
        )


def _has_positional(rest: list[str], valued: set[str]) -> bool:
    j = 0
    while j < len(rest):
        if rest[j].startswith("-"):
            j += 2 if rest[j] in valued and "=" not in rest[j] else 1
            continue
        return True
    return False


def usage_error(exc: ParseError) -> str:
    """invoke's parser message as crmmaint's one line: what is wrong, and where to look."""
    text = str(exc)
    found = re.match(r"'([\w.-]+)' did not receive required positional arguments: (.*)$", text)
    if found:
        command, names = found.group(1), re.findall(r"'(\w+)'", found.group(2))
        wanted = ", ".join(_METAVARS.get(name, name.upper()) for name in names)
        command = spoken(command)
        return f"crmmaint {command} needs {wanted} (see `crmmaint {command} --help`)"
    found = re.match(r"No idea what '(.*)' is!$", text)
    if found:
        word = found.group(1)
        if word in ns.collections:
            verbs = " or ".join(f"`crmmaint {word} {verb}`" for verb in ns.collections[word].tasks)
            return f"{word} is a group of commands: {verbs}"
        what = "flag" if word.startswith("-") else "command"
        return f"unknown {what} {word!r} (see `crmmaint --help` and `crmmaint COMMAND --help`)"
    found = re.match(r"Flag <Argument: (\w+).*> needed value and was not given one!$", text)
    if found:
        flag = "--" + found.group(1).replace("_", "-")
        return f"{flag} needs a value (see `crmmaint COMMAND --help`)"
    return f"{text} (see `crmmaint --help`)"


class CrmProgram(Program):  # type: ignore[misc]
    # ``run``: invoke's turns a KeyboardInterrupt while it parses into a silent exit 1;
    # crmmaint's is 130 with one line, as an interrupt anywhere else.
    """invoke's ``Program`` whose help is crmmaint's: its commands and the few options that
    apply to all of them, not invoke's core options for running shell commands; and whose
    parser errors (a missing argument, an unknown flag) are configuration errors (exit 3)
    with one line that says what to do."""

    def run(self, argv: list[str] | None = None, exit: bool = True) -> None:
        """invoke's ``run``; an interrupt while it parses or loads configuration (before a
        command's own handling) ends with 130 and one line, not invoke's silent exit 1."""
        interrupted: list[bool] = []
        previous = {
            sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }

        def on_interrupt(signum: int, frame: object) -> None:
            interrupted.append(True)
            raise KeyboardInterrupt(f"signal {signum}")

        for sig, handler in previous.items():
            if handler is not signal.SIG_IGN:  # `crmmaint backup &` from a script: ignored
                signal.signal(sig, on_interrupt)
        try:
            super().run(argv, exit)
        except SystemExit as done:
            if interrupted and done.code == 1:
                print("crmmaint: interrupted", file=sys.stderr)
                raise SystemExit(130) from None
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def update_config(self, merge: bool = True) -> None:
        """invoke's layers, with ``./crmmaint.yaml`` as the project file (invoke would look
        beside the task collection, inside the installed package), and each file crmmaint
        would read checked first: ``-f FILE`` must exist, and every file must be a YAML
        mapping of ``inventory``, ``journal`` and ``forks`` (exit 3 with file:line; invoke
        printed a parser traceback, or ignored a missing file or a misspelt key)."""
        try:
            runtime = self.args.config.value
            if runtime:
                check_config_file(Path(runtime), required=True)
            for path in (Path("/etc/crmmaint.yaml"), Path("~/.crmmaint.yaml").expanduser(),
                         Path("crmmaint.yaml")):  # fmt: skip
                check_config_file(path, required=False)
        except ConfigError as exc:
            raise Exit(format_error(exc), code=ConfigError.exit_code) from None
        super().update_config(merge=False)
        self.config.set_project_location(os.getcwd())
        self.config.load_project(merge=False)
        if merge:
            self.config.merge()

    def parse_core(self, argv: list[str] | None) -> None:
        try:
            super().parse_core(argv)
        except ParseError as exc:
            raise Exit(f"crmmaint: error: {usage_error(exc)}", code=ConfigError.exit_code) from None

    def parse_tasks(self) -> None:
        try:
            super().parse_tasks()
        except ParseError as exc:
            raise Exit(f"crmmaint: error: {usage_error(exc)}", code=ConfigError.exit_code) from None

    def parse_cleanup(self) -> None:
        group = self.args.help.value
        if isinstance(group, str) and group in self.collection.collections:
            self.print_group_help(group)
            raise Exit
        try:
            super().parse_cleanup()
        except ParseError as exc:
            raise Exit(f"crmmaint: error: {usage_error(exc)}", code=ConfigError.exit_code) from None
        if len(self.tasks) > 1:
            names = " and ".join(f"`{spoken(ctx.name)}`" for ctx in self.tasks)
            raise Exit(
                f"crmmaint: error: one command at a time, got {names}"
                " (see `crmmaint --help`; a word after a command that takes none is read as"
                " another command)",
                code=ConfigError.exit_code,
            )

    def print_task_help(self, name: str) -> None:
        """One command's help: usage with its arguments, what it does, and its flags with the
        kind of value each takes (``--to NAME``, not invoke's ``--to=STRING``)."""
        command = spoken(name)
        arguments = list(dict.fromkeys(self.parser.contexts[name].flags.values()))
        arguments = [*self.parser.contexts[name].positional_args, *arguments]
        arguments = list(dict.fromkeys(arguments))
        positional = [_metavar(arg) for arg in arguments if arg.positional]
        print(f"Usage: {self.binary} {' '.join([command, *positional])} [options]")
        print("")
        for line in _doc(self.collection[name]).splitlines():
            print(f"{self.leading_indent}{line}" if line.strip() else "")
        print("")
        print("Arguments and options:" if positional else "Options:")
        print("")
        self.print_columns(
            [(_flag_usage(arg), arg.help or "") for arg in sorted(arguments, key=_help_order)]
        )

    def print_group_help(self, group: str) -> None:
        """``crmmaint backups --help``: the commands of one group."""
        print(f"Usage: {self.binary} {group} COMMAND [options]")
        print("")
        print("Commands:")
        print("")
        self.print_columns(_command_pairs(self.collection.collections[group], f"{group} "))

    def print_help(self) -> None:
        print(
            f"Usage: {self.binary} COMMAND [--options]   ({self.binary} COMMAND --help: its flags)"
        )
        print("")
        print("Options:")
        print("")
        self.print_columns(
            [
                ("--help", "show this help (COMMAND --help: the command's)"),
                ("--version", "show the version"),
                ("--debug", "show tracebacks of errors"),
                ("-f FILE, --config=FILE", "a configuration file (inventory, journal, forks)"),
                ("-i FILE, --inventory=FILE", "the inventory (every command takes it)"),
            ]
        )
        print("Commands:")
        print("")
        pairs = _command_pairs(self.collection, "")
        for group, sub in sorted(self.collection.collections.items()):
            pairs += _command_pairs(sub, f"{group} ")
        self.print_columns(pairs)


#: What a flag's value is, where its name does not say it well enough.
_METAVARS = {
    "inventory": "FILE",
    "identity": "FILE",
    "output": "FILE",
    "file": "FILE...",
    "timeout": "DURATION",
    "keep_within": "DURATION",
    "to": "NAME",
    "repository": "NAME",
    "database": "NAMES",
    "fileset": "NAMES",
    "limit": "HOSTS",
    "step": "NAMES",
    "playbook": "PLAYBOOK",
    "playbooks": "NAMES",
    "read_data_subset": "PERCENT",
    "source": "SOURCE...",
    "rto": "DURATION",
    "since": "DURATION",
    "backup": "ID",
    "target": "NAME",
}


def _metavar(arg: Argument) -> str:
    if arg.kind is int:  # counts (`history --limit N`; `run --limit HOSTS` is below)
        return "N"
    if arg.name in _METAVARS:
        return _METAVARS[arg.name]
    if arg.name.startswith("keep_"):  # counts (keep-within is above)
        return "N"
    return arg.names[0].upper().replace("-", "_")


def _flag_usage(arg: Argument) -> str:
    if arg.positional:  # also given as a flag: ``keys generate --output FILE``
        return f"{_metavar(arg)}, --{arg.names[0]} {_metavar(arg)}"
    flags = ", ".join(("-" if len(f) == 1 else "--") + f for f in sorted(arg.names, key=len))
    return f"{flags} {_metavar(arg)}" if arg.takes_value else flags


def _help_order(arg: Argument) -> tuple[int, str]:
    common = ("inventory", "json", "debug")
    rank = 0 if arg.positional else 2 if arg.name in common else 1
    return rank, arg.name


def _doc(obj: Any) -> str:
    """A command's docstring as a user reads it: reST's ``literal`` marks as `literal`."""
    return re.sub(r"``(.+?)``", r"`\1`", inspect.getdoc(obj) or "")


def _command_pairs(coll: Collection, prefix: str) -> list[tuple[str, str]]:
    """(``backups list``, first paragraph of its docstring) for each command of ``coll``."""
    return [
        (prefix + spoken(name), " ".join(_doc(task).split("\n\n")[0].split()))
        for name, task in sorted(coll.tasks.items())
    ]


program = CrmProgram(
    name="crmmaint",
    binary="crmmaint",
    namespace=ns,
    version=__version__,
    config_class=CrmConfig,
)


#: What a configuration file (``-f FILE``, ``./crmmaint.yaml`` …) may set, and how to check it.
CONFIG_KEYS = ("inventory", "journal", "forks")


def check_config_file(path: Path, *, required: bool) -> None:
    """A configuration file crmmaint reads: a YAML mapping whose keys are ``CONFIG_KEYS``
    (``inventory`` and ``journal`` paths, ``forks`` a count from 1 to ``MAX_COUNT``). Raises
    ``ConfigError`` naming the file and line; a missing file is one only when ``required``."""
    from crmmaint.yamlsource import SourceError, line_of, load_yaml_file

    if not required and not path.exists():
        return
    try:
        doc = load_yaml_file(path)
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise SourceError(f"a configuration file is a mapping of {', '.join(CONFIG_KEYS)}")
        for key, value in doc.items():
            line = line_of(doc, key)
            if key not in CONFIG_KEYS:
                raise SourceError(
                    f"unknown key {key!r}; a configuration file sets " + ", ".join(CONFIG_KEYS),
                    line,
                )
            if key == "forks":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise SourceError(f"forks must be a whole number, not {value!r}", line)
                if not 1 <= value <= MAX_COUNT:
                    raise SourceError(f"forks must be from 1 to {MAX_COUNT}, not {value}", line)
            elif not isinstance(value, str) or not value.strip():
                raise SourceError(f"{key} must be a path, not {value!r}", line)
    except SourceError as exc:
        where = f"{path}:{exc.line}" if exc.line else str(path)
        raise ConfigError(
            f"{where}: {exc.message}", hint='see docs/inventory.md, "Configuration files"'
        ) from None


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``crmmaint`` console script.

    A flag value of the wrong type (``--jobs abc``) fails in invoke's parser, before any
    command's own error handling: it becomes a one-line configuration error (exit 3).
    """
    # A service manager stops crmmaint with SIGTERM: end like an interrupt (exit 130), so the
    # journal records the run as ended and the commands it started are killed.
    for sig in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the ssh session dropped
        if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored (nohup): stays so
            signal.signal(sig, _terminate)
    occupy_closed_descriptors()  # started with stdout or stderr closed (`>&-`, `2>&-`)
    if not isinstance(sys.stderr, StderrWithoutReader):
        sys.stderr = StderrWithoutReader(sys.stderr)  # type: ignore[assignment]
    try:
        args = normalize_argv(list(argv) if argv is not None else sys.argv)
    except ConfigError as exc:
        print(format_error(exc), file=sys.stderr)
        sys.exit(ConfigError.exit_code)
    if not [a for a in args[1:] if a not in ("--debug", "-d")]:
        # `crmmaint` alone (a cron line cut short): the help, and a failure a wrapper sees
        with contextlib.suppress(SystemExit):
            program.run([args[0], "--help"])
        print("crmmaint: error: no command given (see the commands above)", file=sys.stderr)
        sys.exit(ConfigError.exit_code)
    try:
        program.run(args)
    except BrokenPipeError:  # help or a listing piped into ``head``
        try:
            end_on_closed_pipe()
        except Exit as done:
            sys.exit(done.code)
    except OSError as exc:  # help or a parser message that cannot be written
        print(f"crmmaint: error: cannot write the output: {os_reason(exc)}", file=sys.stderr)
        with contextlib.suppress(OSError, ValueError):
            to_devnull(sys.stdout.fileno())
        sys.exit(OUTPUT_ERROR)
    except ValueError as exc:
        found = re.search(r"invalid literal for (\w+)\(\) with base 10: (.*)$", str(exc))
        what = f"a whole number was expected, got {found.group(2)}" if found else str(exc)
        print(
            f"crmmaint: error: {what} (see `crmmaint --help COMMAND` for each flag's value)",
            file=sys.stderr,
        )
        sys.exit(ConfigError.exit_code)
