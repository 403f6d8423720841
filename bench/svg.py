"""A small SVG chart writer: line and point series on linear axes, with vertical markers.

Written here rather than taking matplotlib (tens of MB of wheels, a C toolchain on some
platforms) for two charts of a few hundred points: the output is plain text, diffable, and
renders on GitHub and in any browser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclass
class Series:
    label: str
    points: Sequence[Sequence[float]]
    style: str = "line"  # "line", "points" or "dashed"
    color: str = ""


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    markers: list[tuple[float, str]] = field(default_factory=list)  # (x, label)
    width: int = 880
    height: int = 400


def _nice_step(span: float, ticks: int = 6) -> float:
    if span <= 0:
        return 1.0
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.2g}"


def render(chart: Chart) -> str:
    left, right, top = 70, 20, 40
    rows = (len(chart.series) + 1) // 2
    bottom = 56 + 18 * rows
    height = chart.height + 18 * rows  # the plot keeps its height; the legend adds rows
    w, h = chart.width - left - right, height - top - bottom
    xs = [x for s in chart.series for x, _ in s.points] + [x for x, _ in chart.markers]
    ys = [y for s in chart.series for _, y in s.points]
    x_max = max(xs, default=1.0) or 1.0
    y_max = max(ys, default=1.0) or 1.0
    x_step, y_step = _nice_step(x_max), _nice_step(y_max)
    x_max = math.ceil(x_max / x_step) * x_step
    y_max = math.ceil(y_max / y_step) * y_step

    def px(x: float) -> float:
        return left + w * x / x_max

    def py(y: float) -> float:
        return top + h - h * y / y_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" height="{height}"'
        f' viewBox="0 0 {chart.width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{chart.width}" height="{height}" fill="white"/>',
        f'<text x="{chart.width / 2}" y="22" text-anchor="middle" font-size="15">'
        f"{escape(chart.title)}</text>",
    ]
    tick = 0.0
    while tick <= y_max + y_step / 2:
        y = py(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
        tick += y_step
    tick = 0.0
    while tick <= x_max + x_step / 2:
        x = px(tick)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + h + 16}" text-anchor="middle">{_fmt(tick)}</text>')
        tick += x_step
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#444"/>')
    out.append(
        f'<text x="{left + w / 2}" y="{top + h + 34}" text-anchor="middle">'
        f"{escape(chart.x_label)}</text>"
    )
    out.append(
        f'<text transform="translate(18 {top + h / 2}) rotate(-90)" text-anchor="middle">'
        f"{escape(chart.y_label)}</text>"
    )
    for n, (x, label) in enumerate(chart.markers):
        xx = px(x)
        out.append(
            f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{top + h}" stroke="#999"'
            ' stroke-dasharray="3,3"/>'
        )
        ty = top + 12 + 12 * (n % 4)
        out.append(f'<text x="{xx + 3:.1f}" y="{ty}" fill="#555">{escape(label)}</text>')
    for n, s in enumerate(chart.series):
        color = s.color or PALETTE[n % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        if s.style == "points":
            for x, y in s.points:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}"/>')
        elif coords:
            dash = ' stroke-dasharray="6,4"' if s.style == "dashed" else ""
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{color}"'
                f' stroke-width="1.8"{dash}/>'
            )
        lx = left + 10 + (w // 2) * (n % 2)
        ly = top + h + 56 + 18 * (n // 2)
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="14" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 20}" y="{ly}">{escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
