"""The health dashboard in a real browser (Debian's headless Chromium) against a real Fig: the
page draws its charts, shows the figures fig.tables and fig.cdc_status hold, requests nothing
beyond loopback; a screenshot is kept in the test's temp dir. And `fig status` prints the same
summary in a terminal."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest

from tests.conftest import FigProcess, start_fig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COLD_SQL = "select count(*), max(v) from ev where ts < '{bound}'"


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig(env={"FIG__AUDIT__PRICE_PER_GB": "100000", "FIG__COLD__WORKERS": "2"})
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("create table ev (id bigint primary key, ts timestamptz not null, "
                         "v int)")
            conn.execute("insert into ev select g, %s::timestamptz + g * interval '1 minute', "
                         "g from generate_series(1, 3000) g", (old,))
            conn.execute("select fig.tier_table('ev', 'ts', interval '10 days')")
            conn.execute("select fig.sync()")
            conn.execute("select fig.run_retention()")
            conn.execute("insert into ev select g, now(), g from generate_series(5001, 5040) g")
            conn.execute("select fig.sync()")
            for _ in range(20):
                conn.execute("select 1").fetchall()
            bound = (old + dt.timedelta(days=5)).isoformat()
            conn.execute(COLD_SQL.format(bound=bound)).fetchall()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


class _Page(HTMLParser):
    """Text by element id, and the rows of the tiered-tables table."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.body: dict[str, str | None] = {}
        self.table_rows: dict[str, list[str]] = {}
        self.statements: list[str] = []
        self.charts = 0
        self._open: list[tuple[str, str | None]] = []
        self._row: str | None = None
        self._cell: list[str] | None = None
        self._cell_class = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        if "uplot" in (attributes.get("class") or "").split():
            self.charts += 1
        if tag == "tr" and attributes.get("data-table"):
            self._row = attributes["data-table"]
            self.table_rows[self._row or ""] = []
        if tag == "td":
            self._cell, self._cell_class = [], attributes.get("class") or ""
        self._open.append((tag, attributes.get("id")))
        if attributes.get("id"):
            self.by_id[attributes["id"] or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            text = "".join(self._cell)
            if self._row is not None:
                self.table_rows[self._row].append(text)
            if self._cell_class == "sql":
                self.statements.append(text)
            self._cell = None
        if tag == "tr":
            self._row = None
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, element in self._open:
            if element:
                self.by_id[element] += data


def browser(url: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--window-size=1400,1300",
         "--virtual-time-budget=8000", f"--user-data-dir={out / 'profile'}", *args, url],
        capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def browser_ready() -> None:
    if CHROMIUM is None:
        pytest.fail("Debian's chromium package is needed (apt-get install chromium; "
                    ".ci/run installs it)")


def test_dashboard_shows_what_postgres_holds(fig: FigProcess, tmp_path: Path,
                                             browser_ready: None) -> None:
    assert fig.metrics_url is not None
    netlog = tmp_path / "net.json"
    dom = browser(fig.metrics_url, tmp_path, "--dump-dom", f"--log-net-log={netlog}").stdout
    page = _Page()
    page.feed(dom)
    assert page.body.get("data-state") == "ready", dom[:2000]
    assert page.charts == 4, "the four charts of the last hour were not drawn"
    with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
        table = direct.execute(
            "select state, tier_boundary, cold_rows, cold_files, cold_bytes from fig.tables "
            "where table_name = 'public.ev'").fetchone()
        cdc = direct.execute("select slot_active from fig.cdc_status").fetchone()
    assert table is not None and cdc is not None and cdc[0]
    state, _, cold_rows, cold_files, cold_bytes = table
    cells = page.table_rows["public.ev"]
    assert cells[1] == state == "active"
    assert cells[5:8] == [f"{cold_rows:,}", f"{cold_files:,}", f"{cold_bytes:,}"]
    assert cold_rows == 3040
    # fig.cdc_status's lag moves by seconds whenever WAL passes an idle slot (the audit's own
    # inserts do): the page shows a number of seconds, not the value of another moment
    assert 0 <= float(page.by_id["cdc-lag"].replace(",", "")) < 60
    assert page.by_id["workers"] == "0 / 2"
    assert page.by_id["hot-fast"].endswith("%")
    assert page.by_id["pruned"].endswith("%")
    assert float(page.by_id["cost"].lstrip("$")) > 0
    assert float(page.by_id["cold-avg"]) > 0
    # the slowest statements of the last hour, as fig.query_log holds them (which ones rank
    # first is a matter of timing: only that the page shows logged statements is asserted)
    with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
        logged = {row[0] for row in direct.execute(
            "select statement from fig.query_log where ts > now() - interval '1 hour'")}
    assert page.statements and len(page.statements) <= 8
    assert set(page.statements) <= logged, (page.statements, sorted(logged)[:20])

    # every request the page made went to this server (the browser's own traffic has no
    # page as its initiator)
    origin = fig.metrics_url.rstrip("/")
    events = json.loads(netlog.read_text())["events"]
    page_urls = {e["params"]["url"] for e in events
                 if (e.get("params") or {}).get("initiator") == origin}
    assert {urlparse(u).path for u in page_urls} >= {"/static/dashboard.js", "/api/health",
                                                      "/static/uPlot.iife.min.js"}
    assert all(urlparse(u).hostname == "127.0.0.1" for u in page_urls), page_urls

    shot = tmp_path / "dashboard.png"
    browser(fig.metrics_url, tmp_path, f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000


def test_endpoint_answers_only_what_it_serves(fig: FigProcess) -> None:
    assert fig.metrics_url is not None
    with urllib.request.urlopen(fig.metrics_url, timeout=30) as response:
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    for path, code in (("nothing-here", 404), ("static/../../conf/fig.toml", 404),
                       ("static/%2e%2e/health.py", 404)):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(fig.metrics_url + path, timeout=30)
        assert caught.value.code == code
    request = urllib.request.Request(fig.metrics_url + "metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 405


def test_fig_status_prints_the_summary(fig: FigProcess) -> None:
    deadline = time.monotonic() + 20
    while True:  # the cold statement is counted by the audit writer within 0.1 s
        result = subprocess.run(
            [sys.executable, "-m", "fig_server.cli", "status", "--data-dir", str(fig.data_dir)],
            capture_output=True, text=True, timeout=60, env=fig.env)
        assert result.returncode == 0, result.stderr
        if "over 0 statements" not in result.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out = result.stdout
    assert out.startswith(f"Fig Platform Health ({fig.metrics_url}")
    for heading in ("Hot storage:", "CDC lag:", "Cold query avg:", "Pruning efficiency:",
                    "Active workers:     0 / 2", "Cost (today):       $"):
        assert heading in out, out
    assert "public.ev" in out and "active" in out and "3,040" in out
    assert "select count(*), max(v) from ev" in out
    as_json = subprocess.run(
        [sys.executable, "-m", "fig_server.cli", "status", "--json", "--data-dir",
         str(fig.data_dir)], capture_output=True, text=True, timeout=60, env=fig.env)
    health = json.loads(as_json.stdout)
    assert health["summary"]["workers"] == 2
    assert [t["table_name"] for t in health["tables"]] == ["public.ev"]


def test_fig_status_without_a_server(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fig_server.cli", "status", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no fig serve is running" in result.stderr
