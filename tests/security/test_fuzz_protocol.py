"""Protocol fuzzer: random startup packets and frontend messages never crash Fig, never leak a
backend session on the hot Postgres, and never stop Fig from serving other clients."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FigProcess, start_fig

EXAMPLES = 400 if os.environ.get("FIG_LONG") else 40
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
FRONTEND = b"BCdcfDEHFPpQSX"
BACKENDS_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() AND coalesce(application_name, '') NOT LIKE 'fig%%'"
                " AND usename = %s")


@pytest.fixture(scope="module")
def fuzz_fig() -> Iterator[FigProcess]:
    fig = start_fig()
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("drop role if exists fuzzer")
        conn.execute("create role fuzzer login")
        conn.execute("create table if not exists fuzz_t (id int primary key, v text)")
        conn.execute("grant select on fuzz_t to fuzzer")
    yield fig
    fig.stop()


def exchange(fig: FigProcess, data: bytes, wait: float = 0.15) -> bytes:
    """Send data, read whatever comes back until Fig closes or goes quiet."""
    out = b""
    with socket.create_connection((fig.host, fig.port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(wait)
            while len(out) < 1 << 20:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ConnectionError):
            pass
    return out


def startup(user: str = "fuzzer") -> bytes:
    body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    return struct.pack("!I", len(body) + 4) + body


def frame(kind: int, payload: bytes, declared: int | None = None) -> bytes:
    length = len(payload) + 4 if declared is None else declared
    return bytes([kind]) + struct.pack("!I", length & 0xFFFFFFFF) + payload


cstr = st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"") + b"\0")
sql_ish = st.sampled_from([b"select 1\0", b"select * from fuzz_t\0", b"\0", b"begin\0",
                           b"copy fuzz_t from stdin\0", b"copy fuzz_t to stdout\0",
                           b"select pg_sleep(0.05)\0", b"commit\0", b"select $1::int\0"])
payload = st.one_of(
    st.binary(max_size=64),
    st.tuples(cstr, sql_ish, st.binary(max_size=12)).map(b"".join),
    st.tuples(cstr, cstr, st.integers(-2, 3).map(lambda n: struct.pack("!h", n)),
              st.binary(max_size=24)).map(b"".join))
message = st.one_of(
    st.builds(frame, st.sampled_from(list(FRONTEND)), payload),
    st.builds(frame, st.sampled_from(list(FRONTEND)), payload,
              st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1))),
    st.builds(frame, st.integers(0, 255), st.binary(max_size=16)))


def alive(fig: FigProcess) -> None:
    assert fig.process.poll() is None, fig.log()[-3000:]


@SETTINGS
@given(st.one_of(
    st.binary(max_size=80),
    st.builds(lambda n, body: struct.pack("!I", n) + body,
              st.one_of(st.integers(0, 16), st.integers(0, 2**32 - 1)), st.binary(max_size=64)),
    st.builds(lambda code, body: struct.pack("!II", len(body) + 8, code) + body,
              st.sampled_from([196608, 80877103, 80877104, 80877102, 131072, 196609, 0]),
              st.lists(cstr, max_size=6).map(b"".join).map(lambda b: b + b"\0"))))
def test_startup_packets(fuzz_fig: FigProcess, data: bytes) -> None:
    exchange(fuzz_fig, data)
    alive(fuzz_fig)


@SETTINGS
@given(st.lists(message, min_size=1, max_size=6))
def test_frontend_messages(fuzz_fig: FigProcess, messages: list[bytes]) -> None:
    exchange(fuzz_fig, startup() + b"".join(messages))
    alive(fuzz_fig)


def _fuzzer_backends(fig: FigProcess, settle_s: float) -> int:
    """The fuzzer role's backends once they are gone, or after settle_s (a loaded machine
    closes them slowly)."""
    with psycopg.connect(fig.dsn, autocommit=True) as watcher:
        deadline = time.monotonic() + settle_s
        while True:
            row = watcher.execute(BACKENDS_SQL, ("fuzzer",)).fetchone()
            assert row is not None
            if row[0] == 0 or time.monotonic() > deadline:
                return int(row[0])
            time.sleep(0.1)


def test_a_bad_message_after_an_ignored_query_leaves_no_backend(fuzz_fig: FigProcess) -> None:
    """Found by the fuzzer: a malformed Bind makes the backend ignore messages until a
    Sync, so the Query after it is never answered; Fig, waiting for that answer before
    reporting the bad message that follows, held the backend open after the client left."""
    assert _fuzzer_backends(fuzz_fig, 30) == 0
    exchange(fuzz_fig, startup() + frame(66, b"") + frame(81, b"") + frame(66, b"", 0))
    assert _fuzzer_backends(fuzz_fig, 30) == 0
    alive(fuzz_fig)


def test_fuzzing_leaves_no_backend_and_fig_keeps_serving(fuzz_fig: FigProcess) -> None:
    """Runs after the fuzzers above (same module): sessions they opened are all gone."""
    with psycopg.connect(fuzz_fig.dsn, autocommit=True) as watcher:
        deadline = time.monotonic() + 60  # a loaded machine closes them slowly
        while True:
            row = watcher.execute(BACKENDS_SQL, ("fuzzer",)).fetchone()
            if row == (0,) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        leaked = watcher.execute(
            "SELECT state, wait_event_type, wait_event, backend_xid IS NOT NULL, "
            "left(query, 60) FROM pg_stat_activity WHERE usename = 'fuzzer'").fetchall()
        assert row == (0,), f"backend sessions leaked by fuzzed connections: {leaked}"
        assert watcher.execute("select count(*) from fuzz_t").fetchone() is not None
    with psycopg.connect(fuzz_fig.dsn.replace("user=postgres", "user=fuzzer")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    alive(fuzz_fig)
