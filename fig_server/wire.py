"""PostgreSQL protocol v3 framing and the few messages Fig builds itself; no I/O, no SQL."""

from __future__ import annotations

import struct
from collections.abc import Mapping

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Message types a frontend may send once started (Terminate included).
FRONTEND_TYPES = frozenset(b"BCdcfDEHFPpQSX")

HEADER = struct.Struct("!cI")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")
INT16 = struct.Struct("!h")


def message(kind: bytes, payload: bytes = b"") -> bytes:
    """One framed message: type byte, int32 length (self-inclusive), payload."""
    return kind + UINT32.pack(len(payload) + 4) + payload


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def error_response(fields: Mapping[str, str], notice: bool = False) -> bytes:
    """ErrorResponse ('E') or NoticeResponse ('N') from one-letter field codes."""
    body = b"".join(code.encode() + cstring(value) for code, value in fields.items())
    return message(b"N" if notice else b"E", body + b"\0")


def parse_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse payload."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", INT32.pack(pid) + INT32.pack(secret))


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def startup_packet(params: Mapping[str, str], version: int = PROTOCOL_V3) -> bytes:
    """A StartupMessage; names and values go out as the exact bytes the client sent."""
    body = INT32.pack(version) + b"".join(
        _raw(k) + b"\0" + _raw(v) + b"\0" for k, v in params.items())
    return UINT32.pack(len(body) + 5) + body + b"\0"


def _raw(text: str) -> bytes:
    return text.encode(errors="surrogateescape")


def cancel_packet(pid: int, secret: int) -> bytes:
    return UINT32.pack(16) + INT32.pack(CANCEL_REQUEST) + INT32.pack(pid) + INT32.pack(secret)


def parse_startup_params(body: bytes) -> dict[str, str]:
    """Name/value pairs of a StartupMessage body after the version, read as Postgres does.

    Bytes that are not UTF-8 are kept (surrogateescape) so the backend sees them unchanged.
    ValueError when the packet does not end with its terminator right after the last pair.
    """
    params = {}
    offset, size = 0, len(body)
    while offset < size and body[offset]:
        name_end = _cstring_end(body, offset)
        if name_end + 1 >= size:
            break  # a name without a value: reported as a missing terminator below
        value_end = _cstring_end(body, name_end + 1)
        name = body[offset:name_end].decode(errors="surrogateescape")
        params[name] = body[name_end + 1:value_end].decode(errors="surrogateescape")
        offset = value_end + 1
    if offset != size - 1:
        raise ValueError("expected terminator as last byte")
    return params


def _cstring_end(buffer: bytes, start: int) -> int:
    end = buffer.find(b"\0", start)
    return len(buffer) if end < 0 else end


def error_response_v2(text: str) -> bytes:
    """The pre-3.0 ErrorResponse Postgres sends to a client asking for protocol 1 or 2."""
    return b"E" + text.encode() + b"\n\0"


def split_messages(buffer: bytes | bytearray, start: int = 0) -> tuple[list[tuple[int, int]], int]:
    """Offsets (start, end) of the complete messages in buffer, and where the rest begins.

    Lengths are not validated here: the caller checks them (see MessageTooLarge).
    """
    spans = []
    size = len(buffer)
    pos = start
    unpack = UINT32.unpack_from
    while size - pos >= 5:
        end = pos + 1 + unpack(buffer, pos + 1)[0]
        if end > size:
            break
        spans.append((pos, end))
        pos = end
    return spans, pos


def query_text(payload: bytes) -> str:
    """The SQL of a Query ('Q') payload."""
    return payload[:-1].decode(errors="replace") if payload.endswith(b"\0") else payload.decode(
        errors="replace")


def parse_text(payload: bytes) -> tuple[str, str]:
    """Statement name and SQL of a Parse ('P') payload."""
    name_end = payload.index(b"\0")
    sql_end = payload.index(b"\0", name_end + 1)
    return (payload[:name_end].decode(errors="replace"),
            payload[name_end + 1:sql_end].decode(errors="replace"))


def bind_statement(payload: bytes | bytearray, start: int = 0, end: int | None = None) -> str:
    """The prepared statement name a Bind ('B') payload refers to (payload[start:end], read
    in place: a Bind's parameters can be large)."""
    end = len(payload) if end is None else end
    portal_end = payload.index(b"\0", start, end)
    name_end = payload.index(b"\0", portal_end + 1, end)
    return bytes(payload[portal_end + 1:name_end]).decode(errors="replace")


def replace_parse_sql(payload: bytes, sql: str) -> bytes:
    """A Parse payload with its SQL replaced, statement name and parameter types kept."""
    name_end = payload.index(b"\0")
    sql_end = payload.index(b"\0", name_end + 1)
    return payload[:name_end + 1] + cstring(sql) + payload[sql_end + 1:]


def parse_parameter_types(payload: bytes) -> list[int]:
    """The parameter type OIDs a Parse ('P') payload declares (0: Postgres infers it)."""
    name_end = payload.index(b"\0")
    sql_end = payload.index(b"\0", name_end + 1)
    count = INT16.unpack_from(payload, sql_end + 1)[0]
    return list(struct.unpack_from(f"!{count}I", payload, sql_end + 3))


def parse_message(name: str, sql: str, parameter_types: list[int]) -> bytes:
    """A Parse ('P') message declaring these parameter types."""
    return message(b"P", cstring(name) + cstring(sql) + INT16.pack(len(parameter_types))
                   + struct.pack(f"!{len(parameter_types)}I", *parameter_types))


def run_once(sql: str, parameter_types: list[int], values: bytes) -> bytes:
    """Parse, Bind (values: the parameter formats and values a client's Bind carried,
    bind_values; text results), Execute and Sync of one statement, unnamed."""
    return (parse_message("", sql, parameter_types)
            + message(b"B", b"\0\0" + values + INT16.pack(0))
            + message(b"E", b"\0" + INT32.pack(0)) + message(b"S"))


def bind_portal(payload: bytes) -> str:
    """The portal a Bind ('B') payload makes."""
    return payload[:payload.index(b"\0")].decode(errors="replace")


def bind_values(payload: bytes) -> bytes:
    """A Bind ('B') payload's parameter format codes and values, as the bytes that follow
    the two names (up to the result format codes): what another Bind may carry as is."""
    portal_end = payload.index(b"\0")
    start = payload.index(b"\0", portal_end + 1) + 1
    pos = start
    formats = INT16.unpack_from(payload, pos)[0]
    pos += 2 + 2 * formats
    count = INT16.unpack_from(payload, pos)[0]
    pos += 2
    for _ in range(count):
        length = struct.unpack_from("!i", payload, pos)[0]
        pos += 4 + max(length, 0)
    return payload[start:pos]


def execute_portal(payload: bytes) -> str:
    """The portal an Execute ('E') payload runs."""
    return payload[:payload.index(b"\0")].decode(errors="replace")


def row_description_text(*names: str) -> bytes:
    """RowDescription of text columns (type oid 25), as Fig's own results use."""
    body = INT16.pack(len(names)) + b"".join(
        cstring(name) + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0) for name in names)
    return message(b"T", body)


def data_row_text(values: list[str | None]) -> bytes:
    parts = [INT16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(INT32.pack(-1))
        else:
            encoded = value.encode()
            parts.append(INT32.pack(len(encoded)) + encoded)
    return message(b"D", b"".join(parts))


def row_description_names(payload: bytes) -> list[str]:
    """Column names of a RowDescription ('T') payload."""
    count = INT16.unpack_from(payload)[0]
    names, pos = [], 2
    for _ in range(count):
        end = payload.index(b"\0", pos)
        names.append(payload[pos:end].decode(errors="replace"))
        pos = end + 1 + 18
    return names
