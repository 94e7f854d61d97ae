"""The logical replication stream: START_REPLICATION over psycopg's low-level PGconn (COPY_BOTH).

All I/O of the stream lives here; decoding is in pgoutput.py.
"""

from __future__ import annotations

import select
import struct
import time
from dataclasses import dataclass

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from fig_server.errors import ConnectionFailure
from fig_server.storage.tables import lsn_to_str

PG_EPOCH_US = 946_684_800_000_000
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres " \
                  "-c extra_float_digits=3 -c bytea_output=hex"


@dataclass(frozen=True)
class XLogData:
    wal_start: int
    wal_end: int
    payload: bytes


@dataclass(frozen=True)
class Keepalive:
    wal_end: int
    reply_requested: bool


def session_conninfo(dsn: str, **extra: str) -> str:
    """The DSN with the session settings that make text values parse the same everywhere."""
    return make_conninfo(dsn, options=SESSION_OPTIONS, **extra)


def _now_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_US


class ReplicationStream:
    """One START_REPLICATION session on a logical slot with the pgoutput plugin."""

    def __init__(self, dsn: str, slot: str, publication: str) -> None:
        self.slot = slot
        self.publication = publication
        # CDC reads the stream between Iceberg commits, on one thread: the walsender's default
        # 60 s without a reply ended the stream during a long commit (a large transaction
        # over many files), and the restart began the same commit again.
        info = make_conninfo(session_conninfo(dsn, replication="database",
                                              application_name="fig_cdc_stream"),
                             options=f"{SESSION_OPTIONS} -c wal_sender_timeout=15min")
        self.conn = pq.PGconn.connect(info.encode())
        if self.conn.status != pq.ConnStatus.OK:
            raise ConnectionFailure(
                f"replication connection failed: {self.conn.get_error_message()}")

    def start(self, lsn: int = 0) -> None:
        command = (f'START_REPLICATION SLOT "{self.slot}" LOGICAL {lsn_to_str(lsn)} '
                   f"(proto_version '1', publication_names '\"{self.publication}\"')")
        result = self.conn.exec_(command.encode())
        if result.status != pq.ExecStatus.COPY_BOTH:
            raise ConnectionFailure(
                f"START_REPLICATION failed: {self.conn.get_error_message()}")
        self.conn.nonblocking = 1

    def read(self, timeout: float, limit: int = 5000) -> list[XLogData | Keepalive]:
        """Messages available now (up to `limit`), waiting up to `timeout` seconds for the
        first one. Fewer than `limit` means the socket had nothing more: CDC commits then.

        libpq hands out only what one read of the socket brought in; stopping there made CDC
        think it had caught up after a few hundred messages, and commit to Iceberg that often:
        at 5,000 one-row transactions a second it fell behind by a minute."""
        out: list[XLogData | Keepalive] = []
        deadline = time.monotonic() + timeout
        while len(out) < limit:
            nbytes, data = self.conn.get_copy_data(1)
            if nbytes > 0:
                out.append(self._parse(bytes(data)))
                continue
            if nbytes == -1:
                raise ConnectionFailure("replication stream ended")
            if nbytes < -1:
                raise ConnectionFailure(
                    f"replication stream failed: {self.conn.get_error_message()}")
            remaining = 0.0 if out else deadline - time.monotonic()
            readable, _, _ = select.select([self.conn.socket], [], [], max(remaining, 0.0))
            if not readable:
                break
            self.conn.consume_input()
        return out

    @staticmethod
    def _parse(data: bytes) -> XLogData | Keepalive:
        if data[:1] == b"w":
            start, end, _ = struct.unpack_from("!qqq", data, 1)
            return XLogData(start, end, data[25:])
        if data[:1] == b"k":
            end, _, reply = struct.unpack_from("!qqB", data, 1)
            return Keepalive(end, bool(reply))
        raise ConnectionFailure(f"unexpected replication message {data[:1]!r}")

    def send_status(self, flush_lsn: int, reply: bool = False) -> None:
        """Standby status update: everything up to flush_lsn may be released by the slot."""
        message = b"r" + struct.pack("!qqqqB", flush_lsn, flush_lsn, flush_lsn, _now_us(),
                                     int(reply))
        if self.conn.put_copy_data(message) != 1:
            raise ConnectionFailure(
                f"standby status update failed: {self.conn.get_error_message()}")
        while self.conn.flush() == 1:
            select.select([], [self.conn.socket], [], 1.0)

    def close(self) -> None:
        self.conn.finish()


def ensure_slot(conn: psycopg.Connection, slot: str, publication: str) -> None:
    """Create the publication and the pgoutput slot when missing."""
    if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                        (publication,)).fetchone():
        conn.execute(f'CREATE PUBLICATION "{publication}"')
    if not conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                        (slot,)).fetchone():
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def release_slot(conn: psycopg.Connection, slot: str, timeout: float = 30.0) -> None:
    """End a stale walsender still holding the slot (a previous CDC process that died)."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots "
                           "WHERE slot_name = %s AND active", (slot,)).fetchone()
        if row is None:
            return
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        if time.monotonic() > deadline:
            raise ConnectionFailure(f"replication slot {slot} stays active (pid {row[0]})")
        time.sleep(0.05)
