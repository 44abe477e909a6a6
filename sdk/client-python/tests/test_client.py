"""Every call of the blocking client against live sidecars (memory and
Redis; TCP and the Unix socket)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import Redis, start_sidecar

from outrigger import (
    Changes,
    Client,
    Conflict,
    InvalidArgument,
    Limit,
    LockLost,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Resumed,
    TooLarge,
    Unavailable,
)


def test_cache_round_trip_with_versions_tags_and_conditions(client: Client, unique: str) -> None:
    key = f"user:{unique}"
    assert client.get(key) is None
    v1 = client.set(key, b"\x00alice\xff", ttl=60, tags=[f"t-{unique}"])
    entry = client.get(key)
    assert entry is not None
    assert (entry.value, entry.version) == (b"\x00alice\xff", v1)
    assert entry.ttl is not None and 0 < entry.ttl <= 60
    with pytest.raises(PreconditionFailed):
        client.set(key, "x", if_absent=True)
    with pytest.raises(PreconditionFailed):
        client.set(key, "x", if_version=v1 + 1000)
    v2 = client.set(key, "bob", if_version=v1, tags=[f"t-{unique}"])
    assert v2 > v1
    assert client.invalidate(tags=[f"t-{unique}"]) == 1
    assert client.get(key) is None
    assert client.delete(key) is False
    client.set(key, "again")
    assert client.delete(key) is True
    with pytest.raises(ValueError):
        client.invalidate()


def test_listing_pages_through_every_key(client: Client, unique: str) -> None:
    for i in range(7):
        client.set(f"{unique}:k{i}", "v")
    assert sorted(client.iter_keys(f"{unique}:*", page=3)) == [f"{unique}:k{i}" for i in range(7)]
    assert client.invalidate(pattern=f"{unique}:*") == 7


def test_get_or_lease_grants_one_caller(client: Client, unique: str) -> None:
    first = client.get_or_lease(unique, lease=5)
    assert (first.outcome, first.entry) == ("granted", None)
    with pytest.raises(Conflict):
        client.get_or_lease(unique, lease=5)  # someone holds it, no wait
    client.set(unique, "computed", ttl=60)
    hit = client.get_or_lease(unique, lease=5)
    assert hit.outcome == "hit" and hit.entry is not None and hit.entry.value == b"computed"


def test_cached_computes_once_under_50_concurrent_misses(client: Client, unique: str) -> None:
    calls = []
    gate = threading.Event()

    @client.cached(ttl=60, key=lambda n: f"{unique}:{n}", wait=10)
    def slow(n: int) -> dict[str, int]:
        calls.append(n)
        gate.wait(5)
        return {"n": n}

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(slow, 1) for _ in range(50)]
        time.sleep(0.3)  # let every caller reach the sidecar before the fill
        gate.set()
        results = [f.result() for f in futures]
    assert results == [{"n": 1}] * 50
    assert calls == [1], "computed once"
    assert slow(1) == {"n": 1} and calls == [1]


def test_locks_acquire_extend_release(client: Client, unique: str) -> None:
    lease = client.acquire(unique, ttl=5)
    assert lease is not None and lease.fence >= 1
    assert client.acquire(unique, ttl=5) is None
    assert client.acquire(unique, ttl=5, wait=0.1) is None
    assert client.extend(lease, ttl=5)
    assert client.release(lease)
    assert not client.release(lease)
    again = client.acquire(unique, ttl=5)
    assert again is not None and again.fence > lease.fence
    assert client.release(again)


def test_lock_context_keeps_the_lock_past_its_ttl(client: Client, unique: str) -> None:
    with client.lock(unique, ttl=0.6) as lease:
        time.sleep(1.5)  # more than twice the TTL: kept alive meanwhile
        assert client.acquire(unique, ttl=1) is None, "still held"
        assert lease.fence >= 1
    taken = client.acquire(unique, ttl=1)
    assert taken is not None, "released on leaving the block"
    client.release(taken)
    # Held elsewhere: entering waits, then says so.
    other = client.acquire(unique, ttl=5)
    assert other is not None
    with pytest.raises(Conflict):
        with client.lock(unique, ttl=1, wait=0.2):
            pass
    client.release(other)


def test_a_lost_lock_raises_into_the_next_call(client: Client, unique: str) -> None:
    with pytest.raises(LockLost):
        with client.lock(unique, ttl=3) as lease:
            # Another holder takes over: release ours behind the block's back.
            assert client.release(lease)
            thief = client.acquire(unique, ttl=5)
            assert thief is not None
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                client.get(f"{unique}:probe")  # raises LockLost once noticed
                time.sleep(0.1)
            raise AssertionError("the loss was never reported")


def test_semaphore_permits(client: Client, unique: str) -> None:
    tokens = [client.acquire_permit(unique, limit=2, ttl=5) for _ in range(2)]
    assert all(tokens)
    assert client.acquire_permit(unique, limit=2, ttl=5) is None
    assert client.release_permit(unique, str(tokens[0]))
    assert client.acquire_permit(unique, limit=2, ttl=5) is not None


def test_rate_limits_check_peek_reset_and_check_all(client: Client, unique: str) -> None:
    for remaining in (4, 3, 2, 1, 0):
        d = client.check("login", unique)
        assert d.allowed and d.remaining == remaining
    denied = client.check("login", unique)
    assert not denied.allowed and denied.retry_after and denied.retry_after > 0
    assert not client.peek("login", unique).allowed
    assert client.reset_limit("login", unique)
    assert client.peek("login", unique).remaining == 4
    inline = Limit("fixed_window", 1, 60)
    assert client.check("adhoc", unique, limit=inline).allowed
    assert not client.check("adhoc", unique, limit=inline).allowed
    both = [("login", f"{{{unique}}}:u", 1), ("ip", f"{{{unique}}}:ip", 2)]
    assert all(d.allowed for d in client.check_all(both))
    refused = client.check_all(both)
    assert [d.allowed for d in refused] == [True, False]
    assert client.peek("login", f"{{{unique}}}:u").remaining == 3, "nothing taken"
    with pytest.raises(NotFound):
        client.check("no-such-policy", unique)
    with pytest.raises(InvalidArgument):
        client.check("login", unique, cost=99)


def test_rate_limited_decorator(client: Client, unique: str) -> None:
    @client.rate_limited("ip", key=lambda user: f"{unique}:{user}")
    def handle(user: str) -> str:
        return f"hello {user}"

    assert handle("ann") == "hello ann"
    assert handle("ann") == "hello ann"
    with pytest.raises(RateLimited) as caught:
        handle("ann")
    assert caught.value.retry_after > 0
    assert handle("bob") == "hello bob"


def test_counters(client: Client, unique: str) -> None:
    assert client.counter(unique).exists is False
    c = client.incr(unique, 2, ttl=60)
    assert (c.value, c.exists) == (2, True) and c.ttl is not None
    with pytest.raises(PreconditionFailed):
        client.incr(unique, 5, max=3)
    assert client.incr(unique, -2, min=0).value == 0
    assert client.reset_counter(unique)
    assert client.counter(unique).value == 0


def test_work_queues(client: Client, unique: str) -> None:
    first = client.enqueue(unique, "a", dedup_id="once")
    assert (first.duplicate, first.buffered) == (False, False)
    assert client.enqueue(unique, "again", dedup_id="once").id == first.id
    client.enqueue(unique, b"\xff\x00", max_attempts=1)
    a, binary = client.claim(unique, max=10)
    assert (a.id, a.payload, a.attempt, a.dedup_id) == (first.id, b"a", 1, "once")
    assert binary.payload == b"\xff\x00"
    assert client.extend_job(a, visibility=60) > a.enqueued_at
    client.ack(a)
    with pytest.raises(NotFound):
        client.ack(a)
    assert client.nack(binary, error="no") == "dead"
    stats = client.queue_stats(unique)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)
    with pytest.raises(InvalidArgument):
        client.enqueue(unique, "x", max_attempts=0)
    with pytest.raises(ValueError):
        client.claim(unique, wait=60)
    # A claim acks finished jobs in the same request, all or none.
    client.enqueue(unique, "b")
    client.enqueue(unique, "c")
    [b] = client.claim(unique)
    with pytest.raises(NotFound):
        client.claim(unique, ack=[b, a])
    [c] = client.claim(unique, ack=[b])
    assert (b.payload, c.payload) == (b"b", b"c")
    with pytest.raises(ValueError):
        client.claim("elsewhere", ack=[c])
    assert client.claim(unique, ack=[c]) == []
    assert client.queue_stats(unique).in_flight == 0
    # The worker loop gets what is enqueued while it waits, each job once.
    got: list[bytes] = []

    def work() -> None:
        for job in client.consume(unique, wait=1):
            got.append(job.payload)
            client.ack(job)
            if len(got) == 3:
                return

    worker = threading.Thread(target=work)
    worker.start()
    for p in ("1", "2", "3"):
        client.enqueue(unique, p)
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert got == [b"1", b"2", b"3"]
    assert client.queue_stats(unique).in_flight == 0


def test_maps(client: Client, unique: str) -> None:
    v1 = client.map_set(unique, "user", "ada", ttl=60)
    applied = client.map_update(
        unique,
        Changes().set("raw", b"\xff\x00").incr("views").incr("score", 0.5).delete("nothing"),
        ttl=3600,
        sliding=True,
    )
    assert applied.version > v1
    assert applied.outcomes == [None, 1, 0.5, False]
    got = client.map_get(unique, "user", "raw", "absent")
    assert set(got.fields) == {"user", "raw"}
    assert got.fields["user"].value == b"ada" and got.fields["user"].version == v1
    assert got.fields["raw"].value == b"\xff\x00"
    assert got.ttl is not None and got.ttl <= 3600
    assert client.map_incr(unique, "views", 2) == 3
    assert sorted(name for name, _ in client.map_items(unique, page=2)) == [
        "raw",
        "score",
        "user",
        "views",
    ]
    with pytest.raises(PreconditionFailed):
        client.map_set(unique, "user", "eve", if_version=v1 - 1)
    with pytest.raises(PreconditionFailed):
        client.map_update(unique, Changes().set("x", "1"), if_version=1)
    with pytest.raises(Conflict):
        client.map_incr(unique, "user")
    assert client.map_delete(unique, "raw") is True
    assert client.map_field(unique, "raw") is None
    assert client.map_delete(unique) is True
    assert client.map_get(unique).version == 0


def test_presence(client: Client, unique: str) -> None:
    assert client.join(unique, "alice", metadata={"name": "Alice"}, ttl=30)
    assert not client.join(unique, "alice", metadata={"name": "Alice"}, ttl=30)
    page = client.members(unique)
    assert [(m.member, m.metadata) for m in page.members] == [("alice", {"name": "Alice"})]
    assert unique in client.rooms("alice")
    assert client.leave(unique, "alice")
    with client.present(unique, "bob", ttl=0.6):
        time.sleep(1.5)  # past the TTL: kept by the heartbeat
        assert [m.member for m in client.members(unique).members] == ["bob"]
    assert client.members(unique).members == []


def test_publish_and_subscribe_with_resume(client: Client, unique: str) -> None:
    first = client.publish(unique, "one", durable=True)
    second = client.publish(unique, b"\xfftwo", durable=True)
    assert first and second
    messages = client.subscribe(unique, after=first)
    got = next(messages)
    assert (got.payload, got.offset) == (b"\xfftwo", second)
    received: list[bytes] = []

    def reader() -> None:
        for msg in messages:
            received.append(msg.payload)
            if msg.payload == b"three":
                return

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.monotonic() + 10
    while t.is_alive() and time.monotonic() < deadline:
        client.publish(unique, "three", durable=True)
        t.join(0.2)
    assert not t.is_alive()
    assert received[-1] == b"three"


def test_history_trim_and_the_end_of_a_replay(client: Client, unique: str) -> None:
    offsets = [client.publish(unique, p, durable=True) for p in ("a", "b", "c", b"\x00\xff")]
    client.publish(unique, "live only")
    last = client.history(unique, last=2)
    assert [m.payload for m in last.messages] == [b"c", b"\x00\xff"]
    assert last.next_cursor is None
    assert last.messages[0].published_at_ms == int(str(offsets[2]).split("-")[0])
    page = client.history(unique, newest_first=True, limit=3)
    assert [m.offset for m in page.messages] == offsets[3:0:-1]
    rest = client.history(unique, newest_first=True, limit=3, cursor=page.next_cursor)
    assert [m.offset for m in rest.messages] == offsets[:1]
    ranged = client.history(unique, from_offset=offsets[1], to_offset=offsets[2])
    assert [m.payload for m in ranged.messages] == [b"b", b"c"]
    # The end of a replay: after the missed messages, before live ones.
    replayed: list[str | None] = []
    got: list[tuple[bytes, int]] = []
    for msg in client.subscribe(unique, after=offsets[1], on_replayed=replayed.append):
        got.append((msg.payload, len(replayed)))
        if msg.offset == offsets[3]:
            client.publish(unique, "after")
        elif msg.payload == b"after":
            break
    assert got == [(b"c", 0), (b"\x00\xff", 0), (b"after", 1)]
    assert replayed == [offsets[3]]
    once = client.publish(unique, "once", durable=True, idempotency_key="k")
    assert client.publish(unique, "twice", durable=True, idempotency_key="k") == once
    assert [m.payload for m in client.history(unique, last=1).messages] == [b"once"]
    assert client.trim(unique, str(offsets[2])) == 2
    assert [m.offset for m in client.history(unique).messages] == [*offsets[2:], once]
    # Resuming past the trim: told what is gone, with the epoch, first.
    epoch = client.history(unique, last=1).epoch
    assert epoch
    told: list[Resumed] = []
    for msg in client.subscribe(unique, after=offsets[0], epoch=epoch, on_resumed=told.append):
        assert told == [Resumed(recovered=False, epoch=epoch, from_offset=offsets[2])]
        assert msg.offset == offsets[2]
        break
    for msg in client.subscribe(unique, after=offsets[2], epoch=epoch, on_resumed=told.append):
        assert told[1] == Resumed(recovered=True, epoch=epoch, from_offset=offsets[3])
        assert msg.offset == offsets[3]
        break
    for p in ("x", "y"):
        client.publish(unique + ":short", p, durable=True, max_len=1, max_age=60)
    assert [m.payload for m in client.history(unique + ":short").messages] == [b"y"]


def test_errors_are_typed(client: Client, unique: str) -> None:
    with pytest.raises(TooLarge):
        client.set("k" * 600, "v")
    with pytest.raises(InvalidArgument):
        client.set(unique, "v", ttl=10**9)  # past limits.max_ttl
    with pytest.raises(ValueError):
        client.set(unique, "v", ttl=-1)
    with pytest.raises(ValueError):
        client.set(unique, "v", if_absent=True, if_present=True)
    assert client.status()["namespace"].startswith("py")


def test_an_unreachable_sidecar_is_unavailable_within_the_timeout() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Client(f"http://127.0.0.1:{port}", timeout=1)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        dead.get("k")
    assert time.monotonic() - started < 2


def test_a_subscription_survives_a_sidecar_restart(redis: Redis, unique: str) -> None:
    """Durable messages published across a restart of the sidecar arrive
    once each, in order: the subscription reopens from its last offset."""
    sidecar = start_sidecar(redis)
    client = sidecar.client()
    first = client.publish(unique, "m0", durable=True)
    messages = client.subscribe(unique, after=first)
    received: list[bytes] = []
    client.publish(unique, "m1", durable=True)
    received.append(next(messages).payload)
    sidecar = sidecar.restart()
    try:
        for i in range(2, 5):
            Client(sidecar.url).publish(unique, f"m{i}", durable=True)
        while len(received) < 4:
            received.append(next(messages).payload)
    finally:
        sidecar.stop()
    assert received == [b"m1", b"m2", b"m3", b"m4"]


@pytest.mark.parametrize("durable", [True, False])
def test_a_reconnected_subscription_resumes_only_when_durable(
    redis: Redis, unique: str, durable: bool
) -> None:
    """While the subscriber's sidecar is down, another publishes m2: a
    durable subscription replays it on reconnecting, a live one does not."""
    sidecar = start_sidecar(redis)
    namespace = sidecar.env["OUTRIGGER_NAMESPACE"]
    other = start_sidecar(redis, OUTRIGGER_NAMESPACE=namespace)
    try:
        first = Client(other.url).publish(unique, "m0", durable=True)
        Client(other.url).publish(unique, "m1", durable=True)
        messages = Client(sidecar.url).subscribe(unique, after=first, durable=durable)
        assert next(messages).payload == b"m1"
        port = int(sidecar.url.rsplit(":", 1)[1])
        env = {k: v for k, v in sidecar.env.items() if k.startswith("OUTRIGGER_")}
        sidecar.stop()
        Client(other.url).publish(unique, "m2", durable=True)
        sidecar = start_sidecar(None, port, **env)
        received: list[bytes] = []

        def read() -> None:
            for message in messages:
                received.append(message.payload)
                if message.payload == b"live":
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while reader.is_alive() and time.monotonic() < deadline:
            Client(other.url).publish(unique, "live", durable=True)
            reader.join(0.2)
        assert received[-1] == b"live"
        assert (b"m2" in received) is durable, received
    finally:
        sidecar.stop()
        other.stop()


def test_a_durable_subscriber_that_falls_behind_catches_up(redis: Redis, unique: str) -> None:
    """With four messages of buffer a reader that stops reading is told
    `lagged`; the subscription reopens after its last offset, so every
    durable message arrives, once, in order."""
    sidecar = start_sidecar(redis, OUTRIGGER_PUBSUB__SUBSCRIBER_BUFFER="4")
    client = sidecar.client()
    try:
        messages = client.subscribe(unique)
        live = threading.Event()

        def ping() -> None:  # until the subscription is live
            while not live.wait(0.05):
                client.publish(unique, "ping", durable=True)

        pinger = threading.Thread(target=ping)
        pinger.start()
        assert next(messages).payload == b"ping"
        live.set()
        pinger.join()
        big = "x" * 64 * 1024
        for i in range(200):
            client.publish(unique, f"{i}:{big}", durable=True)
        got: list[str] = []

        def read() -> None:
            while len(got) < 200:
                payload = next(messages).payload.decode()
                if payload != "ping":
                    got.append(payload.split(":")[0])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(20)  # bounded: without the catch-up it waits for ever
        assert got == [str(i) for i in range(200)]
    finally:
        client.close()
        sidecar.stop()
