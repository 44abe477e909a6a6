"""Rate limits as a FastAPI / Starlette dependency (import this module only
where Starlette is installed).

```python
from fastapi import Depends, FastAPI
from outrigger.aio import AsyncClient
from outrigger.starlette import rate_limit

client = AsyncClient()  # close it in the app's lifespan: it is the app loop's
app = FastAPI()
by_address = rate_limit(client, "login", key=lambda request: request.client.host)

@app.post("/login", dependencies=[Depends(by_address)])
async def login() -> dict: ...
```

A denied request is answered 429 with `Retry-After` (whole seconds,
rounded up) and the `RateLimit-*` headers, before the endpoint runs.
"""

from __future__ import annotations

import math
from typing import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request

from ._wire import Decision
from .aio import AsyncClient


def rate_limit(
    client: AsyncClient,
    policy: str,
    *,
    key: Callable[[Request], str],
    cost: int = 1,
) -> Callable[[Request], object]:
    """A dependency checking `policy` for `key(request)`; it returns the
    decision when allowed."""

    async def dependency(request: Request) -> Decision:
        decision = await client.check(policy, key(request), cost=cost)
        if not decision.allowed:
            retry = math.ceil(decision.retry_after or 0)
            raise HTTPException(
                status_code=429,
                detail=f"rate limited; retry after {retry} s",
                headers={
                    "Retry-After": str(retry),
                    "RateLimit-Limit": str(decision.limit),
                    "RateLimit-Remaining": str(decision.remaining),
                },
            )
        return decision

    return dependency
