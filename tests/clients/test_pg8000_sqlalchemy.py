"""pg8000's native API and SQLAlchemy 2 reflection through Fig, compared with direct."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pg8000.native
import pytest
import sqlalchemy as sa

from tests.conftest import FigProcess


def pg8000_connect(fig: FigProcess, direct: bool) -> pg8000.native.Connection:
    host, port = ("127.0.0.1", fig.hot_port) if direct else (fig.host, fig.port)
    conn = pg8000.native.Connection("postgres", host=host, port=port, database="postgres",
                                    timeout=30)
    conn.run("set timezone = 'UTC'")
    return conn


def test_pg8000_native(fig: FigProcess) -> None:
    out: list[Any] = []
    for direct in (False, True):
        conn = pg8000_connect(fig, direct)
        try:
            conn.run("create temp table p8 (id int primary key, v text, n numeric, "
                     "at timestamptz, flags bool[])")
            for i in range(20):
                conn.run("insert into p8 values (:id, :v, :n, :at, :flags)", id=i, v=f"v{i}",
                         n=decimal.Decimal(i) / 4,
                         at=dt.datetime(2024, 1, 1, i, tzinfo=dt.UTC), flags=[True, i % 2 == 0])
            rows = conn.run("select * from p8 where id >= :low order by id", low=5)
            columns = [(c["name"], c["type_oid"]) for c in conn.columns]
            stmt = conn.prepare("select v from p8 where id = :id")
            prepared = [stmt.run(id=i) for i in (1, 2, 99)]
            stmt.close()
            with pytest.raises(pg8000.native.DatabaseError) as info:
                conn.run("insert into p8 (id) values (1)")
            error = {k: v for k, v in info.value.args[0].items() if k in "SVCMDn"}
            conn.run("begin")
            conn.run("insert into p8 (id) values (100)")
            conn.run("rollback")
            count = conn.run("select count(*) from p8")
            out.append((rows, columns, prepared, error, count, conn.row_count))
        finally:
            conn.close()
    assert out[0] == out[1]
    assert out[0][3]["C"] == "23505" and out[0][4] == [[20]]


@pytest.fixture(scope="module")
def reflected_schema(fig: FigProcess) -> None:
    engine = sa.create_engine(f"postgresql+psycopg2://postgres@{fig.host}:{fig.port}/postgres")
    with engine.begin() as conn:
        conn.exec_driver_sql("drop schema if exists cl_sa cascade")
        conn.exec_driver_sql("create schema cl_sa")
        conn.exec_driver_sql(
            "create table cl_sa.customers (id bigserial primary key, email varchar(200) not "
            "null unique, created timestamptz default now(), score numeric(8,3))")
        conn.exec_driver_sql(
            "create table cl_sa.orders (customer_id bigint references cl_sa.customers (id), "
            "line int, total money, meta jsonb, primary key (customer_id, line))")
        conn.exec_driver_sql("create view cl_sa.big_orders as "
                             "select * from cl_sa.orders where total > 100::money")
    engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg", "pg8000"])
def test_sqlalchemy_reflection_matches(fig: FigProcess, reflected_schema: None,
                                       driver: str) -> None:
    found = []
    for host, port in ((fig.host, fig.port), ("127.0.0.1", fig.hot_port)):
        engine = sa.create_engine(f"postgresql+{driver}://postgres@{host}:{port}/postgres")
        try:
            inspector = sa.inspect(engine)
            tables = inspector.get_table_names(schema="cl_sa")
            details = {t: (repr(inspector.get_columns(t, schema="cl_sa")),
                           inspector.get_pk_constraint(t, schema="cl_sa"),
                           inspector.get_foreign_keys(t, schema="cl_sa"),
                           inspector.get_indexes(t, schema="cl_sa"),
                           inspector.get_unique_constraints(t, schema="cl_sa"))
                       for t in tables}
            found.append((tables, inspector.get_view_names(schema="cl_sa"), details,
                          "cl_sa" in inspector.get_schema_names()))
        finally:
            engine.dispose()
    assert found[0] == found[1]
    assert found[0][0] == ["customers", "orders"]
    assert found[0][2]["orders"][1]["constrained_columns"] == ["customer_id", "line"]
