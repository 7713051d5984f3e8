"""Content-defined chunking of a stream with FastCDC over a rolling buffer.

``fastcdc_cy`` chunks an in-memory buffer; a cut point depends only on the ``max_size`` bytes
after the chunk start, so a chunk is final once that many bytes (or EOF) follow its start. We
read the stream in blocks, emit the final chunks, and carry the tail over: memory stays at a
few ``max_size`` whatever the stream length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

from fastcdc.fastcdc_cy import chunk_generator

from crmmaint.repository.format import ChunkerParams

logger = logging.getLogger(__name__)

READ_SIZE = 4 << 20


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def iter_chunks(reader: Readable, params: ChunkerParams) -> Iterator[bytes]:
    """Yield the chunks of ``reader`` in order, each a ``bytes`` of min..max size (last may be less)."""
    buf = bytearray()
    fill_to = max(4 * params.max_size, READ_SIZE)
    eof = False
    while True:
        while not eof and len(buf) < fill_to:
            data = reader.read(READ_SIZE)
            if not data:
                eof = True
            else:
                buf += data
        if not buf:
            return
        consumed = 0
        view = memoryview(buf)
        try:
            for chunk in chunk_generator(
                view, params.min_size, params.avg_size, params.max_size, False, None
            ):
                start = chunk.offset
                if not eof and len(buf) - start < params.max_size:
                    break
                end = start + chunk.length
                yield bytes(view[start:end])
                consumed = end
        finally:
            view.release()
        del buf[:consumed]
        if eof and not buf:
            return
