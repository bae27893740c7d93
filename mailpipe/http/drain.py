"""HTTP connection hygiene: graceful shutdown, and early answers on keep-alive.

``RequestTracker`` knows when no request is in progress; ``DrainUnreadBody``
keeps a connection usable after an answer given before the request body was read.

On its shutdown trigger hypercorn stops accepting at once, but with a Quart
app it then keeps idle keep-alive connections open until ``graceful_timeout``
runs out, so a plain shutdown always took the full timeout. This ASGI wrapper
counts requests whose response has not been sent yet; once that count is
zero, the server task can be cancelled without cutting any request short.

An answer given before the request body was read (401, 404, 405, 413, ...)
leaves the rest of the body on the connection, and the next request on that
keep-alive connection never got an answer. Now a bounded rest is read and
discarded, and past the bound the connection is closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import trio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Any, Any, Any], Awaitable[None]]


class RequestTracker:
    """ASGI middleware: ``active`` is the number of HTTP requests not yet answered."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope, counting HTTP requests."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._begin()
        finished = False

        async def tracked_send(message: Message) -> None:
            nonlocal finished
            await send(message)
            if (
                not finished
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                finished = True
                self._end()

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            if not finished:
                finished = True
                self._end()

    def _begin(self) -> None:
        self.active += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _end(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in progress."""
        while self.active:
            await self._idle.wait()


DRAIN_BYTES: Final = 64 * 1024
"""Unread request body read and discarded after an early answer, at most."""
DRAIN_S: Final = 2.0
"""Seconds the rest of an unread request body may take to arrive after the answer."""


def _declares_body(scope: Scope) -> bool:
    """Whether the request has a body: a non-zero Content-Length or any Transfer-Encoding."""
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
    return False


class DrainUnreadBody:
    """ASGI middleware: an answer given before the request body was read to its end
    (401, 404, 405, 413, ...) leaves the connection fit for the next request.

    The answer goes out at once; then up to :data:`DRAIN_BYTES` of the rest of
    the body, arriving within :data:`DRAIN_S`, are read and discarded and the
    connection stays open. A longer or slower body closes the connection. Either
    way no later request on it waits behind that body. This holds for every
    early answer of the wrapped app, without each handler knowing about it.
    """

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI scope; drain or close after an early answer."""
        if scope["type"] != "http" or not _declares_body(scope):
            await self.app(scope, receive, send)
            return
        body = _BodyWatch(receive)

        async def draining_send(message: Message) -> None:
            if message["type"] != "http.response.body" or message.get("more_body", False):
                await send(message)
                return
            if not body.done.is_set():
                if message.get("body"):
                    await send({**message, "more_body": True})
                await body.drain()
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            # The last message makes the server recycle or close the connection;
            # Quart cancels its request task once the body is read, and a close
            # cut short there left the connection open and unanswered.
            with trio.CancelScope(shield=True):
                await send(message)

        await self.app(scope, body.receive, draining_send)


class _BodyWatch:
    """The request side of one exchange: whether the body was read to its end."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = trio.Event()
        self._draining = False
        self._drained = 0

    async def receive(self) -> Message:
        message = await self._receive()
        if self._draining:
            self._drained += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.done.set()
        return message

    async def drain(self) -> None:
        """Read and discard the rest of the body, within the bounds."""
        self._draining = True
        with trio.move_on_after(DRAIN_S):
            while not self.done.is_set() and self._drained <= DRAIN_BYTES:
                await self.receive()
