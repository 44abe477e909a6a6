"""The asyncio client against live sidecars: the same surface, awaited, and
its idioms (async with, async for, coroutine decorators)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from typing import Callable, TypeVar

import pytest
from conftest import Redis, Sidecar, start_sidecar

from outrigger import (
    Changes,
    Conflict,
    LockLost,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Unavailable,
)
from outrigger.aio import AsyncClient

T = TypeVar("T")


def run(main: Callable[[AsyncClient], Awaitable[T]], sidecar: Sidecar, unix: bool = False) -> T:
    async def go() -> T:
        socket = sidecar.socket if unix else None
        async with AsyncClient(sidecar.url, socket=socket) as client:
            return await main(client)

    return asyncio.run(go())


@pytest.fixture(params=["tcp", "unix"])
def unix(request: pytest.FixtureRequest) -> Iterator[bool]:
    yield request.param == "unix"


def test_cache_and_errors(sidecar: Sidecar, unix: bool, unique: str) -> None:
    async def main(c: AsyncClient) -> None:
        assert await c.get(unique) is None
        v = await c.set(unique, b"\x00v\xff", ttl=60, tags=[unique])
        entry = await c.get(unique)
        assert entry is not None and (entry.value, entry.version) == (b"\x00v\xff", v)
        with pytest.raises(PreconditionFailed):
            await c.set(unique, "x", if_absent=True)
        assert await c.invalidate(tags=[unique]) == 1
        assert await c.delete(unique) is False
        with pytest.raises(NotFound):
            await c.check("no-such-policy", unique)
        # Many calls at once share the pool.
        await asyncio.gather(*(c.set(f"{unique}:{i}", str(i)) for i in range(50)))
        keys = [k async for k in c.iter_keys(f"{unique}:*", page=7)]
        assert len(keys) == 50

    run(main, sidecar, unix)


def test_cached_computes_once_under_50_concurrent_misses(sidecar: Sidecar, unique: str) -> None:
    async def main(c: AsyncClient) -> None:
        calls: list[int] = []
        gate = asyncio.Event()

        @c.cached(ttl=60, key=lambda n: f"{unique}:{n}")
        async def slow(n: int) -> dict[str, int]:
            calls.append(n)
            await gate.wait()
            return {"n": n}

        tasks = [asyncio.ensure_future(slow(7)) for _ in range(50)]
        await asyncio.sleep(0.3)
        gate.set()
        assert await asyncio.gather(*tasks) == [{"n": 7}] * 50
        assert calls == [7]

    run(main, sidecar)


def test_locks(sidecar: Sidecar, unique: str) -> None:
    async def main(c: AsyncClient) -> None:
        async with c.lock(unique, ttl=0.6) as lease:
            await asyncio.sleep(1.5)  # past twice the TTL: kept alive
            assert await c.acquire(unique, ttl=1) is None
            assert lease.fence >= 1
        again = await c.acquire(unique, ttl=1)
        assert again is not None and again.fence > lease.fence
        with pytest.raises(Conflict):
            async with c.lock(unique, ttl=1, wait=0.2):
                pass
        assert await c.release(again)
        with pytest.raises(LockLost):
            async with c.lock(unique, ttl=3) as held:
                assert await c.release(held)
                assert await c.acquire(unique, ttl=5) is not None
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    await c.get(f"{unique}:probe")
                    await asyncio.sleep(0.1)
                raise AssertionError("the loss was never reported")

    run(main, sidecar)


def test_rate_limits_counters_and_maps(sidecar: Sidecar, unique: str) -> None:
    async def main(c: AsyncClient) -> None:
        @c.rate_limited("ip", key=lambda who: f"{unique}:{who}")
        async def hello(who: str) -> str:
            return f"hi {who}"

        assert [await hello("a"), await hello("a")] == ["hi a", "hi a"]
        with pytest.raises(RateLimited):
            await hello("a")
        assert (await c.peek("ip", f"{unique}:b")).remaining == 1
        assert (await c.incr(unique, 3)).value == 3
        applied = await c.map_update(unique, Changes().set("a", "1").incr("n", 2))
        assert applied.outcomes == [None, 2]
        assert await c.map_incr(unique, "n", 0.5) == 2.5
        items = {name: f.value async for name, f in c.map_items(unique)}
        assert items == {"a": b"1", "n": b"2.5"}
        assert await c.map_delete(unique)

    run(main, sidecar)


def test_work_queues(sidecar: Sidecar, unique: str) -> None:
    async def main(c: AsyncClient) -> None:
        job_id = (await c.enqueue(unique, "a", max_attempts=2)).id
        [job] = await c.claim(unique)
        assert (job.id, job.payload) == (job_id, b"a")
        assert await c.nack(job, error="retry", delay=0.01) == "retrying"
        got = []
        async for job in c.consume(unique, wait=1):
            got.append((job.payload, job.attempt))
            await c.ack(job)
            break
        assert got == [(b"a", 2)]
        assert (await c.queue_stats(unique)).ready == 0
        await c.enqueue(unique, "b")
        [b] = await c.claim(unique)
        assert await c.claim(unique, ack=[b]) == []
        assert (await c.queue_stats(unique)).in_flight == 0

    run(main, sidecar)


def test_presence_and_subscribe(sidecar: Sidecar, unique: str) -> None:
    async def main(c: AsyncClient) -> None:
        async with c.present(unique, "ann", ttl=0.6):
            await asyncio.sleep(1.5)
            assert [m.member for m in (await c.members(unique)).members] == ["ann"]
        assert (await c.members(unique)).members == []
        first = await c.publish(unique, "one", durable=True)
        await c.publish(unique, "two", durable=True)
        got = []
        async for msg in c.subscribe(unique, after=first):
            got.append(msg.payload)
            if len(got) == 1:
                await c.publish(unique, "three", durable=True)
            if msg.payload == b"three":
                break
        assert got == [b"two", b"three"]
        history = await c.history(unique, newest_first=True, last=2)
        assert [m.payload for m in history.messages] == [b"three", b"two"]
        assert await c.trim(unique, str(history.messages[0].offset)) == 2
        assert [m.payload for m in (await c.history(unique)).messages] == [b"three"]

    run(main, sidecar)


def test_an_unreachable_sidecar_is_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        async with AsyncClient(f"http://127.0.0.1:{port}", timeout=1) as c:
            with pytest.raises(Unavailable):
                await c.get("k")

    asyncio.run(main())


def test_a_subscription_survives_a_sidecar_restart(redis: Redis, unique: str) -> None:
    sidecar = start_sidecar(redis)

    async def main() -> list[bytes]:
        nonlocal sidecar
        async with AsyncClient(sidecar.url) as c:
            first = await c.publish(unique, "m0", durable=True)
            await c.publish(unique, "m1", durable=True)
            messages = c.subscribe(unique, after=first)
            received = [(await messages.__anext__()).payload]
            sidecar = sidecar.restart()
            for i in range(2, 5):
                await c.publish(unique, f"m{i}", durable=True)
            while len(received) < 4:
                received.append((await messages.__anext__()).payload)
            await messages.aclose()  # type: ignore[attr-defined]
            return received

    try:
        assert asyncio.run(main()) == [b"m1", b"m2", b"m3", b"m4"]
    finally:
        sidecar.stop()
