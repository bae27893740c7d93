"""``GET /openapi.json`` and ``GET /docs``: the API description, for programs and people.

The docs page is rendered here from the same document, self-contained (no
script, no CDN), so it works offline and behind any firewall.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from quart import Blueprint, Response

from mailpipe.http.openapi import Json, spec

bp = Blueprint("docs", __name__)

_METHODS = ("get", "post", "put", "patch", "delete")
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{margin-top:2.5rem;border-bottom:1px solid #ddd}h3{margin-bottom:.2rem}
code,pre{font:13px ui-monospace,monospace;background:#f5f5f5}pre{padding:.6rem;overflow:auto}
.m{display:inline-block;min-width:4.5rem;font-weight:600;text-transform:uppercase}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
"""


@bp.get("/openapi.json")
async def openapi_json() -> Json:
    """The OpenAPI 3.1 document."""
    return spec()


@bp.get("/docs")
async def docs() -> Response:
    """The document as one HTML page."""
    return Response(render_html(spec()), content_type="text/html; charset=utf-8")


def render_html(doc: Json) -> str:
    """A readable, self-contained HTML page of an OpenAPI document."""
    info = doc["info"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(info['title'])} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} API <small>{escape(info['version'])}</small></h1>",
        f"<p>{escape(info.get('description', ''))}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>",
        "<h2>Endpoints</h2>",
    ]
    for path, item in doc["paths"].items():
        for method in _METHODS:
            if method in item:
                parts.append(_operation(path, method, item[method], item.get("parameters", [])))
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<h3 id='schema-{escape(name)}'>{escape(name)}</h3>{_pre(schema)}")
    parts.append("</body></html>")
    return "\n".join(parts)


def _operation(path: str, method: str, op: Json, shared: list[Json]) -> str:
    out = [
        f"<h3><span class='m'>{method}</span> <code>{escape(path)}</code>"
        f"{' &#128273;' if op.get('security') else ''}</h3>",
        f"<p><b>{escape(op.get('summary', ''))}</b> {escape(op.get('description', ''))}</p>",
    ]
    params = [*shared, *op.get("parameters", [])]
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th></th></tr>")
        for p in params:
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                f"<td><code>{escape(json.dumps(p.get('schema', {})))}</code></td>"
                f"<td>{escape(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        for media, content in body["content"].items():
            out.append(f"<p>Body <code>{escape(media)}</code>:</p>{_pre(content['schema'])}")
    out.append("<ul>")
    for status, response in op["responses"].items():
        media = ", ".join(
            f"{escape(m)} {_schema_name(c.get('schema', {}))}"
            for m, c in response.get("content", {}).items()
        )
        out.append(
            f"<li><b>{escape(status)}</b> {escape(response['description'])}"
            f"{' — ' + media if media else ''}</li>"
        )
    out.append("</ul>")
    return "\n".join(out)


def _schema_name(schema: Json) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = escape(ref.rsplit("/", 1)[-1])
        return f"<a href='#schema-{name}'>{name}</a>"
    return f"<code>{escape(json.dumps(schema))}</code>"


def _pre(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"
