"""Per-recipient rendering of a message's subject, HTML and text.

Templates are Jinja2 in a sandbox with ``StrictUndefined``: a variable missing
from a recipient's data is an error, never an empty string. The HTML body is
autoescaped; subject and text are not. ``unsubscribe_url`` is always defined.

Each source text is compiled once (bounded cache); a field without any
template syntax is kept as a plain string and costs nothing to render.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import StrictUndefined, nodes

from mailpipe.content.bounded import (
    MAX_STRING,
    RENDER_TIME_S,
    BoundedEnvironment,
    Budget,
    Deadline,
    LimitExceeded,
    bound_loops,
    release,
    undeclared_variables,
    use,
)
from mailpipe.content.html import html_to_text
from mailpipe.content.tokens import Tokens
from mailpipe.errors import TemplateError

__all__ = [
    "CompiledMessage",
    "Deadline",
    "Rendered",
    "TemplateError",
    "check_recipients",
    "compile_message",
    "probe_links",
]

UNSUBSCRIBE_VAR = "unsubscribe_url"
MAX_RENDERED_CHARS = MAX_STRING  # per field; far beyond any real email
MAX_SUBJECT = 998
"""Characters of a subject, static or rendered (RFC 5322's line limit)."""
_CACHE_SIZE = 256
_SYNTAX = ("{{", "{%", "{#")
_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
"""Control characters a subject may not hold (TAB is folding white space, allowed)."""
_PROBE_BASE = "http://localhost:3000"
_PROBE_REQUEST_ID = 1_048_576
"""A request id of the size real ones have early on (an id is only known once stored)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's subject, HTML body and plain-text body."""

    subject: str
    html: str
    text: str


def _environment(*, autoescape: bool) -> BoundedEnvironment:
    return BoundedEnvironment(
        autoescape=autoescape, undefined=StrictUndefined, keep_trailing_newline=True
    )


_HTML_ENV = _environment(autoescape=True)
_PLAIN_ENV = _environment(autoescape=False)
_ENVS = {True: _HTML_ENV, False: _PLAIN_ENV}


@dataclass(frozen=True, slots=True)
class _Field:
    """One compiled field; ``template`` is None when the source is plain text."""

    name: str
    source: str
    template: jinja2.Template | None
    variables: frozenset[str]  # data names it reads, beyond globals and unsubscribe_url
    flat: bool  # only text and bare ``{{ name }}`` outputs: cannot fail once names exist

    def render(self, context: Mapping[str, Any]) -> str:
        if self.template is None:
            return self.source
        try:
            chunks: list[str] = []
            size = 0
            for chunk in self.template.generate(context):
                size += len(chunk)
                if size > MAX_RENDERED_CHARS:
                    raise TemplateError(self.name, "rendered text is too large")
                chunks.append(chunk)
        except TemplateError:
            raise
        except Exception as exc:  # any failure of user template code is the template's
            raise TemplateError(self.name, _describe(exc)) from exc
        return "".join(chunks)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile_field(name: str, source: str, autoescape: bool) -> _Field:
    if not any(mark in source for mark in _SYNTAX):
        return _Field(name, source, None, frozenset(), True)
    env = _ENVS[autoescape]
    try:
        ast = env.parse(source)
        names = undeclared_variables(ast)
        bound_loops(ast)
        template = env.from_string(ast)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(name, f"line {exc.lineno}: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(name, _describe(exc)) from exc
    variables = frozenset(names - env.globals.keys() - {UNSUBSCRIBE_VAR})
    return _Field(name, source, template, variables, _is_flat(ast))


def _is_flat(ast: nodes.Template) -> bool:
    """True if the template is only literal text and ``{{ name }}`` outputs."""
    return all(
        isinstance(node, nodes.Output)
        and all(isinstance(part, nodes.TemplateData | nodes.Name) for part in node.nodes)
        for node in ast.body
    )


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)


class CompiledMessage:
    """A message's templates, compiled once and rendered per recipient."""

    __slots__ = ("_fields", "_html", "_static", "_static_text", "_subject", "_text")

    def __init__(self, subject: _Field, html: _Field, text: _Field | None) -> None:
        self._subject = subject
        self._html = html
        self._text = text
        self._fields = (subject, html) if text is None else (subject, html, text)
        self._static: Rendered | None = None
        self._static_text: str | None = None  # text derived once from a static HTML body
        if text is None and html.template is None:
            self._static_text = html_to_text(html.source)
        if all(f.template is None for f in self._fields):
            derived = text.source if text is not None else self._static_text
            assert derived is not None
            self._static = Rendered(subject.source, html.source, derived)

    @property
    def variables(self) -> frozenset[str]:
        """Names the templates read from recipient data (``unsubscribe_url`` excluded)."""
        return frozenset().union(*(f.variables for f in self._fields))

    @property
    def personalised(self) -> bool:
        """False when every recipient gets exactly the same subject and bodies."""
        return self._static is None

    def render(
        self, data: Mapping[str, Any], *, unsubscribe_url: str, deadline: Deadline | None = None
    ) -> Rendered:
        """Render for one recipient; raises :class:`TemplateError` on any failure.

        Without a text template the text part is derived from the rendered HTML.
        A subject that renders to several lines, to control characters or to
        more than ``MAX_SUBJECT`` characters is refused. The render is bounded
        (see :mod:`mailpipe.content.bounded`): in time by ``deadline``, else by
        ``RENDER_TIME_S``.
        """
        if self._static is not None:
            return self._static
        token = use(Budget(deadline or Deadline(RENDER_TIME_S)))
        try:
            return self._render(data, unsubscribe_url)
        finally:
            release(token)

    def _render(self, data: Mapping[str, Any], unsubscribe_url: str) -> Rendered:
        context = {**data, UNSUBSCRIBE_VAR: unsubscribe_url}
        subject = self._subject.render(context)
        _check_subject(subject)
        html = self._html.render(context)
        if self._text is not None:
            text = self._text.render(context)
        else:
            text = self._static_text if self._static_text is not None else html_to_text(html)
        return Rendered(subject, html, text)


def compile_message(subject: str, html: str, text: str | None) -> CompiledMessage:
    """Compile a message's templates; raises :class:`TemplateError` on a syntax error.

    Recompiling the same source text is served from a cache.
    """
    subject_field = _compile_field("subject", subject, False)
    if subject_field.template is None:
        _check_subject(subject)
    return CompiledMessage(
        subject_field,
        _compile_field("content", html, True),
        None if text is None else _compile_field("text", text, False),
    )


def _check_subject(subject: str) -> None:
    if _LINE_BREAK.search(subject):
        raise TemplateError("subject", "contains a line break")
    if _CONTROL.search(subject):
        raise TemplateError("subject", "contains a control character")
    if len(subject) > MAX_SUBJECT:
        raise TemplateError("subject", f"is longer than {MAX_SUBJECT} characters")


def probe_links(tokens: Tokens | None = None, base: str = _PROBE_BASE) -> Callable[[str], str]:
    """Unsubscribe URLs of the shape real ones have, for checking templates.

    Built by :meth:`Tokens.unsubscribe_url` (``tokens``, else a random key) at
    ``base`` (``SERVER_HOST``) with a plausible request id: a template cannot
    tell a check from a real send by its ``unsubscribe_url``.
    """
    signer = tokens or Tokens(secrets.token_bytes(32))
    return functools.partial(signer.unsubscribe_url, base, _PROBE_REQUEST_ID)


def check_recipients(
    compiled: CompiledMessage,
    recipients: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    deadline: Deadline | None = None,
    links: Callable[[str], str] | None = None,
) -> None:
    """Check that the message renders for every ``(address, data)`` recipient.

    Raises :class:`TemplateError` naming the first failing recipient and the
    cause (e.g. the missing variable, or the bound a template exceeds). Data
    is rendered only where looking at its keys cannot settle the question,
    with ``links(address)`` as the unsubscribe URL (default :func:`probe_links`).
    All renders share ``deadline``; the check stops once it is up or cancelled.
    """
    if not recipients:
        return
    fields = compiled._fields
    deadline = deadline or Deadline(RENDER_TIME_S)
    links = links or probe_links()
    if not compiled.variables:
        # Identical for everyone apart from the unsubscribe URL: one render decides.
        address, data = recipients[0]
        _render_as(compiled, address, data, deadline, links)
        return
    if not all(f.flat for f in fields):
        for address, data in recipients:
            _render_as(compiled, address, data, deadline, links)
        return
    _check_flat(compiled, recipients)


def _check_flat(
    compiled: CompiledMessage, recipients: Sequence[tuple[str, Mapping[str, Any]]]
) -> None:
    """Names present and subjects clean, for templates of only text and ``{{ name }}``."""
    fields = compiled._fields
    subject_vars = sorted(compiled._subject.variables)
    subject_source = compiled._subject.source
    needed = compiled.variables
    for address, data in recipients:
        missing = needed - data.keys()
        if missing:
            field = next(f for f in fields if f.variables & missing)
            name = min(field.variables & missing)
            raise TemplateError(field.name, f"'{name}' is undefined", recipient=address)
        values = [str(data[name]) for name in subject_vars]
        for value in values:
            if _LINE_BREAK.search(value):
                raise TemplateError("subject", "contains a line break", recipient=address)
            if _CONTROL.search(value):
                raise TemplateError("subject", "contains a control character", recipient=address)
        if values and len(subject_source) + sum(map(len, values)) > MAX_SUBJECT:
            try:  # the sum may count a name twice or miss none: render to be exact
                _check_subject(compiled._subject.render({**data, UNSUBSCRIBE_VAR: ""}))
            except TemplateError as exc:
                raise exc.for_recipient(address) from exc


def _render_as(
    compiled: CompiledMessage,
    address: str,
    data: Mapping[str, Any],
    deadline: Deadline,
    links: Callable[[str], str],
) -> None:
    try:
        deadline.check()
    except LimitExceeded as exc:
        raise TemplateError("templates", str(exc), recipient=address) from None
    try:
        compiled.render(data, unsubscribe_url=links(address), deadline=deadline)
    except TemplateError as exc:
        raise exc.for_recipient(address) from exc
