"""The `fig` command: `fig serve` starts the hot tier (when embedded), CDC and the endpoint."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

import uvloop

from fig_server.config import FigConfig, load_config
from fig_server.errors import FigError
from fig_server.hot.backend import HotTarget
from fig_server.hot.embedded import EmbeddedPostgres
from fig_server.protocol.server import FigServer

log = logging.getLogger("fig")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fig", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run Fig's Postgres endpoint")
    serve.add_argument("--config", help="TOML config file (default conf/fig.toml)")
    serve.add_argument("--data-dir", help="state directory (default .fig)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 5433)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> FigConfig:
    server = {key: value for key, value in
              (("data_dir", args.data_dir), ("host", args.host), ("port", args.port))
              if value is not None}
    return load_config(args.config, server=server)


async def serve(config: FigConfig) -> None:
    """Run until SIGINT or SIGTERM, then stop everything Fig started."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None if config.hot.dsn else EmbeddedPostgres(config)
    if embedded is not None:
        await asyncio.to_thread(embedded.start)
    dsn = config.hot.dsn or embedded.dsn  # type: ignore[union-attr]
    server = FigServer(config, HotTarget.from_dsn(dsn))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        port = await server.start()
        state = {"host": config.server.host, "port": port, "pid": os.getpid(), "hot_dsn": dsn}
        (config.data_dir / "server.json").write_text(json.dumps(state))
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        (config.data_dir / "server.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fig: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.server.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvloop.run(serve(config))
    except FigError as exc:
        log.error("%s", exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
