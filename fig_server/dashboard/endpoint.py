"""The HTTP endpoint of [metrics]: /metrics (Prometheus), /api/health (JSON), / (the dashboard
page) and its static files. A small threaded WSGI server from the standard library, beside the
event loop: a scrape or a page load never waits for a client statement, nor delays one."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST

from fig_server.config import MetricsConfig
from fig_server.dashboard.health import HealthMonitor
from fig_server.errors import ConfigurationError

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "page"
STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
# The browser itself keeps the page from loading or sending anything beyond this server.
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'")
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics endpoint: " + format, *args)


def refuse_open_endpoint(config: MetricsConfig) -> None:
    """A dashboard beyond loopback shows statement texts to anyone: only when asked for."""
    if not config.enabled or config.remote:
        return
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if not loopback:
        raise ConfigurationError(
            f"[metrics] host = {config.host!r} would show statement texts and users to "
            "anyone who reaches the port",
            hint="Set [metrics] remote = true to allow it, or listen on 127.0.0.1.")


class Endpoint:
    """Serves the monitor's metrics and health, and the page, on its own threads."""

    def __init__(self, config: MetricsConfig, monitor: HealthMonitor) -> None:
        self.config = config
        self.monitor = monitor
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Listen and serve; the URL of the page."""
        server = make_server(self.config.host, self.config.port, self.app,
                             server_class=_Server, handler_class=_QuietHandler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fig-metrics-http",
                                        daemon=True)
        self._thread.start()
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{server.server_port}/"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"GET only\n",
                           "text/plain", [("Allow", "GET, HEAD")])
        try:
            if path == "/metrics":
                return _answer(start_response, "200 OK", self.monitor.exposition(),
                               CONTENT_TYPE_LATEST)
            if path == "/api/health":
                body = json.dumps(self.monitor.health(), default=_json_value).encode()
                return _answer(start_response, "200 OK", body, "application/json")
            if path in ("/", "/index.html"):
                return _answer(start_response, "200 OK", (PAGE / "index.html").read_bytes(),
                               "text/html; charset=utf-8", [("Content-Security-Policy", CSP)])
            name = path.removeprefix("/static/")
            if path.startswith("/static/") and name in STATIC:
                file = PAGE / name if (PAGE / name).exists() else PAGE / "vendor" / name
                if file.exists():
                    return _answer(start_response, "200 OK", file.read_bytes(), STATIC[name])
        except Exception:  # a failing page never takes the server down
            log.exception("metrics endpoint failed on %s", path)
            return _answer(start_response, "500 Internal Server Error", b"error\n",
                           "text/plain")
        return _answer(start_response, "404 Not Found", b"not found\n", "text/plain")


def _answer(start_response: StartResponse, status: str, body: bytes, content_type: str,
            extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *(extra or [])])
    return [body]


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)
