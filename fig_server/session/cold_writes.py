"""UPDATE and DELETE over both tiers as one statement with one command tag.

Steps, all on the client's own backend session (outside any transaction block), holding a
session advisory lock per table so that cold writes to one table run one at a time (a
second one must not read cold rows the first has not rewritten yet):
1. fig._wait_cdc for the table, so Iceberg holds every committed change of it and "only in
   cold" is exact (not fig.sync: another table's initial copy or pause is not this one's);
2. the candidate cold rows (time < boundary, pushable filters) go into a temp table;
3. Postgres computes the rows to write (WHERE, USING/FROM, subqueries and the SET list are
   its own) into a staging table with the target's NOT NULL and CHECK constraints, and
   fig.request_cold_write keeps those not in hot and records them as a request;
4. BEGIN; the original statement on hot; fig.confirm_cold_write; COMMIT. A failure before
   COMMIT rolls hot back and the unconfirmed request is never applied;
5. fig.wait_cold_write: the CDC process applies the confirmed request to Iceberg (and would
   without a waiter, after a crash). The command tag counts hot rows plus cold-only rows.

Between 4 and 5 other sessions may see the hot rows changed and the cold ones not yet.

Over the extended protocol (a driver's `DELETE ... WHERE id = $1`) the statement runs the same
way with its Bind's values written into it (inline_parameters): each as its text in its
resolved type, which reads back as the same value.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading

from sqlglot.dialects.postgres import Postgres
from sqlglot.tokens import TokenType

from fig_server import wire
from fig_server.errors import FeatureNotSupported
from fig_server.planner.parts import literal, quote
from fig_server.planner.rewrite import ColdWrite, Rewrite, Route
from fig_server.session.federation import (
    BackendError,
    Federator,
    Injector,
    Prepared,
    _first_error,
    data_rows,
)

STAGE = "fig_cold_write"
COLD_WRITE_SERIAL = 7207  # advisory lock class: one cold write per table at a time


async def _run(backend: Injector, sql: str) -> list[tuple[int, bytes]]:
    """One Query on the backend; on error, roll back any open transaction and raise it."""
    answers = await backend.inject(wire.message(b"Q", wire.cstring(sql)), 1)
    error = _first_error(answers)
    if error is not None:
        if answers[-1][0] == ord("Z") and answers[-1][1][:1] != b"I":
            await backend.inject(wire.message(b"Q", wire.cstring("ROLLBACK")), 1)
        raise BackendError(error)
    return answers


def _relation(write: ColdWrite) -> str:
    return f"{quote(write.table.schema)}.{quote(write.table.name)}"


def stage_sql(write: ColdWrite) -> str:
    """Stage the rows to write in cold and record them as a request: (request id, rows)."""
    table = write.table
    rel = _relation(write)
    columns = "ARRAY[" + ", ".join(literal(c) for c in write.set_columns) + "]::text[]"
    return (f"BEGIN; CREATE TEMP TABLE {STAGE} (LIKE {rel} INCLUDING CONSTRAINTS) "
            f"ON COMMIT DROP; ALTER TABLE pg_temp.{STAGE} ADD COLUMN fig_old_time "
            f"{table.column_type(table.time_column)}; "
            f"INSERT INTO pg_temp.{STAGE} {write.stage_sql}; "
            f"SELECT * FROM fig.request_cold_write({literal(rel)}::regclass, "
            f"{literal(write.kind)}, {literal(STAGE)}, {columns}); COMMIT")


def _with_count(answers: list[tuple[int, bytes]], extra: int) -> list[tuple[int, bytes]]:
    """The statement's answers (no BEGIN tag), its command tag counting `extra` more rows,
    ending in ReadyForQuery idle."""
    out = []
    tags = [i for i, (kind, _) in enumerate(answers) if kind == ord("C")]
    for index, (kind, payload) in enumerate(answers):
        if kind == ord("C") and index == tags[0] and len(tags) > 1:
            continue  # BEGIN
        if kind == ord("Z"):
            continue
        if kind == ord("C") and index == tags[-1]:
            verb, _, count = payload.rstrip(b"\0").decode().rpartition(" ")
            payload = wire.cstring(f"{verb} {int(count) + extra}")
        out.append((kind, payload))
    out.append((ord("Z"), b"I"))
    return out


async def bound_values(backend: Injector, types: list[int], values: bytes
                       ) -> list[tuple[str | None, str]]:
    """Each parameter's value as text and its type's name, as this session's Postgres reads
    the Bind's values (formats, types) for the statement: (text or None, type)."""
    if not types:
        return []
    items = ", ".join(f"${n}::text, pg_typeof(${n})::text" for n in range(1, len(types) + 1))
    answers = await backend.inject(wire.run_once(
        f"SELECT {items}, current_setting('extra_float_digits')::int > 0", types, values), 1)
    error = _first_error(answers)
    if error is not None:
        raise BackendError(error)
    row = data_rows(answers)[0]
    found: list[tuple[str | None, str]] = []
    for i in range(len(types)):
        kind = str(row[2 * i + 1])
        if kind in ("bit", "bit[]"):  # written bare, bit is bit(1): no unbounded spelling
            raise FeatureNotSupported("a bit parameter of an UPDATE/DELETE that may reach "
                                      "rows below the tier boundary")
        if kind in FLOATS and row[-1] != "t":  # the text is exact only with these digits
            raise FeatureNotSupported(
                "a float parameter of an UPDATE/DELETE that may reach rows below the tier "
                "boundary while extra_float_digits is 0 or less",
                hint="RESET extra_float_digits")
        # bare `character` is character(1); bpchar is the same type without a length
        found.append((row[2 * i], UNBOUNDED.get(kind, kind)))
    return found


UNBOUNDED = {"character": "bpchar", "character[]": "bpchar[]"}
FLOATS = ("real", "double precision", "real[]", "double precision[]")


def inline_parameters(sql: str, values: list[tuple[str | None, str]]) -> str:
    """The statement with each $n replaced by CAST('text' AS type) (NULL: CAST(NULL AS
    type)); only parameter tokens are, not `$1` in strings, comments or dollar quotes."""
    tokens = Postgres().tokenize(sql)
    out, last = [], 0
    for token, following in itertools.pairwise(tokens):
        if token.token_type != TokenType.PARAMETER or following.token_type != TokenType.NUMBER \
                or following.start != token.end + 1 or not following.text.isdigit():
            continue
        index = int(following.text) - 1
        if not 0 <= index < len(values):
            continue  # Postgres reports the missing parameter when the statement runs
        text, kind = values[index]
        value = "NULL" if text is None else literal(text)
        out += [sql[last:token.start], f"CAST({value} AS {kind})"]
        last = following.end + 1
    return "".join(out) + sql[last:]


def refusal(table: str, why: str, hint: str) -> FeatureNotSupported:
    return FeatureNotSupported(f"UPDATE/DELETE of {table} that may reach rows below its tier "
                               f"boundary {why}", hint=hint)


async def run_cold_write(federator: Federator, backend: Injector, statements: list[Prepared],
                         in_block: bool, as_of: dt.datetime | None,
                         cancel: threading.Event | None) -> list[tuple[int, bytes]]:
    """Apply one UPDATE/DELETE to both tiers; the answers to send to the client."""
    plan = statements[0].rewrite
    write = plan.write if plan is not None else None
    assert plan is not None and write is not None
    name = write.table.qualified
    if in_block:
        raise refusal(name, "cannot run inside a transaction block",
                      "cold writes cannot join a Postgres transaction: run it on its own, "
                      "outside BEGIN ... COMMIT")
    if len(statements) > 1:
        raise refusal(name, "must be sent as a query of its own",
                      "send it without other statements in the same query string")
    if as_of is not None:
        raise refusal(name, "cannot run while fig.as_of is set", "RESET fig.as_of")
    sql = plan.sql
    rel = literal(_relation(write))
    serial = f"{COLD_WRITE_SERIAL}, ({rel}::regclass::oid::bigint % 2147483647)::int"
    await _run(backend, f"SELECT pg_advisory_lock({serial})")
    try:
        await _run(backend, f"SELECT fig._wait_cdc(ARRAY[{rel}::regclass::oid], "
                            f"{literal('UPDATE/DELETE of ' + name)}, interval '30 seconds')")
        # Route COLD: the temp table is made even when no cold file can hold a candidate
        # (a SPLIT whose scans keep no file runs on hot alone, and makes none)
        candidates = Prepared("", Rewrite(Route.COLD, "", [write.part]))
        await federator.load(backend, candidates, True, None, cancel or threading.Event())
        row = data_rows(await _run(backend, stage_sql(write)))[0]
        request, cold_rows = row[0], int(row[1] or 0)
        if request is None:
            return await _run(backend, sql)
        answers = await _run(backend, f"BEGIN ISOLATION LEVEL READ COMMITTED;\n{sql}")
        await _run(backend, f"SELECT fig.confirm_cold_write({int(request)})")
        await _run(backend, "COMMIT")
        await _run(backend, f"SELECT fig.wait_cold_write({int(request)})")
        return _with_count(answers, cold_rows)
    finally:
        await _run(backend, f"SELECT pg_advisory_unlock({serial})")
