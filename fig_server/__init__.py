"""Fig: one Postgres endpoint over a hot PostgreSQL and a cold Apache Iceberg tier."""

__version__ = "0.1.0"
