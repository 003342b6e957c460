"""Variant 6: no pool, a new psycopg connection (TCP + scram-sha-256 + backend) per request."""

from typing import Any

import psycopg
from fastapi import FastAPI

from bench.apps._common import QUERY, url, user

app = FastAPI()


@app.get("/users/{user_id}")
async def get_user(user_id: int) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url()) as conn:
        cur = await conn.execute(QUERY, (user_id,))
        return user(await cur.fetchone())
