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
    body = INT32.pack(version) + b"".join(cstring(k) + cstring(v) for k, v in params.items())
    return UINT32.pack(len(body) + 5) + body + b"\0"


def cancel_packet(pid: int, secret: int) -> bytes:
    return UINT32.pack(16) + INT32.pack(CANCEL_REQUEST) + INT32.pack(pid) + INT32.pack(secret)


def parse_startup_params(body: bytes) -> dict[str, str]:
    """Key/value pairs of a StartupMessage body after the version; ValueError if malformed."""
    if not body.endswith(b"\0"):
        raise ValueError("startup packet is not terminated")
    parts = body[:-1].split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ValueError("startup packet has a name without a value")
    params = {}
    for name, value in zip(parts[::2], parts[1::2], strict=True):
        if not name:
            raise ValueError("startup packet has an empty parameter name")
        params[name.decode()] = value.decode()
    return params


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
