"""A transaction too large to hold in memory spills its changes to a file, chunk by chunk.

CDC buffers a transaction until its Commit (it may abort). Past [cdc] spill_bytes of row text,
the buffered changes go to an anonymous temporary file under <data_dir>/cdc-spill and memory
is freed; at Commit the chunks are read back one at a time and applied in order
(service.CdcProcess._apply_spilled). So memory stays bounded whatever the transaction's size,
and back-pressure (which counts committed, unflushed changes only) never waits for a Commit
it stopped reading.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fig_server.cdc.changes import Change


class TxnSpill:
    """The spilled chunks of one open transaction; the file disappears when closed."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # closed by close(), once the transaction is applied
        self.file = tempfile.TemporaryFile(dir=directory, prefix="txn-")  # noqa: SIM115
        self.chunks = 0
        self.rows = 0

    def write(self, changes: dict[int, list[Change]]) -> None:
        pickle.dump(dict(changes), self.file, protocol=pickle.HIGHEST_PROTOCOL)
        self.chunks += 1
        self.rows += sum(len(c) for c in changes.values())

    def read(self) -> Iterator[dict[int, list[Change]]]:
        self.file.seek(0)
        for _ in range(self.chunks):
            yield pickle.load(self.file)  # our own file, written above: trusted

    def close(self) -> None:
        self.file.close()
