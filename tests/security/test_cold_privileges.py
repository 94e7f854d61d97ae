"""A privilege matrix over cold rows: no role changes what it could not change on Postgres.

Fig with its default settings (no [auth] admin_role): a tiered table after retention, a role
with SELECT only, one with SELECT, UPDATE and DELETE, and one with nothing. Each tries every
path that writes cold rows, through Fig and by calling the control functions directly on the
hot Postgres (bypassing Fig); afterwards the cold rows, read with pyiceberg, are as before.
Who may manage tiering: a table's owner or a superuser, by default.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from tests.conftest import FigProcess, start_fig

ROLES = ("reader", "writer", "stranger")
OLD = "ts < now() - interval '60 days'"


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("create table ledger (id bigint primary key, ts timestamptz not null, "
                     "amount int not null)")
        conn.execute("insert into ledger select g, %s::timestamptz + g * interval '1 hour', "
                     "g %% 10 from generate_series(1, 2400) g", (start,))
        conn.execute("select fig.tier_table('ledger', 'ts', interval '30 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
        for role in ROLES:
            conn.execute(f"drop role if exists {role}")
            conn.execute(f"create role {role} login")
        conn.execute("grant select on ledger to reader")
        conn.execute("grant select, update, delete on ledger to writer")
    yield server
    server.stop()


def as_role(fig: FigProcess, role: str, direct: bool = False) -> psycopg.Connection:
    dsn = fig.hot_dsn if direct else fig.dsn
    return psycopg.connect(dsn.replace("user=postgres", f"user={role}"), autocommit=True)


def cold_rows(fig: FigProcess) -> list[tuple[int, int]]:
    """Every (id, amount) of the Iceberg table, read with pyiceberg."""
    catalog = SqlCatalog("fig", uri=f"sqlite:///{fig.data_dir / 'iceberg' / 'catalog.db'}",
                         warehouse=f"file://{fig.data_dir / 'iceberg' / 'warehouse'}")
    table = catalog.load_table(("public", "ledger")).scan().to_arrow()
    return sorted(zip(table.column("id").to_pylist(), table.column("amount").to_pylist(),
                      strict=True))


def superuser_request(fig: FigProcess) -> int:
    """A finished cold-write request of the superuser (a no-op UPDATE of one old row)."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute(f"update ledger set amount = amount where id = 1 and {OLD}")
    with psycopg.connect(fig.hot_dsn, autocommit=True) as conn:
        row = conn.execute("select max(id) from fig.cold_write_requests").fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


@pytest.mark.parametrize("role", ["reader", "stranger"])
def test_roles_without_the_privilege_change_no_cold_row(fig: FigProcess, role: str) -> None:
    before = cold_rows(fig)
    request = superuser_request(fig)
    with as_role(fig, role) as conn:
        for sql in (f"update ledger set amount = amount + 1 where {OLD}",
                    f"delete from ledger where {OLD}",
                    "delete from ledger where id = 5"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied for table ledger"):
                conn.execute(sql)
    with as_role(fig, role, direct=True) as conn:
        # the control functions called directly, with a hand-made staging table
        conn.execute("create temp table stage (id bigint, ts timestamptz, amount int, "
                     "fig_old_time timestamptz)")
        conn.execute("insert into stage values (7, now() - interval '90 days', 1000, "
                     "now() - interval '90 days')")
        for kind in ("DELETE", "UPDATE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied for table ledger"):
                conn.execute("select * from fig.request_cold_write('ledger'::regclass, %s, "
                             "'stage', '{amount}')", (kind,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="another role"):
            conn.execute("select fig.wait_cold_write(%s)", (request,))
    assert cold_rows(fig) == before


def test_a_role_with_the_privilege_writes_cold_rows(fig: FigProcess) -> None:
    before = dict(cold_rows(fig))
    with as_role(fig, "writer") as conn:
        cur = conn.execute(f"update ledger set amount = amount + 100 where id <= 3 and {OLD}")
        assert cur.rowcount == 3
        assert conn.execute(f"delete from ledger where id = 4 and {OLD}").rowcount == 1
    after = dict(cold_rows(fig))
    assert [after[i] for i in (1, 2, 3)] == [before[i] + 100 for i in (1, 2, 3)]
    assert 4 not in after and len(after) == len(before) - 1


def test_tiering_is_managed_by_the_owner_by_default(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("create table writer_own (id int primary key, ts timestamptz not null)")
        conn.execute("alter table writer_own owner to writer")
    with as_role(fig, "reader") as conn:
        for sql in ("select fig.tier_table('writer_own', 'ts', interval '1 day')",
                    "select fig.untier_table('ledger', cold_rows => 'discard')",
                    "select fig.compact('ledger')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner"):
                conn.execute(sql)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="superuser"):
            conn.execute("select fig.attach_iceberg('public.ledger')")
    with as_role(fig, "writer") as conn:
        assert "is tiered" in str(conn.execute(
            "select fig.tier_table('writer_own', 'ts', interval '1 day')").fetchone())
        conn.execute("select fig.untier_table('writer_own')")
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        tiered = conn.execute("select count(*) from fig.tiered_tables "
                              "where table_name = 'ledger'").fetchone()
        assert tiered == (1,)
