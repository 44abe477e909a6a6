"""Bytes to and from the sidecar, blocking: HTTP/1.1 with kept-alive
connections over TCP or the sidecar's Unix socket (the fast path), from the
standard library only."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from ._wire import Call, Reply, finish
from .errors import Unavailable

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:7480"

# Connections kept open for reuse, at most.
MAX_IDLE = 16


@dataclass(frozen=True)
class Address:
    """Where the sidecar is, from arguments or the environment."""

    host: str
    port: int
    socket_path: str | None
    token: str | None

    @staticmethod
    def resolve(url: str | None, socket_path: str | None, token: str | None) -> Address:
        url = url or os.environ.get("OUTRIGGER_URL") or DEFAULT_URL
        socket_path = socket_path or os.environ.get("OUTRIGGER_SOCKET") or None
        token = token or os.environ.get("OUTRIGGER_TOKEN") or None
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"sidecar URL {url!r}: expected http://host:port")
        return Address(parts.hostname, parts.port or 80, socket_path, token)

    def describe(self) -> str:
        return self.socket_path or f"{self.host}:{self.port}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Transport:
    """A pool of kept-alive connections; safe to share between threads."""

    def __init__(self, address: Address, timeout: float, headers: Mapping[str, str]) -> None:
        self.address = address
        self.timeout = timeout
        self.headers = dict(headers)
        if address.token:
            self.headers["Authorization"] = f"Bearer {address.token}"
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connect(self, timeout: float | None = None) -> http.client.HTTPConnection:
        t = self.timeout if timeout is None else timeout
        if self.address.socket_path:
            return _UnixConnection(self.address.socket_path, t)
        conn = http.client.HTTPConnection(self.address.host, self.address.port, timeout=t)
        return conn

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def call(self, call: Call[T]) -> T:
        return finish(call, self.send(call))

    def send(self, call: Call[T]) -> Reply:
        headers = dict(self.headers)
        if call.content_type:
            headers["Content-Type"] = call.content_type
        for attempt in (0, 1):
            conn, reused = self._take()
            try:
                conn.request(call.method, call.path, body=call.body, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except socket.timeout as err:
                conn.close()
                where = self.address.describe()
                raise Unavailable(
                    f"the sidecar at {where} did not answer within {self.timeout}s"
                ) from err
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                # A kept-alive connection the sidecar closed meanwhile: one
                # more try on a fresh one, when the call may be repeated (or
                # certainly was not received: the send itself failed).
                if (
                    attempt == 0
                    and reused
                    and (call.idempotent or isinstance(err, BrokenPipeError))
                ):
                    continue
                raise Unavailable(
                    f"cannot reach the sidecar at {self.address.describe()}: {err}"
                ) from err
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
            if resp.will_close:
                conn.close()
            else:
                self._give_back(conn)
            return reply
        raise AssertionError("unreachable")

    def stream(self, path: str, headers: Mapping[str, str]) -> Iterator[str]:
        """The lines of a streaming answer, on a connection of its own, which
        the iterator closes when it is closed. A non-2xx answer is raised."""
        # Reads wait out the sidecar's keep-alive comments (every 15 s); a
        # connection silent for three of them is dead.
        conn = self._connect(timeout=max(self.timeout, 45.0))
        try:
            conn.request("GET", path, headers={**self.headers, **headers})
            resp = conn.getresponse()
        except OSError as err:
            conn.close()
            raise Unavailable(
                f"cannot reach the sidecar at {self.address.describe()}: {err}"
            ) from err
        if resp.status != 200:
            body = resp.read()
            conn.close()
            stream: Call[None] = Call("GET", path, lambda r: None)
            finish(stream, Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body))
        return _lines(conn, resp)


def _lines(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> Iterator[str]:
    try:
        while True:
            line = resp.readline()
            if not line:
                return
            yield line.decode("utf-8", errors="replace")
    finally:
        conn.close()
