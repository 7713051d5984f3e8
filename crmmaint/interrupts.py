"""The process-wide word that the run is ending (Ctrl-C, SIGTERM): waits that are not
commands (a repository lock, ...) end at once, instead of holding the process until they are
done. Commands are killed by the runner; these waits look at ``STOPPING``.

The runner sets ``STOPPING`` when an interrupt ends a run and clears it when a run starts.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Set while the process is ending a run because of an interrupt.
STOPPING = threading.Event()

#: Set by the ``crmmaint`` program (``launch.main``), which ends when its command has: once a
#: run is finished and journaled, Ctrl-C and SIGTERM are held back for the rest of the
#: process, so a finished command keeps its code (a signal just after a restore's result line
#: turned its 0 into 130). Code that runs playbooks in a longer-lived process leaves it unset.
HOLD_AFTER_RUN = threading.Event()


#: The signals that end a run as an interrupt.
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class HeldInterrupts:
    """Interrupts held back by ``hold_interrupts``: the handlers to give back, and the
    signals that came meanwhile (in order)."""

    previous: dict[int, Callable[..., Any] | int] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)


def hold_interrupts() -> HeldInterrupts | None:
    """Hold Ctrl-C, SIGTERM and SIGHUP back: until ``release_interrupts``, one that comes is
    noted, not acted on. ``None`` outside the main thread (only it can set handlers).

    The Python handlers are swapped, not the thread's signal mask: a process with other
    threads (SSH connections, pools) may have a signal delivered to any of them, and Python
    then runs its handler in the main thread whatever that thread's mask. An ignored signal
    (``nohup``, ``&`` in a script) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return None
    held = HeldInterrupts()
    for sig in INTERRUPT_SIGNALS:
        old = signal.getsignal(sig)
        if old is None or old == signal.SIG_IGN:
            continue
        held.previous[sig] = old
        signal.signal(sig, lambda signum, frame: held.pending.append(signum))
    return held


def release_interrupts(held: HeldInterrupts | None) -> None:
    """Give the handlers back; a signal that came while they were held is acted on now, as
    it would have been (``KeyboardInterrupt`` for Ctrl-C). Idempotent."""
    if held is None:
        return
    previous, held.previous = held.previous, {}
    for sig, old in previous.items():
        signal.signal(sig, old)
    pending, held.pending = held.pending, []
    if pending and pending[0] in previous:
        handler = previous[pending[0]]
        if callable(handler):
            handler(pending[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(pending[0])
