"""DROP TABLE of a tiered table untiers it; [tiering] drop_cold_on_drop_table decides the rest."""

from __future__ import annotations

import time

import psycopg
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError

from tests.conftest import FigProcess, start_fig


def catalog_of(fig: FigProcess) -> SqlCatalog:
    return SqlCatalog("fig", uri=f"sqlite:///{fig.data_dir / 'iceberg' / 'catalog.db'}",
                      warehouse=f"file://{fig.data_dir / 'iceberg' / 'warehouse'}")


def tier_and_drop(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("create table gone (id int primary key, ts timestamptz not null)")
        conn.execute("insert into gone select g, now() - g * interval '1 hour' "
                     "from generate_series(1, 50) g")
        conn.execute("select fig.tier_table('gone', 'ts', interval '1 day')")
        conn.execute("select fig.sync(interval '60 seconds')")
        catalog_of(fig).load_table(("public", "gone"))
        conn.execute("drop table gone")
        assert conn.execute("select count(*) from fig.tiered_tables").fetchone() == (0,)


def wait_for(check: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def exists(fig: FigProcess) -> bool:
    try:
        catalog_of(fig).load_table(("public", "gone"))
        return True
    except NoSuchTableError:
        return False


@pytest.mark.parametrize("drop", [True, False])
def test_drop_table_untiers(drop: bool) -> None:
    fig = start_fig(env={"FIG__TIERING__DROP_COLD_ON_DROP_TABLE": str(drop).lower()})
    try:
        tier_and_drop(fig)
        if drop:
            assert wait_for(lambda: not exists(fig))
        else:
            # Past the CDC process's next pass over dropped tables and unmanaged tables.
            assert wait_for(lambda: catalog_of(fig).load_table(("public", "gone"))
                            .properties.get("fig.managed") == "false")
            time.sleep(11)
            assert exists(fig)
            rows = catalog_of(fig).load_table(("public", "gone")).scan().to_arrow()
            assert rows.num_rows == 50
    finally:
        fig.stop()
