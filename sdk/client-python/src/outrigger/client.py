"""The blocking client."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Callable, TypeVar

from . import _wire as w
from ._transport import Address, Transport
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
from .errors import Conflict, LockLost, OutriggerError, Unavailable

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _default_key(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in sorted(kwargs.items())]
    return f"{fn.__module__}.{fn.__qualname__}({', '.join(parts)})"


class Client:
    """The sidecar, over HTTP: every primitive as plain method calls.

    The address comes from the arguments, else `OUTRIGGER_URL` (default
    `http://127.0.0.1:7480`), `OUTRIGGER_SOCKET` (the Unix socket, used when
    set: the fast path) and `OUTRIGGER_TOKEN`. Every call is bounded by
    `timeout` seconds; a call that may be repeated is retried once on a
    connection the sidecar closed. `caller` and `attributes` are sent as
    `x-outrigger-caller` and `x-outrigger-attr-*` for plugins.

    Safe to share between threads. Close it (or use it as a context
    manager) to close its connections.
    """

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
        self._transport = Transport(Address.resolve(url, socket, token), timeout, headers)
        self._held: list[HeldLock] = []
        self._held_lock = threading.Lock()

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, call: w.Call[T]) -> T:
        me = threading.get_ident()
        with self._held_lock:
            lost = [h for h in self._held if h.owner == me and h.lost and not h.reported]
        for held in lost:
            held.reported = True
            raise LockLost(f"lock {held.name!r} was lost while held: {held.why}")
        return self._transport.call(call)

    # --- cache --------------------------------------------------------------

    def get(self, key: str, *, refresh_ttl: bool = False) -> Entry | None:
        """The entry, or None on a miss. `refresh_ttl` restarts its TTL."""
        return self._call(w.cache_get(key, refresh_ttl))

    def set(
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
        """Writes `value` (str is UTF-8); returns its version. A condition
        that does not hold raises `PreconditionFailed`."""
        cond = w.condition(if_absent, if_present, if_version)
        return self._call(w.cache_set(key, value, ttl, tags, cond, stale))

    def delete(self, key: str) -> bool:
        """Returns whether the key existed."""
        return self._call(w.cache_delete(key))

    def invalidate(self, *, tags: Sequence[str] | None = None, pattern: str | None = None) -> int:
        """Deletes every key carrying any of `tags`, or matching the glob
        `pattern`; returns how many."""
        if (tags is None) == (pattern is None):
            raise ValueError("give tags or pattern, exactly one")
        return self._call(w.cache_invalidate(tags, pattern))

    def get_or_lease(
        self, key: str, *, lease: float, wait: float = 0.0, accept_stale: bool = False
    ) -> Leased:
        """The value, or the lease to compute it (`outcome == "granted"`):
        one caller computes while the others wait up to `wait` seconds."""
        return self._call(w.cache_get_or_lease(key, lease, wait, accept_stale))

    def keys(self, pattern: str = "", *, cursor: str = "", limit: int = 0) -> KeyPage:
        return self._call(w.cache_keys(pattern, cursor, limit))

    def iter_keys(self, pattern: str = "", *, page: int = 0) -> Iterator[str]:
        """Every key matching `pattern`, a page at a time."""
        cursor = ""
        while True:
            p = self.keys(pattern, cursor=cursor, limit=page)
            yield from p.keys
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
        """Caches what the decorated function returns, for `ttl` seconds.

        Concurrent misses compute once: the first caller gets the lease and
        computes, the others wait (up to `wait`) for its value. `key` maps
        the call's arguments to the cache key (default: the function's name
        and its arguments' reprs); values go through `dumps` / `loads`
        (JSON by default).
        """

        def decorate(fn: F) -> F:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key(*args, **kwargs) if key else _default_key(fn, args, kwargs)
                try:
                    got = self.get_or_lease(k, lease=lease, wait=wait)
                except Conflict:
                    # Another caller holds the lease and did not fill the
                    # key in time: compute without caching.
                    return fn(*args, **kwargs)
                if got.outcome != "granted" and got.entry is not None:
                    return loads(got.entry.value)
                value = fn(*args, **kwargs)
                self.set(k, dumps(value), ttl=ttl, tags=tags)
                return value

            return wrapper  # type: ignore[return-value]

        return decorate

    # --- locks and semaphores ----------------------------------------------

    def acquire(self, name: str, *, ttl: float, wait: float = 0.0) -> Lease | None:
        """The lock for `ttl` seconds, waiting up to `wait`; None if it stays
        held."""
        return self._call(w.lock_acquire(name, ttl, wait))

    def release(self, lease: Lease) -> bool:
        """Returns whether the lease still held the lock."""
        return self._call(w.lock_release(lease.name, lease.token))

    def extend(self, lease: Lease, *, ttl: float) -> bool:
        """A new lease of `ttl` seconds from now; False if it was lost."""
        return self._call(w.lock_extend(lease.name, lease.token, ttl))

    def lock(self, name: str, *, ttl: float = 10.0, wait: float = 10.0) -> HeldLock:
        """`with client.lock("orders") as lease:` holds the lock for the block,
        extending it in the background; raises `Conflict` if it stays held
        for `wait` seconds. If the lease is lost meanwhile, the block's next
        call through this client raises `LockLost` (and so does leaving the
        block, if nothing did)."""
        return HeldLock(self, name, ttl, wait)

    def acquire_permit(self, name: str, *, limit: int, ttl: float, wait: float = 0.0) -> str | None:
        """One of `limit` permits for `ttl` seconds: its token, or None."""
        return self._call(w.semaphore_acquire(name, limit, ttl, wait))

    def release_permit(self, name: str, token: str) -> bool:
        return self._call(w.semaphore_release(name, token))

    # --- rate limits -------------------------------------------------------

    def check(
        self, policy: str, key: str, *, cost: int = 1, limit: Limit | None = None
    ) -> Decision:
        """Decides whether `cost` fits the policy (or `limit`) for `key`, and
        takes it if so. A denial is a decision (`allowed` False), not an
        error."""
        return self._call(w.ratelimit_check(policy, key, cost, limit, peek=False))

    def peek(self, policy: str, key: str, *, cost: int = 1, limit: Limit | None = None) -> Decision:
        """What `check` would decide now, taking nothing."""
        return self._call(w.ratelimit_check(policy, key, cost, limit, peek=True))

    def reset_limit(self, policy: str, key: str) -> bool:
        """Forgets `key`'s state under `policy`: its whole limit is back."""
        return self._call(w.ratelimit_reset(policy, key))

    def check_all(self, checks: Sequence[tuple[str, str, int]]) -> list[Decision]:
        """(policy, key, cost) checks, all or none: every cost is taken only
        if each fits."""
        return self._call(w.ratelimit_check_all(checks))

    def rate_limited(
        self, policy: str, key: Callable[..., str], *, cost: int = 1
    ) -> Callable[[F], F]:
        """Decorates a function so each call first checks `policy` for
        `key(*args, **kwargs)`, raising `RateLimited` (with `retry_after`)
        when denied."""

        def decorate(fn: F) -> F:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key(*args, **kwargs)
                w.raise_if_denied(self.check(policy, k, cost=cost), f"{policy} for {k!r}")
                return fn(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate

    # --- counters ----------------------------------------------------------

    def incr(
        self,
        name: str,
        by: int = 1,
        *,
        ttl: float | None = None,
        min: int | None = None,
        max: int | None = None,
    ) -> Counter:
        """Adds `by`; `ttl` starts a fixed window when this creates the
        counter; crossing `min` / `max` raises `PreconditionFailed`."""
        return self._call(w.counter_incr(name, by, ttl, min, max))

    def counter(self, name: str) -> Counter:
        return self._call(w.counter_get(name))

    def reset_counter(self, name: str) -> bool:
        return self._call(w.counter_reset(name))

    # --- work queues -------------------------------------------------------

    def enqueue(
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
        return self._call(call)

    def claim(
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
        return self._call(w.queue_claim(queue, max, visibility, wait, ack))

    def ack(self, job: Job) -> None:
        """Done: the job is removed. Raises `Conflict` if its claim ran out."""
        self._call(w.queue_settle(job, "ack", {}))

    def nack(self, job: Job, *, error: str | None = None, delay: float | None = None) -> str:
        """Failed: `"retrying"` (due again after its backoff, or `delay`) or
        `"dead"` (its attempts are spent)."""
        extra = {"error": error, "delay_ms": None if delay is None else round(delay * 1000)}
        reply = self._call(w.queue_settle(job, "nack", extra))
        return str(reply["outcome"])

    def extend_job(self, job: Job, *, visibility: float | None = None) -> float:
        """Still working: the claim runs out `visibility` seconds from now;
        returns when (Unix seconds)."""
        extend = w.queue_settle(job, "extend", {"visibility_ms": w.ms(visibility)})
        reply = self._call(extend)
        return float(reply["visible_at_ms"]) / 1000

    def queue_stats(self, queue: str) -> QueueStats:
        return self._call(w.queue_stats(queue))

    def consume(
        self,
        queue: str,
        *,
        batch: int = 1,
        visibility: float | None = None,
        wait: float | None = None,
    ) -> Iterator[Job]:
        """A worker loop: yields jobs as they are claimed, `batch` at a
        time, waiting for more when the queue is empty (`wait` per claim:
        half the client's timeout by default). Settle each before its claim
        runs out, or it is claimed again.

            for job in client.consume("mail"):
                send(job.payload)
                client.ack(job)
        """
        wait = self._transport.timeout / 2 if wait is None else wait
        while True:
            yield from self.claim(queue, max=batch, visibility=visibility, wait=wait)

    # --- maps --------------------------------------------------------------

    def map_get(self, name: str, *fields: str) -> MapFields:
        """The fields named (absent ones left out), or a first page of all."""
        if not fields:
            return self._call(w.map_list(name, "", 0))
        return self._call(w.map_get(name, fields))

    def map_field(self, name: str, field: str) -> Field | None:
        return self.map_get(name, field).fields.get(field)

    def map_items(self, name: str, *, page: int = 0) -> Iterator[tuple[str, Field]]:
        """Every field of the map, a page at a time."""
        cursor = ""
        while True:
            p = self._call(w.map_list(name, cursor, page))
            yield from p.fields.items()
            if not p.next_cursor:
                return
            cursor = p.next_cursor

    def map_update(
        self,
        name: str,
        changes: Changes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
        sliding: bool = False,
        persist: bool = False,
    ) -> Applied:
        """Applies every change atomically, or none (raising why)."""
        return self._call(w.map_update(name, changes, if_version, ttl, sliding, persist))

    def map_set(
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
        """Sets one field; returns the map's new version."""
        changes = Changes().set(field, value, ttl, if_absent, if_present, if_version)
        return self.map_update(name, changes).version

    def map_incr(self, name: str, field: str, by: int | float = 1) -> int | float:
        """Adds `by` to a numeric field; returns its new value."""
        value = self.map_update(name, Changes().incr(field, by)).outcomes[0]
        assert isinstance(value, (int, float))
        return value

    def map_delete(self, name: str, *fields: str) -> bool:
        """Deletes fields (whether the first existed), or the whole map."""
        if not fields:
            return self._call(w.map_delete(name))
        changes = Changes()
        for f in fields:
            changes.delete(f)
        return bool(self.map_update(name, changes).outcomes[0])

    # --- presence and pub/sub ---------------------------------------------

    def join(self, room: str, member: str, *, metadata: Any = None, ttl: float = 30.0) -> bool:
        """Joins (or heartbeats); returns whether the member is new."""
        return self._call(w.presence_join(room, member, metadata, ttl))

    def leave(self, room: str, member: str) -> bool:
        return self._call(w.presence_leave(room, member))

    def members(self, room: str, *, cursor: str = "", limit: int = 0) -> MemberPage:
        return self._call(w.presence_members(room, cursor, limit))

    def rooms(self, member: str) -> list[str]:
        return self._call(w.presence_rooms(member))

    def present(
        self, room: str, member: str, *, metadata: Any = None, ttl: float = 30.0
    ) -> Presence:
        """`with client.present(room, member):` joins, heartbeats in the
        background every third of `ttl`, and leaves at the end."""
        return Presence(self, room, member, metadata, ttl)

    def publish(
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
        return self._call(w.publish(channel, payload, durable, idempotency_key, max_len, max_age))

    def history(
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
        return self._call(
            w.history(channel, last, from_offset, to_offset, newest_first, limit, cursor)
        )

    def trim(self, channel: str, before: str) -> int:
        """Drops a durable channel's messages before `before` (that one
        stays); returns how many."""
        return self._call(w.trim(channel, before))

    def subscribe(
        self,
        channel: str,
        *,
        after: str | None = None,
        durable: bool = True,
        reconnect: bool = True,
        on_replayed: Callable[[str | None], None] | None = None,
        epoch: str | None = None,
        on_resumed: Callable[[w.Resumed], None] | None = None,
    ) -> Iterator[Message]:
        """Messages of `channel` as they come (`after`: durable messages
        after that offset first). A dropped connection is reopened (with
        `reconnect`): `durable` resumes after the last durable offset seen,
        so no durable message is missed or repeated (live-only messages
        published meanwhile are), and the same when the sidecar reports
        this subscriber fell behind (`lagged`); without it, the subscription
        picks up live from the reconnection on. Every resume first calls
        `on_resumed` with a `Resumed`: whether nothing after the offset is
        missing (else reload your state), and the channel's epoch, which
        reconnections pass on; give `epoch` with `after` (from history or
        an earlier `Resumed`) to be told when the history started over."""
        sub = w.Subscription(channel, after, durable, on_replayed, epoch, on_resumed)
        while True:
            try:
                lines = self._transport.stream(sub.connect(), sub.ACCEPT)
                try:
                    for line in lines:
                        got = sub.feed(line)
                        if isinstance(got, w.Message):
                            yield got
                        elif got is w.LAGGED:
                            break  # catch up from the stream, after the last offset seen
                finally:
                    lines.close()
            except (Unavailable, OSError):
                if not reconnect:
                    raise
            if not reconnect:
                return
            time.sleep(sub.dropped())

    # --- operations --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._call(w.status())


class _Background:
    """A daemon thread calling `tick` every `every` seconds until stopped."""

    def __init__(self, every: float, tick: Callable[[], None]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every, tick), daemon=True)
        self._thread.start()

    def _run(self, every: float, tick: Callable[[], None]) -> None:
        while not self._stop.wait(every):
            tick()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class HeldLock:
    """A lock held for a `with` block; see `Client.lock`."""

    def __init__(self, client: Client, name: str, ttl: float, wait: float) -> None:
        self.name = name
        self._client, self._ttl, self._wait = client, ttl, wait
        self.lease: Lease | None = None
        self.owner = 0
        self.lost = False
        self.reported = False
        self.why = ""
        self._keeper: _Background | None = None

    def __enter__(self) -> Lease:
        lease = self._client.acquire(self.name, ttl=self._ttl, wait=self._wait)
        if lease is None:
            raise Conflict(f"lock {self.name!r} stayed held for {self._wait}s", 409)
        self.lease, self.owner = lease, threading.get_ident()
        with self._client._held_lock:
            self._client._held.append(self)
        self._expires = time.monotonic() + self._ttl
        self._keeper = _Background(self._ttl / 3, self._keep)
        return lease

    def _keep(self) -> None:
        if self.lost or self.lease is None:
            return
        try:
            if self._client._transport.call(w.lock_extend(self.name, self.lease.token, self._ttl)):
                self._expires = time.monotonic() + self._ttl
                return
            self.why = "another holder has it (its lease ran out)"
            self.lost = True
        except OutriggerError as err:
            # Not lost while the lease may still be running: try again at
            # the next tick.
            if time.monotonic() >= self._expires:
                self.why = f"it could not be extended before its lease ran out: {err}"
                self.lost = True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._keeper:
            self._keeper.stop()
        with self._client._held_lock:
            self._client._held.remove(self)
        if self.lease and not self.lost:
            try:
                self._client._transport.call(w.lock_release(self.name, self.lease.token))
            except OutriggerError:
                pass  # the lease runs out by itself
        if self.lost and not self.reported and kind is None:
            self.reported = True
            raise LockLost(f"lock {self.name!r} was lost while held: {self.why}")


class Presence:
    """A member kept in a room for a `with` block; see `Client.present`."""

    def __init__(self, client: Client, room: str, member: str, metadata: Any, ttl: float) -> None:
        self._client, self.room, self.member = client, room, member
        self._metadata, self._ttl = metadata, ttl
        self._keeper: _Background | None = None

    def _beat(self) -> None:
        try:
            self._client.join(self.room, self.member, metadata=self._metadata, ttl=self._ttl)
        except OutriggerError:
            pass  # the next beat tries again within the TTL

    def __enter__(self) -> Presence:
        self._client.join(self.room, self.member, metadata=self._metadata, ttl=self._ttl)
        self._keeper = _Background(self._ttl / 3, self._beat)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._keeper:
            self._keeper.stop()
        try:
            self._client.leave(self.room, self.member)
        except OutriggerError:
            pass  # the TTL takes the member out
