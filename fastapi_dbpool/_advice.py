"""A sizing verdict from what the pool has observed (the tutorial's FAQ), with the figures.

The verdict looks at the queue, not only at the pool: the share of checkouts that had to
wait, the wait against the hold time, and Little's law on the recent checkouts (rate x
(wait + hold) = how many connections the load would have kept busy had nobody waited).
"""

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from fastapi_dbpool._timings import Recorder, Timings
from fastapi_dbpool.settings import PoolSettings, env_var


class Advised(Protocol):
    """What the verdict reads of a pool (a DatabasePool)."""

    @property
    def settings(self) -> PoolSettings: ...
    @property
    def recorder(self) -> Recorder | None: ...
    @property
    def pool(self) -> AsyncConnectionPool[Any]: ...
    @property
    def unavailable(self) -> Mapping[Any, int]: ...


Verdict = Literal["ok", "saturated", "over-provisioned"]

# A queue worth acting on: this share of checkouts waited, and the p95 wait reached this
# fraction of the p95 hold (a wait while the pool opens a connection is milliseconds).
WAITED_SHARE = 0.10
WAIT_OVER_HOLD = 0.5


class Advice(BaseModel):
    """The verdict, a sentence saying what to do, and the figures behind it."""

    verdict: Verdict
    message: str
    figures: dict[str, float] = Field(default_factory=dict)


def advise(
    *,
    min_size: int,
    max_size: int,
    timings: Timings,
    shed: int,
    timeout: float,
    waited_share: float = 0.0,
    variable: Callable[[str], str] = env_var,
) -> Advice:
    """saturated: requests were shed (503), or every connection was lent while many checkouts
    waited about as long as they then held (or longer than a tenth of DBPOOL_TIMEOUT);
    over-provisioned: never more than min_size connections in use although max_size allows
    more; ok otherwise."""
    wait, hold = timings.acquire_wait_ms.window, timings.hold_ms.window
    needed = math.ceil(timings.checkouts_per_second * (wait.mean + hold.mean) / 1000)
    figures: dict[str, float] = {
        "max_in_use": timings.max_in_use,
        "max_waiting": timings.max_waiting,
        "min_size": min_size,
        "max_size": max_size,
        "shed_503": shed,
        "waited_share": round(waited_share, 3),
        "acquire_wait_p95_ms": wait.p95,
        "hold_p95_ms": hold.p95,
        "checkouts_per_second": timings.checkouts_per_second,
        "connections_needed": needed,
    }
    full = timings.max_in_use >= max_size
    queued = waited_share >= WAITED_SHARE and wait.p95 >= WAIT_OVER_HOLD * hold.p95 > 0
    slow_wait = timings.acquire_wait_ms.since_start.p95 > timeout * 1000 / 10
    if shed or (full and (queued or slow_wait)):
        demand = (
            f"; the observed load would keep about {needed} connections busy "
            f"({timings.checkouts_per_second:g} checkouts/s x {wait.mean + hold.mean:.0f} ms "
            "waited and held)"
            if needed > max_size
            else ""
        )
        return Advice(
            verdict="saturated",
            message=(
                f"saturated: every connection was in use while {waited_share:.0%} of checkouts "
                f"waited (p95 {wait.p95:g} ms, against a p95 hold of {hold.p95:g} ms)"
                f"{f' and {shed} were answered 503' if shed else ''}{demand}; raise "
                f"{variable('max_size')} if the database has CPU to spare, or add replicas"
            ),
            figures=figures,
        )
    if max_size > min_size and timings.max_in_use <= min_size:
        return Advice(
            verdict="over-provisioned",
            message=(
                f"over-provisioned: never more than {timings.max_in_use} connection(s) in use, "
                f"so the connections above {variable('min_size')} ({min_size}) were never used; "
                f"lower {variable('max_size')} to leave the database room for other clients"
            ),
            figures=figures,
        )
    return Advice(
        verdict="ok",
        message=(
            f"ok: at most {timings.max_in_use} of {max_size} connections in use, "
            f"{waited_share:.0%} of checkouts waited, no shedding"
        ),
        figures=figures,
    )


def advice_of(database: Advised, timings: Timings | None = None) -> Advice | None:
    """The verdict for one pool now; None with DBPOOL_METRICS=false (nothing recorded)."""
    if database.recorder is None:
        return None
    timings = timings if timings is not None else database.recorder.snapshot()
    stats = database.pool.get_stats()
    requests, queued = stats.get("requests_num", 0), stats.get("requests_queued", 0)
    settings = database.settings
    return advise(
        min_size=settings.min_size,
        max_size=settings.max_size,
        timings=timings,
        shed=database.unavailable["pool_timeout"] + database.unavailable["queue_full"],
        timeout=settings.timeout,
        waited_share=queued / requests if requests else 0.0,
        variable=settings.env_var,
    )
