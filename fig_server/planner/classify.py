"""Classify: what a statement does with the tiered tables it names.

Every statement kind that can read a tiered table is planned (its reading references get cold
parts; wrapping statements keep working because the merge runs in the same backend session)
or refused with 0A000. None is relayed to hot alone while it reads: that would silently lose
every cold row. Names are resolved as Postgres resolves them: unquoted identifiers fold to
lower case, an unqualified name only when the session's search_path finds the tiered table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from sqlglot import exp

from fig_server.errors import FeatureNotSupported
from fig_server.planner.tiers import TieredFunction, TieredSet, TieredTable, TieredView


class Kind(Enum):
    RELAY = "relay"  # reads no tiered table: Postgres's own answer is exact
    READ = "read"  # reads tiered tables: plan their cold parts
    WRITE = "write"  # UPDATE/DELETE/MERGE naming a tiered table: planner/writes.py


Reference = tuple[exp.Table, TieredTable]
T = TypeVar("T")

NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
DECLARE = re.compile(
    rf"^\s*declare\s+({NAME})\s+(?:(?:binary|insensitive|asensitive|no\s+scroll|scroll)\s+)*"
    r"cursor\s+(?:(?:with|without)\s+hold\s+)?for\s+", re.IGNORECASE)
COPY_TABLE_TO = re.compile(
    rf"^\s*copy\s+({NAME}(?:\s*\.\s*{NAME})?)\s*(\([^()]*\))?\s+to\b", re.IGNORECASE)
PREPARE = re.compile(rf"^\s*prepare\s+{NAME}", re.IGNORECASE)
DO = re.compile(r"^\s*do\b", re.IGNORECASE)
CALL = re.compile(rf"^\s*call\s+(?:({NAME})\s*\.\s*)?({NAME})\s*\(", re.IGNORECASE)
REFRESH = re.compile(rf"^\s*refresh\s+materialized\s+view\s+(?:concurrently\s+)?"
                     rf"({NAME}(?:\s*\.\s*{NAME})?)", re.IGNORECASE)


@dataclass
class Statement:
    """How to plan one statement: its kind and the references that read tiered tables."""

    kind: Kind
    reads: list[Reference]


def fold(identifier: exp.Expression | None) -> str:
    """An identifier as Postgres stores it: unquoted names fold to lower case (ASCII)."""
    if not isinstance(identifier, exp.Identifier):
        return identifier.name if identifier is not None else ""
    if identifier.quoted:
        return identifier.name
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in identifier.name)


def _names(table: exp.Table) -> tuple[str, str]:
    return fold(table.args.get("db")), fold(table.this)


def _cte_names(tree: exp.Expression) -> set[str]:
    return {fold(cte.args["alias"].this) for cte in tree.find_all(exp.CTE)
            if cte.args.get("alias") is not None}


def tiered_references(tree: exp.Expression, tiered: TieredSet) -> list[Reference]:
    """Every table reference in the statement that names a tiered table."""
    return _named(tree, tiered.lookup)


def view_references(tree: exp.Expression, tiered: TieredSet
                    ) -> list[tuple[exp.Table, TieredView]]:
    """References to views that read tiered tables (expanded by the planner)."""
    return _named(tree, tiered.lookup_view)


def _named(tree: exp.Expression, lookup: Callable[[str, str], T | None]
           ) -> list[tuple[exp.Table, T]]:
    """(reference, what it names) for every table reference the lookup knows, CTE names
    shadowing unqualified ones as in Postgres."""
    ctes = _cte_names(tree)
    found = []
    for table in tree.find_all(exp.Table):
        schema, name = _names(table)
        if not schema and name in ctes:
            continue
        named = lookup(schema, name)
        if named is not None:
            found.append((table, named))
    return found


def classify(tree: exp.Expression, refs: list[Reference]) -> Statement:
    """The statement's kind; refuses what would read cold rows without Fig planning it."""
    if not refs:
        return Statement(Kind.RELAY, [])
    if isinstance(tree, (exp.Update, exp.Delete, exp.Merge)) or any(
            True for _ in tree.find_all(exp.Update, exp.Delete)):
        return Statement(Kind.WRITE, refs)
    if isinstance(tree, exp.Query):
        return Statement(Kind.READ, refs)
    if isinstance(tree, exp.Create):
        return _create(tree, refs)
    if isinstance(tree, exp.Insert):
        return _insert(tree, refs)
    if isinstance(tree, exp.Copy):
        if tree.args.get("kind"):  # COPY ... FROM: a write into hot, CDC carries it
            return Statement(Kind.RELAY, [])
        return Statement(Kind.READ, [r for r in refs if r[0] is not tree.this])
    if isinstance(tree, exp.Alter):
        _check_alter(tree, refs)
    if isinstance(tree, exp.TruncateTable):
        raise FeatureNotSupported(
            f"TRUNCATE of the tiered table {refs[0][1].qualified}: its cold rows (Iceberg) "
            "would stay", hint="DELETE FROM the table removes the rows from both tiers")
    return Statement(Kind.RELAY, [])  # other DDL, GRANT, VACUUM ...: no rows read


def _check_alter(tree: exp.Alter, refs: list[Reference]) -> None:
    """Schema changes whose old rows in cold would not follow are refused up front."""
    table = next((t for node, t in refs if node is tree.this), None)
    if table is None:
        return
    for action in tree.args.get("actions") or []:
        refused: tuple[str, str | None] | None = None
        if isinstance(action, exp.ColumnDef) and any(
                isinstance(c.args.get("kind"), exp.DefaultColumnConstraint)
                for c in action.args.get("constraints") or []):
            refused = ("ADD COLUMN with a DEFAULT", "add the column without a DEFAULT (cold "
                       "rows read NULL, as Postgres gives them), then SET DEFAULT")
        elif isinstance(action, exp.AlterColumn) and action.args.get("dtype") is not None:
            refused = ("ALTER COLUMN ... TYPE", None)
        elif isinstance(action, (exp.RenameColumn, exp.AlterRename)):
            refused = ("RENAME", None)
        elif isinstance(action, exp.Drop):
            refused = ("DROP COLUMN", None)
        if refused is not None:
            raise FeatureNotSupported(
                f"ALTER TABLE ... {refused[0]} of the tiered table {table.qualified}: its rows "
                "in the cold tier (Iceberg) would not follow", hint=refused[1] or "")


def _create(tree: exp.Create, refs: list[Reference]) -> Statement:
    query = tree.args.get("expression")
    reads = [r for r in refs if query is not None and _inside(r[0], query)]
    if not reads:
        return Statement(Kind.RELAY, [])
    properties = tree.args.get("properties")
    if properties is not None and any(isinstance(p, exp.MaterializedProperty)
                                      for p in properties.expressions):
        raise FeatureNotSupported(
            f"a materialized view over the tiered table {reads[0][1].qualified}",
            hint="CREATE TABLE ... AS SELECT keeps the same rows and reads every tier")
    if str(tree.args.get("kind") or "").upper() == "VIEW":
        return Statement(Kind.RELAY, [])  # reads of the view are planned with its definition
    return Statement(Kind.READ, reads)


def _insert(tree: exp.Insert, refs: list[Reference]) -> Statement:
    target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    reads = [r for r in refs if r[0] is not target]
    written = next((t for node, t in refs if node is target), None)
    if written is not None and written.boundary is not None and (
            tree.args.get("conflict") is not None):
        raise FeatureNotSupported(
            f"INSERT ... ON CONFLICT into the tiered table {written.qualified}: rows below "
            "its tier boundary are in cold only, where the conflict cannot be checked")
    return Statement(Kind.READ if reads else Kind.RELAY, reads)


def _inside(node: exp.Expression, ancestor: exp.Expression) -> bool:
    parent: exp.Expr | None = node
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent.parent
    return False


def copy_as_query(sql: str, tiered: TieredSet) -> str | None:
    """`COPY tiered [(cols)] TO ...` as `COPY (SELECT cols FROM tiered) TO ...`."""
    match = COPY_TABLE_TO.match(sql)
    if match is None:
        return None
    name = match.group(1)
    columns = (match.group(2) or "").strip()[1:-1].strip() or "*"
    return f"COPY (SELECT {columns} FROM {name}) TO{sql[match.end():]}"


def function_refusal(sql: str, tree: exp.Expression, tiered: TieredSet) -> None:
    """Refuses a statement that runs a function reading a tiered table: Postgres runs the
    function's own statements, which see hot rows only. Definitions (CREATE VIEW, CREATE
    FUNCTION), GRANT and the like run nothing; reading the view later is refused the same
    way. A DO block naming a tiered table (or a view or function over one) is refused too:
    its statements, reads and writes alike, would reach hot rows only."""
    if isinstance(tree, exp.Command) and DO.match(sql) and tiered.matcher is not None:
        named = tiered.matcher.search(sql)
        if named is not None:
            raise FeatureNotSupported(
                f"a DO block naming {named.group(0)}, a tiered table (or a view or function "
                "over one): Postgres runs its statements over hot rows only",
                hint="send its statements to Fig one by one, or SET fig.route = 'hot' to "
                     "work on hot rows only")
    if not tiered.functions:
        return
    if isinstance(tree, exp.Create):
        if str(tree.args.get("kind") or "").upper() != "TABLE":
            return
    elif not isinstance(tree, (exp.Query, exp.DML, exp.Values, exp.Command)):
        return
    called = CALL.match(sql) if isinstance(tree, exp.Command) else None
    if called is not None:
        schema, name = (_fold_text(part) if part else "" for part in called.groups())
        procedure = tiered.lookup_function(schema, name)
        if procedure is not None:
            raise _function_refused(procedure)
    for call in tree.find_all(exp.Func):
        name = _call_name(call)
        schema = fold(call.parent.this) if isinstance(call.parent, exp.Dot) else ""
        if isinstance(call.parent, exp.Table) and call.parent.this is call:
            schema = fold(call.parent.args.get("db"))
        function = tiered.lookup_function(schema, name)
        if function is not None:
            raise _function_refused(function)
    for write in tree.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Copy):
        _check_triggers(write, tiered)


WRITE_EVENTS = {exp.Insert: {"INSERT"}, exp.Copy: {"INSERT"}, exp.Update: {"UPDATE"},
                exp.Delete: {"DELETE"}, exp.Merge: {"INSERT", "UPDATE", "DELETE"}}


def _check_triggers(write: exp.Expression, tiered: TieredSet) -> None:
    """Refuses a write whose table has a trigger, firing on it, that runs a function reading
    a tiered table."""
    if isinstance(write, exp.Copy) and not write.args.get("kind"):
        return  # COPY ... TO writes no table
    target = write.this.this if isinstance(write.this, exp.Schema) else write.this
    if not isinstance(target, exp.Table):
        return
    trigger = tiered.lookup_trigger(*_names(target))
    if trigger is not None and trigger.on & WRITE_EVENTS[type(write)]:
        raise FeatureNotSupported(
            f"the trigger {trigger.trigger} on {trigger.schema}.{trigger.name} runs the function "
            f"{trigger.function}, which reads {trigger.reads}, a tiered table (or a view or "
            "function over one): Postgres runs it over hot rows only",
            hint="SET fig.route = 'hot' to write with the trigger reading hot rows only")


def _call_name(call: exp.Func) -> str:
    if isinstance(call, exp.Anonymous):
        name = call.this
        return fold(name) if isinstance(name, exp.Identifier) else str(name).lower()
    return call.sql_name().lower()


def _function_refused(function: TieredFunction) -> FeatureNotSupported:
    what = "procedure" if function.kind == "p" else "function"
    return FeatureNotSupported(
        f"the {what} {function.schema}.{function.name} reads {function.reads}, a tiered table "
        "(or a view or function over one): Postgres runs its statements over hot rows only",
        hint="write its query into the statement itself, or SET fig.route = 'hot' to read "
             "hot rows only")


def command_refusal(sql: str, tiered: TieredSet) -> FeatureNotSupported | None:
    """SQL-level commands sqlglot keeps as text that would read a tiered table unplanned."""
    if PREPARE.match(sql) and tiered.may_touch(sql):
        return FeatureNotSupported(
            "SQL-level PREPARE of a statement over a tiered table",
            hint="use the extended query protocol (a driver's prepared statements) instead")
    refresh = REFRESH.match(sql)
    if refresh is not None:
        names = [_fold_text(p.strip()) for p in refresh.group(1).split(".")]
        view = tiered.lookup_view(*(names if len(names) == 2 else ["", names[0]]))
        if view is not None:
            return FeatureNotSupported(
                f"REFRESH MATERIALIZED VIEW {view.schema}.{view.name}: it reads a tiered "
                "table", hint="CREATE TABLE ... AS SELECT keeps the same rows and reads "
                "every tier")
    return None


def _fold_text(name: str) -> str:
    """A name as written in SQL text, as Postgres stores it."""
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
