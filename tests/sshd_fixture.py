"""Placeholder: session-scoped sshd fixtures (filled in by the transport work)."""
