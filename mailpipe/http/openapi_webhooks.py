"""The OpenAPI 3.1 description of the webhooks API and of the events it sends.

``PATHS`` joins the document's ``paths``; ``WEBHOOKS`` is its ``webhooks``
section (what mailpipe POSTs to a registered endpoint); ``SCHEMAS`` its
components. Kept by hand beside :mod:`mailpipe.http.webhooks`.
"""

from __future__ import annotations

from typing import Any, Final

from mailpipe.webhooks.events import ALL, EVENT_TYPES

Json = dict[str, Any]


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: Json) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Json:
    return _json(description, _ref("Error"))


KEYED: Final[list[Json]] = [{"apiKey": []}]
UNAUTHORIZED: Final = _error("`x-api-key` missing or wrong")
NOT_FOUND: Final = _error("No such webhook endpoint")
TIME: Final[Json] = {"type": "string", "format": "date-time"}
NULLABLE_TIME: Final[Json] = {"type": ["string", "null"], "format": "date-time"}
WEBHOOK_ID: Final[Json] = {
    "name": "webhookId", "in": "path", "required": True,
    "description": "The endpoint's id (`wh_…`)", "schema": {"type": "string", "minLength": 1},
}
EVENT_ID: Final[Json] = {
    "name": "eventId", "in": "path", "required": True,
    "description": "The event's id (`webhook-id`, `evt_…`)",
    "schema": {"type": "string", "minLength": 1},
}
EVENTS_FILTER: Final[Json] = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "string", "enum": [*EVENT_TYPES, ALL]},
    "description": "The event types to receive, or `[\"*\"]` for all",
}
TEXT_OR_NULL: Final[Json] = {"type": ["string", "null"], "minLength": 1}

SCHEMAS: Final[Json] = {
    "WebhookEndpoint": {
        "type": "object",
        "required": ["id", "url", "events", "topicId", "description", "enabled",
                     "disabledReason", "failingSince", "createdAt", "updatedAt"],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string"}},
            "topicId": {"type": ["string", "null"], "description": "Only this topic's events"},
            "description": {"type": ["string", "null"]},
            "enabled": {"type": "boolean"},
            "disabledReason": {
                "type": ["string", "null"],
                "description": "Why delivery stopped (410 Gone, or failing for the whole "
                "retry window); PATCH `enabled: true` to resume",
            },
            "failingSince": NULLABLE_TIME,
            "createdAt": TIME,
            "updatedAt": TIME,
        },
        "description": "A registered endpoint. Its signing secret is never shown here.",
    },
    "WebhookEndpointWithSecret": {
        "allOf": [
            _ref("WebhookEndpoint"),
            {
                "type": "object",
                "required": ["secret"],
                "properties": {
                    "secret": {
                        "type": "string", "pattern": "^whsec_",
                        "description": "The signing secret, shown this once",
                    },
                    "previousSecretExpiresAt": {
                        **TIME, "description": "After a rotation: until when the previous "
                        "secret signs too",
                    },
                },
            },
        ]
    },
    "WebhookRegistration": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "description": "http(s) URL (https with ENV=production); "
                    "loopback, private, link-local and metadata addresses are refused unless "
                    "WEBHOOK_ALLOW_PRIVATE=true"},
            "events": EVENTS_FILTER,
            "topicId": {**TEXT_OR_NULL, "maxLength": 255},
            "description": {**TEXT_OR_NULL, "maxLength": 500},
            "enabled": {"type": "boolean"},
        },
    },
    "WebhookDelivery": {
        "type": "object",
        "required": ["eventId", "type", "status", "attempts", "nextRetryAt", "createdAt",
                     "history"],
        "properties": {
            "eventId": {"type": "string"},
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "integer", "minimum": 0},
            "nextRetryAt": NULLABLE_TIME,
            "createdAt": TIME,
            "history": {
                "type": "array",
                "description": "The latest attempts, newest first",
                "items": {
                    "type": "object",
                    "required": ["at", "outcome", "statusCode", "latencyMs", "response", "error",
                                 "nextRetryAt"],
                    "properties": {
                        "at": TIME,
                        "outcome": {"type": "string",
                                    "enum": ["delivered", "retry", "failed", "gone"]},
                        "statusCode": {"type": ["integer", "null"]},
                        "latencyMs": {"type": "number"},
                        "response": {"type": ["string", "null"],
                                     "description": "The answer's first bytes"},
                        "error": {"type": ["string", "null"]},
                        "nextRetryAt": NULLABLE_TIME,
                    },
                },
            },
        },
    },
    "WebhookEvent": {
        "type": "object",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "timestamp": TIME,
            "data": {
                "type": "object",
                "description": "For events about a request: `requestId`, `topicId`, "
                "`recipient`, `sesMessageId` and `details` (the SES record's own object, "
                "the tracked link, the error of a failed send). `topic.paused`: `topicId`, "
                "`reason`, `by` (`auto` | `user`) and `figures`.",
                "properties": {
                    "requestId": {"type": ["integer", "null"]},
                    "topicId": {"type": ["string", "null"]},
                    "recipient": {"type": ["string", "null"]},
                    "sesMessageId": {"type": ["string", "null"]},
                    "details": {"type": "object"},
                },
            },
        },
    },
}

_ENDPOINT: Final = _json("The endpoint", _ref("WebhookEndpoint"))
_BODY: Final[Json] = {
    "required": True,
    "content": {"application/json": {"schema": _ref("WebhookRegistration")}},
}

PATHS: Final[Json] = {
    "/v1/webhooks": {
        "get": {
            "summary": "List webhook endpoints",
            "security": KEYED,
            "responses": {
                "200": _json("Every endpoint, oldest first", {
                    "type": "object", "required": ["webhooks"],
                    "properties": {"webhooks": {"type": "array",
                                                "items": _ref("WebhookEndpoint")}},
                }),
                "401": UNAUTHORIZED,
            },
        },
        "post": {
            "summary": "Register a webhook endpoint",
            "description": "`url` and `events` are required. The answer holds the signing "
            "secret (`whsec_…`), shown this once.",
            "security": KEYED,
            "requestBody": _BODY,
            "responses": {
                "201": _json("Registered", _ref("WebhookEndpointWithSecret")),
                "400": _error("A field is missing or invalid, or the URL is refused"),
                "401": UNAUTHORIZED,
                "409": _error("WEBHOOK_MAX_ENDPOINTS reached"),
                "413": _error("Body too large"),
            },
        },
    },
    "/v1/webhooks/{webhookId}": {
        "parameters": [WEBHOOK_ID],
        "get": {
            "summary": "One webhook endpoint",
            "security": KEYED,
            "responses": {"200": _ENDPOINT, "401": UNAUTHORIZED, "404": NOT_FOUND},
        },
        "patch": {
            "summary": "Change a webhook endpoint",
            "description": "Any of `url`, `events`, `topicId`, `description`, `enabled`; "
            "enabling clears the reason it was disabled.",
            "security": KEYED,
            "requestBody": _BODY,
            "responses": {
                "200": _ENDPOINT,
                "400": _error("A field is invalid, or the URL is refused"),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "413": _error("Body too large"),
            },
        },
        "delete": {
            "summary": "Delete a webhook endpoint",
            "description": "Its pending deliveries go with it.",
            "security": KEYED,
            "responses": {
                "200": _json("Deleted", {"type": "object", "required": ["deleted"],
                                         "properties": {"deleted": {"const": True}}}),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
    },
    "/v1/webhooks/{webhookId}/rotate-secret": {
        "parameters": [WEBHOOK_ID],
        "post": {
            "summary": "Rotate the signing secret",
            "description": "A new secret, shown this once; the previous one keeps signing "
            "beside it (two `v1,` signatures) for 24 hours.",
            "security": KEYED,
            "responses": {
                "200": _json("Rotated", _ref("WebhookEndpointWithSecret")),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
    },
    "/v1/webhooks/{webhookId}/deliveries": {
        "parameters": [WEBHOOK_ID],
        "get": {
            "summary": "Recent deliveries and their attempts",
            "security": KEYED,
            "parameters": [{
                "name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 500},
            }],
            "responses": {
                "200": _json("Newest first", {
                    "type": "object", "required": ["deliveries"],
                    "properties": {"deliveries": {"type": "array",
                                                  "items": _ref("WebhookDelivery")}},
                }),
                "400": _error("`limit` out of range"),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
    },
    "/v1/webhooks/{webhookId}/deliveries/{eventId}/retry": {
        "parameters": [WEBHOOK_ID, EVENT_ID],
        "post": {
            "summary": "Send one event again, now",
            "security": KEYED,
            "responses": {
                "202": _json("Due now", {
                    "type": "object", "required": ["retrying", "eventId"],
                    "properties": {"retrying": {"const": True}, "eventId": {"type": "string"}},
                }),
                "401": UNAUTHORIZED,
                "404": _error("No such endpoint, or no delivery of this event to it"),
            },
        },
    },
}

_SIGNATURE_HEADERS: Final[list[Json]] = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "The event's stable id: the same on every retry; deduplicate on it"},
    {"name": "webhook-timestamp", "in": "header", "required": True,
     "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "description": "Seconds since the epoch when this attempt was signed"},
    {"name": "webhook-signature", "in": "header", "required": True,
     "schema": {"type": "string"},
     "description": "Space-separated `v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per "
     "secret that signs now (two for 24 h after a rotation); Standard Webhooks"},
]

WEBHOOKS: Final[Json] = {
    "event": {
        "post": {
            "summary": "An event, POSTed to each endpoint that asked for its type",
            "description": "Signed per Standard Webhooks. Delivered at least once: any 2xx "
            "counts as delivered; 410 disables the endpoint; anything else (or no answer "
            "within WEBHOOK_TIMEOUT_S) is retried with exponential backoff and jitter for "
            "WEBHOOK_RETRY_HOURS. Redirects are not followed.",
            "parameters": _SIGNATURE_HEADERS,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("WebhookEvent")}},
            },
            "responses": {
                "200": {"description": "Delivered (any 2xx)"},
                "410": {"description": "Gone: the endpoint is disabled"},
                "default": {"description": "Retried later"},
            },
        }
    }
}
