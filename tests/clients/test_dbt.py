"""dbt-postgres against Fig: debug, seed, run (a table and a view model) and test all succeed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import FigProcess

DBT = Path(__file__).resolve().parents[2] / ".venv-dbt" / "bin" / "dbt"
SCHEMA = "cl_dbt"

PROJECT = """
name: fig_probe
version: "1.0"
config-version: 2
profile: fig_probe
seed-paths: ["seeds"]
model-paths: ["models"]
"""

PROFILES = """
fig_probe:
  target: fig
  outputs:
    fig:
      type: postgres
      host: {host}
      port: {port}
      user: postgres
      password: ""
      dbname: postgres
      schema: {schema}
      threads: 2
      connect_timeout: 10
"""

SEED = "id,name,amount,day\n" + "".join(
    f"{i},name {i},{i * 2.5},2024-01-{i % 28 + 1:02d}\n" for i in range(1, 41))

TABLE_MODEL = """
{{ config(materialized='table') }}
select id, name, amount, day, amount * 2 as doubled from {{ ref('orders_seed') }}
"""

VIEW_MODEL = """
{{ config(materialized='view') }}
select day, count(*) as n, sum(amount) as total from {{ ref('orders_table') }} group by day
"""

SCHEMA_YML = """
version: 2
models:
  - name: orders_table
    columns:
      - name: id
        tests: [not_null, unique]
      - name: name
        tests: [not_null]
  - name: daily_view
    columns:
      - name: day
        tests: [not_null, unique]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, fig: FigProcess) -> Path:
    root = tmp_path_factory.mktemp("dbt")
    (root / "dbt_project.yml").write_text(PROJECT)
    (root / "profiles.yml").write_text(
        PROFILES.format(host=fig.host, port=fig.port, schema=SCHEMA))
    (root / "seeds").mkdir()
    (root / "seeds" / "orders_seed.csv").write_text(SEED)
    (root / "models").mkdir()
    (root / "models" / "orders_table.sql").write_text(TABLE_MODEL)
    (root / "models" / "daily_view.sql").write_text(VIEW_MODEL)
    (root / "models" / "schema.yml").write_text(SCHEMA_YML)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute(f"drop schema if exists {SCHEMA} cascade")
    return root


def dbt(project: Path, *args: str) -> str:
    env = dict(os.environ, DBT_SEND_ANONYMOUS_USAGE_STATS="false", DO_NOT_TRACK="1",
               DBT_VERSION_CHECK="false", DBT_PROFILES_DIR=str(project), PGTZ="UTC")
    result = subprocess.run([str(DBT), *args, "--project-dir", str(project)], cwd=project,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result.stdout


def test_dbt_debug_seed_run_test(fig: FigProcess, project: Path) -> None:
    assert "All checks passed!" in dbt(project, "debug")
    assert "Completed successfully" in dbt(project, "seed")
    assert "Completed successfully" in dbt(project, "run")
    out = dbt(project, "test")
    assert "Completed successfully" in out and "PASS=5" in out

    query = {
        "kinds": "select c.relname, c.relkind from pg_class c join pg_namespace n on "
                 f"n.oid = c.relnamespace where n.nspname = '{SCHEMA}' order by 1",
        "table": f"select * from {SCHEMA}.orders_table order by id",
        "view": f"select * from {SCHEMA}.daily_view order by day",
    }
    seen = []
    for dsn in (fig.dsn, fig.hot_dsn):
        with psycopg.connect(dsn) as conn:
            seen.append({k: conn.execute(sql).fetchall() for k, sql in query.items()})
    assert seen[0] == seen[1]
    kinds = dict(seen[0]["kinds"])
    assert kinds["orders_seed"] == kinds["orders_table"] == "r" and kinds["daily_view"] == "v"
    assert len(seen[0]["table"]) == 40
    assert sum(row[1] for row in seen[0]["view"]) == 40
