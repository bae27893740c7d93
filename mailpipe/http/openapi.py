"""The OpenAPI 3.1 description of every HTTP endpoint, kept by hand.

``tests/test_openapi.py`` holds it against the app's routes (every route is
described, every described path is served) and schemathesis holds the live
service to it (no 5xx for any generated input, every answer matches).
When a route changes, change its entry here.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from mailpipe.http.openapi_webhooks import PATHS as WEBHOOK_PATHS
from mailpipe.http.openapi_webhooks import SCHEMAS as WEBHOOK_SCHEMAS
from mailpipe.http.openapi_webhooks import WEBHOOKS

Json = dict[str, Any]

VERSION: Final = "0.1.0"


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: Json, **extra: Any) -> Json:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _error(description: str) -> Json:
    return _json(description, _ref("Error"))


def _int(minimum: int = 0, **extra: Any) -> Json:
    return {"type": "integer", "minimum": minimum, **extra}


def _obj(required: list[str], **properties: Json) -> Json:
    return {"type": "object", "required": required, "properties": properties}


UNAUTHORIZED: Final = _error("`x-api-key` missing or wrong")
KEYED: Final[list[Json]] = [{"apiKey": []}]

TOPIC_PATTERN: Final = (
    "^[^/\\\\?#%\\x00-\\x1f\\x7f-\\x9f]*[^/\\\\?#%\\s\\x00-\\x1f\\x7f-\\x9f]"
    "[^/\\\\?#%\\x00-\\x1f\\x7f-\\x9f]*$"
)
"""A topic id reachable as a path segment: no '/', '\\', '?', '#', '%' or control
characters, not blank; '.' and '..' are refused too (``TOPIC_SCHEMA``)."""
TOPIC_SCHEMA: Final[Json] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": TOPIC_PATTERN,
    "not": {"enum": [".", ".."]},
}
TOPIC_ID: Final = {
    "name": "topicId",
    "in": "path",
    "required": True,
    "description": "The topic (campaign) id given when posting (percent-encoded); "
    "an id no request has answers zero counts",
    "schema": {"type": "string", "minLength": 1},
}
EMAIL_PATH: Final = {
    "name": "email",
    "in": "path",
    "required": True,
    "description": "The address (compared case-insensitively)",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 320,
        "pattern": "^[^/\\x00-\\x1f\\x7f]+$",
    },
}
TRACKING_QUERY: Final = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }
    for name, description in (
        ("requestId", "The request the link was made for"),
        ("t", "HMAC token binding the link to the request (and, for clicks, the URL)"),
    )
]

SCHEMAS: Final[Json] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What was wrong"}},
        "description": "Every error answer: the problem named (which message, field, address)",
    },
    "Message": {
        "type": "object",
        "required": ["topicId", "subject", "content"],
        "additionalProperties": False,
        "anyOf": [
            {"required": ["emails"], "properties": {"emails": {"type": "array", "minItems": 1}}},
            {"required": ["recipients"], "properties": {"recipients": {"type": "array"}}},
        ],
        "description": "One content and its recipients: `emails`, `recipients`, or both. "
        "Any other field is refused, naming it.",
        "properties": {
            "topicId": {
                **TOPIC_SCHEMA,
                "description": "Campaign id, reachable as `/v1/topics/{topicId}`: not `.` or "
                "`..`, no `/`, `\\`, `?`, `#`, `%` or control characters",
            },
            "emails": {
                "type": ["array", "null"],
                "items": {"type": "string", "format": "email"},
                "description": "Recipients; one address spelled several ways is sent once. "
                "7-bit ASCII before the @ (SES has no SMTPUTF8); a Unicode domain is sent "
                "as Punycode",
            },
            "recipients": {
                "type": ["array", "null"],
                "minItems": 1,
                "description": "Recipients with per-recipient template data",
                "items": {
                    **_obj(
                        ["email"],
                        email={"type": "string", "format": "email"},
                        data={"type": ["object", "null"]},
                    ),
                    "additionalProperties": False,
                },
            },
            "subject": {
                "type": "string",
                "minLength": 1,
                "maxLength": 998,
                "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f]*$",
                "description": "Template; no control characters (TAB allowed); not blank; "
                "rendered, still one line of at most 998 characters",
            },
            "content": {
                "type": "string",
                "minLength": 1,
                "description": "HTML template (autoescaped); not blank. Every render is "
                "bounded (loop iterations, operations, sizes, time); a template over a "
                "bound is a 400 naming it",
            },
            "text": {
                "type": ["string", "null"],
                "minLength": 1,
                "description": "Plain-text part; derived from the HTML when absent or null",
            },
            "scheduledAt": {
                "anyOf": [
                    {"type": "string", "format": "date-time"},
                    {"type": "string", "maxLength": 0},
                    {"type": "null"},
                ],
                "description": "RFC 3339 with offset; in the past, empty or null means now",
            },
            "trackOpens": {"type": "boolean", "default": True},
            "trackClicks": {"type": "boolean", "default": True},
        },
    },
    "SendRequest": {
        **_obj(["messages"], messages={"type": "array", "minItems": 1, "items": _ref("Message")}),
        "additionalProperties": False,
    },
    "Accepted": _obj(
        ["count", "elapsed"],
        count=_int(description="Requests stored (one per distinct recipient)"),
        elapsed={"type": "string", "description": "Server time taken, Go duration syntax"},
        dryRun={"type": "boolean", "description": "`true`: validated only, nothing stored"},
    ),
    "TopicStats": _obj(
        ["request", "result"],
        request=_obj(
            ["total", "created", "processing", "sent", "failed", "stopped"],
            total=_int(),
            created=_int(),
            processing=_int(),
            sent=_int(),
            failed=_int(),
            stopped=_int(),
        ),
        result=_obj(
            ["statuses"],
            statuses={
                "type": "object",
                "additionalProperties": _int(),
                "description": "Distinct requests per SES/tracking event type",
            },
        ),
    ),
    "Figures": _obj(
        ["sends", "bounces", "complaints", "bounceRate", "complaintRate"],
        sends=_int(description="Requests sent in the window"),
        bounces=_int(description="Requests with a permanent bounce in the window"),
        complaints=_int(description="Requests with a complaint in the window"),
        bounceRate={"type": "number", "minimum": 0},
        complaintRate={"type": "number", "minimum": 0},
    ),
    "Reputation": {
        "allOf": [
            _ref("Figures"),
            _obj(["windowHours"], windowHours={"type": "number", "exclusiveMinimum": 0}),
        ]
    },
    "Pause": {
        "type": ["object", "null"],
        "description": "Why, by whom and when sending was paused, and the figures then; null "
        "when not paused",
        "allOf": [
            _ref("Figures"),
            _obj(
                ["reason", "by", "at"],
                reason={"type": "string"},
                by={"type": "string", "enum": ["auto", "user"]},
                at={"type": "string", "format": "date-time"},
            ),
        ],
    },
    "Topic": {
        "allOf": [
            _ref("TopicStats"),
            _obj(["reputation", "paused"], reputation=_ref("Reputation"),
                 paused={"anyOf": [{"type": "null"}, _ref("Pause")]}),
        ]
    },
    "Account": _obj(
        ["quota", "enforcementStatus", "sendingEnabled", "paused", "reputation", "rate",
         "emailRate"],
        quota={
            "anyOf": [
                {"type": "null"},
                _obj(
                    ["max24HourSend", "maxSendRate", "sentLast24Hours"],
                    max24HourSend={"type": ["number", "null"]},
                    maxSendRate={"type": ["number", "null"]},
                    sentLast24Hours={"type": ["number", "null"]},
                ),
            ]
        },
        enforcementStatus={"type": ["string", "null"]},
        sendingEnabled={"type": ["boolean", "null"]},
        error={"type": ["string", "null"], "description": "Why GetAccount did not answer"},
        paused={"anyOf": [{"type": "null"}, _ref("Pause")]},
        reputation=_ref("Reputation"),
        rate={"type": "number", "description": "The rate sends are held to: EMAIL_RATE, "
              "or the SES account's MaxSendRate at start when that is lower"},
        emailRate={"type": "number", "description": "EMAIL_RATE as configured"},
    ),
    "Stopped": _obj(["stopped"], stopped=_int(description="Requests moved to status 4")),
    "SentCount": _obj(
        ["count", "hours", "since"],
        count=_int(),
        hours=_int(1, maximum=168),
        since={"type": "string", "format": "date-time"},
    ),
    "Suppression": _obj(
        ["email", "reason", "createdAt"],
        email={"type": "string"},
        reason={"type": "string", "enum": ["bounce", "complaint", "unsubscribe"]},
        source={"type": ["string", "null"]},
        requestId={"type": ["integer", "null"]},
        createdAt={"type": "string", "format": "date-time"},
    ),
    "SuppressionPage": _obj(
        ["suppressions", "nextCursor"],
        suppressions={"type": "array", "items": _ref("Suppression")},
        nextCursor={"type": ["string", "null"], "description": "`cursor` of the next page"},
    ),
    "SnsMessage": {
        "type": "object",
        "description": "An Amazon SNS HTTP(S) message (sent with Content-Type text/plain)",
        "properties": {
            name: {"type": "string"}
            for name in (
                "Type",
                "MessageId",
                "TopicArn",
                "Subject",
                "Message",
                "Timestamp",
                "SignatureVersion",
                "Signature",
                "SigningCertURL",
                "SubscribeURL",
                "Token",
                "UnsubscribeURL",
            )
        },
    },
    "SnsAnswer": _obj(
        ["status"],
        status={
            "type": "string",
            "enum": ["stored", "duplicate", "ignored", "ok", "confirmed", "unsubscribed"],
        },
        results=_int(),
        matched=_int(),
        suppressed=_int(),
    ),
    "Status": _obj(["status"], status={"type": "string"}),
    "NotReady": _obj(
        ["status", "error"],
        status={"type": "string", "enum": ["unavailable", "paused", "enforcement", "stopping"]},
        error={"type": "string"},
    ),
}

MESSAGES: Final[Json] = {
    "post": {
        "summary": "Post a send",
        "description": (
            "Validates the whole body and stores every recipient in one transaction "
            "before answering; any invalid part is a 4xx and nothing is stored. "
            "With `Idempotency-Key`, a repeat of the same body within 24 h answers the "
            "first response again (header `Idempotent-Replayed: true`) and stores nothing. "
            "With `dryRun=true` the body is validated in full and nothing is stored."
        ),
        "security": KEYED,
        "parameters": [
            {
                "name": "dryRun",
                "in": "query",
                "required": False,
                "description": "`true`: validate only (the Idempotency-Key is then ignored)",
                "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "1 to 255 printable ASCII characters; remembered for 24 h",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[\\x20-\\x7e]+$",
                },
            },
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("SendRequest")}},
        },
        "responses": {
            "200": _json(
                "Stored (or replayed)",
                _ref("Accepted"),
                headers={
                    "Idempotent-Replayed": {
                        "description": "`true` when this is the stored first answer",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
            ),
            "400": _error("Malformed JSON or an invalid field, named"),
            "401": UNAUTHORIZED,
            "409": _error("This Idempotency-Key was used with a different body"),
            "413": _error("Over MAX_RECIPIENTS_PER_REQUEST recipients or MAX_BODY_BYTES"),
        },
    }
}

TOPIC: Final[Json] = {
    "parameters": [TOPIC_ID],
    "get": {
        "summary": "Topic statistics",
        "description": "Requests per status (every status, `processing` included) and "
        "distinct requests per feedback event type.",
        "security": KEYED,
        "responses": {"200": _json("Counts", _ref("Topic")), "401": UNAUTHORIZED},
    },
    "delete": {
        "summary": "Stop a topic",
        "description": "Stops every request of the topic not yet handed to SES, including "
        "rows already claimed and waiting in memory; they end in status 4.",
        "security": KEYED,
        "responses": {"200": _json("How many were stopped", _ref("Stopped")), "401": UNAUTHORIZED},
    },
}

def _topic_action(summary: str, description: str) -> Json:
    body = {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"reason": {"type": "string", "minLength": 1,
                                                    "maxLength": 500}}}}}}
    return {
        "parameters": [TOPIC_ID],
        "post": {
            "summary": summary,
            "description": description,
            "security": KEYED,
            **({"requestBody": body} if "pause" in summary.lower() else {}),
            "responses": {
                "200": _json("The topic", _ref("Topic")),
                "400": _error("Body not a JSON object with a valid `reason`"),
                "401": UNAUTHORIZED,
                "404": _error("The topic has no requests"),
            },
        },
    }


TOPIC_PAUSE: Final = _topic_action(
    "Pause a topic",
    "Its pending requests stay pending and claimed ones go back to the queue, until resumed.",
)
TOPIC_RESUME: Final = _topic_action("Resume a topic", "Its pending requests are sent again.")
ACCOUNT: Final[Json] = {
    "get": {
        "summary": "The account",
        "description": "SES quota and standing (GetAccount), the stored pause, and the "
        "reputation window's figures.",
        "security": KEYED,
        "responses": {"200": _json("The account", _ref("Account")), "401": UNAUTHORIZED},
    }
}
ACCOUNT_RESUME: Final[Json] = {
    "post": {
        "summary": "Resume the account",
        "description": "Lifts the reputation guard's account pause.",
        "security": KEYED,
        "responses": {"200": _json("The account", _ref("Account")), "401": UNAUTHORIZED},
    }
}

SENT_COUNT: Final[Json] = {
    "get": {
        "summary": "Requests sent recently",
        "security": KEYED,
        "parameters": [
            {
                "name": "hours",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 168, "default": 24},
            }
        ],
        "responses": {
            "200": _json("Sent in the last `hours`", _ref("SentCount")),
            "400": _error("`hours` not an integer from 1 to 168"),
            "401": UNAUTHORIZED,
        },
    }
}

SNS_RESULTS: Final[Json] = {
    "post": {
        "summary": "SES feedback over Amazon SNS",
        "description": "No API key: each message is verified (signature v1/v2, SNS certificate "
        "URL, TopicArn in SNS_TOPIC_ARNS, timestamp within an hour) before it is acted on. "
        "Delivery, Bounce, Complaint, Open, Click… records are stored per request; permanent "
        "bounces and complaints suppress the address.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("SnsMessage")},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        "responses": {
            "200": _json("Verified and handled", _ref("SnsAnswer")),
            "403": _error("Not verified: nothing stored"),
            "408": _error("Body not received in time"),
            "413": _error("Body too large"),
            "502": _error("Subscription could not be confirmed; SNS retries"),
            "503": _error("Certificate unavailable or store failing; SNS retries"),
        },
    }
}

SUPPRESSIONS: Final[Json] = {
    "get": {
        "summary": "List suppressed addresses",
        "description": "Newest first; pass `nextCursor` as `cursor` for the next page.",
        "security": KEYED,
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            },
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
            },
        ],
        "responses": {
            "200": _json("A page", _ref("SuppressionPage")),
            "400": _error("`limit` or `cursor` out of range"),
            "401": UNAUTHORIZED,
        },
    },
    "post": {
        "summary": "Suppress addresses by hand",
        "description": (
            "Adds 1 to 1,000 addresses, all valid or none (a 400 naming the first bad one); "
            "`added` counts those not suppressed before."
        ),
        "security": KEYED,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _obj(
                        ["emails"],
                        emails={
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 1000,
                            "items": {"type": "string"},
                        },
                        reason={
                            "type": "string",
                            "default": "manual",
                            "enum": ["manual", "bounce", "complaint", "unsubscribe"],
                        },
                    )
                }
            },
        },
        "responses": {
            "200": _json("Suppressed", _obj(["added"], added=_int())),
            "400": _error("Not a list of 1 to 1,000 valid addresses, or an unknown reason"),
            "401": UNAUTHORIZED,
        },
    },
}

SUPPRESSION: Final[Json] = {
    "parameters": [EMAIL_PATH],
    "get": {
        "summary": "Look up one address",
        "security": KEYED,
        "responses": {
            "200": _json("Suppressed", _ref("Suppression")),
            "401": UNAUTHORIZED,
            "404": _error("Not suppressed"),
        },
    },
    "delete": {
        "summary": "Lift a suppression",
        "description": "Later sends reach the address again.",
        "security": KEYED,
        "responses": {
            "200": _json("Lifted", _obj(["deleted"], deleted={"type": "boolean", "const": True})),
            "401": UNAUTHORIZED,
            "404": _error("Not suppressed"),
        },
    },
}


def _page(description: str) -> Json:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


OPEN_PIXEL: Final[Json] = {
    "get": {
        "summary": "Open-tracking pixel",
        "description": "Always a 1x1 transparent GIF with no-cache headers, whatever the "
        "token; records an `Open` only when the token is valid.",
        "parameters": TRACKING_QUERY,
        "responses": {
            "200": {
                "description": "The pixel",
                "content": {
                    "image/gif": {"schema": {"type": "string", "contentEncoding": "binary"}}
                },
            }
        },
    }
}

CLICK: Final[Json] = {
    "get": {
        "summary": "Click-tracking redirect",
        "description": "With a valid token: records a `Click` and redirects to exactly the "
        "signed link. Anything else is an HTML page that redirects nowhere.",
        "parameters": [
            *TRACKING_QUERY,
            {
                "name": "url",
                "in": "query",
                "required": False,
                "description": "The original link",
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "302": {
                "description": "To the original link",
                "headers": {"Location": {"schema": {"type": "string"}}},
            },
            "400": _page("Link not valid: nothing recorded, no redirect"),
        },
    }
}

UNSUBSCRIBE: Final[Json] = {
    "get": {
        "summary": "Unsubscribe page",
        "description": "A small page whose button POSTs the one-click form; the GET changes "
        "nothing (mail scanners prefetch links).",
        "parameters": TRACKING_QUERY,
        "responses": {"200": _page("The confirm page"), "400": _page("Link not valid")},
    },
    "post": {
        "summary": "One-click unsubscribe (RFC 8058)",
        "description": "With the form `List-Unsubscribe=One-Click`: puts the recipient on the "
        "suppression list (reason `unsubscribe`). No key, no cookies, never a redirect.",
        "parameters": TRACKING_QUERY,
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": _obj(
                        ["List-Unsubscribe"],
                        **{"List-Unsubscribe": {"type": "string", "const": "One-Click"}},
                    )
                }
            },
        },
        "responses": {
            "200": _page("Unsubscribed"),
            "400": _page("Link not valid, or the form is not List-Unsubscribe=One-Click"),
            "413": _page("Form too large"),
            "503": _page("Store failing; try again"),
        },
    },
}

PROBES: Final[Json] = {
    "/health": {
        "get": {"summary": "Liveness", "responses": {"200": _json("Alive", _ref("Status"))}}
    },
    "/ready": {
        "get": {
            "summary": "Readiness",
            "description": "200 when the store answers, sending is not paused (by SES, the "
            "reputation guard or the database) and SES reports EnforcementStatus HEALTHY.",
            "responses": {
                "200": _json("Ready", _ref("Status")),
                "503": _json("Not ready, and why", _ref("NotReady")),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "description": "Text exposition; every name starts with `mailpipe_`.",
            "responses": {
                "200": {
                    "description": "Metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
        }
    },
    "/docs": {
        "get": {
            "summary": "This document for people",
            "responses": {
                "200": {
                    "description": "HTML",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}


_DOCUMENT: Final[Json] = {
    "openapi": "3.1.0",
    "info": {
        "title": "mailpipe",
        "version": VERSION,
        "description": (
            "Bulk email through Amazon SES at exactly the allowed rate. JSON is camelCase; "
            "keyed endpoints need the `x-api-key` header; every error is "
            '`{"error": "…"}` with a fitting 4xx/5xx.'
        ),
    },
    "paths": {
        "/v1/messages": MESSAGES,
        "/v1/topics/{topicId}": TOPIC,
        "/v1/topics/{topicId}/pause": TOPIC_PAUSE,
        "/v1/topics/{topicId}/resume": TOPIC_RESUME,
        "/v1/account": ACCOUNT,
        "/v1/account/resume": ACCOUNT_RESUME,
        "/v1/events/counts/sent": SENT_COUNT,
        "/v1/events/results": SNS_RESULTS,
        "/v1/events/open": OPEN_PIXEL,
        "/v1/events/click": CLICK,
        "/v1/unsubscribe": UNSUBSCRIBE,
        "/v1/suppressions": SUPPRESSIONS,
        "/v1/suppressions/{email}": SUPPRESSION,
        **WEBHOOK_PATHS,
        **PROBES,
    },
    "webhooks": WEBHOOKS,
    "components": {
        "schemas": {**SCHEMAS, **WEBHOOK_SCHEMAS},
        "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
    },
}


def spec() -> Json:
    """The OpenAPI 3.1 document (a fresh copy each call)."""
    return copy.deepcopy(_DOCUMENT)
