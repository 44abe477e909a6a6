"""What both clients share: each call as a plain request plus the function
that reads its answer, the answers' types, and the error mapping.

The sync and asyncio clients only move bytes; everything about the HTTP
contract lives here, once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Generic, TypeVar, Union
from urllib.parse import quote, urlencode

from .errors import OutriggerError, RateLimited, error_from

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    read: Callable[[Reply], T]
    body: bytes | None = None
    content_type: str | None = None
    # Statuses `read` handles itself; any other non-2xx is raised.
    answers: tuple[int, ...] = ()
    # Whether sending it twice is harmless (retried once on a dropped
    # connection).
    idempotent: bool = False


def finish(call: Call[T], reply: Reply) -> T:
    """Reads `reply` as `call` says, or raises the error it carries."""
    if 200 <= reply.status < 300 or reply.status in call.answers:
        return call.read(reply)
    raise error_from(reply.status, reply.headers, reply.body)


def seg(name: str) -> str:
    """A path segment: every reserved character percent-encoded."""
    return quote(name, safe="")


def query(**params: Any) -> str:
    pairs = [(k, _param(v)) for k, v in params.items() if v is not None and v is not False]
    return "?" + urlencode(pairs) if pairs else ""


def _param(v: Any) -> str:
    if v is True:
        return "true"
    return str(v)


def ms(seconds: float | None) -> int | None:
    """Seconds (what a Python caller writes) as the API's milliseconds."""
    if seconds is None:
        return None
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {seconds}")
    return max(1, round(seconds * 1000))


def as_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


Bytes = Union[bytes, bytearray, memoryview, str]


def raw(value: Bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def seconds(ms_value: int | None) -> float | None:
    return None if ms_value is None else ms_value / 1000


# --- cache ----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    value: bytes
    version: int
    # Remaining lifetime in seconds; None when it never expires.
    ttl: float | None


def _entry(reply: Reply) -> Entry:
    ttl = reply.headers.get("outrigger-ttl-ms")
    return Entry(
        value=reply.body,
        version=int(reply.headers["outrigger-version"]),
        ttl=None if ttl is None else int(ttl) / 1000,
    )


def cache_get(key: str, refresh_ttl: bool = False) -> Call[Entry | None]:
    return Call(
        "GET",
        f"/v1/cache/{seg(key)}" + query(refresh_ttl=refresh_ttl or None),
        lambda r: None if r.status == 404 else _entry(r),
        answers=(404,),
        idempotent=not refresh_ttl,
    )


def cache_set(
    key: str,
    value: Bytes,
    ttl: float | None,
    tags: Sequence[str],
    condition: str | None,
    stale: float | None,
) -> Call[int]:
    return Call(
        "PUT",
        f"/v1/cache/{seg(key)}"
        + query(
            ttl_ms=ms(ttl), tags=",".join(tags) or None, stale_ms=ms(stale), **{"if": condition}
        ),
        lambda r: int(r.json()["version"]),
        body=raw(value),
        content_type="application/octet-stream",
        idempotent=condition is None,
    )


def cache_delete(key: str) -> Call[bool]:
    return Call(
        "DELETE",
        f"/v1/cache/{seg(key)}",
        lambda r: r.status != 404 and bool(r.json()["deleted"]),
        answers=(404,),
        idempotent=True,
    )


def cache_invalidate(tags: Sequence[str] | None, pattern: str | None) -> Call[int]:
    body: dict[str, Any] = {"tags": list(tags)} if tags is not None else {"pattern": pattern}
    return Call(
        "POST",
        "/v1/cache/invalidate",
        lambda r: int(r.json()["deleted"]),
        body=as_json(body),
        content_type="application/json",
        idempotent=True,
    )


@dataclass(frozen=True)
class Leased:
    """A GetOrLease answer: the value (`hit`, or `stale` while another caller
    refills it), or `granted`: this caller must compute and set the value
    (`entry` is then the expired one, if it was kept)."""

    outcome: str
    entry: Entry | None


def cache_get_or_lease(key: str, lease: float, wait: float, accept_stale: bool) -> Call[Leased]:
    def read(r: Reply) -> Leased:
        outcome = r.headers.get("outrigger-lease", "hit")
        return Leased(outcome, None if r.status == 204 else _entry(r))

    return Call(
        "POST",
        f"/v1/cache/{seg(key)}/lease",
        read,
        body=as_json(
            {
                "lease_ms": ms(lease),
                "wait_ms": ms(wait) if wait else 0,
                "accept_stale": accept_stale,
            }
        ),
        content_type="application/json",
    )


@dataclass(frozen=True)
class KeyPage:
    keys: list[str]
    next_cursor: str | None


def cache_keys(pattern: str, cursor: str, limit: int) -> Call[KeyPage]:
    return Call(
        "GET",
        "/v1/cache" + query(pattern=pattern or None, cursor=cursor or None, limit=limit or None),
        lambda r: KeyPage(r.json()["keys"], r.json()["next_cursor"]),
        idempotent=True,
    )


# --- locks and semaphores -------------------------------------------------


@dataclass(frozen=True)
class Lease:
    name: str
    token: str
    # Strictly increases with every acquisition of the lock: pass it to what
    # the lock protects, which refuses older fences.
    fence: int


def lock_acquire(name: str, ttl: float, wait: float) -> Call[Lease | None]:
    def read(r: Reply) -> Lease | None:
        if r.status == 409:
            return None
        body = r.json()
        return Lease(name, body["token"], int(body["fence"]))

    return Call(
        "POST",
        f"/v1/locks/{seg(name)}/acquire",
        read,
        body=as_json({"ttl_ms": ms(ttl), "wait_ms": ms(wait) if wait else 0}),
        content_type="application/json",
        answers=(409,),
    )


def lock_release(name: str, token: str) -> Call[bool]:
    return Call(
        "POST",
        f"/v1/locks/{seg(name)}/release",
        lambda r: r.status == 200 and bool(r.json()["released"]),
        body=as_json({"token": token}),
        content_type="application/json",
        answers=(409,),
        idempotent=True,
    )


def lock_extend(name: str, token: str, ttl: float) -> Call[bool]:
    return Call(
        "POST",
        f"/v1/locks/{seg(name)}/extend",
        lambda r: r.status == 200 and bool(r.json()["extended"]),
        body=as_json({"token": token, "ttl_ms": ms(ttl)}),
        content_type="application/json",
        answers=(409,),
        idempotent=True,
    )


def semaphore_acquire(name: str, limit: int, ttl: float, wait: float) -> Call[str | None]:
    return Call(
        "POST",
        f"/v1/semaphores/{seg(name)}/acquire",
        lambda r: None if r.status == 409 else str(r.json()["token"]),
        body=as_json({"limit": limit, "ttl_ms": ms(ttl), "wait_ms": ms(wait) if wait else 0}),
        content_type="application/json",
        answers=(409,),
    )


def semaphore_release(name: str, token: str) -> Call[bool]:
    return Call(
        "POST",
        f"/v1/semaphores/{seg(name)}/release",
        lambda r: r.status == 200 and bool(r.json()["released"]),
        body=as_json({"token": token}),
        content_type="application/json",
        answers=(409,),
        idempotent=True,
    )


# --- rate limits ----------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    # Seconds until the whole limit is available again.
    reset_after: float
    # When denied: seconds until the same cost can be allowed.
    retry_after: float | None


def _decision(body: Mapping[str, Any]) -> Decision:
    retry = int(body["retry_after_ms"])
    return Decision(
        allowed=bool(body["allowed"]),
        limit=int(body["limit"]),
        remaining=int(body["remaining"]),
        reset_after=int(body["reset_after_ms"]) / 1000,
        retry_after=None if body["allowed"] else retry / 1000,
    )


@dataclass(frozen=True)
class Limit:
    """A limit given with the request instead of configured."""

    algorithm: str
    limit: int
    period: float
    burst: int = 0

    def wire(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "limit": self.limit,
            "period_ms": ms(self.period),
            "burst": self.burst,
        }


def _check_body(key: str, cost: int, inline: Limit | None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "cost": cost}
    if inline is not None:
        body["inline"] = inline.wire()
    return body


def ratelimit_check(
    policy: str, key: str, cost: int, inline: Limit | None, peek: bool
) -> Call[Decision]:
    return Call(
        "POST",
        f"/v1/ratelimit/{seg(policy)}/{'peek' if peek else 'check'}",
        lambda r: _decision(r.json()),
        body=as_json(_check_body(key, cost, inline)),
        content_type="application/json",
        answers=(429,),
        idempotent=peek,
    )


def ratelimit_reset(policy: str, key: str) -> Call[bool]:
    return Call(
        "POST",
        f"/v1/ratelimit/{seg(policy)}/reset",
        lambda r: bool(r.json()["existed"]),
        body=as_json({"key": key}),
        content_type="application/json",
        idempotent=True,
    )


def ratelimit_check_all(checks: Sequence[tuple[str, str, int]]) -> Call[list[Decision]]:
    body = {"checks": [{"policy": p, "key": k, "cost": c} for p, k, c in checks]}
    return Call(
        "POST",
        "/v1/ratelimit/check-all",
        lambda r: [_decision(d) for d in r.json()["decisions"]],
        body=as_json(body),
        content_type="application/json",
        answers=(429,),
    )


def raise_if_denied(decision: Decision, what: str) -> Decision:
    if not decision.allowed:
        raise RateLimited(f"{what}: rate limited", decision.retry_after or 0.0)
    return decision


# --- counters -------------------------------------------------------------


@dataclass(frozen=True)
class Counter:
    value: int
    exists: bool
    ttl: float | None


def _counter(body: Mapping[str, Any]) -> Counter:
    ttl = body.get("ttl_ms")
    return Counter(int(body["value"]), bool(body["exists"]), None if ttl is None else ttl / 1000)


def counter_incr(
    name: str, by: int, ttl: float | None, min: int | None, max: int | None
) -> Call[Counter]:
    body: dict[str, Any] = {"by": by, "ttl_ms": ms(ttl) or 0}
    if min is not None:
        body["min"] = min
    if max is not None:
        body["max"] = max
    return Call(
        "POST",
        f"/v1/counters/{seg(name)}/incr",
        lambda r: _counter(r.json()),
        body=as_json(body),
        content_type="application/json",
    )


def counter_get(name: str) -> Call[Counter]:
    return Call("GET", f"/v1/counters/{seg(name)}", lambda r: _counter(r.json()), idempotent=True)


def counter_reset(name: str) -> Call[bool]:
    return Call(
        "DELETE", f"/v1/counters/{seg(name)}", lambda r: bool(r.json()["existed"]), idempotent=True
    )


# --- work queues ----------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    """What an enqueue did: the job's id (None when buffered), whether the
    dedup id had been seen (the id is then the first job's), and whether
    the sidecar buffered it while Redis is down."""

    id: str | None
    duplicate: bool
    buffered: bool


@dataclass(frozen=True)
class Job:
    """A claimed job: settle it (ack, nack) before `visible_at`, or it is
    claimed again."""

    queue: str
    id: str
    receipt: str
    attempt: int
    max_attempts: int
    payload: bytes
    dedup_id: str | None
    enqueued_at: float
    visible_at: float


@dataclass(frozen=True)
class QueueStats:
    ready: int
    delayed: int
    in_flight: int
    dead: int
    oldest_ready: float | None


def _job(queue: str, j: Mapping[str, Any]) -> Job:
    payload = (
        j["payload"].encode() if "payload" in j else base64.b64decode(j.get("payload_base64", ""))
    )
    return Job(
        queue,
        j["id"],
        j["receipt"],
        int(j["attempt"]),
        int(j["max_attempts"]),
        payload,
        j.get("dedup_id"),
        j["enqueued_at_ms"] / 1000,
        j["visible_at_ms"] / 1000,
    )


def queue_enqueue(
    queue: str,
    payload: Bytes,
    delay: float | None,
    dedup_id: str | None,
    max_attempts: int | None,
    backoff: float | None,
) -> Call[Enqueued]:
    def read(r: Reply) -> Enqueued:
        b = r.json()
        return Enqueued(b.get("id"), bool(b["duplicate"]), bool(b["buffered"]))

    q = query(
        delay_ms=ms(delay), dedup_id=dedup_id, max_attempts=max_attempts, backoff_ms=ms(backoff)
    )
    return Call(
        "POST",
        f"/v1/queues/{seg(queue)}/jobs{q}",
        read,
        body=raw(payload),
        content_type="application/octet-stream",
        # Sent twice with the same dedup id, the second enqueues nothing.
        idempotent=dedup_id is not None,
    )


def queue_claim(
    queue: str, max: int, visibility: float | None, wait: float, ack: Sequence[Job]
) -> Call[list[Job]]:
    body: dict[str, Any] = {"max": max, "wait_ms": round(wait * 1000)}
    if visibility is not None:
        body["visibility_ms"] = ms(visibility)
    if ack:
        if any(job.queue != queue for job in ack):
            raise ValueError(f"ack holds jobs of another queue than {queue!r}")
        body["ack"] = [{"id": job.id, "receipt": job.receipt} for job in ack]
    return Call(
        "POST",
        f"/v1/queues/{seg(queue)}/claim",
        lambda r: [_job(queue, j) for j in r.json()["jobs"]],
        body=as_json(body),
        content_type="application/json",
    )


def queue_settle(job: Job, how: str, extra: Mapping[str, Any]) -> Call[Mapping[str, Any]]:
    body = {"receipt": job.receipt, **{k: v for k, v in extra.items() if v is not None}}
    return Call(
        "POST",
        f"/v1/queues/{seg(job.queue)}/jobs/{seg(job.id)}/{how}",
        lambda r: r.json(),
        body=as_json(body),
        content_type="application/json",
    )


def queue_stats(queue: str) -> Call[QueueStats]:
    def read(r: Reply) -> QueueStats:
        b = r.json()
        oldest = b.get("oldest_ready_ms")
        return QueueStats(b["ready"], b["delayed"], b["in_flight"], b["dead"], seconds(oldest))

    return Call("GET", f"/v1/queues/{seg(queue)}", read, idempotent=True)


# --- maps -----------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    value: bytes
    # The map's version when the field was last written.
    version: int
    ttl: float | None


@dataclass(frozen=True)
class MapFields:
    # 0 when the map does not exist.
    version: int
    ttl: float | None
    fields: dict[str, Field]
    next_cursor: str | None = None


def _field(f: Mapping[str, Any]) -> Field:
    if "value" in f:
        value = str(f["value"]).encode()
    else:
        value = base64.b64decode(f["value_base64"])
    ttl = f.get("ttl_ms")
    return Field(value, int(f["version"]), None if ttl is None else ttl / 1000)


def _map_fields(r: Reply) -> MapFields:
    body = r.json()
    ttl = body.get("ttl_ms")
    return MapFields(
        version=int(body["version"]),
        ttl=None if ttl is None else ttl / 1000,
        fields={f["field"]: _field(f) for f in body["fields"]},
        next_cursor=body.get("next_cursor"),
    )


def map_get(name: str, fields: Sequence[str]) -> Call[MapFields]:
    q = "?" + urlencode([("field", f) for f in fields]) if fields else ""
    return Call("GET", f"/v1/maps/{seg(name)}{q}", _map_fields, idempotent=True)


def map_list(name: str, cursor: str, limit: int) -> Call[MapFields]:
    return Call(
        "GET",
        f"/v1/maps/{seg(name)}" + query(cursor=cursor or None, limit=limit or None),
        _map_fields,
        idempotent=True,
    )


@dataclass
class Changes:
    """The changes of one atomic map update, applied in order."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def set(
        self,
        name: str,
        value: Bytes,
        ttl: float | None = None,
        if_absent: bool = False,
        if_present: bool = False,
        if_version: int | None = None,
    ) -> Changes:
        change: dict[str, Any] = {"op": "set", "field": name, **_value(value)}
        if ttl is not None:
            change["ttl_ms"] = ms(ttl)
        cond = condition(if_absent, if_present, if_version)
        if cond is not None:
            change["if"] = cond
        self.items.append(change)
        return self

    def delete(self, name: str) -> Changes:
        self.items.append({"op": "delete", "field": name})
        return self

    def incr(self, name: str, by: int | float = 1) -> Changes:
        self.items.append({"op": "incr", "field": name, "by": by})
        return self


def _value(value: Bytes) -> dict[str, str]:
    data = raw(value)
    try:
        return {"value": data.decode()}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(data).decode()}


def condition(if_absent: bool, if_present: bool, if_version: int | None) -> str | None:
    given = [c for c in (if_absent and "absent", if_present and "present") if c]
    if if_version is not None:
        given.append(f"version:{if_version}")
    if len(given) > 1:
        raise ValueError("give at most one of if_absent, if_present and if_version")
    return given[0] if given else None


@dataclass(frozen=True)
class Applied:
    # The map's new version, carried by every field the update wrote.
    version: int
    # Per change: None for a set, True/False (existed) for a delete, the
    # new value for an increment.
    outcomes: list[bool | int | float | None]


def map_update(
    name: str,
    changes: Changes,
    if_version: int | None,
    ttl: float | None,
    sliding: bool,
    persist: bool,
) -> Call[Applied]:
    body: dict[str, Any] = {"changes": changes.items}
    if if_version is not None:
        body["if_version"] = if_version
    if ttl is not None:
        body["ttl_ms"] = ms(ttl)
    if sliding:
        body["sliding"] = True
    if persist:
        body["persist"] = True

    def read(r: Reply) -> Applied:
        reply = r.json()
        outcomes: list[bool | int | float | None] = []
        for o in reply["outcomes"]:
            outcomes.append(o["existed"] if "existed" in o else o.get("value"))
        return Applied(int(reply["version"]), outcomes)

    return Call(
        "POST", f"/v1/maps/{seg(name)}", read, body=as_json(body), content_type="application/json"
    )


def map_delete(name: str) -> Call[bool]:
    return Call(
        "DELETE", f"/v1/maps/{seg(name)}", lambda r: bool(r.json()["existed"]), idempotent=True
    )


# --- presence and pub/sub -------------------------------------------------


@dataclass(frozen=True)
class Member:
    member: str
    metadata: Any
    ttl: float


@dataclass(frozen=True)
class MemberPage:
    members: list[Member]
    next_cursor: str | None


def presence_join(room: str, member: str, metadata: Any, ttl: float) -> Call[bool]:
    return Call(
        "PUT",
        f"/v1/presence/{seg(room)}/{seg(member)}",
        lambda r: bool(r.json()["joined"]),
        body=as_json({"metadata": metadata, "ttl_ms": ms(ttl)}),
        content_type="application/json",
        idempotent=True,
    )


def presence_leave(room: str, member: str) -> Call[bool]:
    return Call(
        "DELETE",
        f"/v1/presence/{seg(room)}/{seg(member)}",
        lambda r: bool(r.json()["left"]),
        idempotent=True,
    )


def presence_members(room: str, cursor: str, limit: int) -> Call[MemberPage]:
    def read(r: Reply) -> MemberPage:
        body = r.json()
        members = [Member(m["member"], m["metadata"], m["ttl_ms"] / 1000) for m in body["members"]]
        return MemberPage(members, body["next_cursor"])

    return Call(
        "GET",
        f"/v1/presence/{seg(room)}" + query(cursor=cursor or None, limit=limit or None),
        read,
        idempotent=True,
    )


def presence_rooms(member: str) -> Call[list[str]]:
    return Call(
        "GET",
        f"/v1/members/{seg(member)}/rooms",
        lambda r: list(r.json()["rooms"]),
        idempotent=True,
    )


def publish(
    channel: str,
    payload: Bytes,
    durable: bool,
    idempotency_key: str | None,
    max_len: int | None = None,
    max_age: float | None = None,
) -> Call[str | None]:
    params = {
        "durable": durable or None,
        "idempotency_key": idempotency_key,
        "max_len": max_len,
        "max_age_ms": None if max_age is None else max(1, round(max_age * 1000)),
    }
    return Call(
        "POST",
        f"/v1/pubsub/{seg(channel)}" + query(**params),
        lambda r: r.json().get("offset"),
        body=raw(payload),
        content_type="application/octet-stream",
        idempotent=idempotency_key is not None,
    )


@dataclass(frozen=True)
class Message:
    channel: str
    payload: bytes
    # Durable messages' stream offset (what a subscription resumes after);
    # None for live-only ones.
    offset: str | None
    headers: dict[str, str]


@dataclass(frozen=True)
class HistoryMessage:
    offset: str
    payload: bytes
    headers: dict[str, str]
    # When it was published (ms since the epoch, the Redis clock).
    published_at_ms: int


@dataclass(frozen=True)
class History:
    # The channel's epoch (None for a channel that does not exist): pass it
    # as `epoch` with `after` to subscribe after these messages.
    epoch: str | None
    messages: list[HistoryMessage]
    # Pass as `cursor` for the next page; None on the last one.
    next_cursor: str | None


def _payload(body: Mapping[str, Any]) -> bytes:
    """A payload as the API writes it: text, or base64."""
    if "payload" in body:
        return str(body["payload"]).encode()
    return base64.b64decode(body.get("payload_base64", ""))


def _history(r: Reply) -> History:
    body = r.json()
    messages = [
        HistoryMessage(m["offset"], _payload(m), dict(m["headers"]), m["published_at_ms"])
        for m in body["messages"]
    ]
    return History(body.get("epoch"), messages, body.get("next_cursor"))


def history(
    channel: str,
    last: int | None,
    from_offset: str | None,
    to_offset: str | None,
    newest_first: bool,
    limit: int | None,
    cursor: str | None,
) -> Call[History]:
    params = {"last": last, "from": from_offset, "to": to_offset, "limit": limit, "cursor": cursor}
    order = "desc" if newest_first else None
    return Call(
        "GET",
        f"/v1/pubsub/{seg(channel)}/history" + query(**params, order=order),
        _history,
        idempotent=True,
    )


def trim(channel: str, before: str) -> Call[int]:
    return Call(
        "DELETE",
        f"/v1/pubsub/{seg(channel)}/history" + query(before=before),
        lambda r: int(r.json()["removed"]),
        idempotent=True,
    )


def subscribe_path(channel: str, after: str | None, epoch: str | None = None) -> str:
    return f"/v1/pubsub/{seg(channel)}" + query(**{"from": after, "epoch": after and epoch})


class Subscription:
    """A subscription's state across its connections, for both clients:
    where to resume (after the last durable offset seen, when `durable`)
    and how long to wait before reconnecting."""

    ACCEPT: Mapping[str, str] = MappingProxyType({"Accept": "text/event-stream"})

    def __init__(
        self,
        channel: str,
        after: str | None,
        durable: bool,
        on_replayed: Callable[[str | None], None] | None = None,
        epoch: str | None = None,
        on_resumed: Callable[[Resumed], None] | None = None,
    ) -> None:
        self.channel, self.last, self.durable = channel, after, durable
        self.epoch = epoch
        self.on_replayed, self.on_resumed = on_replayed, on_resumed
        self.backoff = 0.05
        self.parser = SseParser()

    def connect(self) -> str:
        """The path to open next (from a fresh parser's point of view)."""
        self.parser = SseParser()
        return subscribe_path(self.channel, self.last, self.epoch)

    def feed(self, line: str) -> Message | Lagged | None:
        """A line of the stream: a message to hand out, `LAGGED` when the
        connection should be reopened to catch up from the stream, or None."""
        event = self.parser.feed(line)
        if event is None:
            return None
        self.backoff = 0.05
        got = sse_event(*event)
        if isinstance(got, Message):
            if got.offset:
                self.last = got.offset
            return got
        if isinstance(got, Resumed):
            self.epoch = got.epoch
            if self.on_resumed is not None:
                self.on_resumed(got)
        if isinstance(got, Replayed) and self.on_replayed is not None:
            self.on_replayed(got.offset)
        if got is LAGGED and self.durable and self.last is not None:
            return LAGGED
        return None

    def dropped(self) -> float:
        """After a connection ended: how long to wait before the next."""
        if not self.durable:
            self.last = None
        wait, self.backoff = self.backoff, min(self.backoff * 2, 2.0)
        return wait


class Lagged:
    """The sidecar's word that this subscriber fell behind and missed some."""


LAGGED = Lagged()


@dataclass(frozen=True)
class Replayed:
    """A resumed subscription's replay is over: `offset` is the last one
    delivered (None if none); what follows was published afterwards."""

    offset: str | None


@dataclass(frozen=True)
class Resumed:
    """Where a resumed subscription stands, before its replay."""

    # Nothing after the offset is missing. False when messages after it were
    # trimmed or expired, or it is of another epoch (the channel was created
    # again, Redis lost it or failed over): reload your state.
    recovered: bool
    # The channel's epoch now.
    epoch: str
    # The first offset the replay delivers; None when it has none.
    from_offset: str | None


def sse_event(kind: str, data: str) -> Message | Lagged | Replayed | Resumed | None:
    """A subscription's event: a message, `LAGGED`, where a resume stands,
    the end of a replay, or None for anything else; an `error` event is
    raised."""
    body = json.loads(data)
    if kind == "error":
        raise OutriggerError(body.get("message", data))
    if kind == "lagged":
        return LAGGED
    if kind == "replayed":
        return Replayed(body.get("offset"))
    if kind == "resumed":
        return Resumed(bool(body["recovered"]), str(body["epoch"]), body.get("from"))
    if kind != "message" or body.get("type") != "message":
        return None
    return Message(
        body["channel"], _payload(body), body.get("offset"), dict(body.get("headers") or {})
    )


class SseParser:
    """Server-Sent Events, a line at a time: `feed` returns each complete
    event as (event, data)."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self.data:
                self.event = "message"
                return None
            out = (self.event, "\n".join(self.data))
            self.event, self.data = "message", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def status() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/admin/status", lambda r: dict(r.json()), idempotent=True)
