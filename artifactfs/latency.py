"""Latency histograms: fixed buckets, cheap enough for every FUSE request."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from artifactfs.status import LatencyReport

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds in seconds; one more bucket catches everything slower."""


@dataclass
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    def report(self) -> LatencyReport:
        """Cumulative bucket counts in Prometheus order, with the sum and count."""
        cumulative: list[tuple[float | str, int]] = []
        running = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else bound, running))
        return LatencyReport(cumulative, round(self.total_seconds, 6), running)
