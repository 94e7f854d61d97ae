"""Decoding of pgoutput protocol version 1 messages into plain dataclasses (no I/O)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from fig_server.errors import ProtocolViolation


class _Unchanged:
    """An unchanged TOASTed value: the Update carried no value for this column."""

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"  # pickled by name: the one instance, in spilled transactions too


UNCHANGED: Final = _Unchanged()
Value = str | None | _Unchanged
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_ts_us: int
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True)
class RelationColumn:
    is_key: bool
    name: str
    type_oid: int
    typmod: int


@dataclass(frozen=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True)
class TypeMessage:
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True)
class Insert:
    relid: int
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Update:
    relid: int
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Delete:
    relid: int
    old: tuple[Value, ...]


@dataclass(frozen=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool = False
    restart_identity: bool = False


@dataclass(frozen=True)
class LogicalMessage:
    prefix: str
    content: bytes = field(repr=False)


Message = (Begin | Commit | Origin | Relation | TypeMessage | Insert | Update | Delete | Truncate
           | LogicalMessage)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def int16(self) -> int:
        (value,) = struct.unpack_from("!h", self.data, self.pos)
        self.pos += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def uint32(self) -> int:
        (value,) = struct.unpack_from("!I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def int64(self) -> int:
        (value,) = struct.unpack_from("!q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> str:
        end = self.data.index(0, self.pos)
        text = self.data[self.pos:end].decode()
        self.pos = end + 1
        return text

    def tuple_data(self) -> tuple[Value, ...]:
        count = self.int16()
        values: list[Value] = []
        for _ in range(count):
            kind = self.byte()
            if kind == 0x74:  # 't'
                length = self.int32()
                values.append(self.data[self.pos:self.pos + length].decode())
                self.pos += length
            elif kind == 0x6E:  # 'n'
                values.append(None)
            elif kind == 0x75:  # 'u'
                values.append(UNCHANGED)
            else:
                raise ProtocolViolation(f"pgoutput: unexpected tuple value kind {kind!r}")
        return tuple(values)


def _relation(r: _Reader) -> Relation:
    relid, namespace, name = r.uint32(), r.string(), r.string()
    identity = chr(r.byte())
    columns = []
    for _ in range(r.int16()):
        flags = r.byte()
        columns.append(RelationColumn(bool(flags & 1), r.string(), r.uint32(), r.int32()))
    return Relation(relid, namespace, name, identity, tuple(columns))


def _update(r: _Reader) -> Update:
    relid, kind, old = r.uint32(), chr(r.byte()), None
    if kind in ("K", "O"):
        old = r.tuple_data()
        kind = chr(r.byte())
    if kind != "N":
        raise ProtocolViolation(f"pgoutput: update without new tuple ({kind!r})")
    return Update(relid, old, r.tuple_data())


def _delete(r: _Reader) -> Delete:
    relid, kind = r.uint32(), chr(r.byte())
    if kind not in ("K", "O"):
        raise ProtocolViolation(f"pgoutput: delete without old tuple ({kind!r})")
    return Delete(relid, r.tuple_data())


def _truncate(r: _Reader) -> Truncate:
    count, options = r.int32(), r.byte()
    return Truncate(tuple(r.uint32() for _ in range(count)), bool(options & 1), bool(options & 2))


def _insert(r: _Reader) -> Insert:
    relid = r.uint32()
    if chr(r.byte()) != "N":
        raise ProtocolViolation("pgoutput: insert without new tuple")
    return Insert(relid, r.tuple_data())


def _message(r: _Reader) -> LogicalMessage:
    r.byte()  # flags
    r.int64()  # lsn
    prefix = r.string()
    length = r.int32()
    return LogicalMessage(prefix, bytes(r.data[r.pos:r.pos + length]))


def decode(data: bytes) -> Message | None:
    """One pgoutput message; None for message kinds Fig does not use."""
    r = _Reader(data)
    kind = chr(r.byte())
    if kind == "I":
        return _insert(r)
    if kind == "U":
        return _update(r)
    if kind == "D":
        return _delete(r)
    if kind == "B":
        return Begin(r.int64(), r.int64(), r.uint32())
    if kind == "C":
        r.byte()
        return Commit(r.int64(), r.int64(), r.int64())
    if kind == "R":
        return _relation(r)
    if kind == "T":
        return _truncate(r)
    if kind == "O":
        return Origin(r.int64(), r.string())
    if kind == "Y":
        return TypeMessage(r.uint32(), r.string(), r.string())
    if kind == "M":
        return _message(r)
    return None

