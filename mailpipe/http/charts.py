"""Server-rendered SVG charts for the dashboard (no script, no CDN, no build step).

What it promises: :func:`time_chart` draws counts per minute of one or more kinds
as lines on a shared time axis, every minute of the axis present (a minute with
nothing is 0), with the axis labelled in UTC and a legend; text is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Final

from markupsafe import Markup, escape

WIDTH: Final = 720
HEIGHT: Final = 220
PAD_LEFT: Final = 56
PAD_RIGHT: Final = 16
PAD_TOP: Final = 20
PAD_BOTTOM: Final = 40
COLOURS: Final = ("#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#64748b")
MINUTE_FORMAT: Final = "%Y-%m-%d %H:%M"


def minute_axis(points: Iterable[tuple[str, str, int]]) -> list[str]:
    """Every minute from the first to the last of ``points`` (at least one)."""
    minutes = sorted({m for m, _, _ in points})
    if not minutes:
        return []
    first = datetime.strptime(minutes[0], MINUTE_FORMAT)
    last = datetime.strptime(minutes[-1], MINUTE_FORMAT)
    count = int((last - first).total_seconds() // 60) + 1
    return [(first + timedelta(minutes=i)).strftime(MINUTE_FORMAT) for i in range(count)]


def time_chart(
    points: Sequence[tuple[str, str, int]], title: str, kinds: Sequence[str] | None = None
) -> Markup:
    """An SVG line chart of ``(minute, kind, count)`` points, one line per kind."""
    axis = minute_axis(points)
    names = list(kinds) if kinds is not None else sorted({k for _, k, _ in points})
    values = {(m, k): n for m, k, n in points}
    top = max((n for _, _, n in points), default=0)
    scale_top = _nice(top)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' class="chart" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    if not axis:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle"'
                     ' fill="#6b7280">no data yet</text></svg>')  # fmt: skip
        return Markup("".join(parts))
    for i in range(5):  # horizontal grid with values
        y = PAD_TOP + plot_h * i / 4
        label = scale_top * (4 - i) / 4
        parts.append(f'<line x1="{PAD_LEFT}" y1="{y:.1f}" x2="{WIDTH - PAD_RIGHT}" y2="{y:.1f}"'
                     ' stroke="#e5e7eb"/>')  # fmt: skip
        parts.append(f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11"'
                     f' fill="#6b7280">{label:,.0f}</text>')  # fmt: skip

    def x_of(i: int) -> float:
        return PAD_LEFT + (plot_w * i / (len(axis) - 1) if len(axis) > 1 else plot_w / 2)

    for i in sorted({0, len(axis) - 1, *range(0, len(axis), max(1, len(axis) // 6))}):
        parts.append(f'<text x="{x_of(i):.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" font-size="11"'
                     f' text-anchor="middle" fill="#6b7280">{axis[i][11:]}</text>')  # fmt: skip
    for c, kind in enumerate(names):
        colour = COLOURS[c % len(COLOURS)]
        coords = " ".join(
            f"{x_of(i):.1f},{PAD_TOP + plot_h * (1 - values.get((m, kind), 0) / scale_top):.1f}"
            for i, m in enumerate(axis)
        )
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"'
                     f' points="{coords}" data-kind="{escape(kind)}"/>')  # fmt: skip
        for point in coords.split():  # a dot a minute: a single minute is visible too
            cx, cy = point.split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
        lx = PAD_LEFT + c * 92
        parts.append(f'<rect x="{lx}" y="{HEIGHT - 14}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{HEIGHT - 5}" font-size="11">{escape(kind)}</text>')
    parts.append(f'<text x="{WIDTH - PAD_RIGHT}" y="{PAD_TOP - 4}" font-size="11" text-anchor="end"'
                 f' fill="#6b7280">UTC, per minute, {axis[0][:10]}</text></svg>')  # fmt: skip
    return Markup("".join(parts))


def _nice(top: int) -> float:
    """A round axis maximum at or above ``top`` (1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return 1.0
    power = 1
    while power * 10 <= top:
        power *= 10
    for step in (1, 2, 5, 10):
        if step * power >= top:
            return float(step * power)
    return float(10 * power)
