"""BatchHistogram counts as prometheus_client's own Histogram does: the same exposition for
the same values, bucket bounds and edge values included."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fig_server.metrics import LATENCY_BUCKETS, BatchHistogram


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples}


def test_same_exposition_as_prometheus_histogram() -> None:
    rng = random.Random(7)
    values = ([0.0, 1e-9, 300.0, 300.0001, 1e6] + list(LATENCY_BUCKETS)
              + [rng.random() * 10 ** rng.randint(-4, 3) for _ in range(2000)])
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("fig_x_seconds", "x", ["route"], buckets=LATENCY_BUCKETS,
                          registry=theirs)
    batched = BatchHistogram("fig_x_seconds", "x", "route", ("relay", "cold"),
                             LATENCY_BUCKETS, ours)
    reference.labels("cold")  # a series at zero, as the batched one starts with
    for value in values:
        reference.labels("relay").observe(value)
    for start in range(0, len(values), 300):  # in batches, as the audit writer counts
        batched.observe_many("relay", values[start:start + 300])
    batched.observe_many("relay", [])
    expected, got = samples(theirs), samples(ours)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
    assert got[("fig_x_seconds_count", (("route", "cold"),))] == 0
