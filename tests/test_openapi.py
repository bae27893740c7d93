"""The OpenAPI document matches the app: every route described, every description served,
and the live service answers as described for any generated input (schemathesis)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import trio
from conftest import API_KEY, make_config
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from procs import ServiceProcess, checked_outbox_service
from schemathesis import checks

from mailpipe.addresses import AddressValidator
from mailpipe.config import Config
from mailpipe.content.tokens import Tokens
from mailpipe.http.app import create_app
from mailpipe.http.docs import render_html
from mailpipe.http.feedback import SnsFastPath, make_verifier
from mailpipe.http.openapi import spec

IGNORED_METHODS = {"HEAD", "OPTIONS"}


class FakePipeline:
    """The HTTP façade with nothing behind it: enough to build the app and list
    its routes; any operation called is a test error."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.api_key = API_KEY
        self.tokens = Tokens(b"k" * 32)
        self.addresses = AddressValidator()
        self.cpu_limiter = trio.CapacityLimiter(1)
        self.sns_verifier = make_verifier(config, self.sns_get)

    def sns_get(self, url: str) -> bytes:
        raise AssertionError(f"fetched {url}")

    def __getattr__(self, name: str) -> Any:  # store, accept, stop_topic, ...
        raise AssertionError(f"the route table needs no {name}")


def served_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path with ``{}`` for each parameter) of every route the app serves."""
    app = create_app(FakePipeline(make_config(tmp_path)))
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("dashboard."):
            continue  # the dashboard is HTML for people (tests/test_dashboard.py checks it)
        path = re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "{}", rule.rule)
        found |= {(method, path) for method in (rule.methods or set()) - IGNORED_METHODS}
    return found | {("POST", SnsFastPath.PATH)}  # served in front of Quart


def documented_routes() -> set[tuple[str, str]]:
    """(method, path with ``{}`` for each parameter) of every operation in the document."""
    found = set()
    for path, item in spec()["paths"].items():
        for method in item.keys() - {"parameters", "summary", "description"}:
            found.add((method.upper(), re.sub(r"\{[^{}]+\}", "{}", path)))
    return found


def test_every_route_is_documented_and_every_documented_route_is_served(
    tmp_path: Path,
) -> None:
    served, documented = served_routes(tmp_path), documented_routes()
    assert served - documented == set(), "routes missing from mailpipe/http/openapi.py"
    assert documented - served == set(), "documented routes the app does not serve"


def test_every_operation_documents_its_answers_and_refusals() -> None:
    for path, item in spec()["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op.get("summary"), (method, path)
            assert {"200", "201", "202", "302"} & set(op["responses"]), (method, path)
            if op.get("security"):
                assert "401" in op["responses"], (method, path)
            if "requestBody" in op and "application/json" in op["requestBody"]["content"]:
                assert "400" in op["responses"] or "403" in op["responses"], (method, path)


def test_the_webhooks_section_describes_the_signed_event() -> None:
    document = spec()
    (hook,) = document["webhooks"].values()
    headers = {p["name"] for p in hook["post"]["parameters"]}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    event = document["components"]["schemas"]["WebhookEvent"]
    assert "topic.paused" in event["properties"]["type"]["enum"]
    validator = Draft202012Validator(event)
    sample = {"type": "bounced", "timestamp": "2026-12-02T13:00:00Z",
              "data": {"requestId": 1, "topicId": "t", "recipient": "a@x", "sesMessageId": "m",
                       "details": {}}}
    assert list(validator.iter_errors(sample)) == []


def test_docs_page_shows_every_path_and_links_the_document() -> None:
    page = render_html(spec())
    assert page.startswith("<!doctype html>")
    assert "href='/openapi.json'" in page
    for path in spec()["paths"]:
        assert f"<code>{path}</code>" in page
    assert "<script" not in page  # self-contained, works offline


# -- schemathesis against the live service ------------------------------------------


@pytest.fixture(scope="module")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """``python -m mailpipe`` on port 0 (outbox transport); its log has no traceback."""
    with checked_outbox_service(tmp_path_factory.mktemp("live")) as svc:
        yield svc


schema = schemathesis.openapi.from_dict(spec())
"""What ``/openapi.json`` serves (``test_live_document_is_the_spec`` holds them equal)."""


def test_live_document_is_the_spec(live_service: ServiceProcess) -> None:
    assert live_service.client.get("/openapi.json").json() == spec()


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_live_service_answers_as_documented(case: Any, live_service: ServiceProcess) -> None:
    """No 5xx for any generated input, and every answer matches the document."""
    case.call_and_validate(
        base_url=live_service.url, headers={"x-api-key": API_KEY}, checks=CHECKS, timeout=30
    )
