"""Graceful HTTP shutdown: know when no request is in progress.

On its shutdown trigger hypercorn stops accepting at once, but with a Quart
app it then keeps idle keep-alive connections open until ``graceful_timeout``
runs out, so a plain shutdown always took the full timeout. This ASGI wrapper
counts requests whose response has not been sent yet; once that count is
zero, the server task can be cancelled without cutting any request short.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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
