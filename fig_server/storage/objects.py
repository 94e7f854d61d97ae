"""Where cold files live: a local folder or an S3-compatible bucket (R2, S3, MinIO), opened as
one pyarrow filesystem per location and per process, and files read through a counter of the
requests and bytes each read fetched.

pyiceberg's own FileIO writes and reads Iceberg metadata; cold workers read Parquet through
these filesystems instead because they keep a file open across work units (S3 opens cost a
HEAD request each) and because every read of a remote file is one ranged GET, counted here
for EXPLAIN ANALYZE.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from fig_server.errors import ConfigurationError

S3_SCHEMES = ("s3", "s3a", "s3n")
# Each request is retried this many times before a read fails with 58030.
S3_ATTEMPTS = 3
S3_CONNECT_TIMEOUT_S = 5.0
S3_REQUEST_TIMEOUT_S = 30.0

_lock = threading.Lock()
_filesystems: dict[tuple[tuple[str, str], ...], pafs.FileSystem] = {}


def is_object_store(uri: str) -> bool:
    return urlparse(uri).scheme in S3_SCHEMES


def s3_properties(endpoint: str, region: str, access_key_id: str, secret_access_key: str
                  ) -> dict[str, str]:
    """The `s3.*` properties pyiceberg's FileIO reads; empty settings are left out."""
    props = {"s3.endpoint": endpoint, "s3.region": region,
             "s3.access-key-id": access_key_id, "s3.secret-access-key": secret_access_key}
    return {key: value for key, value in props.items() if value}


def filesystem(properties: Mapping[str, str], uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding uri (made once per process and settings) and uri's path in it."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return pafs.LocalFileSystem(), parsed.path if parsed.scheme else uri
    if parsed.scheme not in S3_SCHEMES:
        raise ConfigurationError(f"unsupported storage location scheme {parsed.scheme!r}",
                                 hint="use a local folder or an s3:// URI")
    key = tuple(sorted((k, v) for k, v in properties.items() if k.startswith("s3.")))
    with _lock:
        fs = _filesystems.get(key)
        if fs is None:
            fs = _filesystems[key] = _s3(dict(key))
    return fs, parsed.netloc + parsed.path


def _s3(props: dict[str, str]) -> pafs.S3FileSystem:
    endpoint = props.get("s3.endpoint", "")
    options: dict[str, Any] = {
        "region": props.get("s3.region") or "us-east-1",
        "connect_timeout": S3_CONNECT_TIMEOUT_S,
        "request_timeout": S3_REQUEST_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme
    if props.get("s3.access-key-id"):
        options["access_key"] = props["s3.access-key-id"]
        options["secret_key"] = props.get("s3.secret-access-key", "")
    return pafs.S3FileSystem(**options)


def missing_bucket(properties: Mapping[str, str], uri: str) -> str | None:
    """The name of uri's bucket when the store answers that it does not exist, else None
    (an unreachable store is not an answer: CDC and queries retry and report it)."""
    if not is_object_store(uri):
        return None
    fs, path = filesystem(properties, uri)
    bucket = path.split("/", 1)[0]
    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError:
        return None
    return None if found else bucket


@dataclass
class Fetched:
    """Reads made against storage and the bytes they returned (one read of a remote file is
    one request)."""

    requests: int = 0
    bytes: int = 0

    def add(self, other: Fetched) -> None:
        self.requests += other.requests
        self.bytes += other.bytes


class CountingFile:
    """A random-access file (pyarrow NativeFile) seen as a Python file with its own position,
    counting its reads; pyarrow's Parquet reader accepts it as a source and coalesces nearby
    column chunks into one read each. Reads are positional, so several threads may read one
    open file through their own CountingFiles."""

    def __init__(self, raw: pa.NativeFile, fetched: Fetched) -> None:
        self._raw = raw
        self._fetched = fetched
        self._position = 0
        self._size = int(raw.size())
        self.closed = False

    def read(self, nbytes: int | None = None) -> bytes:
        if nbytes is None or nbytes < 0:
            nbytes = self._size - self._position
        data = self._raw.read_at(nbytes, self._position) if nbytes else b""
        if data:
            self._fetched.requests += 1
            self._fetched.bytes += len(data)
            self._position += len(data)
        return bytes(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._position, self._size)[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def size(self) -> int:
        return self._size

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True  # the underlying file stays open in OPEN_FILES


class OpenFiles:
    """Files a process keeps open across work units (an S3 open is a HEAD request); LRU.
    An evicted file is closed when its last reader lets go of it."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._files: OrderedDict[str, pa.NativeFile] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, properties: Mapping[str, str], uri: str, fetched: Fetched) -> CountingFile:
        with self._lock:
            raw = self._files.get(uri)
            if raw is not None:
                self._files.move_to_end(uri)
        if raw is None:
            fs, path = filesystem(properties, uri)
            raw = fs.open_input_file(path)
            if not isinstance(fs, pafs.LocalFileSystem):
                fetched.requests += 1  # the HEAD that found its size
            with self._lock:
                self._files[uri] = raw
                while len(self._files) > self._capacity:
                    self._files.popitem(last=False)
        return CountingFile(raw, fetched)


OPEN_FILES = OpenFiles()
