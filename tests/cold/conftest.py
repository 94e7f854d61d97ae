"""Real Iceberg tables for the cold engine's tests: a SqlCatalog on sqlite in a temp dir."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from fig_server.cold import ColdEngine
from tests import ray_cluster


def new_catalog(root: Path) -> SqlCatalog:
    warehouse = root / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    catalog = SqlCatalog("test", uri=f"sqlite:///{root}/catalog.db",
                         warehouse=f"file://{warehouse}")
    catalog.create_namespace_if_not_exists("public")
    return catalog


@pytest.fixture
def catalog() -> Iterator[SqlCatalog]:
    with tempfile.TemporaryDirectory(prefix="fig-cold-") as root:
        yield new_catalog(Path(root))


@pytest.fixture(scope="module")
def module_catalog() -> Iterator[SqlCatalog]:
    with tempfile.TemporaryDirectory(prefix="fig-cold-") as root:
        yield new_catalog(Path(root))


@pytest.fixture(scope="session")
def engine() -> Iterator[ColdEngine]:
    """Thread workers: the same code path as processes minus process start-up (with
    FIG_TEST_EXECUTOR=ray: actors of a two-node Ray cluster)."""
    if ray_cluster.RAY_MODE:
        from fig_server.cold.ray_executor import RayExecutor

        executor = RayExecutor(ray_cluster.address(), ray_cluster.NODES)
        with ColdEngine(executor=executor) as cold:
            yield cold
        return
    with ColdEngine(workers=2, use_processes=False) as cold:
        yield cold


def data_files(table: Table) -> list[str]:
    """Every data file of the current snapshot, from the manifests (never from folders)."""
    return [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
