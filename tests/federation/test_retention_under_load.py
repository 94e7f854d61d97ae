"""Retention moves old rows out of hot while federated statements keep reading the table.

Each federated statement holds the boundary lock shared while it runs; retention needs it
exclusively for a moment. Under back-to-back readers it must still get its turn (it used to
only try the lock, so a busy table's retention was postponed for ever and hot grew), and the
readers' answers stay exact meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import FigProcess, start_fig

ROWS = 20_000


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("create table busy (id bigint primary key, ts timestamptz not null, "
                     "v int)")
        conn.execute("select fig.tier_table('busy', 'ts', interval '10 days')")
        conn.execute("insert into busy select g, now() - g * interval '1 minute', g % 7 "
                     f"from generate_series(1, {ROWS}) g")
        conn.execute("select fig.sync(interval '120 seconds')")
    yield server
    server.stop()


def test_retention_gets_its_turn_among_busy_readers(fig: FigProcess) -> None:
    stop = threading.Event()
    answers: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            with psycopg.connect(fig.dsn, autocommit=True) as conn:
                while not stop.is_set():
                    row = conn.execute("select count(*), sum(v) from busy").fetchone()
                    assert row is not None
                    answers.append((row[0], row[1]))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
            while len(answers) < 20 and not errors:
                stop.wait(0.1)
            direct.execute("select fig.run_retention()")
            left = direct.execute("select count(*) from busy "
                                  "where ts < now() - interval '10 days 1 minute'").fetchone()
        seen = len(answers)
        while len(answers) < seen + 20 and not errors:
            stop.wait(0.1)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors, errors
    assert left == (0,)
    expected = (ROWS, sum(g % 7 for g in range(1, ROWS + 1)))
    assert set(answers) == {expected}


def test_retention_gives_way_to_a_transaction_that_read_then_writes(fig: FigProcess) -> None:
    """A transaction that read the table through Fig holds the boundary lock shared until it
    ends; when it then writes the table it waits for retention's table lock while retention
    waits for the boundary lock. Retention gives way: the transaction commits."""
    outcome: list[object] = []

    def retention() -> None:
        try:
            with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
                direct.execute("select fig.run_retention()")
            outcome.append("ran")
        except psycopg.Error as exc:  # postponed is fine; the writer must not be the victim
            outcome.append(exc)

    with psycopg.connect(fig.dsn) as conn:  # a transaction block
        assert conn.execute("select count(*) from busy").fetchone() is not None
        runner = threading.Thread(target=retention)
        runner.start()
        for attempt in range(5):  # the insert lands in retention's waits or between them
            threading.Event().wait(0.3)
            conn.execute("insert into busy values (%s, now(), 1)", (ROWS + 1 + attempt,))
        conn.commit()
    runner.join()
    assert len(outcome) == 1
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from busy where id > %s", (ROWS,)).fetchone() == (5,)


@pytest.mark.parametrize("tier_first", [True, False])
def test_a_statement_prepared_before_rows_moved_reads_them_after(fig: FigProcess,
                                                                 tier_first: bool) -> None:
    """A driver's named prepared statement (psycopg after prepare_threshold, pgjdbc after 5
    runs) parsed while hot held every row (the table not tiered yet, or nothing moved yet)
    must read the moved rows from cold once retention has run: it used to be relayed
    unplanned at every Bind and answer from hot alone."""
    table = f"late_{int(tier_first)}"
    with psycopg.connect(fig.dsn, autocommit=True) as admin:
        admin.execute(f"create table {table} (id bigint primary key, ts timestamptz not null, "
                      "v int)")
        admin.execute(f"insert into {table} select g, now() - g * interval '1 hour', g % 5 "
                      "from generate_series(1, 1000) g")
        if tier_first:
            admin.execute(f"select fig.tier_table('{table}', 'ts', interval '10 days')")
        with psycopg.connect(fig.dsn, autocommit=True, prepare_threshold=0) as app:
            query = f"select count(*), sum(v) from {table} where v >= %s"
            expected = app.execute(query, (0,)).fetchone()
            assert expected == (1000, sum(g % 5 for g in range(1, 1001)))
            if not tier_first:
                admin.execute(f"select fig.tier_table('{table}', 'ts', interval '10 days')")
            admin.execute("select fig.sync(interval '120 seconds')")
            with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
                direct.execute("select fig.run_retention()")
                hot = direct.execute(f"select count(*) from {table}").fetchone()
            assert hot is not None and hot[0] < 1000  # rows moved to cold
            assert app.execute(query, (0,)).fetchone() == expected
            assert app.execute(query, (3,)).fetchone() == (400, 400 * 3.5)
