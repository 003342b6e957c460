"""The one-line summary of a pool, for logs (DBPOOL_LOG_STATS_INTERVAL)."""

import asyncio
import logging
from collections.abc import Mapping

from fastapi_dbpool._advice import Advised, advice_of

logger = logging.getLogger("fastapi_dbpool")


def connections_in_use(stats: Mapping[str, int]) -> int:
    """Connections lent out now, from psycopg-pool's get_stats() (which omits zero keys)."""
    return max(0, stats.get("pool_size", 0) - stats.get("pool_available", 0))


def summary(database: Advised) -> str:
    """One line: the pool's state now (no secrets, key=value)."""
    stats = database.pool.get_stats()
    parts = [
        f"pool={database.settings.name}",
        f"total={stats.get('pool_size', 0)}",
        f"free={stats.get('pool_available', 0)}",
        f"in_use={connections_in_use(stats)}",
        f"waiting={stats.get('requests_waiting', 0)}",
        f"unavailable={sum(database.unavailable.values())}",
    ]
    recorder = database.recorder
    if recorder is not None:
        parts.append(f"wait_p95_ms={recorder.wait.window().p95}")
        parts.append(f"hold_p95_ms={recorder.hold.window().p95}")
        advice = advice_of(database)
        if advice is not None:
            parts.append(f"advice={advice.verdict}")
            parts.append(f"waited={advice.figures['waited_share']:.0%}")
            parts.append(f"needed={advice.figures['connections_needed']:g}")
    return " ".join(parts)


async def log_summaries(database: Advised, interval: float) -> None:
    """Log summary() every interval seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        logger.info("%s", summary(database))
