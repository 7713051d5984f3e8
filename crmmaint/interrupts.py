"""The process-wide word that the run is ending (Ctrl-C, SIGTERM): waits that are not
commands (a repository lock, ...) end at once, instead of holding the process until they are
done. Commands are killed by the runner; these waits look at ``STOPPING``.

The runner sets it when an interrupt ends a run and clears it when a run starts.
"""

from __future__ import annotations

import threading

#: Set while the process is ending a run because of an interrupt.
STOPPING = threading.Event()
