"""What a sheep client counts, for the unmount summary and status."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

LATENCY_WINDOW = 1024


@dataclass
class ClientStats:
    """Counters for status output; latency percentiles cover the last LATENCY_WINDOW calls."""

    requests: int = 0
    failures: int = 0  # calls that raised
    bytes_out: int = 0  # request payload bytes
    bytes_in: int = 0  # reply payload bytes
    connects: int = 0
    reconnects: int = 0  # connections opened after one was lost
    failovers: int = 0
    resends: int = 0  # requests sent again after a lost connection
    retries: int = 0  # requests sent again after a RETRYABLE result
    timeouts: int = 0
    latency_total: float = 0.0
    latency_max: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def record(self, seconds: float) -> None:
        self.latency_total += seconds
        self.latency_max = max(self.latency_max, seconds)
        self.latencies.append(seconds)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of recent latencies in seconds, 0.0 with none."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]
