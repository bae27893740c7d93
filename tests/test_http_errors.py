"""Errors the HTTP layer answers itself: a 405 names the route's methods in ``Allow``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import trio
from conftest import make_config, running_service
from rawhttp import open_raw, request_bytes

from mailpipe.http.app import create_app

PROBE_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
"""Methods tried against each route: every route lacks at least one of them."""


def concrete(rule: str) -> str:
    """A path matching ``rule`` (each ``<converter:name>`` filled in)."""
    return re.sub(r"<[^>]+>", "x@example.com", rule)


class TestMethodNotAllowed:
    async def test_every_route_answers_405_with_allow_and_json(self, tmp_path: Path) -> None:
        with trio.fail_after(30):
            async with running_service(make_config(tmp_path)) as svc:
                allowed: dict[str, set[str]] = {}  # several rules can share a path
                for rule in create_app(svc).url_map.iter_rules():
                    if rule.endpoint != "static":
                        allowed.setdefault(rule.rule, set()).update(rule.methods or ())
                assert allowed
                async with await open_raw(svc.url) as conn:  # keep-alive across all of them
                    for path, methods in allowed.items():
                        method = next(m for m in PROBE_METHODS if m not in methods)
                        await conn.send(request_bytes(method, concrete(path)))
                        answer = await conn.full_response()
                        assert answer is not None, path
                        status, headers, body = answer
                        assert status == 405, (method, path)
                        listed = {m.strip() for m in headers["allow"].split(",")}
                        assert listed == methods, path
                        assert json.loads(body) == {"error": "method not allowed"}


class TestServerLayerErrors:
    """What hypercorn answers before the app sees a request has a JSON body too."""

    async def _answer(self, tmp_path: Path, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        with trio.fail_after(30):
            async with (
                running_service(make_config(tmp_path)) as svc,
                await open_raw(svc.url) as conn,
            ):
                await conn.send(raw)
                answer = await conn.full_response()
        assert answer is not None
        return answer

    async def test_a_malformed_request_line_is_a_json_400(self, tmp_path: Path) -> None:
        status, headers, body = await self._answer(tmp_path, b"NOT A REQUEST\r\n\r\n")
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": "malformed HTTP request"}

    async def test_headers_over_the_limit_are_a_json_431(self, tmp_path: Path) -> None:
        huge = "X-Filler: " + "x" * 200_000
        status, headers, body = await self._answer(
            tmp_path, request_bytes("GET", "/health", huge)
        )
        assert status == 431
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": "request headers too large"}
