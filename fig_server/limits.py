"""Per-user limits shared by every session: concurrent cold statements and a statement rate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fig_server.config import LimitsConfig
from fig_server.errors import FigError


class ConfigurationLimitExceeded(FigError):
    sqlstate = "53400"


class UserLimits:
    """Token buckets and cold-statement counts keyed by user; all on the event loop's thread."""

    def __init__(self, config: LimitsConfig) -> None:
        self.cold_per_user = config.cold_queries_per_user
        self.rate = float(config.queries_per_second_per_user)
        self.burst = float(config.query_burst_per_user or config.queries_per_second_per_user)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._cold: dict[str, int] = {}

    @property
    def limits_rate(self) -> bool:
        return self.rate > 0

    def admit(self, user: str) -> ConfigurationLimitExceeded | None:
        """Take one token from the user's bucket; the error to report when there is none."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, last = self._buckets.get(user, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[user] = (tokens, now)
            return ConfigurationLimitExceeded(
                f'rate limit exceeded for user "{user}": at most '
                f"{self.rate:g} statements per second", hint="Retry the statement later.")
        self._buckets[user] = (tokens - 1, now)
        return None

    @contextmanager
    def cold_slot(self, user: str) -> Iterator[None]:
        """Hold one of the user's cold-statement slots for the duration of the block."""
        running = self._cold.get(user, 0)
        if self.cold_per_user > 0 and running >= self.cold_per_user:
            raise ConfigurationLimitExceeded(
                f'too many concurrent statements over tiered tables for user "{user}" '
                f"(limit {self.cold_per_user})", hint="Retry once one of them has finished.")
        self._cold[user] = running + 1
        try:
            yield
        finally:
            left = self._cold[user] - 1
            if left:
                self._cold[user] = left
            else:
                del self._cold[user]
