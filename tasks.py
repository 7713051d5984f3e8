"""invoke entry point for sysadmins: `invoke --list`, `invoke run daily`, `invoke playbook.check
playbooks/daily.yml`, `invoke inventory.check --connect`, `invoke history`.

The same collection is installed as the `crmmaint` program (see crmmaint/cli/).
"""

from crmmaint.cli import ns  # noqa: F401  (invoke looks for `ns` or `namespace`)
