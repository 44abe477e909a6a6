#!/usr/bin/env python3
"""Where the sidecar's CPU goes, from a folded flame-graph file.

    profile-parts.py STACKS.folded CPU_US_PER_REQUEST

Each sample is given to the part of the request path of the innermost
frame that names one (walking from the leaf towards the root), so a
memcpy inside the Redis client counts as the Redis client. Prints a
markdown table: part, share of samples, and microseconds per request
(the share of CPU_US_PER_REQUEST, the sidecar's CPU time per request
measured over the same window).
"""

import re
import sys

# Ordered: the first part whose pattern matches a frame, innermost first.
PARTS = [
    ("plugin chain", r"outrigger::plugins|wasmtime"),
    ("validation", r"outrigger::validate"),
    ("metrics and spans", r"outrigger::telemetry|prometheus_client|opentelemetry|tracing_subscriber|tracing_core|tracing::span"),
    ("Redis client (encode, send, parse reply)", r"^redis::|<redis::|combine::"),
    ("primitive logic", r"outrigger::primitives|outrigger::backend|outrigger::app"),
    ("HTTP parse", r"httparse|hyper::proto::h1::role::.*parse|hyper::proto::h1::io::.*parse|Http1Transaction>::parse"),
    ("HTTP reply (encode, write)", r"hyper::proto::h1::role::.*encode|hyper::proto::h1::io::.*flush|hyper::proto::h1::dispatch.*poll_flush|into_response"),
    ("routing and middleware", r"axum::|tower::|matchit|outrigger::api|outrigger::serve|outrigger::kit"),
    ("HTTP connection (hyper)", r"hyper::|hyper_util::"),
    ("tokio: scheduler, timers, I/O driver", r"tokio::"),
    ("allocator", r"malloc|free|realloc|_int_|cfree"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in PARTS]
OTHER = "other"


def part(frames):
    for frame in reversed(frames):
        for name, pattern in COMPILED:
            if pattern.search(frame):
                return name
    return OTHER


def main():
    path, cpu = sys.argv[1], float(sys.argv[2])
    counts = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            n = int(n)
            name = part(stack.split(";"))
            counts[name] = counts.get(name, 0) + n
            total += n
    print(f"sidecar CPU per request: {cpu:.1f} µs\n")
    print("| part | share | µs / request |")
    print("|---|---:|---:|")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        share = n / total if total else 0
        print(f"| {name} | {share:.1%} | {share * cpu:.1f} |")


if __name__ == "__main__":
    main()
