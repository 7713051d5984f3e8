"""The backup repository: chunked, deduplicated, compressed, encrypted, verifiable.

Public API: ``Repository`` (init/open, session, backups, manifest, read_stream, verify, prune),
and the data it returns. Format specification: docs/format.md.
"""

from crmmaint.repository.format import ChunkerParams
from crmmaint.repository.repository import BackupInfo, Repository
from crmmaint.repository.session import StreamInfo, WriteSession

__all__ = ["BackupInfo", "ChunkerParams", "Repository", "StreamInfo", "WriteSession"]
