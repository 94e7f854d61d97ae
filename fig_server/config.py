"""Fig's configuration: one TOML file read into frozen dataclasses, overridable by environment."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "fig.toml"
ENV_PREFIX = "FIG__"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5433
    data_dir: str = ".fig"
    tls: str = "off"
    tls_cert: str = ""
    tls_key: str = ""
    tls_required_for_remote: bool = False
    max_connections: int = 500
    max_message_bytes: int = 64 * 1024 * 1024
    log_level: str = "INFO"


@dataclass(frozen=True)
class AuthConfig:
    method: str = "trust"
    admin_role: str = ""
    # With method "trust", listening beyond loopback needs this set explicitly.
    trust_remote: bool = False
    # Set on the embedded Postgres's superuser at each start (for password methods).
    superuser_password: str = ""


@dataclass(frozen=True)
class LimitsConfig:
    cold_queries_per_user: int = 0
    queries_per_second_per_user: int = 0
    query_burst_per_user: int = 0
    max_result_rows: int = 0


@dataclass(frozen=True)
class HotConfig:
    dsn: str = ""
    bin_dir: str = ""
    os_user: str = "postgres"
    port: int = 5432
    listen_addresses: str = ""
    settings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ColdConfig:
    catalog_uri: str = ""
    catalog_name: str = "fig"
    warehouse: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    workers: int = 0
    memory_limit_mb: int = 0
    stream_buffer_mb: int = 64
    result_cache_mb: int = 256
    hot_first_ms: int = 20
    executor: str = "local"
    ray_address: str = ""


@dataclass(frozen=True)
class AuditConfig:
    enabled: bool = True
    file_max_bytes: int = 64 * 1024 * 1024
    file_keep: int = 5
    statement_max_chars: int = 2048
    query_log_max_rows: int = 100_000
    price_per_gb: float = 0.10
    group_relayed: bool = True


@dataclass(frozen=True)
class CdcConfig:
    slot_name: str = "fig_cdc"
    publication: str = "fig_pub"
    flush_rows: int = 100_000
    flush_bytes: int = 64 * 1024 * 1024
    flush_interval_ms: int = 500
    spill_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class TieringConfig:
    retention_interval_s: int = 60
    retention_batch_rows: int = 100_000
    drop_cold_on_drop_table: bool = True


@dataclass(frozen=True)
class DemoConfig:
    enabled: bool = True
    rows: int = 2_000_000


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9433
    # Listening beyond loopback shows what fig.query_log holds to whoever reaches the port.
    remote: bool = False


@dataclass(frozen=True)
class FigConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    hot: HotConfig = field(default_factory=HotConfig)
    cold: ColdConfig = field(default_factory=ColdConfig)
    cdc: CdcConfig = field(default_factory=CdcConfig)
    tiering: TieringConfig = field(default_factory=TieringConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir).resolve()

    @property
    def catalog_uri(self) -> str:
        return self.cold.catalog_uri or f"sqlite:///{self.data_dir / 'iceberg' / 'catalog.db'}"

    @property
    def warehouse(self) -> str:
        return self.cold.warehouse or f"file://{self.data_dir / 'iceberg' / 'warehouse'}"

    def replace(self, section: str, **changes: Any) -> FigConfig:
        """A copy with some keys of one section changed."""
        updated = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **{section: updated})


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    kind = tuple if annotation == tuple[str, ...] else annotation
    if kind not in (int, float, str, bool, tuple):
        raise TypeError(f"unsupported config type {annotation} at {where}")
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            return value.strip().lower() in ("1", "true", "yes", "on")
        if kind in (int, float):
            return kind(value)
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if kind is tuple:
        return tuple(str(item) for item in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"config {where}: expected {kind.__name__}, got {value!r}")
    return value


def _section_values(cls: type, raw: dict[str, Any], section: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            raise ValueError(f"unknown config key [{section}] {key}")
        values[key] = _coerce(value, hints[key], f"[{section}] {key}")
    prefix = f"{ENV_PREFIX}{section.upper()}__"
    for name, value in os.environ.items():
        if name.startswith(prefix):
            key = name[len(prefix):].lower()
            if key not in hints:
                raise ValueError(f"unknown config key in environment: {name}")
            values[key] = _coerce(value, hints[key], name)
    return values


def load_config(path: str | Path | None = None, **overrides: dict[str, Any]) -> FigConfig:
    """Read the TOML file (conf/fig.toml by default), then FIG__SECTION__KEY, then overrides."""
    raw: dict[str, Any] = {}
    config_path = Path(path) if path else DEFAULT_CONFIG
    if config_path.exists():
        raw = tomllib.loads(config_path.read_text())
    elif path:
        raise FileNotFoundError(f"config file not found: {config_path}")
    sections: dict[str, Any] = {}
    for section_field in dataclasses.fields(FigConfig):
        cls: Any = section_field.default_factory
        values = _section_values(cls, raw.pop(section_field.name, {}), section_field.name)
        values.update(overrides.get(section_field.name, {}))
        sections[section_field.name] = cls(**values)
    if raw:
        raise ValueError(f"unknown config sections: {', '.join(sorted(raw))}")
    return FigConfig(**sections)
