"""Small SVG charts drawn in plain Python, for `edgecnn report` and `profile --plot` (no plotting library).

Each chart function returns an ``<svg>`` element as text, ready to sit inline in an HTML page
(styled by `CHART_CSS`): no scripts, no external references, every label escaped. `svg_file`
lays charts side by side as one standalone SVG file. `profile_charts` draws a profile report's
latency and throughput; the report page and `profile --plot` both use it.
"""

from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence
from xml.etree import ElementTree

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 460, 280
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 30, 46
GAP = 12  # between charts in `svg_file`
CHART_CSS = (
    "svg.chart{font-size:11px;background:#fff}"
    "svg .plot{fill:#fafafa;stroke:#999}svg .grid{stroke:#e2e2e2}svg .title{font-size:13px;font-weight:600}"
)


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    log_y: bool = False,
    dashed: Sequence[str] = (),
) -> str:
    """Lines with markers, one per series (label -> [(x, y), ...]); a legend under the chart names them.

    log_x / log_y: base-2 / base-10 scales (all values must be > 0 there). Series in `dashed`
    are drawn dashed (e.g. validation beside training).
    """
    points = [(x, y) for values in series.values() for x, y in values if _finite(x) and _finite(y)]
    if not points:
        return _frame(title, "<text x='50%' y='50%' text-anchor='middle'>no data</text>")
    fx = _scale([p[0] for p in points], LEFT, WIDTH - RIGHT, log_x, 2)
    fy = _scale([p[1] for p in points], HEIGHT - BOTTOM, TOP, log_y, 10)
    parts = [_axes(fx, fy, x_label, y_label)]
    for i, (label, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        xy = [(fx(x), fy(y)) for x, y in values if _finite(x) and _finite(y)]
        dash = " stroke-dasharray='5 3'" if label in dashed else ""
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        parts.append(f"<polyline points='{path}' fill='none' stroke='{color}' stroke-width='2'{dash}/>")
        parts += [f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='{color}'/>" for x, y in xy]
        lx, ly = LEFT + (i % 2) * 200, HEIGHT + 6 + 16 * (i // 2)  # the legend sits under the chart
        parts.append(
            f"<line x1='{lx}' y1='{ly}' x2='{lx + 16}' y2='{ly}' stroke='{color}' stroke-width='2'{dash}/>"
            f"<text x='{lx + 20}' y='{ly + 4}' class='legend'>{escape(label)}</text>"
        )
    return _frame(title, "".join(parts), HEIGHT + 16 * ((len(series) + 1) // 2))


def profile_charts(models: Sequence[Mapping]) -> list[str]:
    """p50 latency and throughput against batch size (log 2), one line per model and mode.

    models: the "models" list of a profile report as JSON (`ProfileReport.to_dict()`, profile.json):
    each with a "label" and "model_only" / "end_to_end" lists of {"batch_size", "p50_ms",
    "images_per_second"}. End-to-end lines are dashed and named "<label> (end to end)".
    """
    latency: dict[str, list[tuple[float, float]]] = {}
    throughput: dict[str, list[tuple[float, float]]] = {}
    for m in models:
        for mode, suffix in (("model_only", ""), ("end_to_end", " (end to end)")):
            stats = m.get(mode) or []
            if stats:
                latency[m["label"] + suffix] = [(s["batch_size"], s["p50_ms"]) for s in stats]
                throughput[m["label"] + suffix] = [(s["batch_size"], s["images_per_second"]) for s in stats]
    dashed = [k for k in latency if k.endswith("(end to end)")]
    return [
        line_chart(latency, "p50 latency per batch", "batch size", "ms", log_x=True, dashed=dashed),
        line_chart(throughput, "throughput", "batch size", "images/s", log_x=True, dashed=dashed),
    ]


def svg_file(charts: Sequence[str], title: str) -> str:
    """`charts` (from the functions above) side by side as one standalone SVG document, styled, white."""
    sizes = [ElementTree.fromstring(chart).attrib for chart in charts]  # each chart states its own size
    width = sum(int(a["width"]) for a in sizes) + GAP * max(len(charts) - 1, 0)
    height = max((int(a["height"]) for a in sizes), default=0)
    parts, x = [], 0
    for chart, a in zip(charts, sizes):
        parts.append(f"<g transform='translate({x},0)'>{chart}</g>")
        x += int(a["width"]) + GAP
    return (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
        f"font-family='system-ui,sans-serif'><title>{escape(title)}</title><style>{CHART_CSS}</style>"
        f"<rect width='100%' height='100%' fill='#fff'/>{''.join(parts)}</svg>\n"
    )


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class _Scale:
    """Maps data values onto pixels; knows its tick values."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool, base: int):
        self.log, self.p0, self.p1 = log, p0, p1
        f = (lambda v: math.log(v, base)) if log else (lambda v: v)
        self.f, self.lo, self.hi = f, f(lo), f(hi)
        if self.hi == self.lo:
            self.lo, self.hi = self.lo - 0.5, self.hi + 0.5
        if log:
            self.ticks = [
                base**e
                for e in range(math.floor(self.lo), math.ceil(self.hi) + 1)
                if self.lo - 1e-9 <= e <= self.hi + 1e-9
            ] or [lo, hi]
        else:
            self.ticks = _nice_ticks(self.lo, self.hi)

    def __call__(self, v: float) -> float:
        return self.p0 + (self.f(v) - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _scale(values: list[float], p0: float, p1: float, log: bool, base: int) -> _Scale:
    if log:
        values = [v for v in values if v > 0] or [1.0]
    return _Scale(min(values), max(values), p0, p1, log, base)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _axes(fx: _Scale, fy: _Scale, x_label: str, y_label: str) -> str:
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    parts = [f"<rect x='{x0}' y='{y1}' width='{x1 - x0}' height='{y0 - y1}' class='plot'/>"]
    for t in fx.ticks:
        x = fx(t)
        parts.append(
            f"<line x1='{x:.1f}' y1='{y1}' x2='{x:.1f}' y2='{y0}' class='grid'/>"
            f"<text x='{x:.1f}' y='{y0 + 15}' text-anchor='middle'>{_label(t)}</text>"
        )
    for t in fy.ticks:
        y = fy(t)
        parts.append(
            f"<line x1='{x0}' y1='{y:.1f}' x2='{x1}' y2='{y:.1f}' class='grid'/>"
            f"<text x='{x0 - 5}' y='{y + 4:.1f}' text-anchor='end'>{_label(t)}</text>"
        )
    parts.append(f"<text x='{(x0 + x1) / 2}' y='{HEIGHT - 8}' text-anchor='middle'>{escape(x_label)}</text>")
    parts.append(
        f"<text x='14' y='{(y0 + y1) / 2}' text-anchor='middle' transform='rotate(-90 14 {(y0 + y1) / 2})'>"
        f"{escape(y_label)}</text>"
    )
    return "".join(parts)


def _frame(title: str, body: str, height: int = HEIGHT) -> str:
    return (
        f"<svg class='chart' role='img' aria-label='{escape(title)}' viewBox='0 0 {WIDTH} {height}' "
        f"width='{WIDTH}' height='{height}'><title>{escape(title)}</title>"
        f"<text x='{WIDTH / 2}' y='18' text-anchor='middle' class='title'>{escape(title)}</text>{body}</svg>"
    )
