"""Fig's own privileged connection to the hot PostgreSQL: role secrets, as poolers read them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import psycopg

from fig_server.errors import ConnectionFailure

log = logging.getLogger(__name__)

SECRET_SQL = ("SELECT rolpassword, coalesce(rolvaliduntil < now(), false) "
              "FROM pg_catalog.pg_authid WHERE rolname = %s")


@dataclass(frozen=True)
class RoleSecret:
    """What pg_authid holds about a role's password: its verifier and when it expires."""

    verifier: str | None
    expired: bool


class RoleDirectory:
    """Reads role secrets through one superuser connection, reopened when it breaks."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, application_name="fig-auth")
        return self._conn

    async def secret(self, role: str) -> RoleSecret | None:
        """The role's secret, or None when no such role exists."""
        async with self._lock:
            for attempt in (1, 2):
                try:
                    conn = await self._connection()
                    cursor = await conn.execute(SECRET_SQL, (role,))
                    row = await cursor.fetchone()
                    break
                except psycopg.OperationalError as exc:
                    self._conn = None
                    if attempt == 2:
                        raise ConnectionFailure(
                            "could not read role secrets from the hot PostgreSQL") from exc
        if row is None:
            return None
        verifier, expired = row
        return RoleSecret(verifier if isinstance(verifier, str) else None, bool(expired))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
