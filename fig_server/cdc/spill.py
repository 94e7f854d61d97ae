"""A transaction too large to hold in memory spills its changes to a file, chunk by chunk.

CDC buffers a transaction until its Commit (it may abort). Past [cdc] spill_bytes of row text,
the buffered changes go to an anonymous temporary file under <data_dir>/cdc-spill and memory
is freed; at Commit the chunks are read back in order, as many at a time as [cdc] flush_bytes
holds (what a batch of small transactions may hold in memory too), and each group is applied
as one Iceberg commit (service.CdcProcess._apply_spilled): a copy-on-write delete rewrites
every file that may hold a touched key, so one commit per small chunk made a large
transaction cost chunks x table size. So memory stays bounded whatever the transaction's size,
and back-pressure (which counts committed, unflushed changes only) never waits for a Commit
it stopped reading.
"""

from __future__ import annotations

import pickle
import tempfile
from collections import defaultdict
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

    def read(self, per_group: int = 1) -> Iterator[dict[int, list[Change]]]:
        """The spilled changes in order, `per_group` chunks at a time."""
        self.file.seek(0)
        group: dict[int, list[Change]] = defaultdict(list)
        for index in range(self.chunks):
            for relid, changes in pickle.load(self.file).items():  # our own file: trusted
                group[relid].extend(changes)
            if (index + 1) % per_group == 0 or index + 1 == self.chunks:
                yield dict(group)
                group = defaultdict(list)

    def close(self) -> None:
        self.file.close()
