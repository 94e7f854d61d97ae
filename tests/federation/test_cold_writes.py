"""UPDATE and DELETE below the tier boundary reach cold, as one statement with one tag."""

from __future__ import annotations

import datetime as dt
import time
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
        with pytest.raises(psycopg.errors.FeatureNotSupported):  # bound many times, one Sync
            conn.cursor().executemany("delete from ev where id = %s", [(3,), (6,)])
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("delete from ev where id = %s returning id", (3,))
        conn.execute("begin")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("delete from ev where id = 3")
        assert info.value.diag.message_hint and "transaction" in info.value.diag.message_hint
        conn.execute("rollback")
        assert conn.execute("select count(*) from ev where id in (3, 6)").fetchone() == (2,)
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


def test_failed_commit_leaves_cold_untouched(fig: FigProcess) -> None:
    """The statement succeeds on hot but its COMMIT fails (a deferred constraint): the cold
    rows stay as they were (before: cold was written before the hot COMMIT)."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("""create function ev_no_666() returns trigger language plpgsql as $$
                        begin
                          if new.status = 666 then raise exception 'no 666 at commit'; end if;
                          return null;
                        end $$""")
        conn.execute("create constraint trigger ev_666 after update on ev deferrable "
                     "initially deferred for each row execute function ev_no_666()")
        newest = conn.execute("select max(id) from ev").fetchone()
        assert newest is not None
        try:
            with pytest.raises(psycopg.errors.RaiseException, match="no 666"):
                conn.execute(f"update ev set status = 666 where id in (12, 15, {newest[0]})")
        finally:
            conn.execute("drop trigger ev_666 on ev")
        conn.execute("select fig.sync()")
        assert conn.execute("select count(*) from ev where status = 666").fetchone() == (0,)
    assert {12, 15} <= iceberg_ids(fig)
    assert not {12, 15} & iceberg_ids(fig, "status = 666")


def stage_request(fig: FigProcess, conn: psycopg.Connection, row_id: int, new_status: int,
                  moved_days: int) -> int:
    """A confirmed cold-write UPDATE of one cold row made by hand on hot, as Fig's session
    makes it (its time moved by `moved_days`); returns the request id."""
    with psycopg.connect(fig.dsn, autocommit=True) as via_fig:
        old = via_fig.execute("select ts, note from ev where id = %s", (row_id,)).fetchone()
    assert old is not None
    with conn.transaction():
        conn.execute("create temp table st (like ev including constraints) on commit drop")
        conn.execute("alter table st add column fig_old_time timestamptz")
        conn.execute("insert into st values (%s, %s::timestamptz + make_interval(days => %s), "
                     "%s, %s, %s)", (row_id, old[0], moved_days, new_status, old[1], old[0]))
        row = conn.execute("select * from fig.request_cold_write('ev'::regclass, 'UPDATE', "
                           "'st', '{status,ts}')").fetchone()
        assert row is not None and row[1] == 1
        conn.execute("select fig.confirm_cold_write(%s)", (row[0],))
    return int(row[0])


def test_a_confirmed_request_is_applied_without_a_waiter(fig: FigProcess) -> None:
    """As after Fig died between the hot COMMIT and waiting: the CDC process applies it, and
    fig.sync waits for that."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("select fig.sync()")
    with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
        stage_request(fig, direct, 21, 404, 0)
        direct.execute("select fig.sync()")
    assert 21 in iceberg_ids(fig, "status = 404")


def test_a_write_no_cold_file_can_reach_changes_nothing(fig: FigProcess) -> None:
    """Its candidate scan keeps no file (the key is past every file's range): it still runs,
    and writes nothing (the generated oracle's late writes found it failing with 42P01)."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        assert conn.execute("delete from ev where id = 99999999").statusmessage == "DELETE 0"
        assert conn.execute("update ev set note = 'x' where id = 99999999"
                            ).statusmessage == "UPDATE 0"


def test_another_session_reads_a_confirmed_request_at_once(fig: FigProcess) -> None:
    """Once the hot transaction that confirmed a cold write commits, every statement over
    the table waits for the request to be applied (its record in fig.late_changes): none
    sees the hot half of the write without the cold one."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("select fig.sync()")
        assert conn.execute("select status from ev where id = 33").fetchone() == (200,)
        with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
            stage_request(fig, direct, 33, 500, 0)
        assert conn.execute("select status from ev where id = 33").fetchone() == (500,)


def test_replaying_an_update_that_moved_the_time_writes_one_row(fig: FigProcess) -> None:
    """A crash after the Iceberg commit and before the request is stamped done: applied again,
    the UPDATE finds the row at its new time and writes it once."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("select fig.sync()")
    with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
        request = stage_request(fig, direct, 24, 500, -3)
        with direct.transaction():
            # keep a copy of the rows: a successful request deletes them
            direct.execute("create temp table saved as select * from fig.cold_write_rows "
                           "where request_id = %s", (request,))
        direct.execute("select fig.wait_cold_write(%s)", (request,))
        direct.execute("insert into fig.cold_write_rows select * from saved")
        direct.execute("update fig.cold_write_requests set done_at = null where id = %s",
                       (request,))
        direct.execute("select fig.sync()")
        row = direct.execute("select done_at is not null from fig.cold_write_requests "
                             "where id = %s", (request,)).fetchone()
        assert row == (True,)
    catalog = SqlCatalog("fig", uri=f"sqlite:///{fig.data_dir / 'iceberg' / 'catalog.db'}",
                         warehouse=f"file://{fig.data_dir / 'iceberg' / 'warehouse'}")
    rows = catalog.load_table(("public", "ev")).scan(row_filter="id = 24").to_arrow()
    assert rows.num_rows == 1 and rows.column("status").to_pylist() == [500]


def test_bound_updates_and_deletes_reach_cold(fig: FigProcess) -> None:
    """A driver's UPDATE/DELETE with parameters (psycopg's text and binary values, a named
    statement re-bound) runs as a cold write with its values; in a block it is refused."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        ids = [row[0] for row in conn.execute(
            "select id from ev where ts < now() - interval '45 days' order by id desc limit 3")]
        cur = conn.execute("update ev set note = %s where id = %s", ("bound", ids[0]))
        assert cur.statusmessage == "UPDATE 1"
        cur = conn.execute("delete from ev where id = any(%s)", (ids[1:],))
        assert cur.statusmessage == "DELETE 2"
        assert conn.execute("select count(*) from ev where id = any(%s)", (ids[1:],)
                            ).fetchone() == (0,)
        for status in range(201, 208):  # psycopg prepares it from the sixth run on
            cur = conn.execute("update ev set status = %b where id = %b", (status, ids[0]),
                               prepare=True)
            assert cur.statusmessage == "UPDATE 1"
        tricky = "it's; $1 -- not a comment"
        assert conn.execute("update ev set note = %s where id = %s and status = %s",
                            (tricky, ids[0], 207)).statusmessage == "UPDATE 1"
        assert conn.execute("select status, note from ev where id = %s", (ids[0],)
                            ).fetchone() == (207, tricky)
        assert conn.execute("update ev set note = %s where id = %s", (None, -1)
                            ).statusmessage == "UPDATE 0"
        conn.execute("set extra_float_digits = 0")  # float text would not read back exactly
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="extra_float_digits"):
            conn.execute("update ev set note = 'f' where id = %s and status = %s",
                         (ids[0], 207.0))
        conn.execute("reset extra_float_digits")
        assert conn.execute("update ev set note = %s where id = %s and status = %s",
                            (tricky, ids[0], 207.0)).statusmessage == "UPDATE 1"
        conn.execute("select fig.sync()")
    assert iceberg_ids(fig, f"id = {ids[0]} and status = 207") == {ids[0]}
    assert not iceberg_ids(fig, f"id in ({ids[1]}, {ids[2]})")
    with psycopg.connect(fig.dsn) as block, pytest.raises(
            psycopg.errors.FeatureNotSupported, match="transaction block"):
        block.execute("delete from ev where id = %s", (ids[0],))


def test_a_cold_write_waits_for_its_own_table_only(fig: FigProcess) -> None:
    """Last in this module (it pauses a second table): a cold write, and a read of late
    changes, wait for CDC to hold their own table's changes, so another table's pause (which
    holds the replication slot back) neither fails nor holds them up, while a pause of its
    own table fails a cold write naming the pause (fig.sync fails on any pause)."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("create table side (id bigint primary key, ts timestamptz not null)")
        conn.execute("insert into side values (1, now() - interval '50 days')")
        conn.execute("select fig.tier_table('side', 'ts', interval '30 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
        conn.execute("insert into side values (2, 'infinity')")  # Iceberg cannot hold it
        while conn.execute("select state from fig.tiered_tables "
                           "where table_name = 'side'").fetchone() != ("paused",):
            time.sleep(0.05)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                           match=r"^fig\.sync: CDC is paused for public\.side"):
            conn.execute("select fig.sync()")
        old = conn.execute("select min(id) from ev where ts < now() - interval '45 days'"
                           ).fetchone()
        assert old is not None and old[0] is not None
        cur = conn.execute(f"update ev set note = 'after the pause' where id = {int(old[0])}")
        assert cur.statusmessage == "UPDATE 1"
        assert conn.execute("select note from ev where id = %s", (old[0],)).fetchone() == \
            ("after the pause",)
        # a late insert into ev: reading it waits for CDC to hold it, not for side
        old_count = conn.execute("select count(*) from ev where ts < now() - interval "
                                 "'40 days'").fetchone()
        assert old_count is not None
        conn.execute("insert into ev values (900001, now() - interval '50 days', 200, 'late')")
        assert conn.execute("select count(*) from ev where ts < now() - interval '40 days'"
                            ).fetchone() == (old_count[0] + 1,)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                           match=r"^UPDATE/DELETE of public\.side: CDC is paused for "
                                 r"public\.side"):
            conn.execute("delete from side where ts < now() - interval '40 days'")
