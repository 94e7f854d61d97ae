"""Fixtures shared by every test: a real PostgreSQL and a real Fig, each in a fresh data dir."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fig_server.config import FigConfig, load_config
from fig_server.hot.embedded import EmbeddedPostgres

FAST_PG = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def make_data_dir(prefix: str = "fig-test-") -> Path:
    """A temp dir the unprivileged Postgres user can reach (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def make_config(data_dir: Path, **sections: dict[str, object]) -> FigConfig:
    """Fig's defaults pointed at a private data dir, with a Postgres tuned for tests."""
    overrides: dict[str, dict[str, object]] = {
        "server": {"data_dir": str(data_dir), "port": 0},
        "hot": {"settings": FAST_PG},
        "demo": {"enabled": False},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_config(**overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def hot_pg() -> Iterator[EmbeddedPostgres]:
    """One real PostgreSQL for the whole run, initdb'd in a temp dir."""
    data_dir = make_data_dir()
    pg = EmbeddedPostgres(make_config(data_dir))
    pg.start()
    os.environ.setdefault("PGTZ", "UTC")
    yield pg
    pg.stop("immediate")
