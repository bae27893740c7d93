"""Raw HTTP/1.1 over one TCP connection, for what an HTTP client would smooth over.

    status = await post_raw(url, "/v1/events/results", "Content-Length: 9", [b"x" * 9])
    async with await open_raw(url) as conn:        # keep-alive: several requests
        await conn.send(request_bytes("GET", "/health"))
        status, body = await conn.response()      # None when the server closed it
"""

from __future__ import annotations

import trio


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def request_bytes(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    """One request: ``headers`` are whole lines; Content-Length is added for ``body``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: mailpipe.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawConnection:
    """One TCP connection that sends bytes and reads Content-Length framed responses."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""

    async def __aenter__(self) -> RawConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> bool:
        """Send ``data``; False when the server had closed the connection."""
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError:
            return False
        return True

    async def response(self) -> tuple[int, bytes] | None:
        """The next response's status and body; None when the connection ended first."""
        answer = await self.full_response()
        return None if answer is None else (answer[0], answer[2])

    async def full_response(self) -> tuple[int, dict[str, str], bytes] | None:
        """The next response's status, headers (names lower-cased) and body; None
        when the connection ended first."""
        while b"\r\n\r\n" not in self._buffer:
            if not await self._fill():
                return None
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            if not await self._fill():
                return None
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return int(lines[0].split()[1]), headers, body

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some()
        except trio.BrokenResourceError:
            return False
        self._buffer += data
        return bool(data)


async def open_raw(url: str) -> RawConnection:
    """A new connection to the service at ``url`` (``http://host:port``)."""
    return RawConnection(await trio.open_tcp_stream(*_address(url)))


async def post_raw(url: str, path: str, header: str, parts: list[bytes]) -> int:
    """POST ``parts`` after one extra ``header`` line on a new connection; the status."""
    async with await open_raw(url) as conn:
        await conn.send(request_bytes("POST", path, header))
        for part in parts:
            if not await conn.send(part):
                break  # the server answered and closed before taking it all
        answer = await conn.response()
    assert answer is not None, "the connection ended without an answer"
    return answer[0]
