"""A web backend's use of the sidecar over plain HTTP (standard library only).

Login throttling, a session cache, a lock around checkout, "who is online"
and room messages over Server-Sent Events. Checks every answer; exits
non-zero on the first surprise. OUTRIGGER_URL says where the sidecar is.
"""

import json
import os
import threading
import time
import urllib.error
import urllib.request

SIDECAR = os.environ.get("OUTRIGGER_URL", "http://127.0.0.1:7480")
RUN = str(time.time_ns())  # keeps runs apart on a shared Redis


def call(method, path, body=None, raw=None):
    """Returns (status, headers, body as bytes)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(SIDECAR + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def check(what, ok):
    if not ok:
        raise SystemExit(f"FAIL {what}")
    print(f"ok   {what}")


def login_throttling():
    user = f"alice-{RUN}"
    for _ in range(5):
        status, _, _ = call("POST", "/v1/ratelimit/login/check", {"key": user})
        check("a login attempt within the burst is allowed", status == 200)
    status, headers, body = call("POST", "/v1/ratelimit/login/check", {"key": user})
    check("the sixth is throttled (429)", status == 429)
    check("Retry-After tells when to come back", int(headers["Retry-After"]) > 0)
    check("the body says why", json.loads(body)["error"]["code"] == "rate_limited")


def session_cache():
    key = f"/v1/cache/session:{RUN}?ttl_ms=60000&tags=user:{RUN}"
    status, _, body = call("PUT", key, raw=b'{"user": "alice"}')
    version = json.loads(body)["version"]
    check("session stored", status == 200)
    status, headers, body = call("GET", f"/v1/cache/session:{RUN}?refresh_ttl=true")
    check("session read back", status == 200 and json.loads(body) == {"user": "alice"})
    check("with its version", int(headers["Outrigger-Version"]) == version)
    status, _, _ = call("PUT", f"/v1/cache/session:{RUN}?if=version:{version + 1000}", raw=b"x")
    check("a stale compare-and-set is refused (412)", status == 412)
    status, _, body = call("POST", "/v1/cache/invalidate", {"tags": [f"user:{RUN}"]})
    check("logging out invalidates the user's sessions", json.loads(body)["deleted"] == 1)


def checkout_lock():
    name = f"/v1/locks/checkout-{RUN}"
    status, _, body = call("POST", f"{name}/acquire", {"ttl_ms": 10000})
    lease = json.loads(body)
    check("checkout lock taken", status == 200 and lease["fence"] >= 1)
    status, _, _ = call("POST", f"{name}/acquire", {"ttl_ms": 10000, "wait_ms": 100})
    check("a concurrent checkout waits, then gives up (409)", status == 409)
    status, _, _ = call("POST", f"{name}/release", {"token": lease["token"]})
    check("released", status == 200)


def who_is_online():
    room = f"/v1/presence/lobby-{RUN}"
    call("PUT", f"{room}/alice", {"metadata": {"name": "Alice"}, "ttl_ms": 30000})
    call("PUT", f"{room}/bob", {"metadata": {"name": "Bob"}, "ttl_ms": 30000})
    _, _, body = call("GET", room)
    names = sorted(m["metadata"]["name"] for m in json.loads(body)["members"])
    check("Alice and Bob are online", names == ["Alice", "Bob"])
    status, _, body = call("GET", "/v1/members/alice/rooms")
    check("Alice's rooms include the lobby", f"lobby-{RUN}" in json.loads(body)["rooms"])


def room_messages():
    channel = f"/v1/pubsub/room-{RUN}"
    received, opened = [], threading.Event()

    def listen():
        req = urllib.request.Request(SIDECAR + channel, headers={"Accept": "text/event-stream"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            opened.set()  # the response has started: the subscription is live
            for line in resp:
                line = line.decode().strip()
                if line.startswith("data:"):
                    received.append(json.loads(line[5:])["payload"])
                    if len(received) == 3:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    check("subscribed", opened.wait(10))
    for text in ["hi", "how are you?", "bye"]:
        status, _, _ = call("POST", channel, raw=text.encode())
        check(f"published {text!r}", status == 200)
    listener.join(10)
    check("the room got every message, in order", received == ["hi", "how are you?", "bye"])


if __name__ == "__main__":
    login_throttling()
    session_cache()
    checkout_lock()
    who_is_online()
    room_messages()
    print("python http example: all checks passed")
