"""The process-wide word that the run is ending (Ctrl-C, SIGTERM): waits that are not
commands (a repository lock, ...) end at once, instead of holding the process until they are
done. Commands are killed by the runner; these waits look at ``STOPPING``.

The runner sets ``STOPPING`` when an interrupt ends a run and clears it when a run starts.
"""

from __future__ import annotations

import threading

#: Set while the process is ending a run because of an interrupt.
STOPPING = threading.Event()

#: Set by the ``crmmaint`` program (``launch.main``), which ends when its command has: once a
#: run is finished and journaled, Ctrl-C and SIGTERM are held back for the rest of the
#: process, so a finished command keeps its code (a signal just after a restore's result line
#: turned its 0 into 130). Code that runs playbooks in a longer-lived process leaves it unset.
HOLD_AFTER_RUN = threading.Event()
