"""A Jinja2 sandbox whose every render is bounded in work, memory and time.

A template is code from the API's clients; it runs in the validation slots
at POST and in the sender's threads at send time. Each render gets a
:class:`Budget` (through a context variable) that counts:

- loop iterations, across nested loops (``MAX_LOOP_ITERATIONS``);
- operations: calls, filters and intercepted operators (``MAX_OPERATIONS``);
- characters built by them (``MAX_BUILT_CHARS``);
- wall-clock time, and a cancel flag set when the client went away (:class:`Deadline`).

Every intermediate string or list is bounded by ``MAX_STRING``, checked
*before* it is built wherever its size can be known in advance (``*``, ``+``,
``~``, ``%``, ``format``, ``center``, ``replace``, ``join``, ``indent``…) and
after every other call. A bound exceeded raises :class:`LimitExceeded` naming it.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.runtime import Context, LoopContext, markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment

from mailpipe.errors import LimitExceeded

__all__ = [
    "MAX_BUILT_CHARS",
    "MAX_LOOP_ITERATIONS",
    "MAX_OPERATIONS",
    "MAX_RANGE",
    "MAX_STRING",
    "RENDER_TIME_S",
    "BoundedEnvironment",
    "Budget",
    "Deadline",
    "LimitExceeded",
    "bound_loops",
    "undeclared_variables",
]

MAX_STRING: Final = 4_000_000
"""Characters (or items) of any string or list a template builds: the output bound,
so no intermediate can be bigger than what may be sent."""
MAX_LOOP_ITERATIONS: Final = 100_000
"""Loop iterations per render, nested loops counted together: a loop over a
100,000-recipient list is the largest real one; ``range(100000)`` twice nested
took minutes."""
MAX_RANGE: Final = 10_000
"""Items of one ``range()`` (Jinja's sandbox allows 100,000)."""
MAX_OPERATIONS: Final = 100_000
"""Calls, filters and intercepted operators per render: a macro calling itself
twice per level (exponential without any loop) took 2 s for 100,000 calls."""
MAX_BUILT_CHARS: Final = 40_000_000
"""Characters built by calls, filters and operators per render: ten outputs of the
largest size, about 40 ms of copying."""
RENDER_TIME_S: Final = 5.0
"""Wall-clock seconds one render may take at send time (validation shares one
:class:`Deadline` across a request's recipients instead)."""
MAX_EXPONENT: Final = 1_000
MAX_INT_BITS: Final = 14_300
"""Bits of an integer a template computes: Python prints at most 4,300 digits."""
LOOP_FILTER: Final = "_bounded_loop"
_CHECK_EVERY: Final = 63
"""The clock is read every 64 iterations or operations (a read costs more than a step)."""

_FORMAT_FIELD = re.compile(r"\{[^{}]*\}")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")
_SHORT_FORMAT = 32
_WIDE_SPEC = re.compile(r"\d{6}|\*")
_REFUSED_METHODS: Final = frozenset({"translate", "maketrans"})
_CONTAINERS = (list, tuple, dict, set, frozenset)


class Deadline:
    """A wall-clock limit and a cancel flag, shared by the renders of one request."""

    __slots__ = ("_at", "cancelled", "seconds")

    def __init__(self, seconds: float, cancelled: threading.Event | None = None) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds
        self.cancelled = cancelled

    def check(self) -> None:
        """Raise :class:`LimitExceeded` once the time is up or the request was cancelled."""
        if self.cancelled is not None and self.cancelled.is_set():
            raise LimitExceeded("template check stopped: the request was cancelled")
        if time.monotonic() > self._at:
            raise LimitExceeded(f"template exceeds the time budget of {self.seconds:g} s")


class Budget:
    """What one render may still spend; installed with :meth:`use` around the render."""

    __slots__ = ("chars", "deadline", "iterations", "operations")

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.iterations = 0
        self.operations = 0
        self.chars = 0

    def loop(self) -> None:
        """Count one loop iteration."""
        self.iterations += 1
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise LimitExceeded(
                f"template exceeds the loop budget of {MAX_LOOP_ITERATIONS} iterations"
            )
        if not self.iterations & _CHECK_EVERY:
            self.deadline.check()

    def operation(self) -> None:
        """Count one call, filter or operator."""
        self.operations += 1
        if self.operations > MAX_OPERATIONS:
            raise LimitExceeded(f"template exceeds the operation budget of {MAX_OPERATIONS} calls")
        self.deadline.check()

    def built(self, value: Any) -> Any:
        """Count and bound a value just built; returns it."""
        if isinstance(value, str | list | tuple | dict):
            size = len(value)
            if size > MAX_STRING:
                raise _too_large()
            if isinstance(value, str):
                self.chars += size
                if self.chars > MAX_BUILT_CHARS:
                    raise LimitExceeded(
                        f"template exceeds the budget of {MAX_BUILT_CHARS} characters built"
                    )
        return value


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("budget", default=None)


def use(budget: Budget) -> contextvars.Token[Budget | None]:
    """Make ``budget`` the current render's; undo with :func:`release`."""
    return _CURRENT.set(budget)


def release(token: contextvars.Token[Budget | None]) -> None:
    """Undo :func:`use`."""
    _CURRENT.reset(token)


def _budget() -> Budget:
    budget = _CURRENT.get()
    if budget is None:  # rendered outside a Budget: each step bounded all the same
        return Budget(Deadline(RENDER_TIME_S))
    return budget


def _too_large() -> LimitExceeded:
    return LimitExceeded(f"template builds a value too large (over {MAX_STRING} characters)")


def _check_size(size: int) -> None:
    if size > MAX_STRING:
        raise _too_large()


def weigh(value: Any) -> int:
    """About how many characters ``str(value)`` has; raises past ``MAX_STRING``.

    Shared references count each time they appear (``str`` repeats them), each
    distinct container is measured once, so this is linear in distinct objects.
    """
    sizes: dict[int, int] = {}

    def size(obj: Any, depth: int) -> int:
        if isinstance(obj, str):
            return len(obj)
        if not isinstance(obj, _CONTAINERS):
            return 24  # a number, None, an object's repr
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if depth > 100:
            raise _too_large()
        sizes[key] = 5  # a cycle prints as [...]
        items: Iterable[Any] = obj.items() if isinstance(obj, dict) else obj
        total = 2
        for item in items:
            total += 2 + size(item, depth + 1)
            if total > MAX_STRING:
                raise _too_large()
        sizes[key] = total
        return total

    return size(value, 0)


def _weigh_all(values: Iterable[Any]) -> None:
    total = 0
    for value in values:
        if isinstance(value, _CONTAINERS):
            total += weigh(value)
            _check_size(total)


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise LimitExceeded(f"template exceeds the range limit of {MAX_RANGE} items")
    return rng


def _bounded_iter(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.loop()
        yield item


def bound_loops(ast: nodes.Template) -> None:
    """Make every ``{% for %}`` of ``ast`` count its iterations (in place)."""
    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.lineno)


# -- sizes known before building ---------------------------------------------------


def _str_arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _replaced_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    old, new = str(old), str(new)
    n = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * max(0, len(new) - len(old))


def _joined_size(sep: str, items: Any) -> int:
    total, n = 0, 0
    for item in items:
        total += weigh(item) if isinstance(item, _CONTAINERS) else len(str(item))
        n += 1
        _check_size(total + len(sep) * max(0, n - 1))
    return total + len(sep) * max(0, n - 1)


def _format_width(fmt: str) -> int:
    """The sum of the widths and precisions in a ``str.format`` string.

    A width taken from an argument (``{:{}}``) is refused: it is not known here.
    """
    plain = fmt.replace("{{", "").replace("}}", "")
    if _NESTED_FIELD.search(plain):
        raise LimitExceeded("template uses nested format fields, which are not supported")
    specs = (field.partition(":")[2] for field in _FORMAT_FIELD.findall(plain))
    return sum(_number(d) for spec in specs for d in _DIGITS.findall(spec))


def _number(digits: str) -> int:
    """``int(digits)``, or just over ``MAX_STRING`` for an absurdly long one."""
    return int(digits) if len(digits) < 12 else MAX_STRING + 1


def _percent_width(fmt: str) -> int:
    """The sum of the widths and precisions in a ``%`` format string."""
    if len(fmt) <= _SHORT_FORMAT and not _WIDE_SPEC.search(fmt):
        return 0  # at most 16 widths under 100,000: far below MAX_STRING
    total = 0
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for part in (width, precision):
            if part == "*":
                raise LimitExceeded("template uses a * width in % formatting: not supported")
            if part:
                total += _number(part)
    return total


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a ``str`` method call whose result would be too large."""
    s, name = obj.__self__, obj.__name__
    if name in _REFUSED_METHODS:
        raise LimitExceeded(f"template calls str.{name}, which is not allowed")
    _weigh_all((*args, *kwargs.values()))
    first = args[0] if args else None
    if name in {"center", "ljust", "rjust", "zfill"} and isinstance(first, int):
        _check_size(first)
    elif name == "expandtabs":
        tab = first if isinstance(first, int) else 8
        _check_size(len(s) + s.count("\t") * tab)
    elif name == "replace" and len(args) >= 2:
        _check_size(_replaced_size(s, *args[:3]))
    elif name == "join" and args:
        _check_size(_joined_size(s, args[0]))
    elif name in {"format", "format_map"}:
        _check_size(len(s) + _format_width(s))


def _center(s: Any, width: Any = 80, *args: Any, **kwargs: Any) -> None:
    if isinstance(width, int):
        _check_size(width)


def _indent(s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    text = str(s)
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _check_size(len(text) + (text.count("\n") + 1) * pad)


def _replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    _check_size(_replaced_size(str(s), old, new, -1 if count is None else count))


def _join(value: Any, d: Any = "", attribute: Any = None) -> None:
    if attribute is None:
        _check_size(_joined_size(str(d), value))


def _wordwrap(s: Any, width: Any = 79, *args: Any, **kwargs: Any) -> None:
    text = str(s)
    wrap = _str_arg(args, kwargs, 1, "wrapstring", None)
    breaks = len(text) // max(1, int(width) if isinstance(width, int) else 1) + len(text.split())
    _check_size(len(text) + (breaks + 1) * len(str(wrap or "\n")))


def _format(value: Any, *args: Any, **kwargs: Any) -> None:
    _weigh_all((*args, *kwargs.values()))
    text = value if isinstance(value, str) else str(value)
    _check_size(len(text) + _percent_width(text))


def _tojson(value: Any, indent: Any = None) -> None:
    size = weigh(value)
    if isinstance(indent, int):
        _check_size(size * (1 + max(0, indent)))


def _counted(value: Any, count: Any = 1, *args: Any, **kwargs: Any) -> None:
    """``batch`` and ``slice``: one list per count (and padding up to it)."""
    if isinstance(count, int) and count > MAX_RANGE:
        raise LimitExceeded(f"template exceeds the range limit of {MAX_RANGE} items")


def _urlize(value: Any, *args: Any, **kwargs: Any) -> None:
    text = str(value)
    extra = sum(len(a) for a in (*args, *kwargs.values()) if isinstance(a, str))
    _check_size(2 * len(text) + (len(text) // 4 + 1) * (extra + 40))


_PRECHECKS: Final[dict[str, Callable[..., None]]] = {
    "center": _center,
    "indent": _indent,
    "replace": _replace,
    "join": _join,
    "wordwrap": _wordwrap,
    "format": _format,
    "urlize": _urlize,
    "tojson": _tojson,
    "batch": _counted,
    "slice": _counted,
}
_STRINGIFYING: Final = frozenset(
    {"string", "tojson", "pprint", "xmlattr", "safe", "e", "escape", "forceescape",
     "upper", "lower", "title", "capitalize", "trim", "striptags", "truncate",
     "urlencode", "wordcount"}
)  # fmt: skip


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` counted, its arguments and result bounded.

    The checks take the filter's own arguments: without the context, eval context
    or environment Jinja passes first to some filters.
    """
    check = _PRECHECKS.get(name)
    stringifies = name in _STRINGIFYING
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.operation()
        if check is not None:
            check(*args[skip:], **kwargs)
        elif stringifies:
            _weigh_all((*args[skip:], *kwargs.values()))
        return budget.built(func(*args, **kwargs))

    bounded.__name__ = getattr(func, "__name__", name)
    bounded.__doc__ = func.__doc__
    bounded.__dict__.update(getattr(func, "__dict__", {}))  # keeps jinja_pass_arg
    return bounded


class _NoFolding(CodeGenerator):
    """Folds no expression at compile time, only literal text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimizer = None  # meta's generator would fold, whatever the environment says

    def _output_child_to_const(self, node: nodes.Expr, frame: Any, finalize: Any) -> str:
        # Folding runs filters and ``~`` while compiling, outside every budget
        # (``'a'|center(3000000) ~ …`` 1,000 times is 3 GB).
        if not isinstance(node, nodes.TemplateData):
            raise nodes.Impossible()
        return str(super()._output_child_to_const(node, frame, finalize))


class _Tracking(_NoFolding, meta.TrackingCodeGenerator):
    """``meta.find_undeclared_variables``' code generator, folding nothing."""


def undeclared_variables(ast: nodes.Template) -> set[str]:
    """The names ``ast`` reads from its context (as ``meta.find_undeclared_variables``)."""
    codegen = _Tracking(ast.environment)
    codegen.visit(ast)
    return set(codegen.undeclared_identifiers)


class _CodeGenerator(_NoFolding):
    """Compiles ``a ~ b`` to a bounded join, and folds no expression at compile time."""

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.bounded_concat(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(SandboxedEnvironment):
    """A sandbox in which every render spends from the current :class:`Budget`."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator

    def __init__(self, **options: Any) -> None:
        # No constant folding by the optimizer either (see _CodeGenerator).
        super().__init__(finalize=self._finalize, optimized=False, **options)
        self.globals["range"] = _bounded_range
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters[LOOP_FILTER] = _bounded_iter

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """``left operator right``, refused when the result would be too large."""
        budget = _budget()
        budget.operation()
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_repeat(left, right)
            _check_bits(left, right, lambda a, b: a + b)
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _check_size(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            _weigh_all(right if isinstance(right, tuple) else (right,))
            _check_size(len(left) + _percent_width(left))
        return budget.built(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``__obj`` in the sandbox, counted, its result bounded."""
        budget = _budget()
        budget.operation()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_method(__obj, args, kwargs)
        elif isinstance(owner, _CONTAINERS) and args and hasattr(args[0], "__len__"):
            _check_size(len(owner) + len(args[0]))  # l.extend(l) doubles l in place
        if isinstance(__obj, LoopContext) and args:  # recursive loop(...)
            args = (_bounded_iter(args[0]), *args[1:])
        result = budget.built(super().call(__context, __obj, *args, **kwargs))
        if isinstance(owner, _CONTAINERS):
            _check_size(len(owner))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """The sandbox's ``str.format``, refused when its widths would build too much."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        sandboxed = wrapped

        def bounded(*args: Any, **kwargs: Any) -> str:
            _weigh_all((*args, *kwargs.values()))
            _check_size(len(fmt) + _format_width(fmt))
            return sandboxed(*args, **kwargs)

        return bounded

    def bounded_concat(self, context: Context, values: tuple[Any, ...]) -> str:
        """``a ~ b ~ …`` (compiled from ``Concat``), refused when too large."""
        budget = _budget()
        budget.operation()
        _weigh_all(values)
        _check_size(sum(len(v) for v in values if isinstance(v, str)))
        join = markup_join if context.eval_ctx.autoescape else str_join
        return str(budget.built(join(values)))

    @staticmethod
    def _finalize(value: Any) -> Any:
        if isinstance(value, _CONTAINERS):
            weigh(value)
        return value


def _check_power(left: Any, right: Any) -> None:
    if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
        raise LimitExceeded(f"template exponent too large (over {MAX_EXPONENT})")
    if isinstance(right, int) and right > 0:
        _check_bits(left, right, lambda a, _: a * right)


def _check_bits(left: Any, right: Any, bits: Callable[[int, int], int]) -> None:
    """Refuse an integer result of more than ``MAX_INT_BITS`` (``bits`` estimates it)."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if bits(abs(left).bit_length(), abs(right).bit_length()) > MAX_INT_BITS:
        raise LimitExceeded(f"template number too large (over {MAX_INT_BITS} bits)")


def _check_repeat(left: Any, right: Any) -> None:
    if isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple):
        seq, count = (left, right) if isinstance(left, str | list | tuple) else (right, left)
        if isinstance(count, int) and len(seq) * count > MAX_STRING:
            raise LimitExceeded(
                f"template repetition too large (over {MAX_STRING} characters or items)"
            )
