"""The installed `crmmaint` as a subprocess, as users run it (shared by the CLI test files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``crmmaint ARGS``; output captured as text, 300 s at most."""
    return subprocess.run(
        [str(BIN / "crmmaint"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )
