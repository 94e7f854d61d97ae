"""Cold rows handed from the cold engine's thread to the COPY on the event loop as they come.

A streamed cold part (ColdEngine.query's sink) is copied into Postgres while the engine still
scans: the server holds at most [cold] stream_buffer_mb of its rows waiting (one piece more
when a single piece is larger), and the engine's thread waits for room. So a statement whose
cold part returns millions of rows needs a bounded amount of the server's memory, not all of
them at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator

import pyarrow as pa


class StreamClosed(Exception):
    """The reader went away (its COPY failed or was cancelled): the scan stops."""


class ColdRows:
    """A bounded hand-off: put() from one thread, pieces() on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_bytes: int) -> None:
        self.loop = loop
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._waiting: deque[pa.Table] = deque()
        self._held = 0  # bytes of the waiting pieces
        self._ended = False
        self._closed = False
        self._error: BaseException | None = None
        self._ready = asyncio.Event()  # set on the loop when a piece or the end arrives

    # -- the engine's thread -------------------------------------------------------------

    def put(self, piece: pa.Table) -> None:
        """Wait for room, then hand the piece over; StreamClosed once the reader is gone."""
        with self._cond:
            while self._held and self._held + piece.nbytes > self.max_bytes \
                    and not self._closed:
                self._cond.wait()
            if self._closed:
                raise StreamClosed()
            self._waiting.append(piece)
            self._held += piece.nbytes
        self.loop.call_soon_threadsafe(self._ready.set)

    def end(self, error: BaseException | None = None) -> None:
        """No more pieces: the scan finished, or failed with error."""
        with self._cond:
            self._ended = True
            self._error = error
        self.loop.call_soon_threadsafe(self._ready.set)

    # -- the event loop ------------------------------------------------------------------

    async def first(self) -> pa.Table | None:
        """The first piece, or None when the scan ended without one (or failed: the caller
        learns its error from the scan itself)."""
        while True:
            with self._cond:
                if self._waiting:
                    return self._waiting[0]
                if self._ended:
                    return None
                self._ready.clear()
            await self._ready.wait()

    async def pieces(self) -> AsyncIterator[pa.Table]:
        """Every piece in order, until the end; the scan's error, if it failed."""
        while True:
            with self._cond:
                piece = self._waiting.popleft() if self._waiting else None
                if piece is not None:
                    self._held -= piece.nbytes
                    self._cond.notify_all()
                elif self._ended:
                    if self._error is not None:
                        raise self._error
                    return
                else:
                    self._ready.clear()
            if piece is None:
                await self._ready.wait()
            else:
                yield piece

    def close(self) -> None:
        """The reader is done (or gave up): a waiting or later put() raises StreamClosed."""
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._held = 0
            self._cond.notify_all()
