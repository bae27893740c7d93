"""Keep-alive connections survive an answer given before the request body was read.

Raw sockets: an HTTP client would open a new connection and hide the hang.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from conftest import API_KEY, make_config, running_service
from rawhttp import RawConnection, open_raw, request_bytes

from mailpipe.http.drain import DRAIN_BYTES

JSON = "Content-Type: application/json"
BODY = b'{"messages": [{"topicId": "t", "emails": ["a@example.com"]}]}' + b" " * 20_000

# Every kind of early answer: authentication, routing, method, a refused link.
EARLY = [
    pytest.param("POST", "/v1/messages", (JSON,), 401, id="401-no-key"),
    pytest.param("POST", "/v1/messages", (JSON, "x-api-key: wrong-key-0123456789"), 401,
                 id="401-wrong-key"),
    pytest.param("PUT", "/health", (JSON,), 405, id="405-wrong-method"),
    pytest.param("DELETE", "/v1/messages", (JSON, f"x-api-key: {API_KEY}"), 405,
                 id="405-with-key"),
    pytest.param("POST", "/no/such/path", (JSON,), 404, id="404"),
    pytest.param("POST", "/v1/unsubscribe?requestId=1&t=forged",
                 ("Content-Type: application/x-www-form-urlencoded",), 400,
                 id="400-unsubscribe"),
]


async def health_answers(conn: RawConnection) -> bool:
    """Whether ``GET /health`` on ``conn`` is answered 200."""
    await conn.send(request_bytes("GET", "/health"))
    answer = await conn.response()
    return answer is not None and answer[0] == 200


@pytest.mark.parametrize("late", [False, True], ids=["body-with-head", "body-after-answer"])
@pytest.mark.parametrize(("method", "path", "headers", "status"), EARLY)
async def test_next_request_on_the_connection_is_answered(
    tmp_path: Path, method: str, path: str, headers: tuple[str, ...], status: int, late: bool
) -> None:
    request = request_bytes(method, path, *headers, body=BODY)
    head, body = request[: -len(BODY)], BODY
    with trio.fail_after(20):
        async with running_service(make_config(tmp_path)) as svc, await open_raw(svc.url) as conn:
            for _ in range(2):  # and again on the same connection
                await conn.send(head if late else head + body)
                answer = await conn.response()
                assert answer is not None
                assert answer[0] == status
                if late:
                    await conn.send(body)
                assert await health_answers(conn)


@pytest.mark.parametrize(("method", "path", "headers", "status"), EARLY)
async def test_a_body_past_the_drain_bound_ends_the_connection(
    tmp_path: Path, method: str, path: str, headers: tuple[str, ...], status: int
) -> None:
    body = b"x" * (16 * DRAIN_BYTES)
    request = request_bytes(method, path, *headers, body=body)
    with trio.fail_after(20):
        async with running_service(make_config(tmp_path)) as svc:
            async with await open_raw(svc.url) as conn:
                await conn.send(request[: -len(body)])
                answer = await conn.response()
                assert answer is not None
                assert answer[0] == status
                await conn.send(body)
                # Closed, or answered (when it was read anyway): never left waiting.
                await conn.send(request_bytes("GET", "/health"))
                answer = await conn.response()
                assert answer is None or answer[0] == 200
            async with await open_raw(svc.url) as conn:  # and the service is fine
                assert await health_answers(conn)
