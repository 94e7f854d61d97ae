"""A real S3 protocol endpoint on loopback for tests (moto's server in its own process), a bucket
per warehouse, and a gate in front of it that can make the endpoint refuse connections.

FIG_TEST_WAREHOUSE=s3 points every Fig and CDC service the fixtures start at a fresh bucket of
this endpoint instead of a local folder (see tests/conftest.py).
"""

from __future__ import annotations

import atexit
import itertools
import os
import select
import socket
import subprocess
import sys
import threading
import time

import boto3

ACCESS_KEY = "fig-test-key"
SECRET_KEY = "fig-test-secret-9f3b2c"  # tests check it never shows up in logs or answers
REGION = "us-east-1"

S3_MODE = os.environ.get("FIG_TEST_WAREHOUSE") == "s3"

_lock = threading.Lock()
_endpoint: str | None = None
_buckets = itertools.count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoint() -> str:
    """The URL of this test process's S3 endpoint, started on first use."""
    global _endpoint
    with _lock:
        if _endpoint is None:
            port = _free_port()
            process = subprocess.Popen(  # its request log would grow without bound: dropped
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            atexit.register(process.kill)
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto server did not start ({process.poll()})"
                                           ) from None
                    time.sleep(0.1)
            _endpoint = f"http://127.0.0.1:{port}"
    return _endpoint


def client(url: str | None = None):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=url or endpoint(), aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name=REGION)


def new_warehouse(url: str | None = None) -> dict[str, str]:
    """[cold] settings for a warehouse in a new, empty bucket of the endpoint (or url, a gate
    in front of it)."""
    bucket = f"fig-{os.getpid()}-{next(_buckets)}"
    client().create_bucket(Bucket=bucket)
    return {"warehouse": f"s3://{bucket}/warehouse", "s3_endpoint": url or endpoint(),
            "s3_region": REGION, "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SECRET_KEY}


def as_env(settings: dict[str, str]) -> dict[str, str]:
    return {f"FIG__COLD__{key.upper()}": value for key, value in settings.items()}


def keys(bucket: str, prefix: str = "") -> list[str]:
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


class Gate:
    """A TCP relay to the endpoint that can be closed: while closed it drops every open
    connection and refuses new ones, as an unreachable object store does."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit("//", 1)[1].split(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open = True
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._open = False
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                sock.close()

    def open(self) -> None:
        with self._lock:
            self._open = True

    def _accept(self) -> None:
        while True:
            client_sock, _ = self._listener.accept()
            with self._lock:
                if not self._open:
                    client_sock.close()
                    continue
                try:
                    upstream = socket.create_connection(self._target)
                except OSError:
                    client_sock.close()
                    continue
                self._pairs.append((client_sock, upstream))
            threading.Thread(target=self._relay, args=(client_sock, upstream),
                             daemon=True).start()

    @staticmethod
    def _relay(one: socket.socket, other: socket.socket) -> None:
        peers = {one: other, other: one}
        try:
            while True:
                ready, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            one.close()
            other.close()
