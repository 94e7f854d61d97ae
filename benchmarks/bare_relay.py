"""A bare uvloop TCP relay: the floor for Fig's hot path (the issue's "90% of a bare relay").

It copies bytes between each client and its own Postgres connection and does nothing else:
no startup handling, no message framing, no audit. One process, one event loop, asyncio
streams, as Fig's relay is. Run as `python -m benchmarks.bare_relay LISTEN_PORT HOST PORT`;
it prints `ready` once it accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time

import uvloop

CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listen_port: int, host: str, port: int) -> None:
    async def relay(client_reader: asyncio.StreamReader,
                    client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(_pipe(client_reader, server_writer),
                             _pipe(server_reader, client_writer))

    server = await asyncio.start_server(relay, "127.0.0.1", listen_port, backlog=512)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


class BareRelay:
    """The relay as a subprocess, for the benchmark run."""

    def __init__(self, listen_port: int, host: str, port: int) -> None:
        self.port = listen_port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bare_relay", str(listen_port), host, str(port)],
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while self.process.stdout.readline().strip() != "ready":
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError("the bare relay did not start")

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
