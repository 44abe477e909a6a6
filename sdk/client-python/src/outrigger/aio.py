"""The asyncio client: the same surface as `Client`, awaited."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any, Callable, TypeVar

from . import _wire as w
from ._atransport import AsyncTransport
from ._transport import Address
from ._wire import (
    Applied,
    Bytes,
    Changes,
    Counter,
    Decision,
    Enqueued,
    Entry,
    Field,
    History,
    Job,
    KeyPage,
    Lease,
    Leased,
    Limit,
    MapFields,
    MemberPage,
    Message,
    QueueStats,
)
from .client import _default_key
from .errors import Conflict, LockLost, OutriggerError, Unavailable

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class AsyncClient:
    """The sidecar, over HTTP, on asyncio. See `Client` for the address,
    timeouts, retries and the plugin headers; every method is the same,
    awaited. Use it from one event loop; close it with `await
    client.close()` or `async with`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        socket: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        caller: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        headers = {f"x-outrigger-attr-{k}": v for k, v in (attributes or {}).items()}
        if caller:
            headers["x-outrigger-caller"] = caller
        self._transport = AsyncTransport(Address.resolve(url, socket, token), timeout, headers)
        self._held: list[AsyncHeldLock] = []

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, call: w.Call[T]) -> T:
        me = asyncio.current_task()
        for held in self._held:
            if held.owner is me and held.lost and not held.reported:
                held.reported = True
                raise LockLost(f"lock {held.name!r} was lost while held: {held.why}")
        return await self._transport.call(call)

    # --- cache --------------------------------------------------------------

    async def get(self, key: str, *, refresh_ttl: bool = False) -> Entry | None:
        return await self._call(w.cache_get(key, refresh_ttl))

    async def set(
        self,
        key: str,
        value: Bytes,
        *,
        ttl: float | None = None,
        tags: Sequence[str] = (),
        if_absent: bool = False,
        if_present: bool = False,
        if_version: int | None = None,
        stale: float | None = None,
    ) -> int:
        cond = w.condition(if_absent, if_present, if_version)
        return await self._call(w.cache_set(key, value, ttl, tags, cond, stale))

    async def delete(self, key: str) -> bool:
        return await self._call(w.cache_delete(key))

    async def invalidate(
        self, *, tags: Sequence[str] | None = None, pattern: str | None = None
    ) -> int:
        if (tags is None) == (pattern is None):
            raise ValueError("give tags or pattern, exactly one")
        return await self._call(w.cache_invalidate(tags, pattern))

    async def get_or_lease(
        self, key: str, *, lease: float, wait: float = 0.0, accept_stale: bool = False
    ) -> Leased:
        return await self._call(w.cache_get_or_lease(key, lease, wait, accept_stale))

    async def keys(self, pattern: str = "", *, cursor: str = "", limit: int = 0) -> KeyPage:
        return await self._call(w.cache_keys(pattern, cursor, limit))

    async def iter_keys(self, pattern: str = "", *, page: int = 0) -> AsyncIterator[str]:
        cursor = ""
        while True:
            p = await self.keys(pattern, cursor=cursor, limit=page)
            for key in p.keys:
                yield key
            if not p.next_cursor:
                return
            cursor = p.next_cursor

    def cached(
        self,
        *,
        ttl: float,
        tags: Sequence[str] = (),
        key: Callable[..., str] | None = None,
        lease: float = 30.0,
        wait: float = 10.0,
        dumps: Callable[[Any], Bytes] = json.dumps,
        loads: Callable[[bytes], Any] = json.loads,
    ) -> Callable[[F], F]:
        """`Client.cached` for coroutine functions."""

        def decorate(fn: F) -> F:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key(*args, **kwargs) if key else _default_key(fn, args, kwargs)
                try:
                    got = await self.get_or_lease(k, lease=lease, wait=wait)
                except Conflict:
                    return await fn(*args, **kwargs)
                if got.outcome != "granted" and got.entry is not None:
                    return loads(got.entry.value)
                value = await fn(*args, **kwargs)
                await self.set(k, dumps(value), ttl=ttl, tags=tags)
                return value

            return wrapper  # type: ignore[return-value]

        return decorate

    # --- locks and semaphores ----------------------------------------------

    async def acquire(self, name: str, *, ttl: float, wait: float = 0.0) -> Lease | None:
        return await self._call(w.lock_acquire(name, ttl, wait))

    async def release(self, lease: Lease) -> bool:
        return await self._call(w.lock_release(lease.name, lease.token))

    async def extend(self, lease: Lease, *, ttl: float) -> bool:
        return await self._call(w.lock_extend(lease.name, lease.token, ttl))

    def lock(self, name: str, *, ttl: float = 10.0, wait: float = 10.0) -> AsyncHeldLock:
        """`async with client.lock("orders") as lease:`; see `Client.lock`."""
        return AsyncHeldLock(self, name, ttl, wait)

    async def acquire_permit(
        self, name: str, *, limit: int, ttl: float, wait: float = 0.0
    ) -> str | None:
        return await self._call(w.semaphore_acquire(name, limit, ttl, wait))

    async def release_permit(self, name: str, token: str) -> bool:
        return await self._call(w.semaphore_release(name, token))

    # --- rate limits -------------------------------------------------------

    async def check(
        self, policy: str, key: str, *, cost: int = 1, limit: Limit | None = None
    ) -> Decision:
        return await self._call(w.ratelimit_check(policy, key, cost, limit, peek=False))

    async def peek(
        self, policy: str, key: str, *, cost: int = 1, limit: Limit | None = None
    ) -> Decision:
        return await self._call(w.ratelimit_check(policy, key, cost, limit, peek=True))

    async def reset_limit(self, policy: str, key: str) -> bool:
        return await self._call(w.ratelimit_reset(policy, key))

    async def check_all(self, checks: Sequence[tuple[str, str, int]]) -> list[Decision]:
        return await self._call(w.ratelimit_check_all(checks))

    def rate_limited(
        self, policy: str, key: Callable[..., str], *, cost: int = 1
    ) -> Callable[[F], F]:
        """`Client.rate_limited` for coroutine functions."""

        def decorate(fn: F) -> F:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key(*args, **kwargs)
                decision = await self.check(policy, k, cost=cost)
                w.raise_if_denied(decision, f"{policy} for {k!r}")
                return await fn(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate

    # --- counters ----------------------------------------------------------

    async def incr(
        self,
        name: str,
        by: int = 1,
        *,
        ttl: float | None = None,
        min: int | None = None,
        max: int | None = None,
    ) -> Counter:
        return await self._call(w.counter_incr(name, by, ttl, min, max))

    async def counter(self, name: str) -> Counter:
        return await self._call(w.counter_get(name))

    async def reset_counter(self, name: str) -> bool:
        return await self._call(w.counter_reset(name))

    # --- work queues -------------------------------------------------------

    async def enqueue(
        self,
        queue: str,
        payload: Bytes,
        *,
        delay: float | None = None,
        dedup_id: str | None = None,
        max_attempts: int | None = None,
        backoff: float | None = None,
    ) -> Enqueued:
        """Enqueues a job, claimable after `delay` seconds; a second enqueue
        with the same `dedup_id` within the window enqueues nothing."""
        call = w.queue_enqueue(queue, payload, delay, dedup_id, max_attempts, backoff)
        return await self._call(call)

    async def claim(
        self,
        queue: str,
        *,
        max: int = 1,
        visibility: float | None = None,
        wait: float = 0.0,
        ack: Sequence[Job] = (),
    ) -> list[Job]:
        """Up to `max` due jobs, each invisible to others for `visibility`
        seconds, waiting up to `wait` (less than the client's timeout) for
        one. Jobs in `ack` (finished, of this queue) are acked in the same
        request, all or none: `Conflict` if one's claim ran out, `NotFound`
        if one is gone, and then nothing is acked or claimed."""
        if wait >= self._transport.timeout:
            raise ValueError(
                f"wait ({wait} s) must be shorter than the client's timeout "
                f"({self._transport.timeout} s)"
            )
        return await self._call(w.queue_claim(queue, max, visibility, wait, ack))

    async def ack(self, job: Job) -> None:
        """Done: the job is removed. Raises `Conflict` if its claim ran out."""
        await self._call(w.queue_settle(job, "ack", {}))

    async def nack(self, job: Job, *, error: str | None = None, delay: float | None = None) -> str:
        """Failed: `"retrying"` (due again after its backoff, or `delay`) or
        `"dead"` (its attempts are spent)."""
        extra = {"error": error, "delay_ms": None if delay is None else round(delay * 1000)}
        reply = await self._call(w.queue_settle(job, "nack", extra))
        return str(reply["outcome"])

    async def extend_job(self, job: Job, *, visibility: float | None = None) -> float:
        """Still working: the claim runs out `visibility` seconds from now;
        returns when (Unix seconds)."""
        extend = w.queue_settle(job, "extend", {"visibility_ms": w.ms(visibility)})
        reply = await self._call(extend)
        return float(reply["visible_at_ms"]) / 1000

    async def queue_stats(self, queue: str) -> QueueStats:
        return await self._call(w.queue_stats(queue))

    async def consume(
        self,
        queue: str,
        *,
        batch: int = 1,
        visibility: float | None = None,
        wait: float | None = None,
    ) -> AsyncIterator[Job]:
        """A worker loop: yields jobs as they are claimed, `batch` at a
        time, waiting for more when the queue is empty (`wait` per claim:
        half the client's timeout by default). Settle each before its claim
        runs out, or it is claimed again.

            async for job in client.consume("mail"):
                send(job.payload)
                await client.ack(job)
        """
        wait = self._transport.timeout / 2 if wait is None else wait
        while True:
            for job in await self.claim(queue, max=batch, visibility=visibility, wait=wait):
                yield job

    # --- maps --------------------------------------------------------------

    async def map_get(self, name: str, *fields: str) -> MapFields:
        if not fields:
            return await self._call(w.map_list(name, "", 0))
        return await self._call(w.map_get(name, fields))

    async def map_field(self, name: str, field: str) -> Field | None:
        return (await self.map_get(name, field)).fields.get(field)

    async def map_items(self, name: str, *, page: int = 0) -> AsyncIterator[tuple[str, Field]]:
        cursor = ""
        while True:
            p = await self._call(w.map_list(name, cursor, page))
            for item in p.fields.items():
                yield item
            if not p.next_cursor:
                return
            cursor = p.next_cursor

    async def map_update(
        self,
        name: str,
        changes: Changes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
        sliding: bool = False,
        persist: bool = False,
    ) -> Applied:
        return await self._call(w.map_update(name, changes, if_version, ttl, sliding, persist))

    async def map_set(
        self,
        name: str,
        field: str,
        value: Bytes,
        *,
        ttl: float | None = None,
        if_absent: bool = False,
        if_present: bool = False,
        if_version: int | None = None,
    ) -> int:
        changes = Changes().set(field, value, ttl, if_absent, if_present, if_version)
        return (await self.map_update(name, changes)).version

    async def map_incr(self, name: str, field: str, by: int | float = 1) -> int | float:
        value = (await self.map_update(name, Changes().incr(field, by))).outcomes[0]
        assert isinstance(value, (int, float))
        return value

    async def map_delete(self, name: str, *fields: str) -> bool:
        if not fields:
            return await self._call(w.map_delete(name))
        changes = Changes()
        for f in fields:
            changes.delete(f)
        return bool((await self.map_update(name, changes)).outcomes[0])

    # --- presence and pub/sub ---------------------------------------------

    async def join(
        self, room: str, member: str, *, metadata: Any = None, ttl: float = 30.0
    ) -> bool:
        return await self._call(w.presence_join(room, member, metadata, ttl))

    async def leave(self, room: str, member: str) -> bool:
        return await self._call(w.presence_leave(room, member))

    async def members(self, room: str, *, cursor: str = "", limit: int = 0) -> MemberPage:
        return await self._call(w.presence_members(room, cursor, limit))

    async def rooms(self, member: str) -> list[str]:
        return await self._call(w.presence_rooms(member))

    def present(
        self, room: str, member: str, *, metadata: Any = None, ttl: float = 30.0
    ) -> AsyncPresence:
        """`async with client.present(room, member):`; see `Client.present`."""
        return AsyncPresence(self, room, member, metadata, ttl)

    async def publish(
        self,
        channel: str,
        payload: Bytes,
        *,
        durable: bool = False,
        idempotency_key: str | None = None,
        max_len: int | None = None,
        max_age: float | None = None,
    ) -> str | None:
        """Publishes; a durable message's offset is returned. With
        `idempotency_key`, a repeat on the channel within the sidecar's
        window (5 minutes) returns the first one's offset and delivers
        nothing, so the call is retried safely. `max_len` / `max_age`
        (seconds) ask the channel to keep less than its retention rule."""
        return await self._call(
            w.publish(channel, payload, durable, idempotency_key, max_len, max_age)
        )

    async def history(
        self,
        channel: str,
        *,
        last: int | None = None,
        from_offset: str | None = None,
        to_offset: str | None = None,
        newest_first: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> History:
        """A durable channel's messages without subscribing: the `last`
        newest, or a page (`limit`, default 100) of those between
        `from_offset` and `to_offset` (both included), continued with the
        previous page's `next_cursor`; oldest first unless `newest_first`."""
        return await self._call(
            w.history(channel, last, from_offset, to_offset, newest_first, limit, cursor)
        )

    async def trim(self, channel: str, before: str) -> int:
        """Drops a durable channel's messages before `before` (that one
        stays); returns how many."""
        return await self._call(w.trim(channel, before))

    async def subscribe(
        self,
        channel: str,
        *,
        after: str | None = None,
        durable: bool = True,
        reconnect: bool = True,
        on_replayed: Callable[[str | None], None] | None = None,
        epoch: str | None = None,
        on_resumed: Callable[[w.Resumed], None] | None = None,
    ) -> AsyncIterator[Message]:
        """`async for msg in client.subscribe(...)`; see `Client.subscribe`."""
        sub = w.Subscription(channel, after, durable, on_replayed, epoch, on_resumed)
        while True:
            try:
                lines = self._transport.stream(sub.connect(), sub.ACCEPT)
                try:
                    async for line in lines:
                        got = sub.feed(line)
                        if isinstance(got, w.Message):
                            yield got
                        elif got is w.LAGGED:
                            break  # catch up from the stream, after the last offset seen
                finally:
                    await lines.aclose()
            except (Unavailable, OSError):
                if not reconnect:
                    raise
            if not reconnect:
                return
            await asyncio.sleep(sub.dropped())

    async def status(self) -> dict[str, Any]:
        return await self._call(w.status())


class AsyncHeldLock:
    """A lock held for an `async with` block; see `AsyncClient.lock`."""

    def __init__(self, client: AsyncClient, name: str, ttl: float, wait: float) -> None:
        self.name = name
        self._client, self._ttl, self._wait = client, ttl, wait
        self.lease: Lease | None = None
        self.owner: asyncio.Task[Any] | None = None
        self.lost = False
        self.reported = False
        self.why = ""
        self._keeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lease:
        lease = await self._client.acquire(self.name, ttl=self._ttl, wait=self._wait)
        if lease is None:
            raise Conflict(f"lock {self.name!r} stayed held for {self._wait}s", 409)
        self.lease, self.owner = lease, asyncio.current_task()
        self._client._held.append(self)
        self._keeper = asyncio.ensure_future(self._keep(lease))
        return lease

    async def _keep(self, lease: Lease) -> None:
        expires = time.monotonic() + self._ttl
        while not self.lost:
            await asyncio.sleep(self._ttl / 3)
            try:
                call = w.lock_extend(self.name, lease.token, self._ttl)
                if await self._client._transport.call(call):
                    expires = time.monotonic() + self._ttl
                    continue
                self.why = "another holder has it (its lease ran out)"
                self.lost = True
            except OutriggerError as err:
                if time.monotonic() >= expires:
                    self.why = f"it could not be extended before its lease ran out: {err}"
                    self.lost = True

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._keeper:
            self._keeper.cancel()
        self._client._held.remove(self)
        if self.lease and not self.lost:
            try:
                await self._client._transport.call(w.lock_release(self.name, self.lease.token))
            except OutriggerError:
                pass  # the lease runs out by itself
        if self.lost and not self.reported and kind is None:
            self.reported = True
            raise LockLost(f"lock {self.name!r} was lost while held: {self.why}")


class AsyncPresence:
    """A member kept in a room for an `async with` block."""

    def __init__(
        self, client: AsyncClient, room: str, member: str, metadata: Any, ttl: float
    ) -> None:
        self._client, self.room, self.member = client, room, member
        self._metadata, self._ttl = metadata, ttl
        self._keeper: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._client.join(
                    self.room, self.member, metadata=self._metadata, ttl=self._ttl
                )
            except OutriggerError:
                pass  # the next beat tries again within the TTL

    async def __aenter__(self) -> AsyncPresence:
        await self._client.join(self.room, self.member, metadata=self._metadata, ttl=self._ttl)
        self._keeper = asyncio.ensure_future(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._keeper:
            self._keeper.cancel()
        try:
            await self._client.leave(self.room, self.member)
        except OutriggerError:
            pass  # the TTL takes the member out
