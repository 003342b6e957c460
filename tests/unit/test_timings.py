"""Percentiles: exact over the recent window, within 5 % since start."""

import pytest

from fastapi_dbpool.timings import WINDOW, Distribution, Recorder


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
