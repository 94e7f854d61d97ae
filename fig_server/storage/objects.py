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
    """A random-access file (pyarrow NativeFile) seen as a Python file that counts its reads;
    pyarrow's Parquet reader accepts it as a source and coalesces nearby column chunks into
    one read each."""

    def __init__(self, raw: pa.NativeFile, fetched: Fetched) -> None:
        self._raw = raw
        self._fetched = fetched
        self.closed = False

    def read(self, nbytes: int | None = None) -> bytes:
        data = self._raw.read(nbytes)
        if data:
            self._fetched.requests += 1
            self._fetched.bytes += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self._raw.tell())

    def size(self) -> int:
        return int(self._raw.size())

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True  # the underlying file stays open in its OpenFiles cache


class OpenFiles:
    """Files a worker keeps open across work units (an S3 open is a HEAD request); LRU."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._files: OrderedDict[str, pa.NativeFile] = OrderedDict()

    def open(self, properties: Mapping[str, str], uri: str, fetched: Fetched) -> CountingFile:
        raw = self._files.get(uri)
        if raw is None:
            fs, path = filesystem(properties, uri)
            raw = fs.open_input_file(path)
            if not isinstance(fs, pafs.LocalFileSystem):
                fetched.requests += 1  # the HEAD that found its size
            self._files[uri] = raw
            while len(self._files) > self._capacity:
                _, old = self._files.popitem(last=False)
                old.close()
        else:
            self._files.move_to_end(uri)
        return CountingFile(raw, fetched)
