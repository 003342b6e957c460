"""Percentiles: exact over the recent window, within 5 % since start."""

import pytest

from fastapi_dbpool._advice import advise
from fastapi_dbpool._timings import (
    WINDOW,
    Distribution,
    DistributionStats,
    Percentiles,
    Recorder,
    Timings,
)


def test_window_percentiles_are_exact() -> None:
    distribution = Distribution()
    for ms in range(1, 101):
        distribution.add(float(ms))
    window = distribution.window()
    assert (window.count, window.p50, window.p95, window.p99, window.max) == (100, 50, 95, 99, 100)


def test_since_start_percentiles_are_within_five_percent() -> None:
    distribution = Distribution()
    for ms in range(1, 1001):
        distribution.add(ms / 10)  # 0.1 .. 100 ms
    since = distribution.since_start()
    assert since.count == 1000
    assert since.p50 == pytest.approx(50, rel=0.05)
    assert since.p95 == pytest.approx(95, rel=0.05)
    assert since.p99 == pytest.approx(99, rel=0.05)
    assert since.max == 100


def test_window_forgets_old_samples_but_since_start_does_not() -> None:
    distribution = Distribution()
    for _ in range(WINDOW):
        distribution.add(1000.0)
    for _ in range(WINDOW):
        distribution.add(1.0)
    assert distribution.window().max == 1.0
    assert distribution.since_start().max == 1000.0
    assert distribution.since_start().count == 2 * WINDOW


def test_empty_distribution_reads_as_zeros() -> None:
    assert Distribution().window().count == 0
    assert Distribution().since_start().p99 == 0


def test_releasing_a_token_the_recorder_never_issued_counts_nothing() -> None:
    recorder = Recorder("p", None)
    token = recorder.acquired(recorder.wait_started(), "GET /x")
    recorder.released(token + 100)  # not one of its checkouts
    assert recorder.in_use == 1
    recorder.released(token)
    assert recorder.in_use == 0
    assert recorder.snapshot().hold_ms.window.count == 1


def stats_of(p95: float, mean: float) -> DistributionStats:
    window = Percentiles(count=1024, mean=mean, p50=mean, p95=p95, p99=p95, max=p95)
    return DistributionStats(window=window, since_start=window)


def test_advice_sees_a_queue_that_sheds_nothing() -> None:
    # The load run: 99.6 % of checkouts queued, p95 wait 221 ms over a p95 hold of 96 ms,
    # every connection in use, no 503: that is saturation, not "ok".
    timings = Timings(
        acquire_wait_ms=stats_of(p95=221, mean=150),
        hold_ms=stats_of(p95=96, mean=60),
        max_in_use=10,
        max_waiting=54,
        slow_holders=0,
        checkouts_per_second=300.0,
    )
    advice = advise(
        min_size=2, max_size=10, timings=timings, shed=0, timeout=5.0, waited_share=0.996
    )
    assert advice.verdict == "saturated"
    assert advice.figures["connections_needed"] == 63  # 300/s x (150 + 60) ms, Little's law
    assert "about 63 connections" in advice.message
    assert "100% of checkouts waited" in advice.message


def test_advice_is_ok_when_waits_are_short_against_holds() -> None:
    timings = Timings(
        acquire_wait_ms=stats_of(p95=8, mean=3),
        hold_ms=stats_of(p95=300, mean=250),
        max_in_use=2,
        max_waiting=1,
        slow_holders=0,
        checkouts_per_second=4.0,
    )
    advice = advise(min_size=1, max_size=2, timings=timings, shed=0, timeout=5.0, waited_share=0.5)
    assert advice.verdict == "ok"
