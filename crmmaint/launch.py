"""The ``crmmaint`` program's entry point: signals are handled before anything heavy loads.

Importing the CLI (invoke, paramiko, boto3, rich, the engines) takes a noticeable part of a
second; a Ctrl-C or a service manager's SIGTERM in that window printed a traceback of the
import (or ended with 143). Here both are an interrupt before the first import: exit 130 with
one line, as an interrupt anywhere else (README, exit codes); once the command has ended they
are held back, so a finished command keeps its code. Only the standard library is imported at
module level. A signal in the few milliseconds before Python runs this module still ends the
process as the signal's default does (143 for SIGTERM).
"""

from __future__ import annotations

import signal
import sys

#: The exit code of an interrupt (128 + SIGINT), as ``crmmaint.cli.common.INTERRUPTED``.
INTERRUPTED = 130


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    """Run the CLI (``crmmaint.cli.main``) with SIGTERM and SIGINT ending it as an interrupt
    from the first instruction on; exits with the CLI's code, or 130 when interrupted before
    a command took over its own interrupt handling."""
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a service manager; a dropped session
        if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored one (nohup) stays so
            signal.signal(sig, _terminate)
    from crmmaint.interrupts import HOLD_AFTER_RUN  # the standard library only

    HOLD_AFTER_RUN.set()  # this process ends with its command
    try:
        from crmmaint.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        print("crmmaint: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    finally:
        # The command has ended and its exit code is set: a signal now (while Python shuts
        # down, which restores the default handlers) would end a finished restore with 143.
        # Ignored (process-wide: another thread, an SSH connection's, may be the one a signal
        # is delivered to; Python's shutdown leaves an ignored signal ignored), it is dropped.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
