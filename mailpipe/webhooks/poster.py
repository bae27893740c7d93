"""One webhook POST, bounded: blocking, for a worker thread; errors as values.

No redirect is followed (a 3xx is an answer like any other non-2xx); at most
``max_response_bytes`` of the answer are read (the first ``keep`` kept, as
text, for the deliveries API); the whole exchange, a receiver that trickles
its answer included, ends after ``timeout_s``. The target is checked again
right before the call (:func:`~mailpipe.webhooks.targets.check_target`), and
the connection goes only to an address checked as it is made
(:class:`~mailpipe.webhooks.targets.CheckedBackend`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import httpcore
import httpx

from mailpipe.webhooks.model import Attempt
from mailpipe.webhooks.targets import CheckedBackend, Resolve, TargetRefused, check_target, resolve

KEEP_RESPONSE: Final = 256
"""Bytes of an answer stored with the attempt (shown by the deliveries API)."""

Post = Callable[[str, Mapping[str, str], bytes], Attempt]
"""(url, headers, body) → what the attempt got; never raises."""


@dataclass(frozen=True)
class Limits:
    """How long one attempt may take and how much of the answer is read."""

    timeout_s: float = 10.0
    max_response_bytes: int = 64 * 1024
    allow_private: bool = False


class HttpPoster:
    """Posts webhooks with one shared connection pool (safe from several threads)."""

    def __init__(
        self, limits: Limits, *, max_connections: int, resolver: Resolve = resolve
    ) -> None:
        self._limits = limits
        self._resolver = resolver
        self._client = httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(limits.timeout_s),
            transport=_checked_transport(limits.allow_private, max_connections, resolver),
            trust_env=False,
        )

    def close(self) -> None:
        """Close the pool's connections."""
        self._client.close()

    def _timed_out(self) -> str:
        return f"timed out after {self._limits.timeout_s:g}s"

    def __call__(self, url: str, headers: Mapping[str, str], body: bytes) -> Attempt:
        """POST ``body`` to ``url``; what came back, or why nothing did."""
        start = time.monotonic()
        deadline = start + self._limits.timeout_s

        def elapsed() -> float:
            return (time.monotonic() - start) * 1000

        try:
            check_target(url, allow_private=self._limits.allow_private, resolver=self._resolver)
            with self._client.stream("POST", url, content=body, headers=dict(headers)) as resp:
                got = bytearray()
                for chunk in resp.iter_raw():
                    got += chunk
                    if len(got) >= self._limits.max_response_bytes:
                        break
                    if time.monotonic() > deadline:  # a trickle: not a whole answer
                        return Attempt(None, elapsed(), _text(got), self._timed_out())
                return Attempt(resp.status_code, elapsed(), _text(got))
        except TargetRefused as exc:
            return Attempt(None, elapsed(), "", str(exc))
        except httpx.TimeoutException:
            return Attempt(None, elapsed(), "", self._timed_out())
        except httpx.HTTPError as exc:
            return Attempt(None, elapsed(), "", f"{type(exc).__name__}: {exc}"[:300])


def _checked_transport(
    allow_private: bool, max_connections: int, resolver: Resolve
) -> httpx.HTTPTransport:
    """httpx's transport, its connection pool on a :class:`CheckedBackend`.

    httpx takes no network backend, so its pool is replaced by one made as
    httpx makes it, with the backend (``tests/test_webhooks_api.py``'s DNS
    rebinding test fails if a new httpx stops using it)."""
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=5.0,  # httpx's default
        network_backend=CheckedBackend(allow_private=allow_private, resolver=resolver),
    )
    return transport


def _text(data: bytes | bytearray) -> str:
    return bytes(data[:KEEP_RESPONSE]).decode("utf-8", "replace")
