"""Bytes to and from the sidecar, on asyncio: HTTP/1.1 with kept-alive
connections over TCP or the Unix socket, from the standard library only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import TypeVar

from ._transport import MAX_IDLE, Address
from ._wire import Call, Reply, finish
from .errors import Unavailable

T = TypeVar("T")

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Closed(Exception):
    """The sidecar closed a kept-alive connection before answering."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise _Closed()
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ConnectionError(f"not an HTTP answer: {line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    size_line = await reader.readline()
    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
    if size == 0:
        await reader.readline()  # the empty trailer
        return b""
    data = await reader.readexactly(size)
    await reader.readline()
    return data


async def _read_body(
    reader: asyncio.StreamReader, status: int, headers: Mapping[str, str]
) -> bytes:
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            chunk = await _read_chunk(reader)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    length = headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read()


class AsyncTransport:
    """A pool of kept-alive connections, for one event loop."""

    def __init__(self, address: Address, timeout: float, headers: Mapping[str, str]) -> None:
        self.address = address
        self.timeout = timeout
        self.headers = dict(headers)
        if address.token:
            self.headers["Authorization"] = f"Bearer {address.token}"
        host = "localhost" if address.socket_path else f"{address.host}:{address.port}"
        self.headers["Host"] = host
        self._idle: list[Conn] = []

    async def _open(self) -> Conn:
        if self.address.socket_path:
            return await asyncio.open_unix_connection(self.address.socket_path)
        return await asyncio.open_connection(self.address.host, self.address.port)

    def _request(
        self, method: str, path: str, body: bytes | None, extra: Mapping[str, str]
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in {**self.headers, **extra}.items()]
        if body is not None or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()

    async def call(self, call: Call[T]) -> T:
        return finish(call, await self.send(call))

    async def send(self, call: Call[T]) -> Reply:
        extra = {"Content-Type": call.content_type} if call.content_type else {}
        request = self._request(call.method, call.path, call.body, extra)
        for attempt in (0, 1):
            reused = bool(self._idle)
            try:
                conn = (
                    self._idle.pop()
                    if reused
                    else await asyncio.wait_for(self._open(), self.timeout)
                )
            except (OSError, asyncio.TimeoutError) as err:
                raise self._unreachable(err) from err
            reader, writer = conn
            try:
                reply, keep = await asyncio.wait_for(
                    self._exchange(reader, writer, request), self.timeout
                )
            except asyncio.TimeoutError as err:
                writer.close()
                where = self.address.describe()
                raise Unavailable(
                    f"the sidecar at {where} did not answer within {self.timeout}s"
                ) from err
            except (OSError, _Closed, asyncio.IncompleteReadError, ValueError) as err:
                writer.close()
                if attempt == 0 and reused and (call.idempotent or isinstance(err, _Closed)):
                    continue
                raise self._unreachable(err) from err
            if keep and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
            else:
                writer.close()
            return reply
        raise AssertionError("unreachable")

    def _unreachable(self, err: BaseException) -> Unavailable:
        return Unavailable(f"cannot reach the sidecar at {self.address.describe()}: {err!r}")

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[Reply, bool]:
        writer.write(request)
        await writer.drain()
        status, headers = await _read_head(reader)
        body = await _read_body(reader, status, headers)
        keep = headers.get("connection", "").lower() != "close"
        return Reply(status, headers, body), keep

    async def stream(self, path: str, headers: Mapping[str, str]) -> AsyncGenerator[str, None]:
        """The lines of a streaming answer, on a connection of its own. A
        non-2xx answer is raised. Reads wait out the sidecar's keep-alive
        comments (every 15 s); a connection silent for three is dead."""
        silent = max(self.timeout, 45.0)
        try:
            reader, writer = await asyncio.wait_for(self._open(), self.timeout)
        except (OSError, asyncio.TimeoutError) as err:
            raise self._unreachable(err) from err
        try:
            writer.write(self._request("GET", path, None, headers))
            await writer.drain()
            status, head = await asyncio.wait_for(_read_head(reader), self.timeout)
            if status != 200:
                body = await _read_body(reader, status, head)
                finish(Call("GET", path, lambda r: None), Reply(status, head, body))
            chunked = head.get("transfer-encoding", "").lower() == "chunked"
            pending = b""
            while True:
                if chunked:
                    chunk = await asyncio.wait_for(_read_chunk(reader), silent)
                else:
                    chunk = await asyncio.wait_for(reader.read(65536), silent)
                if not chunk:
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace") + "\n"
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, _Closed) as err:
            raise Unavailable(f"the stream from {self.address.describe()} broke: {err!r}") from err
        finally:
            writer.close()
