"""Charts of the web view as inline SVG, drawn in Python on the server (no JS library, no CDN).

    svg = histogram(edges, {"de": [3, 5, 1]}, "margin")            # bars, one panel
    svg = overlaid(edges, {"demo/v1": [...], "demo/v2": [...]})    # step lines over shared bins
    svg = scatter({"candidates": [(x, y), ...]}, lines=[...])       # points and straight lines
    svg = funnel({"prompts": 5, "candidates": 20, "kept": 18, "pairs": 5})   # horizontal bars

Each function returns a markupsafe.Markup string holding one <svg> element with a `class`
(`chart chart-<kind>`), a <title> and `data-*` attributes carrying the plotted numbers (bar
counts, point counts), so a test or a browser can read what was drawn. Labels are XML-escaped.
The page's templates (templates/*.html) place them; app.py never draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

W, H = 360, 180
PAD_L, PAD_R, PAD_T, PAD_B = 44, 10, 34, 30
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _num(v: float) -> str:
    """A tick label: short, never scientific for ordinary values."""
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def _scale(lo: float, hi: float, a: float, b: float):
    """A function mapping [lo, hi] onto [a, b] (a flat range maps to the middle)."""
    if hi <= lo:
        return lambda v: (a + b) / 2
    return lambda v: a + (v - lo) / (hi - lo) * (b - a)


def _frame(kind: str, title: str, data: dict, body: list[str], x_label: str, y_label: str,
           x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]],
           legend: Sequence[tuple[str, str]] = ()) -> Markup:  # fmt: skip
    attrs = " ".join(f'data-{k}="{escape(v)}"' for k, v in data.items())
    out = [f'<svg class="chart chart-{kind}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'role="img" xmlns="http://www.w3.org/2000/svg" {attrs}>',
           f"<title>{escape(title)}</title>",
           f'<text x="{W / 2}" y="14" text-anchor="middle" class="chart-title">{escape(title)}</text>',
           f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" class="axis"/>',
           f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" class="axis"/>']  # fmt: skip
    for x, label in x_ticks:
        out.append(f'<text x="{x:.1f}" y="{H - PAD_B + 12}" text-anchor="middle" '
                   f'class="tick">{escape(label)}</text>')  # fmt: skip
    for y, label in y_ticks:
        out.append(f'<text x="{PAD_L - 4}" y="{y + 3:.1f}" text-anchor="end" '
                   f'class="tick">{escape(label)}</text>')  # fmt: skip
    out.append(f'<text x="{(PAD_L + W - PAD_R) / 2}" y="{H - 4}" text-anchor="middle" '
               f'class="axis-label">{escape(x_label)}</text>')  # fmt: skip
    out.append(f'<text x="10" y="{(PAD_T + H - PAD_B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 10 {(PAD_T + H - PAD_B) / 2})" '
               f'class="axis-label">{escape(y_label)}</text>')  # fmt: skip
    out += body
    x = PAD_L
    for label, colour in legend:  # one row under the title, above the plot
        out.append(f'<rect x="{x}" y="19" width="8" height="8" fill="{colour}"/>'
                   f'<text x="{x + 11}" y="26" class="legend">{escape(label)}</text>')  # fmt: skip
        x += 20 + 5 * len(label)
    out.append("</svg>")
    return Markup("\n".join(out))


def _y_ticks(lo: float, hi: float, sy) -> list[tuple[float, str]]:
    return [(sy(v), _num(v)) for v in (lo, (lo + hi) / 2, hi)]


def _x_ticks(lo: float, hi: float, sx) -> list[tuple[float, str]]:
    return [(sx(v), _num(v)) for v in (lo, (lo + hi) / 2, hi)]


def histogram(edges: Sequence[float], counts: Sequence[int], title: str,
              x_label: str = "margin", colour: str = COLOURS[0]) -> Markup:  # fmt: skip
    """Bars of `counts` over the bins [edges[i], edges[i+1]); data-counts holds the counts."""
    if not counts:
        return empty(title)
    top = max(max(counts), 1)
    sx = _scale(edges[0], edges[-1], PAD_L, W - PAD_R)
    sy = _scale(0, top, H - PAD_B, PAD_T)
    body = []
    for k, c in enumerate(counts):
        x0, x1 = sx(edges[k]), sx(edges[k + 1])
        if edges[-1] <= edges[0]:  # one value: one bar in the middle
            x0, x1 = (W + PAD_L - PAD_R) / 2 - 8, (W + PAD_L - PAD_R) / 2 + 8
        if c:
            body.append(f'<rect class="bar" x="{x0:.1f}" y="{sy(c):.1f}" '
                        f'width="{max(x1 - x0 - 0.5, 0.5):.1f}" height="{sy(0) - sy(c):.1f}" '
                        f'fill="{colour}"><title>{_num(edges[k])} to {_num(edges[k + 1])}: '
                        f"{c}</title></rect>")  # fmt: skip
    data = {"counts": ",".join(str(int(c)) for c in counts), "total": str(int(sum(counts)))}
    return _frame("histogram", title, data, body, x_label, "pairs",
                  _x_ticks(edges[0], edges[-1], sx), [(sy(0), "0"), (sy(top), str(top))])  # fmt: skip


def overlaid(edges: Sequence[float], series: dict[str, Sequence[int]], title: str,
             x_label: str = "margin") -> Markup:  # fmt: skip
    """One step line per series over shared bins (the diff page's two versions); data-totals
    holds each series' total, in order."""
    if not series or not edges:
        return empty(title)
    top = max([max(c) for c in series.values() if len(c)] + [1])
    sx = _scale(edges[0], edges[-1], PAD_L, W - PAD_R)
    sy = _scale(0, top, H - PAD_B, PAD_T)
    body, legend = [], []
    for k, (label, counts) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = [f"{sx(edges[0]):.1f},{sy(0):.1f}"]
        for i, c in enumerate(counts):
            pts += [f"{sx(edges[i]):.1f},{sy(c):.1f}", f"{sx(edges[i + 1]):.1f},{sy(c):.1f}"]
        pts.append(f"{sx(edges[-1]):.1f},{sy(0):.1f}")
        body.append(f'<polyline class="series" data-series="{escape(label)}" fill="none" '
                    f'stroke="{colour}" stroke-width="1.5" points="{" ".join(pts)}"/>')  # fmt: skip
        legend.append((f"{label} (n={int(sum(counts))})", colour))
    data = {"totals": ",".join(str(int(sum(c))) for c in series.values())}
    return _frame("overlaid", title, data, body, x_label, "pairs",
                  _x_ticks(edges[0], edges[-1], sx), [(sy(0), "0"), (sy(top), str(top))], legend)  # fmt: skip


def scatter(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str,
            y_label: str, lines: Sequence[tuple[str, float, float, str]] = ()) -> Markup:  # fmt: skip
    """Points per series, and straight lines y = a + b * x given as (label, a, b, dash style)
    drawn across the x range and clipped to the y range; data-points holds each series' count."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return empty(title)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.05 or 0.5
    y_lo, y_hi = y_lo - pad, y_hi + pad
    sx = _scale(x_lo, x_hi, PAD_L + 3, W - PAD_R - 3)
    sy = _scale(y_lo, y_hi, H - PAD_B, PAD_T)
    body, legend = [], []
    for k, (label, points) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        body.append(f'<g class="series" data-series="{escape(label)}" fill="{colour}" '
                    'fill-opacity="0.6">')  # fmt: skip
        body += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.4"/>' for x, y in points]
        body.append("</g>")
        legend.append((label, colour))
    for k, (label, a, b, dash) in enumerate(lines):
        seg = _clip_line(a, b, x_lo, x_hi, y_lo, y_hi)
        if seg is None:
            continue
        (x0, y0), (x1, y1) = seg
        colour = "#333" if k == 0 else "#000"
        body.append(f'<line class="fit-line" data-label="{escape(label)}" data-slope="{b:.6g}" '
                    f'x1="{sx(x0):.1f}" y1="{sy(y0):.1f}" x2="{sx(x1):.1f}" y2="{sy(y1):.1f}" '
                    f'stroke="{colour}" stroke-width="1.2" stroke-dasharray="{dash}">'
                    f"<title>{escape(label)}</title></line>")  # fmt: skip
        legend.append((label, colour))
    data = {"points": ",".join(str(len(s)) for s in series.values())}
    return _frame("scatter", title, data, body, x_label, y_label, _x_ticks(x_lo, x_hi, sx),
                  _y_ticks(y_lo, y_hi, sy), legend)  # fmt: skip


def _clip_line(a: float, b: float, x_lo: float, x_hi: float, y_lo: float, y_hi: float):
    """The part of y = a + b x inside the box, as two points, or None."""
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if b == 0:
        return ((x_lo, a), (x_hi, a)) if y_lo <= a <= y_hi else None
    xs = sorted([x_lo, x_hi, (y_lo - a) / b, (y_hi - a) / b])[1:3]  # the middle two
    x0, x1 = max(xs[0], x_lo), min(xs[1], x_hi)
    if x1 < x0 or not all(math.isfinite(v) for v in (x0, x1)):
        return None
    return (x0, a + b * x0), (x1, a + b * x1)


def funnel(stages: dict[str, int], title: str) -> Markup:
    """Horizontal bars, one per stage, widths relative to the first; data-values holds them."""
    if not stages:
        return empty(title)
    top = max(max(stages.values()), 1)
    h = PAD_T + 22 * len(stages) + 6
    out = [f'<svg class="chart chart-funnel" viewBox="0 0 {W} {h}" width="{W}" height="{h}" '
           f'role="img" xmlns="http://www.w3.org/2000/svg" '
           f'data-values="{",".join(str(int(v)) for v in stages.values())}">',
           f"<title>{escape(title)}</title>",
           f'<text x="{W / 2}" y="14" text-anchor="middle" class="chart-title">{escape(title)}</text>']  # fmt: skip
    span = W - 100 - PAD_R - 40
    for k, (label, v) in enumerate(stages.items()):
        y = PAD_T + 22 * k
        width = span * v / top
        out.append(f'<text x="96" y="{y + 13}" text-anchor="end" class="tick">{escape(label)}</text>'
                   f'<rect class="bar" x="100" y="{y}" width="{max(width, 0.5):.1f}" height="16" '
                   f'fill="{COLOURS[k % len(COLOURS)]}"/>'
                   f'<text x="{104 + width:.1f}" y="{y + 13}" class="value">{int(v)}</text>')  # fmt: skip
    out.append("</svg>")
    return Markup("\n".join(out))


def empty(title: str) -> Markup:
    """A placeholder panel saying there is nothing to draw."""
    return Markup(f'<svg class="chart chart-empty" viewBox="0 0 {W} 40" width="{W}" height="40" '
                  f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
                  f'<text x="{W / 2}" y="24" text-anchor="middle" class="tick">'
                  f"{escape(title)}: nothing to draw</text></svg>")  # fmt: skip
