"""The single global rate gate in front of every transport call.

Permits are handed out on an evenly spaced schedule: the k-th permit after a
busy start is due at ``start + k * (1 + MARGIN) / rate``. Each slot is computed from the last
*scheduled* slot, never from when a task happened to wake, so wake-up latency
does not accumulate into drift. A call that needs ``k`` permits (a bulk send of
``k`` recipients) takes ``k`` consecutive slots and starts at its first one;
a sliding-window guard then delays it until the last second holds room for
all ``k``, so no 1-second window ever sees more than ``ceiling`` sends start.
A call that left late (:meth:`RateLimiter.left_late`) counts in that guard
from when it really left, so an on-time call cannot follow it too closely.

Several instances sharing one limiter (:mod:`mailpipe.pipeline.shared_rate`)
learn of another's late call only at its next reservation, too late for calls
reserved meanwhile. There every permit carries a ``slack``: how late its call
may leave at most, or else it must not leave and ask again. Where the rate
binds, the slack is :data:`TIGHT_SLACK`, which the margin absorbs. Where the
windows around a call are less than half full, it is :data:`FREE_SLACK`, and
the guard counts that call in every window it could reach, until its instance
reports when it left.

On throttling the effective rate is cut multiplicatively and then climbs back
additively toward the configured rate (AIMD), see :meth:`RateLimiter.throttled`.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import trio

WINDOW = 1.0
# Calls reach the provider a few milliseconds after their permit, and not all
# equally late. Spacing permits over a window this much longer than a second
# keeps the count *as the provider sees it* within the rate in every window,
# at the cost of sending 0.6 % below the configured rate.
MARGIN = 0.006
STATE_TICK = 1e-6
"""Seconds: the resolution of a call's start in :meth:`RateLimiter.state`,
a thousandth of what MARGIN absorbs."""
TIGHT_SLACK = 0.005
"""Seconds a call may leave after its shared permit where the rate binds: a
third of ``SHARED_MARGIN`` (15 ms), the rest being for the clock offsets of
the instances, measured to within a millisecond."""
FREE_SLACK = 0.5
"""Seconds a call may leave after its shared permit far from the rate. At the
ceiling on the 2-core development machine, 95 % of calls left more than 5 ms
after their permit (the GIL, 64 calls in flight)."""


@dataclass(frozen=True)
class Permit:
    """Leave to start a call at ``start`` (trio time). ``report_late(seconds)``
    tells the limiter it left that much later (safe from any thread)."""

    start: float
    report_late: Callable[[float], None]
    slack: float | None = None
    """How late the call may leave at most (None: whenever it can). A call with
    a slack reports when it left even if on time (``report_late(0)``)."""


class Limiter(Protocol):
    """What the sender pool needs of a rate limiter: this module's
    :class:`RateLimiter` on one instance, :mod:`mailpipe.pipeline.shared_rate`'s on many."""

    @property
    def target(self) -> float:
        """The configured rate."""

    @property
    def rate(self) -> float:
        """The effective rate (below ``target`` after throttling)."""

    async def permit(self, k: int = 1, *, lead: float = 0.0) -> Permit:
        """Reserve ``k`` permits: when the call may start, and whom to tell if it left late."""

    def left_late(self, start: float, k: int, late: float) -> None:
        """The call reserved for ``start`` left ``late`` seconds after it (any thread)."""

    def pacing(self, *, lead: float = 0.0) -> bool:
        """Whether the next permit is further away than ``lead``."""

    def throttled(self) -> None:
        """The provider said "too fast"."""

    def succeeded(self, k: int = 1) -> None:
        """``k`` sends went through."""


class RateLimiter:
    """Evenly spaced permits at ``rate`` per second, at most ``floor(rate)`` per 1 s window."""

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float | None = None,
        decrease: float = 0.75,
        recovery_per_s: float | None = None,
        clock: Callable[[], float] = trio.current_time,
        margin: float = MARGIN,
        slack: bool = False,
    ) -> None:
        """``slack``: give every permit one (as several instances must, see the module)."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.target = rate
        self.rate = rate
        self.ceiling = max(1, math.floor(rate + 1e-9))
        self.min_rate = min_rate if min_rate is not None else max(rate / 64, 0.1)
        self.decrease = decrease
        self.recovery_per_s = recovery_per_s if recovery_per_s is not None else rate / 20
        self._clock = clock
        self._next = -math.inf
        self._window: list[tuple[float, int]] = []
        """Recent and future calls (start, k), sorted by start."""
        self._free: list[tuple[float, int]] = []
        """Calls that may leave up to FREE_SLACK late and have not yet, sorted by start."""
        self._slack = slack
        self._last_cut = -math.inf
        self._span = WINDOW + margin
        self._late: deque[tuple[float, int, float]] = deque()

    def reserve(self, k: int = 1, *, lead: float = 0.0) -> float:
        """Reserve ``k`` permits; returns the time the caller may start.

        The start is at least ``lead`` seconds away, so a caller that prepares
        its call before the permit has that long even when the limiter is idle.
        """
        return self.reserve_call(k, lead=lead)[0]

    def reserve_call(self, k: int = 1, *, lead: float = 0.0) -> tuple[float, float | None]:
        """:meth:`reserve`, and the permit's slack (see the module; None without)."""
        if not 1 <= k <= self.ceiling:
            raise ValueError(f"k must be between 1 and {self.ceiling}")
        self._apply_late()
        planned = max(self._next, self._clock() + lead)
        start = self._room_for(planned, k)
        slack: float | None = None
        if self._slack:
            slack = FREE_SLACK if 2 * (self._reach(start) + k) <= self.ceiling else TIGHT_SLACK
        bisect.insort(self._free if slack == FREE_SLACK else self._window, (start, k))
        # The schedule goes on from the planned slot: a call the window guard
        # pushed back (after a late one) delays itself, not every later call.
        self._next = planned + k * self._span / self.rate
        return start, slack

    def _reach(self, t: float) -> int:
        """Permits that may share a window with a call at ``t``, wherever they leave."""
        w = self._window
        lo = bisect.bisect_right(w, (t - self._span, math.inf))
        hi = bisect.bisect_left(w, (t + self._span, -1))
        return sum(n for _, n in w[lo:hi]) + self._free_near(t)

    def _free_near(self, t: float) -> int:
        """Permits of free calls that may leave within a window's length of ``t``."""
        f = self._free
        lo = bisect.bisect_right(f, (t - self._span - FREE_SLACK, math.inf))
        hi = bisect.bisect_left(f, (t + self._span, -1))
        return sum(n for _, n in f[lo:hi])

    async def permit(self, k: int = 1, *, lead: float = 0.0) -> Permit:
        """:meth:`reserve`, as every limiter offers it (the shared one awaits its row)."""
        start = self.reserve(k, lead=lead)
        return Permit(start, partial(self.left_late, start, k))

    def left_late(self, start: float, k: int, late: float) -> None:
        """The call of ``k`` permits reserved for ``start`` left ``late`` seconds after it.

        Safe from any thread (one deque append); applied at the next reservation.
        """
        self._late.append((start, k, late))

    def _apply_late(self) -> None:
        while self._late:
            self._left_at(*self._late.popleft())

    def _left_at(self, start: float, k: int, late: float) -> None:
        """The call reserved as (start, k) left ``late`` after it: count it from then."""
        for calls in (self._window, self._free):
            # Any entry equal to (start, k) stands for it, and one already
            # forgotten needs nothing. (Within STATE_TICK: a shared state keeps
            # starts to the microsecond.)
            i = bisect.bisect_left(calls, (start - STATE_TICK, -1))
            while i < len(calls) and calls[i][0] <= start + STATE_TICK:
                if calls[i][1] == k:
                    del calls[i]
                    # A free call that has left is free no more: when it left is known.
                    bisect.insort(self._window, (start + late, k))
                    return
                i += 1

    def pacing(self, *, lead: float = 0.0) -> bool:
        """Whether the next permit is further away than ``lead`` (the rate binds)."""
        return self._next > self._clock() + lead

    async def acquire(self, k: int = 1) -> None:
        """Wait until ``k`` permits are available and take them."""
        await trio.sleep_until(self.reserve(k))

    def _room_for(self, start: float, k: int) -> float:
        """The earliest time from ``start`` at which ``k`` more sends fit every
        1-second window containing it, counting calls already reserved for
        later (pushed back behind a late call) as well as earlier ones."""
        # Calls that no window of a future start can see are forgotten.
        now = self._clock()
        del self._window[: bisect.bisect_right(self._window, (now - self._span, math.inf))]
        del self._free[: bisect.bisect_right(self._free, (now - self._span - FREE_SLACK, math.inf))]
        if self._fits(start, k):
            return start
        # A start that does not fit becomes possible only when some call
        # leaves its window: try those moments in order.
        moments = [t + self._span for t, _ in self._window]
        moments += [t + self._span + FREE_SLACK for t, _ in self._free]
        for moment in sorted(moments):
            if moment > start and self._fits(moment, k):
                return moment
        return start  # unreachable: past the last call's window everything fits

    def _fits(self, t: float, k: int) -> bool:
        """Whether a call of ``k`` at ``t`` keeps every window of ``span`` within the ceiling."""
        # A free call counts in every window it could reach (see the module).
        ceiling = self.ceiling - self._free_near(t)
        w = self._window
        lo = bisect.bisect_right(w, (t - self._span, math.inf))
        hi = bisect.bisect_left(w, (t + self._span, -1))
        near = w[lo:hi]
        if sum(n for _, n in near) + k <= ceiling:
            return True  # nothing within a window's length either side: the common case
        # The fullest windows containing t begin at a call in (t - span, t] (or
        # at t), or end at a call in (t, t + span).
        for s, _ in near:
            if s <= t:
                if t >= s + self._span:
                    continue  # this window ends before t
                inside = sum(n for u, n in near if s <= u < s + self._span)
            else:
                inside = sum(n for u, n in near if s - self._span < u <= s)
            if inside + k > ceiling:
                return False
        return sum(n for u, n in near if t <= u < t + self._span) + k <= ceiling

    # -- state shared through a database row (mailpipe.pipeline.shared_rate) --------

    def state(self) -> dict[str, Any]:
        """What changes as permits are taken, as JSON-ready values.

        The window's starts are whole microseconds after the first one: at a
        high rate the window holds hundreds of calls, and the shared row is
        read and written at every reservation (as lists of floats, encoding
        took 220 µs of the 390 µs a reservation cost here; see ``STATE_TICK``).
        """
        window, free = self._window, self._free
        base = min(window[0][0] if window else math.inf, free[0][0] if free else math.inf)
        base = 0.0 if base == math.inf else base
        return {
            "rate": self.rate,
            "next": None if self._next == -math.inf else self._next,
            "base": base,
            "t": [round((start - base) / STATE_TICK) for start, _ in window],
            "k": [k for _, k in window],
            "ft": [round((start - base) / STATE_TICK) for start, _ in free],
            "fk": [k for _, k in free],
            "last_cut": None if self._last_cut == -math.inf else self._last_cut,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Take over ``state`` (from :meth:`state`, maybe of another process)."""
        self.rate = min(self.target, max(self.min_rate, float(state["rate"])))
        self._next = -math.inf if state["next"] is None else float(state["next"])
        base = float(state["base"])
        self._window = [
            (base + t * STATE_TICK, int(k)) for t, k in zip(state["t"], state["k"], strict=True)
        ]
        # (A state written before free calls existed has none.)
        self._free = [
            (base + t * STATE_TICK, int(k))
            for t, k in zip(state.get("ft", ()), state.get("fk", ()), strict=True)
        ]
        self._last_cut = -math.inf if state["last_cut"] is None else float(state["last_cut"])

    # -- AIMD -------------------------------------------------------------

    def throttled(self) -> None:
        """SES said "too fast": cut the effective rate (at most once per window)."""
        now = self._clock()
        if now - self._last_cut < WINDOW:
            return
        self._last_cut = now
        self.rate = max(self.min_rate, self.rate * self.decrease)
        # Re-space what is not yet reserved at the new, slower rate.
        self._next = max(self._next, now + self._span / self.rate)

    def succeeded(self, k: int = 1) -> None:
        """``k`` sends went through: climb back toward the target rate."""
        if self.rate >= self.target:
            return
        # Adding recovery_per_s / rate per send gives about recovery_per_s per second.
        self.rate = min(self.target, self.rate + k * self.recovery_per_s / self.rate)
