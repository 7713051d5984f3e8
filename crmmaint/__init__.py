"""crmmaint: maintenance task runner and encrypted backup toolkit for CRM installations."""

__version__ = "0.1.0"
