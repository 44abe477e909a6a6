"""The FastAPI rate-limit dependency, in a real app, against a live
sidecar."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conftest import Sidecar
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from outrigger.aio import AsyncClient
from outrigger.starlette import rate_limit


def test_a_fastapi_route_is_rate_limited(sidecar: Sidecar, unique: str) -> None:
    client = AsyncClient(sidecar.url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.close()  # on the app's event loop, which owns its connections

    app = FastAPI(lifespan=lifespan)
    limited = rate_limit(client, "ip", key=lambda r: f"{unique}:{r.headers['x-user']}")

    @app.get("/hello", dependencies=[Depends(limited)])
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    with TestClient(app) as http:
        ann = {"x-user": "ann"}
        assert [http.get("/hello", headers=ann).status_code for _ in range(2)] == [200, 200]
        denied = http.get("/hello", headers=ann)
        assert denied.status_code == 429
        assert int(denied.headers["retry-after"]) > 0
        assert denied.headers["ratelimit-remaining"] == "0"
        assert http.get("/hello", headers={"x-user": "bob"}).status_code == 200
