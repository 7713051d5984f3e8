"""Playbooks: the model, YAML loading with file:line errors, planning, the task registry, the runner.

Task modules import ``crmmaint.tasks.api`` directly; the CLI uses the names below.
"""

from crmmaint.playbook.conditions import When, parse_when
from crmmaint.playbook.loader import (
    build_playbook,
    check_playbook,
    load_playbook,
    load_playbook_text,
    playbooks_dir,
    resolve_playbook_path,
    shipped_playbooks,
)
from crmmaint.playbook.model import WINDOWS, Playbook, Step, StepDefaults, local_target
from crmmaint.playbook.planner import PlannedStep, host_matches, plan
from crmmaint.playbook.run import AdhocStep, adhoc_playbook, run_playbook
from crmmaint.playbook.runner import (
    MultiReporter,
    Reporter,
    Runner,
    RunSummary,
    TargetResult,
    default_transport_factory,
)

__all__ = [
    "WINDOWS",
    "AdhocStep",
    "MultiReporter",
    "PlannedStep",
    "Playbook",
    "Reporter",
    "RunSummary",
    "Runner",
    "Step",
    "StepDefaults",
    "TargetResult",
    "When",
    "adhoc_playbook",
    "build_playbook",
    "check_playbook",
    "default_transport_factory",
    "host_matches",
    "load_playbook",
    "load_playbook_text",
    "local_target",
    "parse_when",
    "plan",
    "playbooks_dir",
    "resolve_playbook_path",
    "run_playbook",
    "shipped_playbooks",
]
