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


def iter_chunks(reader: Readable, params: ChunkerParams) -> Iterator[memoryview]:
    """Yield the chunks of ``reader`` in order (min..max bytes; the last may be shorter).

    Chunks are read-only views into a block buffer, so no byte is copied after it is read; a
    block lives as long as a view into it does.
    """
    tail = b""
    fill_to = max(4 * params.max_size, READ_SIZE)
    eof = False
    while True:
        parts = [tail]
        have = len(tail)
        while not eof and have < fill_to:
            data = reader.read(READ_SIZE)
            if not data:
                eof = True
            else:
                parts.append(data)
                have += len(data)
        block = parts[0] if len(parts) == 1 else b"".join(parts)
        del parts
        if not block:
            return
        view = memoryview(block).toreadonly()
        consumed = 0
        for chunk in chunk_generator(
            view, params.min_size, params.avg_size, params.max_size, False, None
        ):
            start = chunk.offset
            if not eof and len(block) - start < params.max_size:
                break
            consumed = start + chunk.length
            yield view[start:consumed]
        if eof:
            return
        tail = bytes(view[consumed:])
