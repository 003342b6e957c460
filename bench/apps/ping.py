"""GET /ping: no database at all, the framework's ceiling under the same uvicorn settings."""

from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, Any]:
    return {"ping": "pong"}
