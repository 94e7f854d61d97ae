"""Arrow columns as COPY ... FROM STDIN (FORMAT csv) text: what Postgres reads back."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pyarrow as pa
import pytest

from fig_server.storage.typemap import to_copy_csv

INSTANTS = [dt.datetime(2024, 1, 1, 12, 30, 1, 5, tzinfo=dt.UTC), None,
            dt.datetime(1, 1, 1, tzinfo=dt.UTC),
            dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)]


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "+05:30"])
def test_zoned_timestamps_are_the_instant_in_utc(zone: str) -> None:
    """Whatever zone the Arrow type names, the text is the stored instant marked Z (read the
    same in every session TimeZone); NULL is an empty unquoted field."""
    table = pa.table({"t": pa.array(INSTANTS, pa.timestamp("us", tz=zone))})
    text = to_copy_csv(table).decode()
    assert text.splitlines()[1] == ""  # unquoted empty: NULL
    values = [row[0] if row else None for row in csv.reader(io.StringIO(text))]
    parsed = [dt.datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None
              for v in values]
    assert parsed == INSTANTS
