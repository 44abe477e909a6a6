"""A web backend's use of the sidecar through the Python client library
(`sdk/client-python`, the package `outrigger`).

Login throttling, a session cache, a lock around checkout, "who is online",
a session map and room messages. Checks every answer; exits non-zero on the
first surprise. OUTRIGGER_URL says where the sidecar is.
"""

import threading
import time

from outrigger import Changes, Client, Conflict, PreconditionFailed

RUN = str(time.time_ns())  # keeps runs apart on a shared Redis
client = Client()


def check(what, ok):
    if not ok:
        raise SystemExit(f"FAIL {what}")
    print(f"ok   {what}")


def login_throttling():
    user = f"alice-{RUN}"
    for _ in range(5):
        check("a login attempt within the burst is allowed", client.check("login", user).allowed)
    denied = client.check("login", user)
    check("the sixth is throttled", not denied.allowed)
    check("with when to come back", denied.retry_after > 0)
    client.reset_limit("login", user)  # a successful login clears the count
    check("after a good login the burst is back", client.peek("login", user).remaining == 4)


def session_cache():
    key = f"session:{RUN}"
    version = client.set(key, '{"user": "alice"}', ttl=60, tags=[f"user:{RUN}"])
    entry = client.get(key, refresh_ttl=True)
    check("session read back", entry is not None and entry.value == b'{"user": "alice"}')
    check("with its version", entry.version == version)
    try:
        client.set(key, "x", if_version=version + 1000)
        check("a stale compare-and-set is refused", False)
    except PreconditionFailed:
        check("a stale compare-and-set is refused", True)
    check("logging out invalidates the user's sessions", client.invalidate(tags=[f"user:{RUN}"]) == 1)

    @client.cached(ttl=60, key=lambda user: f"profile:{RUN}:{user}")
    def profile(user):
        calls.append(user)
        return {"user": user}

    calls = []
    check("a cached function computes once", [profile("bob"), profile("bob")] == [{"user": "bob"}] * 2)
    check("...and is served from the cache after", calls == ["bob"])


def checkout_lock():
    name = f"checkout-{RUN}"
    with client.lock(name, ttl=10) as lease:
        check("checkout lock held", lease.fence >= 1)
        try:
            with client.lock(name, ttl=10, wait=0.1):
                pass
            check("a concurrent checkout waits, then gives up", False)
        except Conflict:
            check("a concurrent checkout waits, then gives up", True)
    check("released when the block ends", client.acquire(name, ttl=1) is not None)


def who_is_online():
    room = f"lobby-{RUN}"
    client.join(room, "alice", metadata={"name": "Alice"})
    with client.present(room, "bob", metadata={"name": "Bob"}):
        names = sorted(m.metadata["name"] for m in client.members(room).members)
        check("Alice and Bob are online", names == ["Alice", "Bob"])
    check("Bob left with his block", [m.member for m in client.members(room).members] == ["alice"])
    check("Alice's rooms include the lobby", room in client.rooms("alice"))


def session_map():
    session = f"session-map:{RUN}"
    client.map_update(session, Changes().set("user", "alice").incr("views"), ttl=86400, sliding=True)
    client.map_incr(session, "views")
    fields = client.map_get(session, "user", "views").fields
    check("a session map, field by field", (fields["user"].value, fields["views"].value) == (b"alice", b"2"))


def room_messages():
    channel = f"room-{RUN}"
    first = client.publish(channel, "hello", durable=True)
    received = []

    def listen():
        for message in client.subscribe(channel, after=first):
            received.append(message.payload.decode())
            if len(received) == 3:
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    for text in ["hi", "how are you?", "bye"]:
        check(f"published {text!r}", client.publish(channel, text, durable=True) is not None)
    listener.join(10)
    check("the room got every message, in order", received == ["hi", "how are you?", "bye"])


if __name__ == "__main__":
    login_throttling()
    session_cache()
    checkout_lock()
    who_is_online()
    session_map()
    room_messages()
    print("python client example: all checks passed")
