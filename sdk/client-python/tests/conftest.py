"""Live sidecars for the tests: real `outrigger` processes on the memory
backend and on a real `redis-server`, each on free ports, reached over TCP
and over the Unix socket.

`OUTRIGGER_BIN` names the sidecar binary (default: the workspace's
`target/debug/outrigger`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from outrigger import Client

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, ready: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready within {limit}s")


@dataclass
class Redis:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def start_redis(port: int | None = None) -> Redis:
    port = port or free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until("redis-server", up)
    return Redis(port, process)


@dataclass
class Sidecar:
    url: str
    socket: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def client(self, **kwargs: object) -> Client:
        return Client(self.url, **kwargs)  # type: ignore[arg-type]

    def restart(self) -> Sidecar:
        """Stops it and starts a new process on the same address."""
        self.stop()
        env = {k: v for k, v in self.env.items() if k.startswith("OUTRIGGER_")}
        port = int(self.url.rsplit(":", 1)[1])
        return start_sidecar(None, port, **env)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def binary() -> str:
    return os.environ.get("OUTRIGGER_BIN") or str(ROOT / "target" / "debug" / "outrigger")


def start_sidecar(redis: Redis | None = None, port: int | None = None, **env: str) -> Sidecar:
    port = port or free_port()
    tmp = Path(tempfile.mkdtemp(prefix="outrigger-py-"))
    sock = str(tmp / "http.sock")
    full = {
        **os.environ,
        "OUTRIGGER_HTTP__ADDR": f"127.0.0.1:{port}",
        "OUTRIGGER_HTTP__SOCKET": sock,
        "OUTRIGGER_GRPC__ADDR": "127.0.0.1:0",
        "OUTRIGGER_NAMESPACE": f"py{port}",
        "OUTRIGGER_RATELIMIT__POLICIES__LOGIN__ALGORITHM": "gcra",
        "OUTRIGGER_RATELIMIT__POLICIES__LOGIN__LIMIT": "5",
        "OUTRIGGER_RATELIMIT__POLICIES__LOGIN__PERIOD": "1m",
        "OUTRIGGER_RATELIMIT__POLICIES__IP__ALGORITHM": "fixed_window",
        "OUTRIGGER_RATELIMIT__POLICIES__IP__LIMIT": "2",
        "OUTRIGGER_RATELIMIT__POLICIES__IP__PERIOD": "1m",
        **env,
    }
    for key in ("OUTRIGGER_URL", "OUTRIGGER_SOCKET", "OUTRIGGER_TOKEN"):
        full.pop(key, None)
    if redis is not None:
        full["OUTRIGGER_REDIS__URL"] = redis.url
    log = tmp / "sidecar.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([binary(), "serve"], env=full, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the sidecar exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_until("the sidecar", ready)
    return Sidecar(url, sock, process, log, full)


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: run scripts/install-test-deps.sh")
    r = start_redis()
    yield r
    r.stop()


@pytest.fixture(scope="session", params=["memory", "redis"])
def sidecar(request: pytest.FixtureRequest) -> Iterator[Sidecar]:
    redis_server = request.getfixturevalue("redis") if request.param == "redis" else None
    s = start_sidecar(redis_server)
    yield s
    s.stop()


@pytest.fixture(params=["tcp", "unix"])
def client(request: pytest.FixtureRequest, sidecar: Sidecar) -> Iterator[Client]:
    c = sidecar.client(socket=sidecar.socket) if request.param == "unix" else sidecar.client()
    yield c
    c.close()


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A name no other test (or parametrization) uses."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)
    return f"{name}-{time.monotonic_ns()}"
