"""UPDATE and DELETE below the tier boundary reach cold, as one statement with one tag."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from tests.conftest import FigProcess, start_fig

ROWS = 3000


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig()
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=60)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("""create table ev (id bigint primary key, ts timestamptz not null,
                          status int not null check (status > 0), note text)""")
        conn.execute("""insert into ev select g, %s::timestamptz + g * interval '28 minutes',
                          (array[200, 404, 500])[1 + g %% 3], 'n' || g
                        from generate_series(1, %s) g""", (start, ROWS))
        conn.execute("create table flagged (id bigint primary key)")
        conn.execute("insert into flagged select g from generate_series(1, 3000, 7) g")
        conn.execute("select fig.tier_table('ev', 'ts', interval '30 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
    yield server
    server.stop()


def iceberg_ids(fig: FigProcess, where: str = "true") -> set[int]:
    catalog = SqlCatalog("fig", uri=f"sqlite:///{fig.data_dir / 'iceberg' / 'catalog.db'}",
                         warehouse=f"file://{fig.data_dir / 'iceberg' / 'warehouse'}")
    table = catalog.load_table(("public", "ev")).scan(row_filter=where).to_arrow()
    return set(table.column("id").to_pylist())


def hot_count(fig: FigProcess) -> int:
    with psycopg.connect(fig.hot_dsn) as direct:
        row = direct.execute("select count(*) from ev").fetchone()
    assert row is not None
    return int(row[0])


def test_delete_reaches_cold_with_one_tag(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        before = conn.execute("select count(*) from ev where status = 404").fetchone()
        assert before is not None and before[0] > 0
        hot_before = hot_count(fig)
        cur = conn.execute("delete from ev where status = 404")
        assert cur.rowcount == before[0]
        assert cur.statusmessage == f"DELETE {before[0]}"
        after = conn.execute("select count(*) from ev where status = 404").fetchone()
        assert after == (0,)
        assert hot_count(fig) < hot_before
        conn.execute("select fig.sync()")
    assert not iceberg_ids(fig, "status = 404")


def test_update_with_from_reaches_cold(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        want = conn.execute("select count(*) from ev e join flagged f on f.id = e.id "
                            "where e.status = 500").fetchone()
        assert want is not None
        cur = conn.execute("update ev as e set note = 'flagged ' || f.id, status = 501 "
                           "from flagged f where f.id = e.id and e.status = 500")
        assert cur.rowcount == want[0]
        got = conn.execute("select count(*), min(note) from ev where status = 501").fetchone()
        assert got is not None and got[0] == want[0] and got[1].startswith("flagged ")
        cold = conn.execute("select count(*) from ev where status = 501 and "
                            "ts < now() - interval '31 days'").fetchone()
        assert cold is not None and cold[0] > 0


def test_update_keeps_constraints_for_cold_rows(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("update ev set status = -1 where id = 3")
        assert conn.execute("select status from ev where id = 3").fetchone() == (200,)


def test_cold_write_refusals(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("update ev set id = id + 100000 where id = 3")
        assert "primary key" in str(info.value)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("update ev set ts = now() where id = 3")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("delete from ev where id = 3 returning *")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("delete from ev where id = %s", (3,))  # extended protocol
        conn.execute("begin")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("delete from ev where id = 3")
        assert info.value.diag.message_hint and "transaction" in info.value.diag.message_hint
        conn.execute("rollback")
        assert conn.execute("select count(*) from ev where id = 3").fetchone() == (1,)
        # Time bounds that keep a write above the boundary stay Postgres's alone, in a block too.
        conn.execute("begin")
        conn.execute("update ev set note = 'fresh' where ts > now() - interval '1 day'")
        conn.execute("commit")


def test_hot_failure_leaves_cold_untouched(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("create table child (id bigint references ev(id))")
        newest = conn.execute("select max(id) from ev").fetchone()
        assert newest is not None
        conn.execute("insert into child values (%s)", (newest[0],))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(f"delete from ev where id in (6, 9, {newest[0]})")
        assert conn.execute("select count(*) from ev where id in (6, 9)").fetchone() == (2,)
    assert {6, 9} <= iceberg_ids(fig)
