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


def run_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``crmmaint ARGS`` through ``crmmaint.cli.main`` in this process, for a test's setup
    steps (``keys generate``, ``repo init``): the same code as the program without a program
    start each (the command under test runs the installed program, ``run_cli``)."""
    import contextlib
    import io

    from crmmaint.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = Path.cwd()
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(["crmmaint", *args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["crmmaint", *args], code, out.getvalue(), err.getvalue())
