"""Small trend plots as inline SVG: one figure over runs, the baseline band, this run marked.

Why hand-written SVG and no plotting library: the reports must be one self-contained
HTML file readable with no network, on every pool, from a harness that installs nothing
beyond its test dependencies. These plots are a polyline, a shaded band, a dashed median
and a few labels; matplotlib (about 40 MB with its fonts, and half a second to import)
would draw the same and add a dependency every pool must install. SVG text stays
searchable and goes through the same escaping as every other report text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llorch_harness.perf.figures import format_value
from llorch_harness.safetext import Markup, text

COLORS = {"regression": "#cf222e", "improvement": "#1a7f37", "ok": "#0969da",
          "history": "#57606a", "band": "#0969da"}


@dataclass(frozen=True)
class TrendPoint:
    run_id: int
    value: float | None
    failed: bool = False  # a record whose own check failed (drawn hollow)


def _esc(value: object) -> Markup:
    return text(value)  # the one escaping layer (safetext): texts and numbers alike


def _range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if math.isclose(lo, hi, rel_tol=1e-9, abs_tol=1e-12):
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def trend_svg(name: str, points: Sequence[TrendPoint], *, current_id: int | None = None,
              baseline: float | None = None, band: float | None = None,
              verdict: str = "ok", width: int = 260, height: int = 84) -> Markup:
    """An SVG of `name` over the given runs (oldest first). The band is drawn around
    `baseline`; the point of `current_id` is coloured by `verdict`. Numbers only reach it
    typed (the store's loader checks them); every text is escaped."""
    current_id = current_id if isinstance(current_id, int) else None
    if not (isinstance(baseline, float | int) and isinstance(band, float | int)
            and math.isfinite(baseline) and math.isfinite(band)):
        baseline = band = None
    pts = [p for p in points if p.value is not None and math.isfinite(p.value)]
    if not pts:
        return Markup(f'<svg class="llorch-trend" xmlns="http://www.w3.org/2000/svg" '
                      f'width="{width}" height="{height}" role="img">'
                      f"<title>{_esc(name)}: no values</title><text x=\"4\" "
                      f'y="{height // 2}" font-size="11" fill="#57606a">no values recorded'
                      "</text></svg>")
    values = [float(p.value) for p in pts if p.value is not None]
    span = list(values)
    if baseline is not None and band is not None:
        span += [baseline - band, baseline + band]
    lo, hi = _range(span)
    left, right, top, bottom = 46, 6, 6, 14
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * i / (len(pts) - 1) if len(pts) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (hi - v) / (hi - lo)

    parts = [f'<svg class="llorch-trend" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f"<title>{_esc(_title(name, pts, current_id, baseline, band))}</title>",
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#f6f8fa"/>']
    if baseline is not None and band is not None:
        y0, y1 = y(baseline + band), y(baseline - band)
        parts.append(f'<rect x="{left}" y="{y0:.1f}" width="{plot_w}" height="{y1 - y0:.1f}" '
                     f'fill="{COLORS["band"]}" fill-opacity="0.15"/>')
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(baseline):.1f}" '
                     f'y2="{y(baseline):.1f}" stroke="{COLORS["band"]}" stroke-dasharray="3,2"/>')
    line = " ".join(f"{x(i):.1f},{y(float(p.value or 0)):.1f}" for i, p in enumerate(pts))
    parts.append(f'<polyline points="{line}" fill="none" stroke="{COLORS["history"]}" '
                 'stroke-width="1.2"/>')
    parts += [_dot(x(i), y(float(p.value or 0)), p, current_id, verdict)
              for i, p in enumerate(pts)]
    parts += [_label(4, top + 9, format_value(name, hi)),
              _label(4, top + plot_h, format_value(name, lo)),
              _label(left, height - 2, f"run #{pts[0].run_id}"),
              f'<text x="{width - right}" y="{height - 2}" font-size="9" fill="#57606a" '
              f'text-anchor="end">#{_esc(pts[-1].run_id)}</text>', "</svg>"]
    return Markup("".join(parts))  # every value in it went through _esc or is a number


def _dot(cx: float, cy: float, p: TrendPoint, current_id: int | None, verdict: str) -> str:
    if p.run_id == current_id:
        color = COLORS.get(verdict, COLORS["ok"])
        return (f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color}" stroke="#000" '
                f'stroke-width="0.8"><title>this run #{_esc(p.run_id)}</title></circle>')
    fill = "#fff" if p.failed else COLORS["history"]
    return (f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.2" fill="{fill}" '
            f'stroke="{COLORS["history"]}" stroke-width="0.8"/>')


def _label(x: float, y: float, text: str) -> str:
    return f'<text x="{x}" y="{y}" font-size="9" fill="#57606a">{_esc(text)}</text>'


def _title(name: str, pts: Sequence[TrendPoint], current_id: int | None,
           baseline: float | None, band: float | None) -> str:
    text = f"{name} over runs #{pts[0].run_id}..#{pts[-1].run_id}"
    if current_id is not None:
        text += f"; this run #{current_id}"
    if baseline is not None and band is not None:
        text += (f"; baseline {format_value(name, baseline)} ± "
                 f"{format_value(name, band)}")
    return text
