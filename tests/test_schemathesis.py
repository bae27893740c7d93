"""schemathesis against the document a running service serves at ``/openapi.json``:
for generated valid and invalid input, no 5xx and every answer as documented.

Bounded: a few examples per operation (the whole run takes well under a minute).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import API_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from procs import ServiceProcess, checked_outbox_service
from schemathesis import GenerationMode, checks

from mailpipe.http.openapi import spec

EXAMPLES = 60
"""Examples per operation and mode: 15 operations, about 25 s on 2 shared cores."""

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
"""Not ``negative_data_rejection``: it counts an unknown query parameter (``?x=1``) as
invalid, which HTTP APIs, this one included, ignore."""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """``python -m mailpipe`` on port 0 (outbox transport); its log has no traceback."""
    with checked_outbox_service(tmp_path_factory.mktemp("schemathesis")) as svc:
        yield svc


@pytest.fixture(scope="module")
def live_schema(service: ServiceProcess) -> Any:
    """The document as the running service serves it."""
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json")


OPERATIONS = [
    (method.upper(), path)
    for path, item in spec()["paths"].items()
    for method in item
    if method != "parameters"
]
"""Every documented operation (``test_openapi`` holds the served document to ``spec()``)."""


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_the_running_service_answers_as_its_document_says(
    live_schema: Any, service: ServiceProcess, method: str, path: str, mode: GenerationMode
) -> None:
    """No 5xx, answers that match the document, and invalid input refused."""
    operation = live_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(
            base_url=service.url, headers={"x-api-key": API_KEY}, checks=CHECKS, timeout=30
        )

    try:
        answers_as_documented()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise
        pytest.skip("no invalid request can be made for this operation")
