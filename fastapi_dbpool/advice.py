"""A sizing verdict from what the pool has observed since it opened (the tutorial's FAQ)."""

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from fastapi_dbpool.settings import env_var
from fastapi_dbpool.timings import Timings

Verdict = Literal["ok", "saturated", "over-provisioned"]


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
    variable: Callable[[str], str] = env_var,
) -> Advice:
    """saturated: requests were shed (503), or every connection was lent while the p95 wait
    for one exceeded a tenth of DBPOOL_TIMEOUT (a brief wait while the pool grows is not);
    over-provisioned: never more than min_size connections in use although max_size allows
    more; ok otherwise."""
    figures: dict[str, float] = {
        "max_in_use": timings.max_in_use,
        "max_waiting": timings.max_waiting,
        "min_size": min_size,
        "max_size": max_size,
        "shed_503": shed,
        "acquire_wait_p95_ms": timings.acquire_wait_ms.since_start.p95,
    }
    slow_wait = timings.acquire_wait_ms.since_start.p95 > timeout * 1000 / 10
    if shed or (slow_wait and timings.max_in_use >= max_size):
        return Advice(
            verdict="saturated",
            message=(
                f"saturated: every connection was in use while requests waited"
                f"{f' and {shed} were answered 503' if shed else ''}; raise "
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
        message=f"ok: at most {timings.max_in_use} of {max_size} connections in use, no shedding",
        figures=figures,
    )
