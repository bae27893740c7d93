"""The quart-trio application: routes, authentication and JSON errors."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from quart import Response, current_app, jsonify, request
from quart.json.provider import DefaultJSONProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from mailpipe.errors import (
    ApiError,
    KeyReused,
    RequestInvalid,
    RequestTooLarge,
    StoreError,
)
from mailpipe.http.drain import DrainUnreadBody

if TYPE_CHECKING:
    from mailpipe.http.facade import Pipeline

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


STATUS: Final[tuple[tuple[type[Exception], int], ...]] = (
    (RequestTooLarge, 413),
    (RequestInvalid, 400),
    (KeyReused, 409),
    (StoreError, 503),
)
"""The HTTP status of each error a handler lets through (the first match wins);
:class:`ApiError` carries its own, anything else is a 500."""
HTTP_MESSAGES: Final = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large (MAX_BODY_BYTES)",
}
Answer = tuple[int, dict[str, Any], dict[str, str]]
"""(status, JSON body, extra headers)."""


def error_response(exc: Exception, where: str = "") -> Answer:
    """The one answer to ``exc``, for Quart's handlers and the ASGI fast path alike.

    Server faults are logged here, once: a failing store briefly (it is an
    outage, named in the answer), anything unexpected with its traceback.
    """
    if isinstance(exc, ApiError):
        return exc.status, {"error": exc.message, **exc.extra}, {}
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        valid = getattr(exc, "valid_methods", None)  # a 405 names what the route allows
        allow = {"Allow": ", ".join(sorted(valid))} if code == 405 and valid else {}
        return code, {"error": HTTP_MESSAGES.get(code, exc.description or exc.name)}, allow
    status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
    if status == 503:
        # The database is away or full: a fault of the moment, not of the
        # request. Nothing was stored; the client may try again.
        log.error("%s: %s", where, exc)
        body = {"error": f"storage unavailable, nothing was stored: {exc}"}
        return 503, body, {"Retry-After": "1"}
    if status == 500:
        log.error("unhandled error in %s", where, exc_info=exc)
        return 500, {"error": "internal error"}, {}
    return status, {"error": str(exc)}, {}


def _quart_response(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


def pipeline() -> Pipeline:
    """The pipeline the current app serves."""
    return cast("Pipeline", current_app.extensions["mailpipe"])


def require_key(handler: F) -> F:
    """Answer 401 unless ``x-api-key`` equals the configured key (constant time)."""

    @wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = request.headers.get("x-api-key", "").encode()
        if not hmac.compare_digest(given, pipeline().api_key.encode()):
            raise ApiError(401, "missing or invalid x-api-key")
        return await handler(*args, **kwargs)

    return cast(F, wrapper)


def create_app(svc: Pipeline) -> QuartTrio:
    """The app serving ``svc``'s API."""
    from mailpipe.http import (
        api,
        dashboard,
        docs,
        events,
        probes,
        reputation,
        suppressions,
        webhooks,
    )

    app = QuartTrio("mailpipe")
    app.config["MAX_CONTENT_LENGTH"] = svc.config.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    if isinstance(app.json, DefaultJSONProvider):  # keep the seed's field order
        app.json.sort_keys = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.extensions["mailpipe"] = svc
    app.register_blueprint(api.bp)
    app.register_blueprint(probes.bp)
    app.register_blueprint(suppressions.bp)
    app.register_blueprint(reputation.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(dashboard.bp)
    # Every early answer (401, 404, 405, 413, ...) drains or closes its connection.
    app.asgi_app = cast(Any, DrainUnreadBody(app.asgi_app))  # type: ignore[method-assign]

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _quart_response(*error_response(exc))

    @app.errorhandler(Exception)
    async def any_error(exc: Exception) -> Response:
        return _quart_response(*error_response(exc, f"{request.method} {request.path}"))

    return app
