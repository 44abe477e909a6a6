"""The Python client next to redis-py, the same operations in one run, at
concurrency 1: what an app pays for going through the sidecar from Python.

    python bench.py --url URL --socket PATH --redis REDIS_URL [--seconds S]

Prints one JSON row per (operation, way): p50 and p99 in µs, and for the
client's rows the ratios to redis-py's. The "direct" ways send what the
sidecar sends (its own Lua scripts, where it uses one). The cache hit is
served by the sidecar's near cache (run it with `cache.near.enabled`).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Callable

import redis

from outrigger import Client

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "sidecar" / "src" / "primitives"
VALUE = b"x" * 100


def measure(seconds: float, op: Callable[[int], object]) -> list[float]:
    for i in range(50):  # warm-up
        op(i)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        op(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
        i += 1
    return samples


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()

    r = redis.Redis.from_url(args.redis)
    acquire = r.register_script((SCRIPTS / "lock" / "lock_acquire.lua").read_text())
    release = r.register_script((SCRIPTS / "lock" / "lock_release.lua").read_text())
    ratelimit = SCRIPTS / "ratelimit"
    gcra = r.register_script(
        (ratelimit / "lib.lua").read_text() + (ratelimit / "gcra.lua").read_text()
    )
    r.set("pydirect:hit", VALUE)

    def direct_lock(i: int) -> None:
        token = f"t{i}"
        ok, _ = acquire(keys=["pydirect:lock:{l}", "pydirect:lock:{l}:fence"], args=[token, 10_000])
        assert ok == 1
        assert release(keys=["pydirect:lock:{l}"], args=[token, "pydirect:released", "lock:l"]) == 1

    ways: dict[str, dict[str, Callable[[int], object]]] = {
        "cache get (hit, near cache)": {"direct": lambda i: r.get("pydirect:hit")},
        "cache get (miss)": {"direct": lambda i: r.get(f"pydirect:miss:{i}")},
        "lock acquire+release": {"direct": direct_lock},
        "rate-limit check": {
            "direct": lambda i: gcra(
                keys=["pydirect:rl:{bench:k}"], args=["0.001000", 1_000_000_000, 1, "0"]
            )
        },
    }
    run = uuid.uuid4().hex[:8]
    for via, client in (
        ("client tcp", Client(args.url)),
        ("client uds", Client(args.url, socket=args.socket)),
    ):
        client.set(f"pyhit:{run}", VALUE)
        client.get(f"pyhit:{run}")  # into the near cache

        def lock(i: int, c: Client = client) -> None:
            lease = c.acquire(f"py:{run}", ttl=10)
            assert lease is not None
            assert c.release(lease)

        def check(i: int, c: Client = client) -> None:
            assert c.check("bench", f"py:{run}").allowed

        def hit(i: int, c: Client = client) -> None:
            assert c.get(f"pyhit:{run}") is not None

        def miss(i: int, c: Client = client) -> None:
            assert c.get(f"pymiss:{run}:{i}") is None

        ways["cache get (hit, near cache)"][via] = hit
        ways["cache get (miss)"][via] = miss
        ways["lock acquire+release"][via] = lock
        ways["rate-limit check"][via] = check
    for op, by_way in ways.items():
        direct = None
        for via, fn in by_way.items():
            samples = measure(args.seconds, fn)
            p50, p99 = quantile(samples, 0.5), quantile(samples, 0.99)
            row = {
                "client": "python",
                "op": op,
                "via": via,
                "requests": len(samples),
                "p50_us": p50,
                "p99_us": p99,
            }
            if direct is None:
                direct = (p50, p99)
            else:
                row["p50_ratio"], row["p99_ratio"] = p50 / direct[0], p99 / direct[1]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
