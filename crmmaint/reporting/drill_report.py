"""The restore drill report: what an auditor reads to answer "when did you last prove a
restore, and how long did it take?" (``crmmaint drill report``).

The drills come from the journal (``Journal.task_results("drill.restore")``) as ``drill_row``
gives them; the report is rendered from the Jinja templates beside this module, as Markdown
or as one self-contained HTML page (inline style, no scripts, no network assets), with every
value escaped for its format.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from crmmaint.reporting.console import visible
from crmmaint.units import format_duration, format_elapsed

#: The report's formats, by the file suffix that asks for each.
FORMATS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}

#: The phases of a drill in the order they run (``tasks.restore.Phases``).
PHASES = ("preflight", "restore", "verify", "cleanup")


def drill_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """One drill from a journal result row (``Journal.task_results``): what ``drills``
    lists, ``drills --json`` gives and the report shows; times in seconds (unix time for
    ``started``)."""
    details, metrics = result["details"], result["metrics"]
    target = str(result["target"])
    return {
        "run": result["run_id"],
        "started": result["started"],
        "source": details.get("source")
        or f"{result['target_kind']}:{target.rpartition('@')[0] or target}",
        "backup": details.get("backup"),
        "repository": details.get("repository"),
        "on": details.get("on") or result["host"],
        "scratch": details.get("scratch"),
        "kept": bool(details.get("kept")),
        # a drill cut short by Ctrl-C or SIGTERM is listed as the run is: interrupted
        "status": "interrupted"
        if details.get("error") == "KeyboardInterrupt"
        else result["status"],
        "message": result["message"],
        "restore_seconds": metrics.get("restore_seconds"),
        "drill_seconds": metrics.get("drill_seconds"),
        "phases": details.get("phases", {}),
        "rto": details.get("rto"),
        "preflight": details.get("preflight", []),
        "checks": details.get("checks", []),
        "problems": details.get("problems", []),
        "user": result["user"],
        "machine": result["machine"],
    }


def render(
    drills: Sequence[Mapping[str, Any]],
    fmt: str,
    *,
    since: float | None = None,
    now: float | None = None,
) -> str:
    """The report of ``drills`` (``drill_row`` s, newest first) as ``fmt`` (``md`` or
    ``html``): the period (from ``since``, unix time, or the first drill, to ``now``), the
    newest drill of each source against its objective, then every drill with its backup,
    where it ran, who ran it, its phase times and each check with the expected and found
    values. Raises ``ValueError`` for an unknown format."""
    if fmt not in ("md", "html"):
        raise ValueError(f"unknown report format {fmt!r} (md or html)")
    now = time.time() if now is None else now
    env = Environment(
        loader=PackageLoader("crmmaint.reporting", "templates"),
        autoescape=fmt == "html",
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # every value printed: control characters shown as escapes (``\x1b``), never sent
        finalize=lambda value: visible(value) if isinstance(value, str) else value,
    )
    env.filters.update(
        md=_markdown_cell,
        when=_when,
        elapsed=lambda v: "-" if v is None else format_elapsed(float(v)),
        objective=lambda v: "-" if not v else format_duration(float(v)),
        value=lambda v: "-" if v is None else v,
    )
    drills = [_with_verdict(d) for d in drills]
    started = since if since is not None else min((d["started"] for d in drills), default=now)
    return env.get_template(f"drill_report.{fmt}.j2").render(
        drills=drills,
        latest=_latest_per_source(drills),
        phases=PHASES,
        period=(started, now),
        generated_by=f"{getpass.getuser()} on {socket.gethostname()}",
        passed=sum(1 for d in drills if d["status"] in ("ok", "warning")),
    )


def _with_verdict(drill: Mapping[str, Any]) -> dict[str, Any]:
    """The drill with ``rto_met`` (``None`` without an objective) and ``verdict``, a word."""
    rto, took = drill.get("rto"), drill.get("drill_seconds")
    met = None if not rto or took is None else took <= rto
    verdict = {
        "ok": "passed",
        "warning": "passed, with a warning",
        "failed": "FAILED",
        "interrupted": "INTERRUPTED (not a proof)",
    }.get(str(drill["status"]), str(drill["status"]))
    return {**drill, "rto_met": met, "verdict": verdict}


def _latest_per_source(drills: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The newest drill of each source, by source name."""
    latest: dict[str, Mapping[str, Any]] = {}
    for drill in drills:
        known = latest.get(drill["source"])
        if known is None or drill["started"] > known["started"]:
            latest[drill["source"]] = drill
    return [latest[source] for source in sorted(latest)]


def _when(value: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(value))


def _markdown_cell(value: Any) -> str:
    """A value for a Markdown table cell: control characters shown as escapes, and the
    characters that would end the cell or start markup escaped."""
    text = visible(str("-" if value is None else value))
    for char in "\\|`*_[]<>#":
        text = text.replace(char, "\\" + char)
    return text
