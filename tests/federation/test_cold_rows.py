"""The hand-off of streamed cold rows (ColdRows): the engine's thread waits while the bytes
waiting reach the budget, the reader gets every piece in order, then the scan's end or error;
a reader that gives up releases the thread."""

from __future__ import annotations

import asyncio
import threading

import pyarrow as pa
import pytest

from fig_server.session.cold_rows import ColdRows, StreamClosed


def piece(start: int, rows: int = 1000) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + rows), pa.int64())})


def test_the_scan_waits_while_the_budget_is_full() -> None:
    async def run() -> None:
        size = piece(0).nbytes
        stream = ColdRows(asyncio.get_running_loop(), max_bytes=2 * size)
        put = 0
        most = 0

        def scan() -> None:
            nonlocal put
            for index in range(10):
                stream.put(piece(index * 1000))
                put += 1
            stream.end()

        thread = threading.Thread(target=scan)
        thread.start()
        assert (await stream.first()) is not None
        for _ in range(500):  # until the second piece is in (the budget holds two)
            if put == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert put == 2, "the thread went on past the budget"
        got = []
        async for table in stream.pieces():
            most = max(most, stream._held + table.nbytes)
            got.extend(table.column("id").to_pylist())
            await asyncio.sleep(0.01)
        thread.join()
        assert got == list(range(10_000))
        assert most <= 3 * size

    asyncio.run(run())


def test_one_piece_larger_than_the_budget_still_passes() -> None:
    async def run() -> None:
        stream = ColdRows(asyncio.get_running_loop(), max_bytes=0)
        thread = threading.Thread(target=lambda: (stream.put(piece(0, 50_000)), stream.end()))
        thread.start()
        rows = [t.num_rows async for t in stream.pieces()]
        thread.join()
        assert rows == [50_000]

    asyncio.run(run())


def test_the_scan_error_reaches_the_reader_after_its_pieces() -> None:
    async def run() -> None:
        stream = ColdRows(asyncio.get_running_loop(), max_bytes=1 << 20)
        stream.put(piece(0))
        stream.end(ValueError("scan failed"))
        got = []
        with pytest.raises(ValueError, match="scan failed"):
            async for table in stream.pieces():
                got.append(table.num_rows)
        assert got == [1000]

    asyncio.run(run())


def test_a_reader_that_gives_up_releases_the_scan() -> None:
    async def run() -> None:
        stream = ColdRows(asyncio.get_running_loop(), max_bytes=1)
        stream.put(piece(0))
        outcome: list[BaseException] = []

        def scan() -> None:
            try:
                stream.put(piece(1000))  # waits: the budget is full
            except StreamClosed as exc:
                outcome.append(exc)

        thread = threading.Thread(target=scan)
        thread.start()
        await asyncio.sleep(0.1)
        assert thread.is_alive()
        stream.close()
        thread.join(5)
        assert not thread.is_alive() and len(outcome) == 1

    asyncio.run(run())
