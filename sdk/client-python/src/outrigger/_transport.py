"""Bytes to and from the sidecar, blocking: HTTP/1.1 with kept-alive
connections over TCP or the sidecar's Unix socket (the fast path), from the
standard library only."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Generator, Mapping
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


class _Closed(Exception):
    """The sidecar closed a kept-alive connection before answering."""


class _Conn:
    """One kept-alive connection: a socket and a buffered reader over it.
    Requests go out in one write; answers are parsed by hand (http.client's
    header parsing costs more than the sidecar's whole near-cache hit)."""

    def __init__(self, address: Address, timeout: float) -> None:
        if address.socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address.socket_path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((address.host, address.port), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def exchange(self, request: bytes) -> tuple[Reply, bool]:
        self.sock.sendall(request)
        line = self.reader.readline(65537)
        if not line:
            raise _Closed()
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise http.client.HTTPException(f"not an HTTP answer: {line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line = self.reader.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self._body(status, headers)
        return Reply(status, headers, body), headers.get("connection", "").lower() != "close"

    def _body(self, status: int, headers: Mapping[str, str]) -> bytes:
        if status in (204, 304) or 100 <= status < 200:
            return b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.reader.readline(1026).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self.reader.readline(1026)
                    return b"".join(chunks)
                chunks.append(self._exactly(size))
                self.reader.readline(3)
        length = headers.get("content-length")
        if length is not None:
            return self._exactly(int(length))
        return self.reader.read()

    def _exactly(self, n: int) -> bytes:
        data = self.reader.read(n)
        if len(data) != n:
            raise http.client.IncompleteRead(data, n - len(data))
        return data


class Transport:
    """A pool of kept-alive connections; safe to share between threads."""

    def __init__(self, address: Address, timeout: float, headers: Mapping[str, str]) -> None:
        self.address = address
        self.timeout = timeout
        self.headers = dict(headers)
        if address.token:
            self.headers["Authorization"] = f"Bearer {address.token}"
        host = "localhost" if address.socket_path else f"{address.host}:{address.port}"
        fixed = {"Host": host, **self.headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()

    def _connect(self, timeout: float | None = None) -> http.client.HTTPConnection:
        """An http.client connection (for streams)."""
        t = self.timeout if timeout is None else timeout
        if self.address.socket_path:
            return _UnixConnection(self.address.socket_path, t)
        return http.client.HTTPConnection(self.address.host, self.address.port, timeout=t)

    def _take(self) -> tuple[_Conn, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return _Conn(self.address, self.timeout), False

    def _give_back(self, conn: _Conn) -> None:
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

    def _request(self, call: Call[T]) -> bytes:
        head = f"{call.method} {call.path} HTTP/1.1\r\n{self._fixed}"
        if call.content_type:
            head += f"Content-Type: {call.content_type}\r\n"
        if call.body is not None or call.method in ("POST", "PUT"):
            head += f"Content-Length: {len(call.body or b'')}\r\n"
        return (head + "\r\n").encode("latin-1") + (call.body or b"")

    def send(self, call: Call[T]) -> Reply:
        request = self._request(call)
        for attempt in (0, 1):
            try:
                conn, reused = self._take()
            except OSError as err:
                raise self._unreachable(err) from err
            try:
                reply, keep = conn.exchange(request)
            except socket.timeout as err:
                conn.close()
                where = self.address.describe()
                raise Unavailable(
                    f"the sidecar at {where} did not answer within {self.timeout}s"
                ) from err
            except (OSError, _Closed, http.client.HTTPException, ValueError) as err:
                conn.close()
                # A kept-alive connection the sidecar closed meanwhile: one
                # more try on a fresh one, when the call may be repeated (or
                # certainly was not received).
                received = not isinstance(err, (_Closed, BrokenPipeError))
                if attempt == 0 and reused and (call.idempotent or not received):
                    continue
                raise self._unreachable(err) from err
            if keep:
                self._give_back(conn)
            else:
                conn.close()
            return reply
        raise AssertionError("unreachable")

    def _unreachable(self, err: BaseException) -> Unavailable:
        return Unavailable(f"cannot reach the sidecar at {self.address.describe()}: {err!r}")

    def stream(self, path: str, headers: Mapping[str, str]) -> Generator[str, None, None]:
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


def _lines(
    conn: http.client.HTTPConnection, resp: http.client.HTTPResponse
) -> Generator[str, None, None]:
    try:
        while True:
            line = resp.readline()
            if not line:
                return
            yield line.decode("utf-8", errors="replace")
    finally:
        conn.close()
