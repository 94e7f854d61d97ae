"""A seeded random SQL generator over the oracle's tiered tables (`events`, `kinds`) and `users`.

Each `Case` is one statement whose tiered table names are written as `@events@`/`@kinds@`
markers (rendered as the tiered name or its twin, in the case the generator chose), and whose
parameterisable literals are `\\x01n\\x01` markers (rendered inline, as `%s` or as `$k`).
A statement is deterministic: LIMIT, OFFSET, DISTINCT ON and window frames come with a total
order (the primary key last); otherwise the runner compares rows as a multiset. The one
exception is a sample (`Case.sample`): LIMIT without ORDER BY, whose answer is any rows of
the statement without it; the twin runs without the LIMIT, and the runner checks the count
and that each row is one of the twin's.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MARK = "\x01"


@dataclass
class Param:
    sql: str  # the literal as written inline
    value: object  # the Python value bound by psycopg / asyncpg


@dataclass
class Case:
    shape: str
    sql: str
    params: list[Param] = field(default_factory=list)
    ordered: bool = False  # rows compared in order (the ORDER BY is total)
    clock: bool = False  # reads now()/current_date: tiered and twin run in one transaction
    tlp: str | None = None  # a predicate for ternary logic partitioning instead of a twin run
    sample: tuple[int, int] | None = None  # LIMIT n OFFSET m of the tiered run alone

    def render(self, twin: bool, style: str = "inline") -> tuple[str, list[object]]:
        """The text for the tiered tables or their twins; style inline, psycopg or asyncpg."""
        sql = re.sub(r"@(\w+)@", lambda m: _table_name(m.group(1), twin), self.sql)
        if style == "inline" or not self.params:
            return re.sub(MARK + r"(\d+)" + MARK, lambda m: self.params[int(m.group(1))].sql,
                          sql), []
        if style == "psycopg":
            sql = sql.replace("%", "%%")
        values: list[object] = []

        def place(m: re.Match[str]) -> str:
            values.append(self.params[int(m.group(1))].value)
            return "%s" if style == "psycopg" else f"${len(values)}"

        return re.sub(MARK + r"(\d+)" + MARK, place, sql), values


def _table_name(written: str, twin: bool) -> str:
    """`events` -> `events_plain`, keeping the case the statement wrote it in."""
    if not twin:
        return written
    return written + ("_PLAIN" if written.isupper() else "_plain")


# Column -> kind, per table. Kinds choose the predicates and expressions that fit.
EVENTS_COLS = {"id": "int", "ts": "tstz", "day": "date", "status": "int", "user_id": "int",
               "country": "text", "amount": "num", "note": "text"}
KINDS_COLS = {"id": "int", "ts": "tstz", "si": "int", "i": "int", "bi": "bigint",
              "num": "num", "r": "real", "d": "float", "t": "text", "vc": "text",
              "ch": "char", "b": "bool", "dt": "date", "tsn": "ts", "tm": "time",
              "j": "jsonb", "js": "json", "u": "uuid", "by": "bytea"}
TABLES = {"events": EVENTS_COLS, "kinds": KINDS_COLS}
ORDERABLE = {"int", "bigint", "num", "real", "float", "text", "char", "bool", "date", "ts",
             "tstz", "time", "uuid", "bytea"}
TIMEZONES = ("UTC", "America/New_York", "Asia/Kolkata")
DAYS = (-5, 1, 5, 20, 29, 30, 31, 40, 60, 100, 119, 130)


class Grammar:
    """Statements from one seed: `Grammar(seed, now).case()` again and again."""

    def __init__(self, seed: int, now: dt.datetime, shapes: Sequence[str] = ()) -> None:
        """shapes: only statements of these shapes (names in SHAPES); every shape when empty."""
        self.rng = random.Random(seed)
        self.shapes = [s for s in _SHAPES if not shapes or s[0] in shapes]
        self.now = now
        self.params: list[Param] = []
        self.clock = False
        self.qualify = False  # always qualify columns (two tables with the same columns)

    # -- small helpers -------------------------------------------------------------------
    def pick(self, *options: str) -> str:
        return self.rng.choice(options)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def param(self, sql: str, value: object) -> str:
        """A literal the runner may bind as a parameter (server-side)."""
        self.params.append(Param(sql, value))
        return f"{MARK}{len(self.params) - 1}{MARK}"

    def table(self, name: str) -> str:
        """The tiered table as written in FROM: plain, upper case, quoted or schema-qualified."""
        style = self.rng.random()
        if style < 0.1:
            return f"@{name.upper()}@"
        if style < 0.2:
            return f'"public"."@{name}@"'
        if style < 0.3:
            return f"public.@{name}@"
        return f"@{name}@"

    def col(self, table: str, kinds: set[str] | None = None) -> str:
        names = [c for c, k in TABLES[table].items() if kinds is None or k in kinds]
        return self.rng.choice(names)

    def ref(self, alias: str | None, column: str, table: str) -> str:
        """A column reference: bare, alias-qualified or, without an alias, three-part."""
        if alias:
            qualify = self.qualify or self.chance(0.6)
            return f"{alias}.{column}" if qualify else column
        if self.chance(0.08):
            return f'"public"."@{table}@"."{column}"'
        return column

    # -- literals ------------------------------------------------------------------------
    def instant(self) -> dt.datetime:
        when = self.now - dt.timedelta(days=self.rng.choice(DAYS),
                                       hours=self.rng.choice((0, 0, 3, 13)),
                                       minutes=self.rng.choice((0, 0, 17)))
        return when

    def time_bound(self, kind: str) -> str:
        """A column-free expression of the time column's kind, from one of the bound sources."""
        days = self.rng.choice(DAYS)
        source = self.rng.random()
        if source < 0.25:
            self.clock = True
            return self.pick(f"now() - interval '{days} days'",
                             f"current_date - {days}",
                             f"date_trunc('day', now()) - interval '{days} days 2 hours'",
                             f"current_timestamp - {days} * interval '1 day'",
                             f"localtimestamp - interval '{days} days'")
        when = self.instant()
        if kind == "date" or (source < 0.35 and kind != "date"):
            text = f"'{when.date()}'"
            return text + self.pick("", "::date") if kind != "tstz" else text
        if source < 0.45:
            return self.pick("null", "'infinity'", "'-infinity'") + (
                "::timestamptz" if kind == "tstz" else "::timestamp" if kind == "ts" else "")
        if source < 0.7 and kind == "tstz":
            return self.param(f"'{when.isoformat()}'::timestamptz", when)
        if source < 0.85:
            # a string read in the session's TimeZone (timestamptz) or as written (timestamp)
            return f"'{when.replace(tzinfo=None)}'"
        offset = self.pick("+00", "-05", "+05:30")
        return f"'{when.replace(tzinfo=None)}{offset}'"

    def value(self, kind: str, column: str) -> str:
        """A literal comparable with a column of this kind."""
        r = self.rng
        if kind in ("int", "bigint"):
            n = r.choice((0, 1, 7, 17, 50, 100, 200, 404, 500, 999, -3, 150))
            if column == "bi" and self.chance(0.3):
                n = r.choice((900000000000000001, 0, -4999999))
            return self.param(str(n), n) if self.chance(0.4) and column != "bi" else str(n)
        if kind == "num":
            return r.choice(("10", "12.5", "0", "200 + 0.5", "13.49", "99.999"))
        if kind in ("real", "float"):
            return r.choice(("0", "1.5", "33.333", "'NaN'", "100", "1e2"))
        if kind in ("text", "char"):
            s = r.choice(("DE", "FR", "US", "n1", "alpha", "Beta", "a", "bb", "ccc ", "v3",
                          "", "x y", "ünï2", "dddd"))
            return self.param(f"'{s}'", s) if self.chance(0.4) else f"'{s}'"
        if kind == "bool":
            return r.choice(("true", "false"))
        if kind == "date":
            return f"'{self.instant().date()}'"
        if kind in ("ts", "tstz"):
            return self.time_bound(kind)
        if kind == "time":
            return r.choice(("'12:00'", "'00:07'", "'23:59:59'"))
        if kind == "uuid":
            return r.choice(("'c4ca4238-a0b9-3382-0dcc-509a6f75849b'",
                             "'00000000-0000-0000-0000-000000000000'"))
        if kind == "bytea":
            return r.choice(("'\\xc4ca4238'", "'\\x00'"))
        return "null"

    # -- predicates ----------------------------------------------------------------------
    def atom(self, table: str, alias: str | None) -> str:
        column = self.col(table)
        kind = TABLES[table][column]
        c = self.ref(alias, column, table)
        r = self.rng.random()
        if column == "ts" or (kind in ("date", "ts") and r < 0.5):
            return self.time_atom(c, kind)
        if r < 0.1:
            return f"{c} is {self.pick('', 'not ')}null"
        if kind == "jsonb":
            return self.pick(f"{c} ->> 's' = 'x'", f"{c} @> '{{\"k\": 3}}'",
                             f"({c} ->> 'k')::int > 4", f"{c} ? 'n'", f"{c} -> 'n' is null",
                             f"{c} #>> '{{a,1}}' = '2'", f"{c} ->> 'n' is null")
        if kind == "json":
            return self.pick(f"{c} ->> 'g' = '3'", f"({c} ->> 'g')::int < 4")
        if kind in ("text", "char"):
            return self.text_atom(c)
        if kind in ("int", "bigint", "num", "real", "float"):
            return self.number_atom(c, kind, column)
        if kind == "bool":
            return self.pick(c, f"not {c}", f"{c} is true", f"{c} is not false", f"{c} = true")
        if kind == "uuid":
            return self.pick(f"{c} = {self.value(kind, column)}", f"{c}::text like 'c%'",
                             f"{c}::text < '8'")
        if kind == "bytea":
            return self.pick(f"{c} = {self.value(kind, column)}", f"length({c}) = 4",
                             f"{c} < '\\x80'")
        if kind == "time":
            return f"{c} {self.pick('<', '>=', '=')} {self.value(kind, column)}"
        if kind == "date":
            return f"{c} {self.pick('<', '>=', '=', '<>')} {self.value(kind, column)}"
        return f"{c} is not null"

    def time_atom(self, c: str, kind: str) -> str:
        op = self.pick("<", "<=", ">", ">=", "=", "<>")
        r = self.rng.random()
        if r < 0.2:
            return (f"{c} between{self.pick('', '', ' symmetric')} {self.time_bound(kind)} "
                    f"and {self.time_bound(kind)}")
        if r < 0.35:
            return (f"{c} {self.pick('>', '>=')} {self.time_bound(kind)} and {c} "
                    f"{self.pick('<', '<=')} {self.time_bound(kind)}")
        if r < 0.45:
            return f"{self.time_bound(kind)} {self.pick('<', '>=')} {c}"
        if r < 0.55:
            return self.pick(f"{c}::date {op} '{self.instant().date()}'",
                             f"date_trunc('day', {c}) {op} {self.time_bound(kind)}",
                             f"extract(dow from {c}) = {self.rng.randrange(7)}",
                             f"{c}::text like '20%'")
        return f"{c} {op} {self.time_bound(kind)}"

    def text_atom(self, c: str) -> str:
        like = self.pick("a%", "%2", "n1%", "_b%", "%\\_%", "D%")
        ilike = self.pick("A%", "%ü%", "n1%", "de", "BB")
        regex = self.pick("^[a-c]", "[0-9]$", "^.{2}$", "a|D")
        return self.pick(
            f"{c} = {self.value('text', '')}", f"{c} <> {self.value('text', '')}",
            f"{c} in ({self.value('text', '')}, {self.value('text', '')}, null)",
            f"{c} not in ({self.value('text', '')}, {self.value('text', '')})",
            f"{c} like '{like}'", f"{c} ilike '{ilike}'", f"{c} ~ '{regex}'",
            f"{c} ~* '^a'", f"length({c}) {self.pick('>', '<', '=')} {self.rng.randrange(6)}",
            f"lower({c}) = {self.value('text', '')}", f"upper({c}) < 'C'",
            f"{c}::varchar(3) = 'alp'", f"{c} > {self.value('text', '')}",
            f"{c} || 'x' = 'ax'", f"coalesce({c}, '-') = '-'", f"{c} is distinct from 'FR'",
            f"octet_length({c}) > 3", f"{c} = ''")

    def number_atom(self, c: str, kind: str, column: str) -> str:
        v = self.value(kind, column)
        return self.pick(
            f"{c} {self.pick('=', '<>', '<', '<=', '>', '>=')} {v}",
            f"{c} = 200 + 0.5", f"{c} between {v} and {self.value(kind, column)}",
            f"{c} in ({v}, {self.value(kind, column)}, null)",
            f"{c} not in ({self.value(kind, column)})",
            # casts that cannot fail on any row (an error would depend on the rows evaluated)
            f"{c}::int = 13" if kind in ("int", "num", "real") else f"{c} < 13",
            f"{c}::numeric(8,1) > 10.05" if kind != "bigint" else f"{c} > 10.05",
            f"{c}::text = '7'", f"{c} % 7 = 3" if kind in ("int", "bigint") else f"{c} > 10",
            f"{c} * 2 > 50", f"abs({c}) < 20",
            f"floor({c}) = 5" if kind != "int" else f"-{c} < -3",
            f"{c} is distinct from {v}", f"{c} + 0.5 = 12.5")

    def predicate(self, table: str, alias: str | None, depth: int = 0) -> str:
        r = self.rng.random()
        if depth < 2 and r < 0.3:
            op = self.pick("and", "and", "or")
            return (f"({self.predicate(table, alias, depth + 1)} {op} "
                    f"{self.predicate(table, alias, depth + 1)})")
        if depth < 2 and r < 0.37:
            return f"not ({self.predicate(table, alias, depth + 1)})"
        return self.atom(table, alias)

    def where(self, table: str, alias: str | None, p: float = 0.8) -> str:
        if not self.chance(p):
            return ""
        parts = [self.predicate(table, alias) for _ in range(self.rng.randint(1, 3))]
        return " where " + " and ".join(parts)

    def and_where(self, table: str, alias: str | None) -> str:
        """More conjuncts for a WHERE that already has one."""
        return self.where(table, alias).replace(" where ", " and ", 1)

    # -- expressions ---------------------------------------------------------------------
    def expr(self, table: str, alias: str | None) -> str:
        """A scalar expression of the row (no volatile functions, no possible errors)."""
        column = self.col(table)
        kind = TABLES[table][column]
        c = self.ref(alias, column, table)
        if not self.chance(0.35):
            return c
        options = {"int": [f"{c} + 1", f"{c}::text", f"{c} / 2", f"{c} * 1.5", f"{c} % 3"],
                   "bigint": [f"{c}::numeric / 3", f"{c}::text"],
                   "num": [f"{c}::int", f"round({c}, 1)", f"{c} * 2", f"{c}::float8"],
                   "real": [f"{c}::float8", f"{c}::int", f"{c}::text"],
                   "float": [f"round({c}::numeric, 2)", f"{c} * 2"],
                   "text": [f"lower({c})", f"length({c})", f"{c}::varchar(3)",
                            f"substr({c}, 2, 2)", f"{c} || '!'"],
                   "char": [f"{c}::text", f"length({c})", f"{c} || '|'"],
                   "tstz": [f"{c}::date", f"date_trunc('day', {c})", f"{c}::text",
                            f"extract(hour from {c})", f"date_part('dow', {c})",
                            f"to_char({c}, 'YYYY-MM-DD HH24')", f"{c} at time zone 'UTC'"],
                   "ts": [f"{c}::date", f"{c}::timestamptz", f"date_trunc('month', {c})"],
                   "date": [f"{c} + 1", f"extract(month from {c})", f"{c}::timestamptz"],
                   "jsonb": [f"{c} ->> 's'", f"{c} -> 'a'", f"jsonb_typeof({c} -> 'n')"],
                   "json": [f"{c} ->> 'g'", f"{c}::text"],
                   "uuid": [f"{c}::text"], "bytea": [f"length({c})", f"encode({c}, 'hex')"],
                   "bool": [f"not {c}", f"{c}::int"], "time": [f"{c} + interval '1 hour'"]}
        return self.rng.choice(options.get(kind, [c]))

    def group_key(self, table: str, alias: str | None) -> str:
        column = self.col(table, ORDERABLE - {"real", "float"})
        c = self.ref(alias, column, table)
        kind = TABLES[table][column]
        if kind == "tstz":
            return self.pick(f"date_trunc('{self.pick('day', 'month', 'week')}', {c})",
                             f"{c}::date", f"extract(dow from {c})")
        if kind in ("int", "bigint", "num") and self.chance(0.3):
            return self.pick(f"floor({c} / 10)", f"floor({c} / 100) * 100", f"{c} % 3",
                             f"width_bucket({c}, 0, 1000, 4)", f"round({c}, -1)",
                             f"{c} / 7", f"case when {c} > 100 then 'big' else 'small' end")
        if kind in ("text", "char") and self.chance(0.3):
            return self.pick(f"lower({c})", f"length({c})", f"coalesce({c}, '?')",
                             f"substr({c}, 1, 1)")
        if kind == "date" and self.chance(0.3):
            return self.pick(f"extract(month from {c})", f"{c} - 1", f"date_trunc('week', {c})")
        if column == "id":
            return f"{c} % 7"
        return c

    def aggregate(self, table: str, alias: str | None) -> str:
        column = self.col(table)
        kind = TABLES[table][column]
        c = self.ref(alias, column, table)
        options = ["count(*)", f"count({c})"]
        if kind in ORDERABLE - {"bool", "uuid", "bytea"}:  # no min/max for these in PG 15
            options += [f"min({c})", f"max({c})", f"count(distinct {c})"]
        if kind in ("int", "bigint", "num", "float"):
            options += [f"sum({c})", f"avg({c})"]
        if kind == "real":  # sum(real) accumulates in float4: order-dependent, not generated
            options += [f"avg({c})"]
        if kind == "bool":
            options += [f"bool_and({c})", f"bool_or({c})"]
        if kind in ("text", "char"):
            options += [f"string_agg({c}, ',' order by {c}, {self.ref(alias, 'id', table)})"]
        if kind in ("int", "num"):
            options += [f"count(*) filter (where {c} > 10)"]
        if self.chance(0.3):
            return self.conditional_aggregate(table, alias)
        return self.rng.choice(options)

    def conditional_aggregate(self, table: str, alias: str | None) -> str:
        """count-where and sum-where as people and tools write them: FILTER, SUM(CASE ...)
        with Metabase's `ELSE 0.0`, simple CASE, branches of mixed types and scales (for sums
        and averages only)."""
        column = self.col(table, {"int", "num", "bigint", "float"})
        c = self.ref(alias, column, table)
        p = self.predicate(table, alias, 1)
        other = self.ref(alias, self.col(table, {"int", "num", "bigint", "float"}), table)
        v = self.value(TABLES[table][column], column)
        then = self.pick("1", "0.0", "2.50", c, other, "null", "-1")
        otherwise = self.pick("0", "0.0", "null", c, "1.5", "")
        tail = f" else {otherwise}" if otherwise else ""
        return self.pick(
            f"count(*) filter (where {p})", f"count(case when {p} then 1 end)",
            f"sum(case when {p} then 1 else 0 end)", f"sum(case when {p} then 1 else 0.0 end)",
            f"sum(case when {p} then {then}{tail} end)", f"avg(case when {p} then {c} end)",
            f"sum({c}) filter (where {p})", f"avg({c}) filter (where {p})",
            # min/max over one scale: with 0 beside 0.00 Postgres's own answer is whichever
            # it met last (numeric_smaller keeps the later of equals)
            f"min(case when {p} then {c} end)", f"max(case when {p} then 1 else 0 end)",
            f"max({c}) filter (where {p})",
            f"count({c}) filter (where {p})", f"avg(case when {p} then {then}{tail} end)",
            f"sum(case {c} when {v} then 2 when {self.value(TABLES[table][column], column)} "
            f"then 1.5 end)")

    def order(self, keys: list[str], unique: str | None) -> tuple[str, bool]:
        """ORDER BY some keys with random direction and NULLS placement, total if `unique`."""
        parts = [k + self.pick("", " asc", " desc") + self.pick("", "", " nulls first",
                                                                 " nulls last") for k in keys]
        if unique:
            parts.append(f"{unique}{self.pick('', ' desc')}")
        return " order by " + ", ".join(parts), unique is not None

    def limit(self) -> str:
        n = self.rng.choice((0, 1, 3, 10, 25))
        out = " limit " + (self.param(str(n), n) if self.chance(0.3) else str(n))
        if self.chance(0.4):
            m = self.rng.choice((0, 2, 7, 50))
            out += " offset " + (self.param(str(m), m) if self.chance(0.3) else str(m))
        return out

    # -- statement shapes ----------------------------------------------------------------
    def case(self) -> Case:
        self.params = []
        self.clock = False
        shape, _, build = self.rng.choices(self.shapes, weights=[w for _, w, _ in self.shapes])[0]
        self.sample: tuple[int, int] | None = None
        sql, ordered, tlp = build(self)
        return Case(shape, sql, self.params, ordered, self.clock, tlp, self.sample)

    def tiered(self) -> str:
        return self.pick("events", "kinds", "kinds")

    def s_filter(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        alias = self.pick("", "", "e", "x")
        cols = [self.expr(t, alias or None) for _ in range(self.rng.randint(1, 4))]
        if not alias and self.chance(0.15):
            cols = ["*"]
        sql = f"select {', '.join(cols)} from {self.table(t)}{' ' + alias if alias else ''}"
        sql += self.where(t, alias or None)
        ordered = False
        if self.chance(0.6):
            keys = [self.ref(alias or None, self.col(t, ORDERABLE), t)
                    for _ in range(self.rng.randint(1, 2))]
            total = self.chance(0.8)
            ob, ordered = self.order(keys, self.ref(alias or None, "id", t) if total else None)
            sql += ob
            if total and self.chance(0.7):
                sql += self.limit()
        return sql, ordered, None

    def s_aggregate(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        alias = self.pick("", "e")
        keys = [self.group_key(t, alias or None) for _ in range(self.rng.randint(0, 2))]
        aggs = [self.aggregate(t, alias or None) for _ in range(self.rng.randint(1, 3))]
        names = [f"k{i}" for i in range(len(keys))]
        style = self.pick("expr", "ordinal", "alias")
        select = [f"{k} as {n}" if style == "alias" else k
                  for k, n in zip(keys, names, strict=True)]
        sql = (f"select {', '.join(select + aggs)} from {self.table(t)}"
               f"{' ' + alias if alias else ''}{self.where(t, alias or None)}")
        if keys:
            by = {"expr": keys, "ordinal": [str(i + 1) for i in range(len(keys))],
                  "alias": names}[style]
            sql += " group by " + ", ".join(by)
            if self.chance(0.3):
                sql += f" having count(*) > {self.rng.choice((1, 5, 50))}"
            if self.chance(0.5):
                ordinals = [str(i + 1) for i in range(len(keys))]
                if self.chance(0.4):  # ranked by an aggregate first: the top groups
                    ordinals.insert(0, str(len(keys) + 1 + self.rng.randrange(len(aggs))))
                ob, _ = self.order(ordinals, None)
                sql += ob
                if self.chance(0.5):
                    sql += self.limit()
                return sql, True, None
        return sql, False, None

    def s_distinct(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        if self.chance(0.5):
            cols = [self.ref(None, self.col(t, ORDERABLE), t) for _ in range(2)]
            sql = f"select distinct {', '.join(cols)} from {self.table(t)}{self.where(t, None)}"
            if self.chance(0.5):
                ob, _ = self.order(cols, None)
                return sql + ob + self.limit(), True, None
            return sql, False, None
        key = self.col(t, ORDERABLE - {"real", "float"})
        sql = (f"select distinct on ({key}) {key}, id, ts from {self.table(t)}"
               f"{self.where(t, None)} order by {key}{self.pick('', ' desc nulls last')}, "
               f"ts{self.pick('', ' desc')}, id")
        return sql, True, None

    def s_window(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        part = self.col(t, ORDERABLE - {"real", "float"})
        num = self.col(t, {"int", "num"})
        fn = self.pick("row_number()", "rank()", f"sum({num})", f"lag({num})",
                       "count(*)", f"first_value({num})")
        sql = (f"select id, {fn} over (partition by {part} order by ts, id) w from "
               f"{self.table(t)}{self.where(t, None, 0.9)}")
        if self.chance(0.5):
            return sql + " order by id" + self.limit(), True, None
        return sql, False, None

    def s_join(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        key = "user_id" if t == "events" else "si"
        kind = self.pick("join", "left join", "right join")
        cols = f"e.id, u.name, {self.expr(t, 'e')}"
        sql = (f"select {cols} from {self.table(t)} e {kind} users u on u.id = e.{key}"
               f"{self.pick('', ' and u.vip')}{self.where(t, 'e')}")
        if self.chance(0.5):
            sql = (f"select u.vip, count(*), count(e.id) from {self.table(t)} e {kind} users u "
                   f"on u.id = e.{key}{self.where(t, 'e')} group by 1")
        return sql, False, None

    def s_star(self) -> tuple[str, bool, str | None]:
        """A tiered fact table joined to the hot `users`, aggregated by dimension and fact
        columns: aggregates of the fact, of the dimension, DISTINCT, over inner, comma and
        outer joins."""
        t = self.tiered()
        key = "user_id" if t == "events" else "si"
        self.qualify = self.chance(0.5)  # else some columns unqualified (`id` is ambiguous)
        keys = [self.pick("u.vip", "u.name", "u.id % 3", self.group_key(t, "e"),
                          f"e.{key}") for _ in range(self.rng.randint(0, 2))]
        aggs = [self.aggregate(t, "e") if self.chance(0.6) else self.pick(
                    "count(*)", "min(u.name)", "max(u.id)", "count(distinct u.vip)",
                    "bool_or(u.vip)", "max(e.id + u.id)", "sum(u.id)", "count(u.vip)")
                for _ in range(self.rng.randint(1, 3))]
        source, where = self.star_source(t, key)
        # GROUP BY and ORDER BY spelled as people and tools write them: ordinals, output
        # names, the expressions again; an aggregate first in ORDER BY, then a LIMIT
        style = self.pick("ordinal", "ordinal", "alias", "expr")
        names = [f"k{i}" for i in range(len(keys))]
        select = [f"{k} as {n}" if style == "alias" else k
                  for k, n in zip(keys, names, strict=True)]
        sql = f"select {', '.join(select + aggs)} from {source}{where}"
        self.qualify = False
        if keys:
            by = {"expr": keys, "ordinal": [str(i + 1) for i in range(len(keys))],
                  "alias": names}[style]
            sql += " group by " + ", ".join(by)
            if self.chance(0.3):
                having = self.pick("count(*)", aggs[0], f"max(e.{key})")
                sql += f" having {having} > {self.rng.choice((1, 5, 50))}" \
                    if having in ("count(*)", f"max(e.{key})") else f" having {having} is not null"
            if self.chance(0.5):
                ob, _ = self.order(by, None)  # the keys are unique per group: a total order
                if self.chance(0.3):
                    first = self.pick("count(*)", f"max(e.{key})") + self.pick("", " desc")
                    ob = ob.replace(" order by ", f" order by {first}, ", 1)
                    if self.chance(0.6):
                        ob += self.limit()
                return sql + ob, True, None
        return sql, False, None

    def star_source(self, t: str, key: str) -> tuple[str, str]:
        """FROM the tiered table `e` joined to `users u` (and maybe `labels l`), and a WHERE
        of the fact's and the dimensions' columns."""
        join = self.pick("join", "inner join", "join", "left join", ",", "cross join")
        on = f"u.id = e.{key}"
        if join in (",", "cross join"):
            source = f"{self.table(t)} e{join if join == ',' else ' ' + join} users u"
            where = f" where {on}"
        else:
            source = f"{self.table(t)} e {join} users u on {on}{self.pick('', ' and u.vip')}"
            where = ""
        if join not in (",", "cross join") and self.chance(0.35):
            # a second dimension, with text keys
            source += f" join labels l on l.code = e.{'country' if t == 'events' else 'vc'}"
            dim = self.pick("l.grp = 1", "l.grp < 2", "l.code like 'v1%'",
                            "l.code in ('DE', 'US', 'v3')")
            where = f"{where} and {dim}" if where else f" where {dim}"
        filters = self.where(t, "e")
        if filters:
            where = (where + filters.replace(" where ", " and ", 1)) if where else filters
        if self.chance(0.3):
            dim = self.pick("u.vip", "u.id > 10", "u.name like 'user1%'")
            where = f"{where} and {dim}" if where else f" where {dim}"
        return source, where

    def s_star_cte(self) -> tuple[str, bool, str | None]:
        """dbt's model of a star join: the join inside a CTE naming its columns, aggregated
        by the query that reads it (merged into one SELECT when every column is qualified)."""
        t = self.tiered()
        key = "user_id" if t == "events" else "si"
        self.qualify = True
        source, where = self.star_source(t, key)
        columns = [f"e.{c}" for c in TABLES[t]] + ["u.vip as uvip", "u.name as uname",
                                                   "u.id as uid"]
        keys = [self.pick("fct.uvip", "fct.uname", "fct.uid % 3", self.group_key(t, "fct"))
                for _ in range(self.rng.randint(0, 2))]
        aggs = [self.aggregate(t, "fct") if self.chance(0.6) else self.pick(
                    "count(*)", "min(fct.uname)", "max(fct.uid)", "count(distinct fct.uvip)",
                    "bool_or(fct.uvip)", "sum(fct.uid)")
                for _ in range(self.rng.randint(1, 3))]
        self.qualify = False
        sql = (f"with fct as (select {', '.join(columns)} from {source}{where}) "
               f"select {', '.join(keys + aggs)} from fct")
        if keys:
            sql += " group by " + ", ".join(str(i + 1) for i in range(len(keys)))
            if self.chance(0.5):
                ob, _ = self.order([str(i + 1) for i in range(len(keys))], None)
                return sql + ob, True, None
        return sql, False, None

    def s_self_join(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        other = self.pick(t, "events" if t == "kinds" else "kinds")
        self.qualify = True
        sql = (f"select a.id, b.id, a.ts < b.ts from {self.table(t)} a join {self.table(other)} b "
               f"on b.id = a.id + {self.rng.choice((0, 1, 7))}{self.where(t, 'a')}")
        self.qualify = False
        return sql, False, None

    def s_subquery(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        r = self.rng.random()
        key = "user_id" if t == "events" else "si"
        if r < 0.25:
            sql = (f"select id from {self.table(t)} e where {key} in "
                   f"(select id from users where vip){self.and_where(t, 'e')}")
        elif r < 0.45:
            sql = (f"select u.id from users u where {self.pick('', 'not ')}exists (select 1 from "
                   f"{self.table(t)} e where e.{key} = u.id{self.and_where(t, 'e')})")
        elif r < 0.65:
            sql = (f"select (select count(*) from {self.table(t)}{self.where(t, None)}), "
                   f"(select max(id) from {self.table(t)}{self.where(t, None)})")
        elif r < 0.85:
            sql = (f"select u.id, x.id, x.ts from users u cross join lateral (select id, ts "
                   f"from {self.table(t)} e where e.{key} = u.id{self.and_where(t, 'e')} "
                   f"order by ts{self.pick('', ' desc')}, id limit 2) x")
        else:
            sql = (f"select id from {self.table(t)} where id in (select id from "
                   f"{self.table(t)}{self.where(t, None)} order by id limit 20)")
        return sql, False, None

    def s_cte(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        sql = (f"with c as (select * from {self.table(t)}{self.where(t, None)}) "
               f"select {self.aggregate(t, 'c')}, {self.aggregate(t, 'c')} from c")
        return sql, False, None

    def s_nested(self) -> tuple[str, bool, str | None]:
        """dbt's CTE chains and Metabase's nested "source" queries: levels of `select *` over
        the table, each maybe filtered (sometimes limited or distinct, which must not be
        merged away), read by an aggregate or an ordered projection."""
        t = self.tiered()
        ctes: list[str] = []
        source = self.table(t)
        alias: str | None = None
        inner = f"select * from {source}{self.where(t, None, 0.5)}"
        for level in range(self.rng.randint(1, 3)):
            if self.chance(0.1):
                inner += " order by id limit 300"
            elif self.chance(0.08):
                inner = inner.replace("select *", "select distinct *", 1)
            alias = self.pick(f"s{level}", '"source"') if not ctes else f"s{level}"
            if self.chance(0.5):
                ctes.append(f"{alias} as ({inner})")
                source = alias
            else:
                source = f"({inner}) as {alias}"
            inner = f"select * from {source}{self.where(t, alias, 0.5)}"
        with_ = f"with {', '.join(ctes)} " if ctes else ""
        if self.chance(0.6):
            keys = [self.group_key(t, alias) for _ in range(self.rng.randint(1, 2))]
            aggs = [self.aggregate(t, alias) for _ in range(self.rng.randint(1, 2))]
            ordinals = ", ".join(str(i + 1) for i in range(len(keys)))
            sql = (f"{with_}select {', '.join(keys + aggs)} from {source}"
                   f"{self.where(t, alias, 0.5)} group by {ordinals}")
            if self.chance(0.5):
                return sql + f" order by {ordinals}" + (self.limit() if self.chance(0.3)
                                                         else ""), True, None
            return sql, False, None
        cols = [self.expr(t, alias) for _ in range(self.rng.randint(1, 3))]
        sql = (f"{with_}select {', '.join(cols)} from {source}{self.where(t, alias, 0.5)} "
               f"order by {self.ref(alias, 'id', t)}")
        return sql + (self.limit() if self.chance(0.4) else ""), True, None

    def s_inner_aggregate(self) -> tuple[str, bool, str | None]:
        """An aggregate inside a CTE or derived table that an outer query reads: dbt's
        `select * from final` over an aggregating CTE, a rollup of per-group results, a
        correlated count per user."""
        t = self.tiered()
        r = self.rng.random()
        keys = [self.group_key(t, None) for _ in range(self.rng.randint(1, 2))]
        aggs = [self.aggregate(t, None) for _ in range(self.rng.randint(1, 2))]
        names = [f"k{i}" for i in range(len(keys))] + [f"a{i}" for i in range(len(aggs))]
        items = ", ".join(f"{e} as {n}" for e, n in zip(keys + aggs, names, strict=True))
        ordinals = ", ".join(str(i + 1) for i in range(len(keys)))
        inner = (f"select {items} from {self.table(t)}{self.where(t, None, 0.5)} "
                 f"group by {ordinals}")
        order = ", ".join(names[:len(keys)])  # the keys are unique: a total order
        if r < 0.35:
            return f"with final as ({inner}) select * from final order by {order}", True, None
        if r < 0.6:
            having = self.pick("", " where a0 is not null", " where k0 is not null")
            return f"select * from ({inner}) as s{having} order by {order}", True, None
        if r < 0.8:
            return (f"select count(*), count(a0), min(a0), max(a0) from ({inner}) s",
                    False, None)
        key = "user_id" if t == "events" else "si"
        return (f"select u.id, (select {self.aggregate(t, 'e')} from {self.table(t)} e "
                f"where e.{key} = u.id{self.and_where(t, 'e')}) from users u order by u.id",
                True, None)

    def s_setop(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        col = "id" if self.chance(0.5) else self.col(t, ORDERABLE)
        op = self.pick("union", "union all", "intersect", "except", "except all")
        other = self.pick(f"select {col} from {self.table(t)}{self.where(t, None)}",
                          "select id from users" if col == "id" else
                          f"select {col} from {self.table(t)} where id < 100")
        sql = f"select {col} from {self.table(t)}{self.where(t, None)} {op} {other}"
        return sql, False, None

    def s_whole_row(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        # not a bare `e`: its type OID is the table's row type, which differs from the twin's
        fn = self.pick("row_to_json(e)", "to_jsonb(e)", "e::text", "e is not null", "e.*")
        sql = (f"select {fn} from {self.table(t)} e{self.where(t, 'e')} order by e.id"
               f"{self.limit() if self.chance(0.5) else ''}")
        return sql, True, None

    def s_preview(self) -> tuple[str, bool, str | None]:
        """A table preview or `dbt show`: some rows of a filtered projection, no ORDER BY;
        plain, or as dbt wraps a model in a subquery with a CTE."""
        t = self.tiered()
        cols = ["*"] if self.chance(0.3) else [
            self.expr(t, None) for _ in range(self.rng.randint(1, 3))]
        where = self.where(t, None) if self.chance(0.7) else ""
        if self.chance(0.5):
            sql = f"select {', '.join(cols)} from {self.table(t)}{where}"
        else:
            sql = (f"select * from (with source as (select * from {self.table(t)}) "
                   f"select {', '.join(cols)} from source{where}) as model_limit_subq")
        self.sample = (self.rng.choice((1, 3, 10, 50, 500)),
                       self.rng.choice((0, 0, 0, 2, 30)))
        return sql, False, None

    def s_tlp(self) -> tuple[str, bool, str | None]:
        t = self.tiered()
        return f"select count(*) from {self.table(t)}", False, self.predicate(t, None)


_SHAPES: list[tuple[str, float, Callable[[Grammar], tuple[str, bool, str | None]]]] = [
    ("filter", 4, Grammar.s_filter), ("aggregate", 4, Grammar.s_aggregate),
    ("distinct", 1, Grammar.s_distinct), ("window", 1, Grammar.s_window),
    ("join", 1.5, Grammar.s_join), ("star", 1.5, Grammar.s_star),
    ("star_cte", 0.8, Grammar.s_star_cte),
    ("self_join", 0.7, Grammar.s_self_join),
    ("subquery", 1.5, Grammar.s_subquery), ("cte", 1, Grammar.s_cte),
    ("nested", 1.5, Grammar.s_nested), ("inner_aggregate", 1.5, Grammar.s_inner_aggregate),
    ("setop", 1, Grammar.s_setop), ("whole_row", 0.8, Grammar.s_whole_row),
    ("tlp", 1, Grammar.s_tlp), ("preview", 1, Grammar.s_preview)]
SHAPES = [(name, build) for name, _, build in _SHAPES]
