"""Usage over time as an SVG line chart, drawn on the server: no script in the page, nothing
fetched when it loads, and every label a template value (escaped as any other text).

`series` buckets records by member or token over the span they cover; `Chart` is the geometry a
template draws (templates/chart.svg): one polyline per series, the axis' top value and the span's
ends. Pure functions of their inputs: tested without a server."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from qpu_broker_client.usage import UsageRecord

BUCKETS = 24  # points per line: a day in hours, a month in ~days
SERIES_MAX = 8  # lines in one chart: the busiest; the rest summed as "others"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
WIDTH, HEIGHT, PAD = 640, 220, 40
OTHERS = "(others)"


@dataclasses.dataclass(frozen=True)
class Line:
    name: str
    color: str
    points: str  # "x,y x,y …" for <polyline points=…>
    total: int


@dataclasses.dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    top: int  # the value at the top of the axis
    start_us: int
    end_us: int
    lines: list[Line]
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD


def _key(by: str) -> Callable[[UsageRecord], str]:
    return (lambda r: r.member) if by == "member" else (lambda r: r.token_name or r.token_id)


def series(records: Iterable[UsageRecord], by: str, value: Callable[[UsageRecord], int], start_us: int,
           end_us: int) -> dict[str, list[int]]:
    """name -> BUCKETS sums of `value` over [start_us, end_us), the busiest SERIES_MAX named."""
    span = max(end_us - start_us, 1)
    key = _key(by)
    sums: dict[str, list[int]] = {}
    for r in records:
        i = min(max((r.at_us - start_us) * BUCKETS // span, 0), BUCKETS - 1)
        sums.setdefault(key(r), [0] * BUCKETS)[i] += value(r)
    ranked = sorted(sums, key=lambda n: (-sum(sums[n]), n))
    out = {n: sums[n] for n in ranked[:SERIES_MAX]}
    if len(ranked) > SERIES_MAX:
        out[OTHERS] = [sum(sums[n][i] for n in ranked[SERIES_MAX:]) for i in range(BUCKETS)]
    return out


def chart(title: str, unit: str, sums: dict[str, list[int]], start_us: int, end_us: int) -> Chart:
    top = max((v for values in sums.values() for v in values), default=0) or 1
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    lines = []
    for n, (name, values) in enumerate(sums.items()):
        points = " ".join(f"{PAD + i * inner_w / (BUCKETS - 1):.1f},{PAD + inner_h - v * inner_h / top:.1f}"
                          for i, v in enumerate(values))
        lines.append(Line(name, PALETTE[n % len(PALETTE)], points, sum(values)))
    return Chart(title, unit, top, start_us, end_us, lines)
