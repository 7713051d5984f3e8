"""Content-defined chunking of a stream with FastCDC over a rolling buffer.

``fastcdc_cy`` chunks an in-memory buffer. A cut point depends only on the bytes from the chunk
start to the cut: FastCDC cuts where the rolling hash matches or at ``max_size``, and only cuts
at the end of the buffer when the data runs out. So every chunk that ends before the end of the
buffer is final, and only the last one (ending exactly at the buffer's end) may grow with more
data. We read the stream in blocks, emit the final chunks, and carry that last chunk over to the
next block: each byte is scanned about once, and memory stays at a few ``max_size`` whatever the
stream length. (Carrying over every chunk that starts within ``max_size`` of the end, as an
earlier version did, gives the same cuts but scans a quarter to a half of each block twice.)
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


def iter_chunks(
    reader: Readable, params: ChunkerParams, *, block_size: int = READ_SIZE
) -> Iterator[memoryview]:
    """Yield the chunks of ``reader`` in order (min..max bytes; the last may be shorter).

    Chunks are read-only views into a block buffer, so no byte is copied after it is read; a
    block lives as long as a view into it does. Blocks of 4 MiB rather than 8 MiB pin less
    memory under the chunks in flight: 494 MB dump, peak RSS 110 against 124 MB, same speed.
    """
    tail = b""
    fill_to = max(2 * params.max_size, block_size)  # > max_size: each block emits a chunk
    eof = False
    while True:
        parts = [tail]
        have = len(tail)
        while not eof and have < fill_to:
            data = reader.read(min(READ_SIZE, fill_to - have))
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
            if not eof and start + chunk.length >= len(block):
                break
            consumed = start + chunk.length
            yield view[start:consumed]
        if eof:
            return
        tail = bytes(view[consumed:])
