"""Checkout timings: how long requests wait for a connection and hold it, and who holds too long.

Recording is a few monotonic() calls and deque appends per checkout; percentiles are computed
only when the stats are read.
"""

import asyncio
import bisect
import logging
import math
from collections import deque
from collections.abc import Mapping
from time import monotonic
from typing import Any

from pydantic import BaseModel, Field

logger = logging.getLogger("fastapi_dbpool")

WINDOW = 1024  # the most recent checkouts the "recent" percentiles are over
# Since-start percentiles come from log-spaced buckets: 0.01 ms to ~10 min, 5 % apart.
_BASE, _GROWTH, _NBUCKETS = 0.01, 1.05, 370
_BOUNDS = [_BASE * _GROWTH**i for i in range(_NBUCKETS)]
_LOG_GROWTH = math.log(_GROWTH)
# Prometheus histogram bounds, seconds (counted exactly).
HISTOGRAM_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_HISTOGRAM_BOUNDS_MS = [bound * 1000 for bound in HISTOGRAM_BOUNDS]


class Percentiles(BaseModel):
    """Milliseconds: p50, p95, p99 and max of a set of durations."""

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0


class Distribution:
    """Durations in ms: exact over the last WINDOW samples, bucketed since start.

    add() only appends: samples are folded into the buckets a window at a time, or when read.
    """

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self._pending: list[float] = []
        self._buckets = [0] * (len(_BOUNDS) + 1)
        self._count = 0
        self._max = 0.0
        self._sum_ms = 0.0
        self._histogram = [0] * (len(HISTOGRAM_BOUNDS) + 1)

    def add(self, ms: float) -> None:
        pending = self._pending
        pending.append(ms)
        if len(pending) >= WINDOW:
            self._fold()

    def _fold(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.recent.extend(pending)
        buckets, histogram = self._buckets, self._histogram
        log, ceil, bisect_left = math.log, math.ceil, bisect.bisect_left
        for ms in pending:
            index = ceil(log(ms / _BASE) / _LOG_GROWTH) if ms > _BASE else 0
            buckets[index if index < _NBUCKETS else _NBUCKETS] += 1
            histogram[bisect_left(_HISTOGRAM_BOUNDS_MS, ms)] += 1
        self._count += len(pending)
        self._sum_ms += sum(pending)
        self._max = max(self._max, max(pending))

    @property
    def sum_ms(self) -> float:
        self._fold()
        return self._sum_ms

    def histogram(self) -> list[tuple[str, int]]:
        """Cumulative counts per upper bound in seconds, "+Inf" last (Prometheus' le)."""
        self._fold()
        buckets, seen = [], 0
        for bound, count in zip((*HISTOGRAM_BOUNDS, math.inf), self._histogram, strict=True):
            seen += count
            buckets.append(("+Inf" if bound == math.inf else str(bound), seen))
        return buckets

    def window(self) -> Percentiles:
        self._fold()
        values = sorted(self.recent)
        if not values:
            return Percentiles()
        return Percentiles(
            count=len(values),
            mean=round(sum(values) / len(values), 3),
            p50=_exact(values, 0.50),
            p95=_exact(values, 0.95),
            p99=_exact(values, 0.99),
            max=round(values[-1], 3),
        )

    def since_start(self) -> Percentiles:
        self._fold()
        if not self._count:
            return Percentiles()
        return Percentiles(
            count=self._count,
            mean=round(self._sum_ms / self._count, 3),
            p50=self._bucketed(0.50),
            p95=self._bucketed(0.95),
            p99=self._bucketed(0.99),
            max=round(self._max, 3),
        )

    def _bucketed(self, q: float) -> float:
        rank = max(1, math.ceil(q * self._count))
        seen = 0
        for index, count in enumerate(self._buckets):
            seen += count
            if seen >= rank:
                upper = _BOUNDS[index] if index < len(_BOUNDS) else self._max
                return round(min(upper, self._max), 3)
        return round(self._max, 3)


def _exact(values: list[float], q: float) -> float:
    return round(values[max(0, math.ceil(q * len(values)) - 1)], 3)


class DistributionStats(BaseModel):
    window: Percentiles = Field(description=f"Over the last {WINDOW} checkouts (exact).")
    since_start: Percentiles = Field(description="Since the pool opened (within 5 %).")


class Timings(BaseModel):
    """The /pool/stats "timings" section."""

    acquire_wait_ms: DistributionStats
    hold_ms: DistributionStats
    max_in_use: int = Field(description="Most connections lent to requests at once.")
    max_waiting: int = Field(description="Most requests waiting for a connection at once.")
    slow_holders: int = Field(description="Checkouts held longer than DBPOOL_LEAK_THRESHOLD.")
    checkouts_per_second: float = Field(
        0.0, description=f"Checkouts per second over the last {WINDOW} (or fewer) checkouts."
    )


class Recorder:
    """Times every checkout; warns once per checkout held longer than leak_threshold.

    The hot path is two calls per checkout (acquired, released): a few counters, two
    monotonic() reads and two list appends."""

    def __init__(
        self,
        pool_name: str,
        leak_threshold: float | None,
        leak_variable: str = "DBPOOL_LEAK_THRESHOLD",
    ) -> None:
        self.wait = Distribution()
        self.hold = Distribution()
        self.in_use = 0
        self.waiting = 0
        self.max_in_use = 0
        self.max_waiting = 0
        self.slow_holders = 0
        self._name = pool_name
        self._leak_threshold = leak_threshold
        self._leak_variable = leak_variable
        self._last_token = 0
        self._holdings: dict[int, tuple[float, object]] = {}  # token: (since, route)
        self._acquired_at: deque[float] = deque(maxlen=WINDOW)  # for the checkout rate
        self._reported: set[int] = set()

    def wait_started(self) -> float:
        """A request starts waiting for a connection; returns the start time."""
        self.waiting += 1
        if self.waiting > self.max_waiting:
            self.max_waiting = self.waiting
        return monotonic()

    def acquired(self, started: float, route: object) -> int:
        """The request waiting since started got its connection; returns the holding's token.

        route: a label, or the request's ASGI scope (made into a label only if it is named)."""
        now = monotonic()
        self.waiting -= 1
        self.wait.add((now - started) * 1000)
        in_use = self.in_use = self.in_use + 1
        if in_use > self.max_in_use:
            self.max_in_use = in_use
        token = self._last_token = self._last_token + 1
        self._holdings[token] = (now, route)
        self._acquired_at.append(now)
        return token

    def not_acquired(self, started: float) -> None:
        """The wait ended without a connection (timeout, full queue, closed pool)."""
        self.waiting -= 1
        self.wait.add((monotonic() - started) * 1000)

    def released(self, token: int) -> None:
        """The connection of the holding token went back to the pool."""
        holding = self._holdings.pop(token, None)
        if holding is None:  # not a checkout this recorder timed: nothing to count
            return
        self.in_use -= 1
        self.hold.add((monotonic() - holding[0]) * 1000)
        if self._reported:
            self._reported.discard(token)

    async def watch(self) -> None:
        """Warn once per checkout held longer than leak_threshold (runs until cancelled).

        One sweep a fraction of the threshold apart, rather than a timer per checkout."""
        threshold = self._leak_threshold
        if threshold is None:
            return
        while True:
            await asyncio.sleep(max(0.05, threshold / 4))
            now = monotonic()
            for token, (since, route) in list(self._holdings.items()):
                if token not in self._reported and now - since >= threshold:
                    self._reported.add(token)
                    self.slow_holders += 1
                    logger.warning(
                        "pool %r: %s has held a connection for %.1f s "
                        "(%s %s s): a leak, or work that should not hold a connection",
                        self._name,
                        route_label(route),
                        now - since,
                        self._leak_variable,
                        threshold,
                    )

    def snapshot(self) -> Timings:
        return Timings(
            acquire_wait_ms=DistributionStats(
                window=self.wait.window(), since_start=self.wait.since_start()
            ),
            hold_ms=DistributionStats(
                window=self.hold.window(), since_start=self.hold.since_start()
            ),
            max_in_use=self.max_in_use,
            max_waiting=self.max_waiting,
            slow_holders=self.slow_holders,
            checkouts_per_second=self._rate(),
        )

    def _rate(self) -> float:
        times = self._acquired_at
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return round((len(times) - 1) / (times[-1] - times[0]), 1)


def route_label(route: object) -> str:
    """METHOD /path/template for an ASGI scope (as given to acquire), else route as text."""
    if not isinstance(route, Mapping):
        return str(route)
    scope: Mapping[str, Any] = route
    template = getattr(scope.get("route"), "path", None) or scope.get("path", "")
    return f"{scope.get('method', 'WS')} {template}"
