"""Run generated statements over the tiered tables and their twins through one Fig, and judge.

    python -m tests.federation.oracle_run --seed 1 --count 500 [--route auto|cold]
        [--timezone UTC] [--protocol simple|psycopg|asyncpg] [--shape aggregate] [--show 3]

Each statement runs on the tiered tables and, on the same session, on their never-tiered
twins; the answers must have the same column names, type OIDs and rows (in order when the
statement's ORDER BY is total, else as multisets; float8/float4 values within a relative 1e-9,
everything else exactly, read as Postgres's own text through psycopg). A `0A000` on the tiered
side is allowed (refused); any other difference is a failure, grouped by a short signature.
"""

from __future__ import annotations

import argparse
import asyncio
import decimal
import math
import os
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
from psycopg.postgres import types as pg_types
from psycopg.types.string import TextLoader

from tests.federation.oracle_fixture import TWINS, OracleData, build_generated_oracle
from tests.federation.oracle_grammar import SHAPES, TIMEZONES, Case, Grammar

ROUTES = ("auto", "cold")
PROTOCOLS = ("simple", "psycopg", "asyncpg")
FLOAT_OIDS = {700, 701}
REL_TOL = 1e-9
LOST = ("08003", "08006")  # connection_does_not_exist, connection_failure
# FIG_ORACLE_TIMEOUT_S: longer for the passes on an S3 endpoint (moto answers each request in
# milliseconds, not microseconds) and on a Ray cluster
ASYNCPG_TIMEOUT_S = float(os.environ.get("FIG_ORACLE_TIMEOUT_S") or 8.0)
# After this many asyncpg timeouts on one session set the asyncpg statements are counted as failing
# (signature asyncpg-wedged) without waiting for each one: the budget stays bounded.
ASYNCPG_BREAKER = 3


@dataclass
class Answer:
    """What one execution returned: columns (name, type OID) and rows, or an error."""

    columns: list[tuple[str, int]] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    code: str | None = None  # SQLSTATE, or a client-side marker; None when it succeeded
    message: str = ""


@dataclass
class Verdict:
    kind: str  # same | refused | wrong | unexpected
    signature: str = ""
    detail: str = ""


@dataclass
class Failure:
    signature: str
    seed: int
    index: int
    route: str
    timezone: str
    protocol: str
    sql: str
    params: list[object]
    detail: str

    def describe(self) -> str:
        params = f"\n    params: {self.params!r}" if self.params else ""
        return (f"[{self.signature}] seed={self.seed} #{self.index} route={self.route} "
                f"TimeZone={self.timezone} protocol={self.protocol}\n    {self.sql}{params}\n"
                f"    {self.detail}")


@dataclass
class Summary:
    counts: Counter[str] = field(default_factory=Counter)
    by_signature: Counter[str] = field(default_factory=Counter)
    first: dict[str, Failure] = field(default_factory=dict)
    statements: int = 0

    @property
    def failures(self) -> int:
        return self.counts["wrong"] + self.counts["unexpected"]

    def report(self, show: int = 1) -> str:
        total = sum(self.counts.values())
        lines = [f"statements {self.statements}, executions {total}: "
                 + ", ".join(f"{k} {self.counts[k]}"
                             for k in ("same", "refused", "wrong", "unexpected"))]
        for signature, n in self.by_signature.most_common():
            lines.append(f"{n:6d}  {self.first[signature].describe()}" if show else
                         f"{n:6d}  {signature}")
        return "\n".join(lines)


def _normalize(message: str) -> str:
    """An error message with its literals and numbers blanked, for grouping."""
    message = message.splitlines()[0] if message else ""
    message = re.sub(r'"[^"]*"|\'[^\']*\'', "?", message)
    return re.sub(r"\d+", "N", message)[:70]


def _same_value(a: object, b: object, oid: int | None) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or math.isclose(a, b, rel_tol=REL_TOL)
    if isinstance(a, decimal.Decimal) and isinstance(b, decimal.Decimal) and \
            (a.is_nan() or b.is_nan()):
        return a.is_nan() and b.is_nan()  # asyncpg's numeric NaN: never == itself
    return a == b


def _same_row(a: Sequence[object], b: Sequence[object]) -> bool:
    return len(a) == len(b) and all(_same_value(x, y, None) for x, y in zip(a, b, strict=True))


def _sort_key(row: Sequence[object]) -> tuple[tuple[int, str], ...]:
    def one(v: object) -> tuple[int, str]:
        if v is None:
            return (0, "")
        if isinstance(v, float):
            return (1, "nan" if math.isnan(v) else f"{v:.6e}")
        return (2, repr(v))
    return tuple(one(v) for v in row)


def same_rows(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]], ordered: bool) -> bool:
    if len(got) != len(want):
        return False
    if ordered:
        return all(_same_row(a, b) for a, b in zip(got, want, strict=True))
    a, b = sorted(got, key=_sort_key), sorted(want, key=_sort_key)
    if all(_same_row(x, y) for x, y in zip(a, b, strict=True)):
        return True
    # Floats within tolerance may sort apart: match row by row (small results only).
    if len(b) > 3000:
        return False
    pool = list(b)
    for row in a:
        for i, candidate in enumerate(pool):
            if _same_row(row, candidate):
                del pool[i]
                break
        else:
            return False
    return True


def judge(case: Case, got: Answer, want: Answer) -> Verdict:
    if got.code is None and want.code is None:
        if got.columns != want.columns:
            names = [c[0] for c in got.columns] != [c[0] for c in want.columns]
            return Verdict("wrong", f"wrong:{case.shape}:{'names' if names else 'types'}",
                           f"columns {got.columns} want {want.columns}")
        if case.sample is not None:
            return _judge_sample(case, got, want)
        if same_rows(got.rows, want.rows, case.ordered):
            return Verdict("same")
        what = "rowcount" if len(got.rows) != len(want.rows) else "values"
        return Verdict("wrong", f"wrong:{case.shape}:{what}",
                       f"got {len(got.rows)} rows {_preview(got.rows)}; "
                       f"want {len(want.rows)} rows {_preview(want.rows)}")
    if got.code == "0A000":
        if want.code in LOST or (want.code or "").startswith("lost:"):
            # the twin runs next on the same session: a refusal must leave it usable
            return Verdict("unexpected", f"unexpected:{case.shape}:session-lost-by-refusal",
                           f"the twin, run after the refusal, failed {want.code}: "
                           f"{want.message}")
        return Verdict("refused")
    if got.code == "asyncpg-wedged":
        return Verdict("unexpected", f"unexpected:{case.shape}:asyncpg-wedged",
                       "not run: asyncpg timed out on tiered statements before")
    if got.code == want.code:
        return Verdict("same")
    if got.code is None:
        return Verdict("unexpected", f"unexpected:{case.shape}:twin-{want.code}",
                       f"tiered answered, twin failed {want.code}: {want.message}")
    return Verdict("unexpected",
                   f"unexpected:{case.shape}:{got.code} {_normalize(got.message)}",
                   f"tiered {got.code}: {got.message.splitlines()[0] if got.message else ''}; "
                   f"twin {want.code or 'ok'}")


def _judge_sample(case: Case, got: Answer, want: Answer) -> Verdict:
    """LIMIT n OFFSET m without ORDER BY: min(n, rows - m) rows, each one of the twin's
    rows without the LIMIT (a multiset: no row more often than there)."""
    assert case.sample is not None
    count, skip = case.sample
    expected = min(count, max(0, len(want.rows) - skip))
    if len(got.rows) != expected:
        return Verdict("wrong", f"wrong:{case.shape}:rowcount",
                       f"got {len(got.rows)} rows, want {expected} of {len(want.rows)}")
    pool = sorted(want.rows, key=_sort_key)
    for row in got.rows:
        found = next((i for i, candidate in enumerate(pool) if _same_row(row, candidate)),
                     None)
        if found is None:
            return Verdict("wrong", f"wrong:{case.shape}:values",
                           f"row {_preview([row])} is not a row of the statement "
                           f"(of {len(want.rows)}: {_preview(want.rows)})")
        del pool[found]
    return Verdict("same")


def _preview(rows: list[tuple[Any, ...]]) -> str:
    text = repr(rows[:3])
    return text if len(text) < 300 else text[:300] + "..."


class Sessions:
    """One psycopg and one asyncpg session per (route, TimeZone), opened on first use."""

    def __init__(self, data: OracleData) -> None:
        self.data = data
        self.loop = asyncio.new_event_loop()
        self.pg: dict[tuple[str, str], psycopg.Connection[Any]] = {}
        self.apg: dict[tuple[str, str], asyncpg.Connection] = {}
        self.asyncpg_timeouts = 0

    def psycopg(self, route: str, tz: str) -> psycopg.Connection[Any]:
        conn = self.pg.get((route, tz))
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.data.fig.dsn, autocommit=True)
            # Postgres's own text for every value but floats (compared with a tolerance).
            for info in pg_types:
                if info.oid not in FLOAT_OIDS:
                    conn.adapters.register_loader(info.oid, TextLoader)
            for sql in _session_setup(route, tz):
                conn.execute(sql)
            self.pg[(route, tz)] = conn
        return conn

    def asyncpg(self, route: str, tz: str) -> asyncpg.Connection:
        conn = self.apg.get((route, tz))
        if conn is None or conn.is_closed():
            fig = self.data.fig
            conn = self.loop.run_until_complete(asyncpg.connect(
                host=fig.host, port=fig.port, user="postgres", database="postgres"))
            for sql in _session_setup(route, tz):
                self.loop.run_until_complete(conn.execute(sql))
            self.apg[(route, tz)] = conn
        return conn

    def close(self) -> None:
        for conn in self.pg.values():
            conn.close()
        for aconn in self.apg.values():
            if not aconn.is_closed():
                try:
                    self.loop.run_until_complete(asyncio.wait_for(aconn.close(), 2))
                except (TimeoutError, asyncpg.InterfaceError, OSError):
                    aconn.terminate()
        self.loop.close()

    def run(self, route: str, tz: str, protocol: str, sql: str, params: list[object],
            tiered: bool = True) -> Answer:
        if protocol == "asyncpg":
            return self._run_asyncpg(route, tz, sql, params, tiered)
        conn = self.psycopg(route, tz)
        try:
            cur = conn.execute(sql, params if protocol == "psycopg" and params else None)
            columns = [(c.name, c.type_code) for c in cur.description or []]
            return Answer(columns, cur.fetchall() if cur.description else [])
        except psycopg.Error as e:
            code = e.sqlstate or f"client:{type(e).__name__}"
            if conn.broken or conn.closed:
                code = f"lost:{code}"
            return Answer(code=code, message=str(e))

    def _run_asyncpg(self, route: str, tz: str, sql: str, params: list[object],
                     tiered: bool) -> Answer:
        if tiered and self.asyncpg_timeouts >= ASYNCPG_BREAKER:
            return Answer(code="asyncpg-wedged", message="asyncpg timed out repeatedly before")
        conn = self.asyncpg(route, tz)

        async def go() -> Answer:
            stmt = await conn.prepare(sql)
            columns = [(a.name, a.type.oid) for a in stmt.get_attributes()]
            rows = await stmt.fetch(*params)
            return Answer(columns, [tuple(r) for r in rows])

        try:
            return self.loop.run_until_complete(asyncio.wait_for(go(), ASYNCPG_TIMEOUT_S))
        except TimeoutError:
            self.asyncpg_timeouts += 1
            conn.terminate()
            return Answer(code="timeout", message=f"no answer in {ASYNCPG_TIMEOUT_S}s")
        except asyncpg.PostgresError as e:
            return Answer(code=e.sqlstate, message=str(e))
        except (asyncpg.InterfaceError, OSError, ValueError, TypeError) as e:
            code = f"client:{type(e).__name__}"
            if conn.is_closed():
                code = f"lost:{code}"
            return Answer(code=code, message=str(e))

    def late_write(self, index: int, rng: random.Random) -> None:
        """One late change to both tiered tables and their twins alike: a row copied from
        the twin with a new id and a time 50 days older (below the 30-day boundary), or such
        a row deleted again (half of the deletes with the id bound as a parameter: a driver's
        cold write). Autocommit (a DELETE that may reach cold is refused inside a
        transaction block); the one worker reads only after both tables are written."""
        conn = self.psycopg("auto", "UTC")
        statements: list[tuple[str, tuple[int, ...] | None]] = []
        for table, columns in LATE_COLUMNS.items():
            source = rng.randrange(1, 4000)
            if index > 1 and rng.random() < 0.3:  # one of the earlier late rows
                victim = LATE_ID + rng.randrange(index)
                bound = rng.random() < 0.5
                statements += [(f"delete from {name} where id = %s", (victim,)) if bound
                               else (f"delete from {name} where id = {victim}", None)
                               for name in (table, TWINS[table])]
                continue
            rest = ", ".join(columns)
            statements += [(f"insert into {name} (id, ts, {rest}) select {LATE_ID + index}, "
                            f"ts - interval '50 days', {rest} from {TWINS[table]} "
                            f"where id = {source}", None) for name in (table, TWINS[table])]
        for statement, params in statements:
            conn.execute(statement, params)

    def transaction(self, route: str, tz: str, sql: str) -> None:
        """BEGIN/COMMIT/ROLLBACK on the psycopg session (clock statements share one now())."""
        conn = self.psycopg(route, tz)
        try:
            conn.execute(sql)
        except psycopg.Error:
            if not conn.broken:
                conn.execute("rollback")


# Late writes (Oracle(late=True)): the columns copied besides id and ts, and where the
# late rows' ids start.
LATE_COLUMNS = {
    "events": ("day", "status", "user_id", "country", "amount", "note"),
    "kinds": ("si", "i", "bi", "num", "r", "d", "t", "vc", "ch", "b", "dt", "tsn", "tm", "j",
              "js", "u", "by"),
}
LATE_ID = 5_000_000


def _session_setup(route: str, tz: str) -> list[str]:
    return [f"set fig.route = '{route}'", f"set timezone = '{tz}'",
            "set statement_timeout = '60s'"]


class Oracle:
    """Runs cases from seeded grammars and keeps the summary.

    `routes="both"` runs every statement under auto and cold; `"alternate"` runs statement i
    under one of them (auto for even i), which halves the time of a run."""

    def __init__(self, data: OracleData, routes: str = "both",
                 timezones: Sequence[str] = TIMEZONES,
                 protocols: Sequence[str] = PROTOCOLS, verbose: bool = False,
                 workers: int = 1, shapes: Sequence[str] = (), late: bool = False) -> None:
        self.data = data
        # Before every statement, a late change to both tiers' tables and their twins (route
        # auto and one worker only: the cold route answers from Iceberg alone, and another
        # worker's write between a statement and its twin's would differ by itself).
        self.late = late
        if late and (workers != 1 or routes != "auto"):
            raise ValueError("late writes need route auto and one worker")
        self.shapes = shapes
        self.verbose = verbose
        self.workers = workers
        self.sessions = Sessions(data)
        self.routes, self.timezones, self.protocols = routes, timezones, protocols
        self.summary = Summary()
        self.lock = threading.Lock()

    def run_seed(self, seed: int, count: int) -> None:
        """All statements of one seed, over `workers` threads, each with its own sessions."""
        grammar = Grammar(seed, self.data.now, self.shapes)
        self.late_rng = random.Random(seed)
        jobs = []
        for index in range(count):
            case = grammar.case()
            tz = self.timezones[(seed + index) % len(self.timezones)]
            jobs.append((index, case, tz, self._protocol(grammar, case)))
        if self.workers <= 1:
            self._run_jobs(self.sessions, seed, jobs)
            return
        pool = [Sessions(self.data) for _ in range(self.workers)]
        threads = [threading.Thread(target=self._run_jobs, args=(pool[w], seed,
                                                                 jobs[w::self.workers]))
                   for w in range(self.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for sessions in pool:
            sessions.close()

    def _routes(self, index: int) -> Sequence[str]:
        if self.routes == "both":
            return ROUTES
        if self.routes == "alternate":
            return (ROUTES[index % 2],)
        return (self.routes,)

    def _run_jobs(self, sessions: Sessions, seed: int,
                  jobs: list[tuple[int, Case, str, str]]) -> None:
        for index, case, tz, protocol in jobs:
            with self.lock:
                self.summary.statements += 1
            if self.late:
                sessions.late_write(self.summary.statements, self.late_rng)
            for route in self._routes(index):
                began = time.monotonic()
                verdict = self.check(sessions, case, route, tz, protocol)
                if self.verbose:
                    print(f"{seed}#{index} {route} {tz} {protocol} {verdict.kind} "
                          f"{time.monotonic() - began:.2f}s {case.render(False)[0]}",
                          file=sys.stderr, flush=True)
                with self.lock:
                    self._record(verdict, case, seed, index, route, tz, protocol)

    def _protocol(self, grammar: Grammar, case: Case) -> str:
        options = [p for p in self.protocols if not (p == "asyncpg" and case.clock)]
        weights = {"simple": 5, "psycopg": 3, "asyncpg": 2}
        if not options:
            options = ["simple"]
        return grammar.rng.choices(options, weights=[weights[p] for p in options])[0]

    def check(self, sessions: Sessions, case: Case, route: str, tz: str,
              protocol: str) -> Verdict:
        if case.tlp is not None:
            return self.check_tlp(sessions, case, route, tz, protocol)
        style = "inline" if protocol == "simple" else protocol
        tiered, params = case.render(False, style)
        twin, twin_params = case.render(True, style)
        if case.sample is not None:
            tiered += f" limit {case.sample[0]} offset {case.sample[1]}"
        if case.clock:
            sessions.transaction(route, tz, "begin")
        got = sessions.run(route, tz, protocol, tiered, params)
        if case.clock and got.code is not None:
            sessions.transaction(route, tz, "rollback")
            sessions.transaction(route, tz, "begin")
        want = sessions.run(route, tz, protocol, twin, twin_params, tiered=False)
        if case.clock:
            sessions.transaction(route, tz, "rollback" if want.code else "commit")
        return judge(case, got, want)

    def check_tlp(self, sessions: Sessions, case: Case, route: str, tz: str,
                  protocol: str) -> Verdict:
        """count(*) = count where p + where not p + where p is null, on the tiered table alone."""
        assert case.tlp is not None
        parts = ["", f" where {case.tlp}", f" where not ({case.tlp})",
                 f" where ({case.tlp}) is null"]
        counts: list[int] = []
        if case.clock:
            sessions.transaction(route, tz, "begin")
        try:
            for part in parts:
                one = Case(case.shape, case.sql + part, case.params)
                sql, params = one.render(False, "inline" if protocol == "simple" else protocol)
                got = sessions.run(route, tz, protocol, sql, params)
                if got.code is not None:
                    twin_sql, twin_params = one.render(True, "inline" if protocol == "simple"
                                                       else protocol)
                    if case.clock:
                        sessions.transaction(route, tz, "rollback")
                        sessions.transaction(route, tz, "begin")
                    want = sessions.run(route, tz, protocol, twin_sql, twin_params,
                                         tiered=False)
                    return judge(one, got, want)
                counts.append(int(got.rows[0][0]))
        finally:
            if case.clock:
                sessions.transaction(route, tz, "commit")
        if counts[0] == sum(counts[1:]):
            return Verdict("same")
        return Verdict("wrong", "wrong:tlp:partition",
                       f"count {counts[0]} but p/not p/null give {counts[1:]}")

    def _record(self, verdict: Verdict, case: Case, seed: int, index: int, route: str,
                tz: str, protocol: str) -> None:
        self.summary.counts[verdict.kind] += 1
        if verdict.kind not in ("wrong", "unexpected"):
            return
        self.summary.by_signature[verdict.signature] += 1
        if verdict.signature not in self.summary.first:
            style = "inline" if protocol == "simple" else protocol
            sql, params = case.render(False, style)
            if case.tlp is not None:
                predicate = Case(case.shape, case.tlp, case.params).render(False, style)[0]
                sql = f"{sql}  -- TLP over p: {predicate}"
            self.summary.first[verdict.signature] = Failure(
                verdict.signature, seed, index, route, tz, protocol, sql, params,
                verdict.detail)

    def close(self) -> None:
        self.sessions.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, nargs="+", default=[1])
    parser.add_argument("--count", type=int, default=200, help="statements per seed")
    # "hot" answers from the hot tier alone: every cold row missing, a check of the oracle itself
    parser.add_argument("--route", choices=(*ROUTES, "hot", "both", "alternate"),
                        default="both")
    parser.add_argument("--workers", type=int, default=3, help="client threads")
    parser.add_argument("--timezone", nargs="+", default=list(TIMEZONES))
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--shape", nargs="+", choices=[name for name, _ in SHAPES], default=[],
                        help="only statements of these shapes")
    parser.add_argument("--show", type=int, default=1, help="0: signatures only")
    parser.add_argument("--verbose", action="store_true", help="each statement to stderr")
    parser.add_argument("--late", action="store_true",
                        help="a late change before each statement (with --route auto "
                             "--workers 1)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    data = build_generated_oracle()
    built = time.monotonic()
    oracle = Oracle(data, args.route, args.timezone, args.protocol, args.verbose,
                    args.workers, args.shape, args.late)
    try:
        for seed in args.seed:
            oracle.run_seed(seed, args.count)
    finally:
        oracle.close()
        data.fig.stop()
    print(oracle.summary.report(args.show))
    print(f"fixture {built - started:.1f}s, statements {time.monotonic() - built:.1f}s")
    return 1 if oracle.summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
