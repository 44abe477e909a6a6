"""The same backend over gRPC, with stubs generated from ../../proto.

Generates the stubs into a temporary directory at start (grpcio-tools),
then exercises every service. OUTRIGGER_GRPC says where the sidecar is.
"""

import os
import sys
import tempfile
import threading
import time

import grpc
from grpc_tools import protoc

PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
TARGET = os.environ.get("OUTRIGGER_GRPC", "127.0.0.1:7481")
RUN = str(time.time_ns())


def generate_stubs():
    out = tempfile.mkdtemp(prefix="outrigger-stubs-")
    protos = [f"outrigger/v1/{name}.proto" for name in ("cache", "lock", "ratelimit", "presence", "pubsub", "admin")]
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if code != 0:
        raise SystemExit("protoc failed")
    # Regular packages, first on the path: the client library (also named
    # `outrigger`) may be installed beside this example.
    for package in ("outrigger", "outrigger/v1"):
        open(os.path.join(out, package, "__init__.py"), "a").close()
    sys.path.insert(0, out)


def check(what, ok):
    if not ok:
        raise SystemExit(f"FAIL {what}")
    print(f"ok   {what}")


def main():
    generate_stubs()
    from outrigger.v1 import cache_pb2 as cache, cache_pb2_grpc as cache_grpc
    from outrigger.v1 import lock_pb2 as lock, lock_pb2_grpc as lock_grpc
    from outrigger.v1 import ratelimit_pb2 as rl, ratelimit_pb2_grpc as rl_grpc
    from outrigger.v1 import presence_pb2 as presence, presence_pb2_grpc as presence_grpc
    from outrigger.v1 import pubsub_pb2 as pubsub, pubsub_pb2_grpc as pubsub_grpc
    from outrigger.v1 import admin_pb2 as admin, admin_pb2_grpc as admin_grpc

    channel = grpc.insecure_channel(TARGET)
    grpc.channel_ready_future(channel).result(timeout=10)

    status = admin_grpc.AdminStub(channel).Status(admin.StatusRequest())
    check(f"connected to outrigger {status.version} on {status.backend}", status.backend == "redis")

    # Login throttling.
    limiter = rl_grpc.RateLimitStub(channel)
    decisions = [limiter.Check(rl.CheckRequest(policy="login", key=f"bob-{RUN}")).allowed for _ in range(6)]
    check("five logins allowed, the sixth throttled", decisions == [True] * 5 + [False])

    # Session cache with compare-and-set.
    c = cache_grpc.CacheStub(channel)
    key = f"session:{RUN}"
    v1 = c.Set(cache.SetRequest(key=key, value=b"cart=1", ttl_ms=60000)).version
    got = c.Get(cache.GetRequest(key=key))
    check("session read back", got.found and got.value == b"cart=1" and got.version == v1)
    c.Set(cache.SetRequest(key=key, value=b"cart=2", condition=cache.CONDITION_IF_VERSION, expected_version=v1))
    try:
        c.Set(cache.SetRequest(key=key, value=b"cart=3", condition=cache.CONDITION_IF_VERSION, expected_version=v1))
        check("a stale compare-and-set is refused", False)
    except grpc.RpcError as err:
        check("a stale compare-and-set is refused", err.code() == grpc.StatusCode.FAILED_PRECONDITION)

    # A lock held for as long as our request stream stays open: the sidecar
    # renews it; ending the stream (or sending release) lets it go.
    locks = lock_grpc.LockStub(channel)
    done = threading.Event()

    def hold_requests():
        yield lock.HoldRequest(acquire=lock.AcquireRequest(name=f"report-{RUN}", ttl_ms=3000))
        done.wait(30)
        yield lock.HoldRequest(release=True)

    events = locks.Hold(hold_requests())
    first = next(events)
    check("report lock held with a fence", first.event == lock.HoldResponse.ACQUIRED and first.fence >= 1)
    other = locks.Acquire(lock.AcquireRequest(name=f"report-{RUN}", ttl_ms=1000))
    check("nobody else gets it meanwhile", not other.acquired)
    done.set()
    check("released on request", next(events).event == lock.HoldResponse.RELEASED)

    # Who is online, watched as it happens.
    p = presence_grpc.PresenceStub(channel)
    watch = p.Watch(presence.WatchRequest(room=f"lobby-{RUN}"))
    watch.initial_metadata()  # the sidecar answers once the watch is live
    p.Join(presence.JoinRequest(room=f"lobby-{RUN}", member="carol", metadata=b'{"name":"Carol"}', ttl_ms=30000))
    event = next(watch)
    check("the watcher saw Carol join", event.kind == presence.PresenceEvent.JOIN and event.member == "carol")
    watch.cancel()
    members = p.List(presence.ListMembersRequest(room=f"lobby-{RUN}")).members
    check("Carol is listed", [m.member for m in members] == ["carol"])

    # Room messages, durable, and replayed after a reconnect.
    ps = pubsub_grpc.PubSubStub(channel)
    offsets = [ps.Publish(pubsub.PublishRequest(channel=f"room-{RUN}", payload=m, durable=True)).offset for m in (b"a", b"b", b"c")]
    stream = ps.Subscribe(pubsub.SubscribeRequest(channels=[f"room-{RUN}"], from_offset=offsets[0]))
    resumed = next(stream).resumed  # first, where the resume stands
    check("nothing after its offset is missing", resumed.recovered and resumed.from_offset == offsets[1])
    replayed = [next(stream).message.payload for _ in range(2)]
    check("a reconnecting reader gets what it missed", replayed == [b"b", b"c"])
    stream.cancel()
    print("python grpc example: all checks passed")


if __name__ == "__main__":
    main()
