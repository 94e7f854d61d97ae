"""Helpers for CDC tests: run the CDC service in a subprocess and compare both tiers."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import psycopg
import pyarrow as pa
from pyiceberg.catalog import Catalog

from fig_server.config import FigConfig
from fig_server.storage.catalog import open_catalog

CTX = multiprocessing.get_context("spawn")


def _serve(config: FigConfig, dsn: str, stop: Any) -> None:
    import logging

    from fig_server.cdc.service import run
    logging.basicConfig(level=logging.INFO)
    run(config, dsn, stop)


class CdcRunner:
    """The CDC service in its own process, as `fig serve` runs it."""

    def __init__(self, config: FigConfig, dsn: str) -> None:
        self.config = config
        self.dsn = dsn
        self.stop_event = CTX.Event()
        self.process = CTX.Process(target=_serve, args=(config, dsn, self.stop_event),
                                   daemon=True)

    def start(self) -> CdcRunner:
        self.process.start()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.stop_event.set()
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(10)


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(interval)


def wait_active(conn: psycopg.Connection, table: str, timeout: float = 60.0) -> None:
    def active() -> bool:
        row = conn.execute("SELECT state FROM fig.tiered_tables WHERE table_oid = %s::regclass",
                           (table,)).fetchone()
        return bool(row and row[0] == "active")
    wait_for(active, timeout)


def sync(conn: psycopg.Connection, timeout: str = "60s") -> None:
    conn.execute("SELECT fig.sync(%s::interval)", (timeout,))


def cold_rows(catalog: Catalog, schema: str, table: str, order_by: str) -> list[dict]:
    iceberg = catalog.load_table((schema, table))
    data: pa.Table = iceberg.scan().to_arrow()
    return sorted(data.to_pylist(), key=lambda row: row[order_by])


def hot_rows(conn: psycopg.Connection, table: str, order_by: str) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return list(cur.execute(f"SELECT * FROM {table} ORDER BY {order_by}").fetchall())


def catalog_of(config: FigConfig) -> Catalog:
    return open_catalog(config)
