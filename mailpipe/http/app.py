"""The quart-trio application: routes, authentication and JSON errors."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast

from quart import Response, current_app, jsonify, request
from quart.json.provider import DefaultJSONProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from mailpipe.errors import StoreError
from mailpipe.http.drain import DrainUnreadBody

if TYPE_CHECKING:
    from mailpipe.service import Service

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def service() -> Service:
    """The service the current app belongs to."""
    return cast("Service", current_app.extensions["mailpipe"])


def require_key(handler: F) -> F:
    """Answer 401 unless ``x-api-key`` equals the configured key (constant time)."""

    @wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = request.headers.get("x-api-key", "").encode()
        if not hmac.compare_digest(given, service().api_key.encode()):
            raise ApiError(401, "missing or invalid x-api-key")
        return await handler(*args, **kwargs)

    return cast(F, wrapper)


def create_app(svc: Service) -> QuartTrio:
    """The app serving ``svc``'s API."""
    from mailpipe.http import api, docs, events, feedback, probes, suppressions

    app = QuartTrio("mailpipe")
    app.config["MAX_CONTENT_LENGTH"] = svc.config.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    if isinstance(app.json, DefaultJSONProvider):  # keep the seed's field order
        app.json.sort_keys = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.extensions["mailpipe"] = svc
    app.register_blueprint(api.bp)
    app.register_blueprint(probes.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(suppressions.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(docs.bp)
    # Every early answer (401, 404, 405, 413, ...) drains or closes its connection.
    app.asgi_app = cast(Any, DrainUnreadBody(app.asgi_app))  # type: ignore[method-assign]

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        response = jsonify({"error": exc.message, **exc.extra})
        response.status_code = exc.status
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        message = {
            404: "not found",
            405: "method not allowed",
            413: "request body too large (MAX_BODY_BYTES)",
        }.get(code, exc.description or exc.name)
        response = jsonify({"error": message})
        response.status_code = code
        valid = getattr(exc, "valid_methods", None)  # a 405 names what the route allows
        if code == 405 and valid:
            response.headers["Allow"] = ", ".join(sorted(valid))
        return response

    @app.errorhandler(StoreError)
    async def store_error(exc: StoreError) -> Response:
        # The database is away or full: a fault of the moment, not of the
        # request. Nothing was stored; the client may try again.
        log.error("%s %s: %s", request.method, request.path, exc)
        response = jsonify({"error": f"storage unavailable, nothing was stored: {exc}"})
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = jsonify({"error": "internal error"})
        response.status_code = 500
        return response

    return app
