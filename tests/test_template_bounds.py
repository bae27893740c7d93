"""Every render is bounded: each way of making a template work too long or build too
much is refused, naming the bound, quickly and without the memory it asked for."""

from __future__ import annotations

import threading
import time
import tracemalloc

import pytest

from mailpipe.content.bounded import (
    MAX_BUILT_CHARS,
    MAX_LOOP_ITERATIONS,
    MAX_OPERATIONS,
    MAX_RANGE,
    MAX_STRING,
    Deadline,
)
from mailpipe.content.templates import TemplateError, check_recipients, compile_message

BIG = "x" * 3_000_000
LOOPS = f"loop budget of {MAX_LOOP_ITERATIONS} iterations"
TOO_LARGE = f"over {MAX_STRING} characters"

# (template, what the error names); ``big`` is a 3,000,000-character string in the data.
BOMBS = [
    ("{% for a in range(100000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}",
     f"range limit of {MAX_RANGE} items"),
    ("{% for a in range(10000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}", LOOPS),
    ("{% for a in range(100) %}{% for b in range(100) %}{% for c in range(100) %}"
     "{% endfor %}{% endfor %}{% endfor %}", LOOPS),
    ("{% for c in big %}{% endfor %}", LOOPS),
    ("{% for a in items %}{% for b in items %}{% endfor %}{% endfor %}", LOOPS),
    ("{{ ('x'|center(1000000000))|length }}", TOO_LARGE),
    ("{{ ('x'|center(width=1000000000))|length }}", TOO_LARGE),
    ("{{ 'x'.center(1000000000)|length }}", TOO_LARGE),
    ("{{ 'x'.ljust(1000000000)|length }}", TOO_LARGE),
    ("{{ 'x'.zfill(1000000000)|length }}", TOO_LARGE),
    ("{{ ('x\t' * 1000).expandtabs(100000)|length }}", TOO_LARGE),
    ("{{ ('%1000000000d' % 1)|length }}", TOO_LARGE),
    ("{{ ('%1000000000d'|format(1))|length }}", TOO_LARGE),
    ("{{ '{:>1000000000}'.format(1)|length }}", TOO_LARGE),
    ("{{ '{:{}}'.format('x', 1000000000)|length }}", "nested format fields"),
    ("{{ '{0:{1}}'.format_map({'0': 1})|length }}", "nested format fields"),
    ("{{ ('x' * 1000000000)|length }}", "repetition too large"),
    ("{{ big|replace('x', 'yy')|length }}", TOO_LARGE),
    ("{{ big.replace('x', 'yy')|length }}", TOO_LARGE),
    ("{{ ([big] * 1000)|join|length }}", TOO_LARGE),
    ("{{ ''.join([big] * 1000)|length }}", TOO_LARGE),
    ("{{ ([big] * 1000)|string|length }}", TOO_LARGE),
    ("{{ ([big] * 1000)|tojson|length }}", TOO_LARGE),
    ("{{ [big] * 1000 }}", TOO_LARGE),
    ("{{ (big ~ big)|length }}", TOO_LARGE),
    ("{{ (big + big)|length }}", TOO_LARGE),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s|length }}", TOO_LARGE),
    ("{% set a = [big, big] %}{% set b = [a, a, a] %}{{ [b, b]|length }}{{ [b, b] }}", TOO_LARGE),
    ("{% set l = [] %}{% for i in range(5000) %}{{ l.append(big) or '' }}{% endfor %}"
     "{{ l|length }}{{ l }}", TOO_LARGE),
    ("{{ ('x' * 1000)|indent(100000000)|length }}", TOO_LARGE),
    ("{{ ('x ' * 1000)|wordwrap(1, wrapstring='y' * 100000)|length }}", TOO_LARGE),
    ("{{ (10 ** 999) ** 999 }}", "number too large"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
     "{% endfor %}{{ ns.n }}", "number too large"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
     f"operation budget of {MAX_OPERATIONS} calls"),
    ("{{ 'abc'.translate({97: big}) }}", "not allowed"),
    ("{{ " + " ~ ".join(["('a'|center(3000000))"] * 1000) + " }}",  # constants, not folded
     f"budget of {MAX_BUILT_CHARS} characters built"),
    ("{% set l = [big] %}{% for i in range(40) %}{{ l.extend(l) or '' }}{% endfor %}", TOO_LARGE),
    ("{{ [1]|batch(1000000000, 'x')|list|length }}", f"range limit of {MAX_RANGE}"),
    ("{{ [1]|slice(1000000000)|list|length }}", f"range limit of {MAX_RANGE}"),
    ("{{ ([big] * 2)|tojson(indent=1000000000)|length }}", TOO_LARGE),
]  # fmt: skip


def check(source: str, **data: object) -> None:
    compiled = compile_message("s", source, None)
    check_recipients(compiled, [("r0@example.com", dict(data))])


@pytest.mark.parametrize(("source", "bound"), BOMBS)
def test_a_template_bomb_is_refused_naming_its_bound(source: str, bound: str) -> None:
    traced = "calls" not in bound  # tracemalloc slows each call tenfold: not for time bombs
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TemplateError) as caught:
            check(source, big=BIG, items=list(range(1000)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bound in str(caught.value)
    assert "r0@example.com: content: template" in str(caught.value)
    assert peak < 100_000_000  # refused before it was built (the data is 3 MB)
    assert time.perf_counter() - started < 4  # generous, yet under the 5 s time budget


def test_the_same_bombs_are_bounded_at_send_time() -> None:
    for source, bound in BOMBS[:6]:
        compiled = compile_message("s", source, None)
        with pytest.raises(TemplateError, match=bound):
            compiled.render({"big": BIG, "items": list(range(1000))}, unsubscribe_url="u")


def test_real_templates_stay_within_the_bounds() -> None:
    items = [{"name": f"n{i}", "price": i} for i in range(10_000)]
    source = (
        "{% for item in items %}<li>{{ loop.index }}. {{ item.name|upper }}: "
        "{{ '%.2f'|format(item.price) }} {{ '{:>8}'.format(item.name) }}</li>{% endfor %}"
        "{{ ', '.join(items|map(attribute='name')|list)|length }}"
    )
    html = compile_message("s", source, None).render({"items": items}, unsubscribe_url="u").html
    assert html.count("<li>") == 10_000


def test_a_cancelled_deadline_stops_the_check_between_and_within_renders() -> None:
    stop = threading.Event()
    stop.set()
    compiled = compile_message("s", "{% for i in range(10) %}{{ i }}{% endfor %}", None)
    with pytest.raises(TemplateError, match="cancelled"):
        check_recipients(compiled, [("a@example.com", {})], deadline=Deadline(60, stop))


def test_a_deadline_bounds_all_recipients_together() -> None:
    compiled = compile_message("s", "{{ big.count('y') }}{{ n }}", None)
    many = [(f"r{i}@example.com", {"big": BIG, "n": i}) for i in range(100_000)]
    started = time.perf_counter()
    with pytest.raises(TemplateError, match=r"time budget of 0\.2 s"):
        check_recipients(compiled, many, deadline=Deadline(0.2))
    assert time.perf_counter() - started < 10


def test_the_check_sees_an_unsubscribe_url_like_a_real_one() -> None:
    source = (
        "{% if 'invalid' in unsubscribe_url or 'requestId=0&' in unsubscribe_url %}"
        "{{ 1 / 0 }}{% endif %}"
        "{% if not unsubscribe_url.startswith('http://localhost:3000/v1/unsubscribe?requestId=')"
        " %}{{ 1 / 0 }}{% endif %}"
        "{% if unsubscribe_url.split('&t=')[1]|length != 22 %}{{ 1 / 0 }}{% endif %}"
        "{{ 1 / 0 if not big }}"
    )
    with pytest.raises(TemplateError, match="division by zero"):
        check(source, big="")  # the same template does render when the data says so
    check(source, big="x")


@pytest.mark.parametrize("value", ["a\x00b", "a\x1bb", "a\x7fb", "x" * 999])
def test_a_subject_rendered_from_data_is_bounded_like_a_static_one(value: str) -> None:
    for source, content in (("Hi {{ v }}", "c"), ("Hi {{ v|trim }}", "{% if 1 %}c{% endif %}")):
        compiled = compile_message(source, content, None)
        with pytest.raises(TemplateError, match=r"subject: (contains a control|is longer)"):
            check_recipients(compiled, [("a@example.com", {"v": value})])
