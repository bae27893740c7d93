"""JSON bodies for the errors hypercorn answers itself, before the app sees a request.

A malformed request line is a 400 and headers over h11's limit a 431; hypercorn
0.18 sends those from ``H11Protocol._send_error_response`` with an empty
body, so they were the only mailpipe errors without ``{"error": …}``. This
replaces that one private method with the same answer plus a JSON body. It is
installed once, only when the method has the shape it patches; the raw-socket
tests in ``tests/test_http_errors.py`` notice if a hypercorn upgrade changes it.
"""

from __future__ import annotations

import inspect
import json
import logging
from http import HTTPStatus
from itertools import chain
from typing import Any

import h11
from hypercorn.protocol.h11 import H11Protocol

log = logging.getLogger(__name__)

MESSAGES = {
    400: "malformed HTTP request",
    431: "request headers too large",
}


async def _send_json_error(self: Any, status_code: int) -> None:
    message = MESSAGES.get(status_code) or HTTPStatus(status_code).phrase.lower()
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await self._send_h11_event(
        h11.Response(
            status_code=status_code,
            headers=list(chain(headers, self.config.response_headers("h11"))),
        )
    )
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


def install_json_error_bodies() -> None:
    """Make hypercorn's own 400/431 answers carry a JSON ``{"error": …}`` body."""
    original = getattr(H11Protocol, "_send_error_response", None)
    if original is _send_json_error:
        return
    if original is None or list(inspect.signature(original).parameters) != ["self", "status_code"]:
        log.warning("hypercorn's error answers are not the expected kind: left as they are")
        return
    H11Protocol._send_error_response = _send_json_error  # type: ignore[method-assign]
