"""A client's session: its sticky backend on the hot PostgreSQL and what Fig knows about it."""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field

from fig_server.errors import FigError
from fig_server.hot.backend import BackendConnection, HotTarget

log = logging.getLogger(__name__)


@dataclass
class Session:
    """One client session; the protocol layer moves its bytes, this object holds its state."""

    target: HotTarget
    params: dict[str, str]
    peer: str = ""
    pid: int = field(default_factory=lambda: secrets.randbits(31) or 1)
    secret: int = field(default_factory=lambda: secrets.randbits(31))
    backend: BackendConnection | None = None
    # Queries and Syncs sent to the backend minus ReadyForQuery received: > 0 while busy.
    in_flight: int = 0
    transaction_status: bytes = b"I"
    # Set while the cold engine works for this session; CancelRequest sets it.
    cold_cancel: threading.Event | None = None
    # Set when Fig stops: the session ends with 57P01, as Postgres's own shutdown does.
    shutting_down: bool = False

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        return self.params.get("database", self.user)

    async def connect(self, version: int) -> BackendConnection:
        self.backend = await BackendConnection.open(self.target, self.params, version)
        return self.backend

    async def cancel(self) -> None:
        """Interrupt whatever the backend or the cold engine runs (the client's CancelRequest)."""
        if self.cold_cancel is not None:
            self.cold_cancel.set()
        if self.backend is not None:
            await self.backend.cancel()

    async def close(self) -> None:
        """Release the backend: cancel a statement still running, then terminate."""
        if self.cold_cancel is not None:
            self.cold_cancel.set()
        backend, self.backend = self.backend, None
        if backend is None:
            return
        try:
            if self.in_flight > 0:
                await backend.cancel()
        except (OSError, FigError) as exc:  # the cancel's own connection may fail
            log.warning("cancel on disconnect failed: %s", exc)
        finally:  # whatever happened to the cancel, the backend must not outlive the session
            backend.close()
