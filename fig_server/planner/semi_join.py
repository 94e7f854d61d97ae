"""Semi-join reducers: the cold rows of a fact table inner-joined to a filtered dimension keep
only the rows whose join key the dimension's filtered rows hold.

`FROM events e JOIN users u ON u.user_id = e.user_id WHERE u.plan = 'pro'` outputs no row of
events whose user_id is not among `SELECT u.user_id FROM users u WHERE u.plan = 'pro'`: the
join is inner and its condition requires the equality, and the WHERE conjuncts that read only
the dimension (and the ON's) hold for every dimension row that is joined. Postgres computes
that key set in the client's session (its privileges, its row security, its collation) and
Fig drops the other cold rows before they are copied into the session; Postgres then runs the
statement as written over what is left, so the reducer removes rows the join would remove
and nothing else. Other conjuncts are ignored: the key set can only be larger than needed.

The key set must be read in the snapshot the statement runs in (a dimension row changed in
between would otherwise drop rows the statement joins): the federation reads it inside the
transaction the statement then runs in (session/federation.py, `reducible`).

Kept to what is plainly exact: integer or text join keys on the fact side (text only when
both columns' collations are deterministic, where equal means the same bytes; the dimension's
key taken as text, as the join compares it), the dimension a plain table named in the same
SELECT (not a CTE, not a tiered table), its conjuncts built from its own qualified columns,
literals, casts, comparisons, boolean operators, IN lists, LIKE, BETWEEN and IS [NOT] NULL
(no function: a volatile one would answer differently the second time).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from fig_server.planner.parts import literal, quote
from fig_server.planner.tiers import TieredSet, TieredTable

# Fact column types whose values compare with an integer dimension key exactly as Python ints
INTEGER_KEYS = ("smallint", "integer", "bigint")
# ... and with a text key as strings (not character(n): its comparisons ignore trailing blanks)
TEXT_KEYS = ("text", "character varying")
# Expression nodes a dimension conjunct may be built of
PLAIN = (exp.Column, exp.Literal, exp.Boolean, exp.Null, exp.Identifier, exp.Paren,
         exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or, exp.Not,
         exp.In, exp.Is, exp.Like, exp.ILike, exp.Between, exp.Cast, exp.DataType)


@dataclass(frozen=True)
class Reducer:
    """Keep a cold row only when its `column` is among the values keys_sql returns: one row
    of a JSON array of the keys (NULL for none) and whether they may be used (text keys:
    both columns' collations are deterministic). kind: "integer" or "text"."""

    column: str
    keys_sql: str
    kind: str = "integer"


def reducers(select: exp.Select, ref: exp.Table, table: TieredTable, tiered: TieredSet,
             tree: exp.Expression) -> tuple[Reducer, ...]:
    """The reducers of one tiered reference of the select (read before the select is
    rewritten)."""
    if ref.parent_select is not select or not isinstance(ref.parent, (exp.From, exp.Join)):
        return ()
    fact = ref.alias_or_name
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    where = select.args.get("where")
    conjuncts = list(_conjuncts(where.this)) if isinstance(where, exp.Where) else []
    found = []
    for join in select.args.get("joins") or []:
        dim = join.this
        if join is ref.parent or not _inner(join) or not isinstance(dim, exp.Table) or \
                not isinstance(dim.this, exp.Identifier) or not _plain_table(dim) or \
                (not dim.db and dim.name in ctes) or \
                tiered.lookup(dim.db, dim.name) is not None:
            continue
        alias = dim.alias_or_name
        if alias == fact:
            continue
        on = join.args.get("on")
        own = list(_conjuncts(on)) if on is not None else []
        for conjunct in own:
            pair = _key_pair(conjunct, fact, alias, table)
            if pair is None:
                continue
            column, key = pair
            filters = [c for c in own + conjuncts if _reads_only(c, alias)]
            if not filters:
                continue  # every key of the dimension: nothing to reduce
            kind = "integer" if table.column_type(column) in INTEGER_KEYS else "text"
            found.append(Reducer(column, _keys_sql(dim, key, filters, table, column, kind),
                                 kind))
            break
    return tuple(found)


def _plain_table(dim: exp.Table) -> bool:
    """A table named as itself: no TABLESAMPLE (the key read would sample other rows), no
    ONLY, no column alias list, nothing else the key read would have to repeat."""
    alias = dim.args.get("alias")
    return {key for key, value in dim.args.items() if value} <= \
        {"this", "db", "catalog", "alias"} and \
        (alias is None or not alias.args.get("columns"))


def _inner(join: exp.Join) -> bool:
    return not join.side and join.kind in ("", "INNER") and not join.args.get("using") \
        and join.method not in ("NATURAL",)


def _conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    if isinstance(node, exp.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _key_pair(conjunct: exp.Expr, fact: str, dim: str, table: TieredTable
              ) -> tuple[str, exp.Column] | None:
    """(fact column, dimension key column) of `dim.k = fact.c`, either way round."""
    if not isinstance(conjunct, exp.EQ):
        return None
    for one, other in ((conjunct.left, conjunct.right), (conjunct.right, conjunct.left)):
        if isinstance(one, exp.Column) and isinstance(other, exp.Column) and \
                one.table == fact and other.table == dim and \
                one.name in table.column_names and \
                _key_type(table.column_type(one.name)) and \
                not one.name.startswith("fig_"):
            return one.name, other
    return None


def _reads_only(conjunct: exp.Expr, alias: str) -> bool:
    """A conjunct of plain nodes whose columns are all the dimension's, qualified."""
    columns = list(conjunct.find_all(exp.Column))
    return bool(columns) and all(c.table == alias and not c.db for c in columns) and \
        all(isinstance(node, PLAIN) for node in conjunct.walk())


def _key_type(kind: str) -> bool:
    return kind in INTEGER_KEYS or kind in TEXT_KEYS or kind.startswith("character varying(")


# The dimension key's own types whose equality with the fact column is the engines' (a float
# key equals a large integer after rounding, citext ignores case): checked in the session
DIMENSION_KEYS = {"integer": "'int2'::regtype, 'int4'::regtype, 'int8'::regtype",
                  "text": "'text'::regtype, 'varchar'::regtype, 'bpchar'::regtype"}


def _keys_sql(dim: exp.Table, key: exp.Column, filters: list[exp.Expr], table: TieredTable,
              column: str, kind: str) -> str:
    """One row: the keys, and whether they may be used: the dimension's key column is of a
    type in DIMENSION_KEYS, and for text keys both columns' collations are deterministic
    (equal then means the same bytes). Integer keys as one comma-separated text (200,000 keys:
    Postgres's string_agg and Arrow's parse take 20 ms where json_agg and json.loads took 190),
    text keys as a JSON array (a text may hold any separator)."""
    where = " AND ".join(f"({f.sql(dialect='postgres')})" for f in filters)
    value = f"{quote(dim.alias_or_name)}.{quote(key.name)}"
    relation = dim.copy()
    relation.set("alias", None)
    own = (f"a.attrelid = to_regclass({literal(relation.sql(dialect='postgres'))}) "
           f"AND a.attname = {literal(key.name)}")
    typed = f"bool_or({own} AND a.atttypid IN ({DIMENSION_KEYS[kind]}))"
    if kind == "integer":
        usable = f"(SELECT {typed} FROM pg_attribute a WHERE {own})"
        keys = f"string_agg(CAST({value} AS text), ',')"
    else:
        value = f"CAST({value} AS text)"
        name = literal(f"{quote(table.schema)}.{quote(table.name)}")
        fact = f"a.attrelid = to_regclass({name}) AND a.attname = {literal(column)}"
        usable = (f"(SELECT count(*) = 2 AND bool_and(co.collisdeterministic) AND {typed} "
                  f"FROM pg_attribute a JOIN pg_collation co ON co.oid = a.attcollation "
                  f"WHERE ({own}) OR ({fact}))")
        keys = f"json_agg({value})::text"
    return (f"SELECT {keys}, coalesce({usable}, false) FROM "
            f"{dim.sql(dialect='postgres')} WHERE {where}")
