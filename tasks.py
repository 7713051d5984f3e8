"""invoke entry point for sysadmins: `invoke --list`, `invoke run daily`, `invoke history`.

The same collection is installed as the `crmmaint` program (see crmmaint/cli/).
"""

from crmmaint.cli import ns  # noqa: F401  (invoke looks for `ns` or `namespace`)
