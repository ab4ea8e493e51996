"""Inline SVG line charts for report.html, drawn here so the report needs no script or network.

A chart is a ``<figure>``: an ``<svg role="img">`` with a ``<title>``/``<desc>``, labelled
axes with units, shaded bands and vertical markers for the readiness timeline, and an HTML
legend (line style and colour per series).  Every series path carries ``data-series`` and
``data-points`` so a reader (or a test) can find the data without parsing geometry.

The percentile axis is HdrHistogram's: x = log10(1 / (1 - p)), so 90 %, 99 %, 99.9 % ...
are evenly spaced and the tail gets as much room as the body.
"""
import enum
import math
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 1120, 330
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 30, 52
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22")
TIME_TICKS = 8  # enough that the axis overshoots the run's end by at most one short step
LABEL_CHAR_PX = 6.2  # width of a band label's character at 11px, to keep labels apart
BAND_COLOURS = {"PASS": "#2ca02c", "FAIL": "#d62728", "INCONCLUSIVE": "#ff9f1c"}


class XAxis(enum.Enum):
    LINEAR = "linear"          # seconds since the run began
    PERCENTILE = "percentile"  # HdrHistogram's 1/(1-p) log axis


@dataclass
class Series:
    name: str
    points: list  # (x, y); y None breaks the line
    colour: str
    dash: str = ""  # SVG stroke-dasharray
    width: float = 2.0


@dataclass
class Band:
    """A shaded span of the x axis: a judged window, coloured by its outcome."""

    start: float
    end: float
    label: str
    colour: str
    legend: str = ""  # the legend entry bands of this colour share


@dataclass
class Marker:
    """A vertical line: a state transition worth seeing against the data."""

    x: float
    label: str
    colour: str = "#555"


@dataclass
class Chart:
    key: str
    title: str
    x_label: str
    y_label: str
    series: list
    x_axis: XAxis = XAxis.LINEAR
    bands: list = field(default_factory=list)
    markers: list = field(default_factory=list)
    description: str = ""
    y_floor: float = 0.0
    x_range: tuple = None  # (low, high) to share one time axis between charts


def percentile_x(percent):
    """Where ``percent`` (0 <= p < 100) sits on the percentile axis."""
    return math.log10(100.0 / (100.0 - percent))


def percentile_label(x):
    """The percentile at axis position ``x`` as HdrHistogram's plots name it."""
    if x <= 0:
        return "0%"
    digits = max(0, int(round(x)) - 2)
    return f"{100.0 - 100.0 / 10 ** x:.{digits}f}%"


def nice_ticks(low, high, count=6):
    """Round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def format_number(value):
    if value == 0:
        return "0"
    if abs(value) >= 10000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.4g}"
    return f"{value:.3g}"


def render(chart):
    """The chart as a ``<figure>`` (SVG plus legend); a chart with no point still draws its
    axes, so an empty run reads as empty rather than broken."""
    xs = [x for s in chart.series for x, y in s.points if y is not None]
    ys = [y for s in chart.series for x, y in s.points if y is not None]
    if chart.x_axis is XAxis.PERCENTILE:
        x_ticks = list(range(0, max(2, math.ceil(round(max(xs, default=2.0), 6))) + 1))
    else:
        low, high = chart.x_range or (min(xs, default=0.0), max(xs, default=1.0))
        low = min([low] + [b.start for b in chart.bands] + [m.x for m in chart.markers])
        high = max([high] + [b.end for b in chart.bands] + [m.x for m in chart.markers])
        x_ticks = nice_ticks(low, high, TIME_TICKS)
    y_ticks = nice_ticks(chart.y_floor, max(ys, default=1.0) * 1.05 or 1.0, 5)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x):
        return LEFT + (x - x0) / (x1 - x0) * PLOT_W

    def py(y):
        return TOP + PLOT_H - (y - y0) / (y1 - y0) * PLOT_H

    title_id, desc_id = f"{chart.key}-title", f"{chart.key}-desc"
    parts = [f'<svg class="chart" data-chart="{escape(chart.key)}" role="img" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-labelledby="{title_id} {desc_id}" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{title_id}">{escape(chart.title)}</title>',
             f'<desc id="{desc_id}">{escape(chart.description or chart.title)}</desc>',
             f'<defs><clipPath id="{chart.key}-clip"><rect x="{LEFT}" y="{TOP}" '
             f'width="{PLOT_W}" height="{PLOT_H}"/></clipPath></defs>']
    parts += _bands(chart, px)
    parts += _grid(chart, x_ticks, y_ticks, px, py)
    parts += _markers(chart, px)
    for series in chart.series:
        parts.append(_path(chart, series, px, py))
    parts.append(f'<text class="axis-label" x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 8}" '
                 f'text-anchor="middle">{escape(chart.x_label)}</text>')
    parts.append(f'<text class="axis-label" transform="translate(16 {TOP + PLOT_H / 2}) '
                 f'rotate(-90)" text-anchor="middle">{escape(chart.y_label)}</text>')
    parts.append("</svg>")
    return (f'<figure class="chart-figure" id="chart-{escape(chart.key)}">'
            f'<figcaption>{escape(chart.title)}</figcaption>{"".join(parts)}'
            f'{legend(chart)}</figure>')


def _bands(chart, px):
    """Shaded windows; a label goes on the first of three rows where it does not run into
    the previous label, and is left to the tooltip when every row is taken."""
    parts = []
    row_ends = [-math.inf] * 3
    for band in chart.bands:
        left, right = px(band.start), px(band.end)
        text = ""
        width = LABEL_CHAR_PX * len(band.label) + 8
        for row, end in enumerate(row_ends):
            if left >= end:
                row_ends[row] = left + width
                text = (f'<text x="{left + 4:.1f}" y="{TOP + 13 + 13 * row}" '
                        f'class="band-label" fill="{band.colour}">{escape(band.label)}</text>')
                break
        parts.append(f'<g class="band" data-band="{escape(band.label)}">'
                     f'<rect x="{left:.1f}" y="{TOP}" width="{max(right - left, 1.0):.1f}" '
                     f'height="{PLOT_H}" fill="{band.colour}" fill-opacity="0.08" '
                     f'stroke="{band.colour}" stroke-opacity="0.35"/>{text}'
                     f'<title>{escape(band.label)}</title></g>')
    return parts


def _grid(chart, x_ticks, y_ticks, px, py):
    parts = ['<g class="grid">']
    for tick in y_ticks:
        y = py(tick)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{format_number(tick)}</text>')
    for tick in x_ticks:
        x = px(tick)
        label = percentile_label(tick) if chart.x_axis is XAxis.PERCENTILE \
            else format_number(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + PLOT_H}"/>'
                     f'<text class="tick" x="{x:.1f}" y="{TOP + PLOT_H + 16}" '
                     f'text-anchor="middle">{label}</text>')
    parts.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{PLOT_W}" '
                 f'height="{PLOT_H}"/></g>')
    return parts


def _markers(chart, px):
    parts = []
    for marker in chart.markers:
        x = px(marker.x)
        parts.append(f'<g class="marker"><line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                     f'y2="{TOP + PLOT_H}" stroke="{marker.colour}" stroke-dasharray="2 3"/>'
                     f'<title>{escape(marker.label)}</title></g>')
    return parts


def _path(chart, series, px, py):
    commands = []
    pen_up = True
    count = 0
    for x, y in series.points:
        if y is None:
            pen_up = True
            continue
        if pen_up and commands and commands[-1][0] == "M":
            commands.append("h0")  # a lone point: a dot (round caps) rather than nothing
        commands.append(f'{"M" if pen_up else "L"}{px(x):.1f},{py(y):.1f}')
        pen_up = False
        count += 1
    if commands and commands[-1][0] == "M":
        commands.append("h0")
    dash = f' stroke-dasharray="{series.dash}"' if series.dash else ""
    return (f'<path class="series" data-series="{escape(series.name)}" data-points="{count}" '
            f'clip-path="url(#{chart.key}-clip)" d="{" ".join(commands)}" fill="none" '
            f'stroke="{series.colour}" stroke-width="{series.width}"{dash} '
            f'stroke-linejoin="round" stroke-linecap="round">'
            f'<title>{escape(series.name)}</title></path>')


def legend(chart):
    items = []
    for series in chart.series:
        dash = f' stroke-dasharray="{series.dash}"' if series.dash else ""
        items.append(f'<li><svg width="34" height="10" aria-hidden="true"><line x1="1" '
                     f'x2="33" y1="5" y2="5" stroke="{series.colour}" stroke-width="'
                     f'{series.width + 0.5}"{dash}/></svg>{escape(series.name)}</li>')
    shown = {}
    for band in chart.bands:
        shown.setdefault(band.colour, band.legend or band.label)
    for colour, label in shown.items():
        items.append(f'<li><span class="swatch" style="background:{colour}"></span>'
                     f'{escape(label)}</li>')
    if chart.markers:
        items.append('<li><svg width="34" height="10" aria-hidden="true"><line x1="17" '
                     'x2="17" y1="0" y2="10" stroke="#555" stroke-dasharray="2 3"/></svg>'
                     'state transition</li>')
    return f'<ul class="legend" aria-label="legend">{"".join(items)}</ul>'


@dataclass
class Span:
    start: float
    end: float
    text: str
    colour: str
    label: str = ""  # drawn inside the span when it fits


def timeline(key, title, rows, x_range, x_label, legend_items=()):
    """A Gantt strip: one row per (label, [Span]) on the same time axis as the charts; a
    span wide enough for its label carries it."""
    row_h = 26
    height = TOP + row_h * len(rows) + BOTTOM
    x_ticks = nice_ticks(*x_range, TIME_TICKS)
    x0, x1 = x_ticks[0], x_ticks[-1]

    def px(x):
        return LEFT + (x - x0) / (x1 - x0) * PLOT_W

    left = 190
    parts = [f'<svg class="chart timeline" data-chart="{escape(key)}" role="img" '
             f'viewBox="{LEFT - left} 0 {WIDTH - LEFT + left} {height}" '
             f'aria-labelledby="{key}-title" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{key}-title">{escape(title)}</title><g class="grid">']
    bottom = TOP + row_h * len(rows)
    for tick in x_ticks:
        x = px(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{bottom}"/>'
                     f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" '
                     f'text-anchor="middle">{format_number(tick)}</text>')
    parts.append("</g>")
    for number, (label, spans) in enumerate(rows):
        y = TOP + number * row_h
        parts.append(f'<text class="row-label" x="{LEFT - 8}" y="{y + 17}" '
                     f'text-anchor="end">{escape(label)}</text>')
        for span in spans:
            start, end = px(span.start), px(span.end)
            inside = ""
            if span.label and end - start > LABEL_CHAR_PX * len(span.label) + 8:
                inside = (f'<text class="span-label" x="{start + 5:.1f}" y="{y + 17}">'
                          f'{escape(span.label)}</text>')
            parts.append(f'<g class="span" data-span="{escape(span.text)}"><rect '
                         f'x="{start:.1f}" y="{y + 4}" width="{max(end - start, 2.0):.1f}" '
                         f'height="{row_h - 8}" rx="3" fill="{span.colour}"/>{inside}'
                         f'<title>{escape(span.text)}</title></g>')
    parts.append(f'<text class="axis-label" x="{LEFT + PLOT_W / 2}" y="{height - 8}" '
                 f'text-anchor="middle">{escape(x_label)}</text></svg>')
    items = "".join(f'<li><span class="swatch solid" style="background:{colour}"></span>'
                    f'{escape(text)}</li>' for colour, text in legend_items)
    return (f'<figure class="chart-figure" id="chart-{escape(key)}">'
            f'<figcaption>{escape(title)}</figcaption>{"".join(parts)}'
            f'<ul class="legend" aria-label="legend">{items}</ul></figure>')
