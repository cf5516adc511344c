"""Hourly buckets as a bar chart: SVG by hand, PNG with a tiny pure-Python
writer (zlib + a 5x7 bitmap font with both cases), so no plotting library is
needed.

    write_chart(result, "buckets.svg")   # or .png
    svg_text = render_svg(result, start_us, end_us)

`result` is the JSON of `query buckets`: `{"customer_id", "buckets":
[{"ts_start_of_hour", "count"}, ...]}`. The x axis is time: one slot per hour
of the range (`[start floored to the hour, end)` when given, else the first
to the last bucket), hours without events drawn as zero-height bars, so a gap
shows as a gap. When there are more than `MAX_BINS` hours the slots are days
(then months, then years), so the chart keeps a bounded width
(`MAX_PLOT_WIDTH`) and bars a bounded width (`MAX_BAR_WIDTH`: one bucket does
not fill the plot). Ids are drawn as they are; the y axis is counts.
"""

from __future__ import annotations

import bisect
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping
from xml.sax.saxutils import escape

from streams.utc import DAY_US, HOUR_US, datetime_to_us, us_to_datetime
from streams.windowing import HOURLY, TumblingWindower

_DAYS = TumblingWindower(DAY_US)
MAX_BINS = 400  # slots on the x axis; past this, a coarser unit
MIN_PLOT_WIDTH, MAX_PLOT_WIDTH = 480, 1600
MAX_BAR_WIDTH = 48
HEIGHT = 380
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 78, 24, 44, 78
BAR_COLOUR = (0x3B, 0x6E, 0xA8)
AXIS_COLOUR = (0x33, 0x33, 0x33)
GRID_COLOUR = (0xE2, 0xE2, 0xE2)
TEXT_COLOUR = (0x11, 0x11, 0x11)
Y_LABEL = "events"


@dataclass
class Bar:
    x: float
    width: float
    top: float
    count: int
    start: str


@dataclass
class Layout:
    """Pixel geometry shared by the SVG and PNG renderers."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    title: str
    unit: str = "hour"  # what one bar counts: hour, day, month or year
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[tuple[float, int]] = field(default_factory=list)  # (y pixel, value)
    x_labels: list[tuple[float, str, str]] = field(default_factory=list)  # (x centre, line 1, line 2)

    @property
    def bottom(self) -> int:
        return self.top + self.plot_height

    @property
    def x_label(self) -> str:
        return f"{self.unit} starting (UTC)"


def _nice_step(maximum: int, ticks: int = 5) -> int:
    raw = max(1.0, maximum / ticks)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return int(factor * magnitude)
    return int(10 * magnitude)


def _us(text: str) -> int:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return datetime_to_us(moment)


def _month_index(us: int) -> int:
    moment = us_to_datetime(us)
    return moment.year * 12 + moment.month - 1


def _month_start_us(index: int) -> int:
    return _us(f"{index // 12:04d}-{index % 12 + 1:02d}-01T00:00:00+00:00")


def _bins(lo_us: int, hi_us: int) -> tuple[str, list[int]]:
    """The slot unit and the slot starts covering [lo, hi): the finest of
    hour, day, month, year with at most MAX_BINS slots."""
    if (hi_us - lo_us) // HOUR_US <= MAX_BINS:
        return "hour", list(range(lo_us, hi_us, HOUR_US))
    first_day = _DAYS.start_of(lo_us)
    if (hi_us - first_day + DAY_US - 1) // DAY_US <= MAX_BINS:
        return "day", list(range(first_day, hi_us, DAY_US))
    first, last = _month_index(lo_us), _month_index(hi_us - 1)
    if last - first + 1 <= MAX_BINS:
        return "month", [_month_start_us(m) for m in range(first, last + 1)]
    years = range(us_to_datetime(lo_us).year, us_to_datetime(hi_us - 1).year + 1)
    step = max(1, math.ceil(len(years) / MAX_BINS))
    return "year" if step == 1 else f"{step} years", [_month_start_us(y * 12) for y in years[::step]]


def _slot_label(unit: str, start_us: int) -> tuple[str, str]:
    text = us_to_datetime(start_us).strftime("%Y-%m-%dT%H:%M")
    if unit == "hour":
        return text[:10], text[11:16]
    if unit == "day":
        return text[:10], ""
    if unit == "month":
        return text[:7], ""
    return text[:4], ""


def layout(result: Mapping[str, Any], start_us: int | None = None, end_us: int | None = None) -> Layout:
    """The chart of `result` over [start floored to the hour, end) when
    given, else over the hours from the first to the last bucket."""
    points = [(_us(b["ts_start_of_hour"]), int(b["count"])) for b in result.get("buckets", [])]
    lo = HOURLY.start_of(start_us) if start_us is not None else min((t for t, _ in points), default=None)
    hi = end_us if end_us is not None else (max(t for t, _ in points) + HOUR_US if points else None)
    if lo is not None and hi is not None and points:  # buckets outside the given range still show
        lo, hi = min(lo, min(t for t, _ in points)), max(hi, max(t for t, _ in points) + 1)
    unit, starts = _bins(lo, hi) if lo is not None and hi is not None and hi > lo else ("hour", [])
    counts = [0] * len(starts)
    for t, count in points:
        # the last slot starting at or before t
        index = bisect.bisect_right(starts, t) - 1
        counts[max(0, index)] += count
    n = len(starts)
    plot_width = max(MIN_PLOT_WIDTH, min(n * 16, MAX_PLOT_WIDTH))
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    per = unit if unit in ("hour", "day", "month", "year") else "period"
    title = f"Events per {per}, customer {result.get('customer_id', '')}"
    chart = Layout(
        width=MARGIN_LEFT + plot_width + MARGIN_RIGHT,
        height=HEIGHT,
        left=MARGIN_LEFT,
        top=MARGIN_TOP,
        plot_width=plot_width,
        plot_height=plot_height,
        title=title[:90],
        unit=unit,
    )
    maximum = max(counts, default=0)
    step = _nice_step(maximum)
    y_max = max(step, math.ceil(maximum / step) * step)
    chart.y_ticks = [(chart.bottom - plot_height * v / y_max, v) for v in range(0, y_max + 1, step)]
    if n:
        slot = plot_width / n
        bar_width = min(MAX_BAR_WIDTH, max(1.0, slot * 0.8))
        for i, (start, count) in enumerate(zip(starts, counts)):
            x = chart.left + i * slot + (slot - bar_width) / 2
            top = chart.bottom - plot_height * count / y_max
            chart.bars.append(Bar(x, bar_width, top, count, us_to_datetime(start).strftime("%Y-%m-%dT%H:%M:%SZ")))
        label_every = max(1, math.ceil(n * 74 / plot_width))  # labels are ~60 px wide
        for i in range(0, n, label_every):
            first, second = _slot_label(unit, starts[i])
            chart.x_labels.append((chart.left + (i + 0.5) * slot, first, second))
    return chart


# -- SVG -------------------------------------------------------------------------------

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str) -> str:
    """Escaped, and stripped of characters XML 1.0 cannot carry (a customer id is any text)."""
    return escape(_NOT_XML.sub("?", value))


def render_svg(result: Mapping[str, Any], start_us: int | None = None, end_us: int | None = None) -> str:
    chart = layout(result, start_us, end_us)
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" height="{chart.height}" '
        f'viewBox="0 0 {chart.width} {chart.height}" font-family="sans-serif" font-size="11">',
        f"<title>{_text(chart.title)}</title>",
        f'<rect x="0" y="0" width="{chart.width}" height="{chart.height}" fill="#ffffff"/>',
        f'<text class="title" x="{chart.width / 2:.1f}" y="22" text-anchor="middle" font-size="14">{_text(chart.title)}</text>',
    ]
    for y, value in chart.y_ticks:
        out.append(
            f'<line class="grid" x1="{chart.left}" y1="{y:.1f}" x2="{chart.left + chart.plot_width}" y2="{y:.1f}" stroke="#e2e2e2"/>'
        )
        out.append(f'<text class="y-tick" x="{chart.left - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    for bar in chart.bars:
        height = chart.bottom - bar.top
        out.append(
            f'<rect class="bar" x="{bar.x:.2f}" y="{bar.top:.2f}" width="{bar.width:.2f}" height="{height:.2f}" '
            f'fill="#3b6ea8"><title>{_text(bar.start)}: {bar.count}</title></rect>'
        )
    for x, date, hour in chart.x_labels:
        out.append(
            f'<text class="x-tick" x="{x:.1f}" y="{chart.bottom + 16}" text-anchor="middle">'
            f'<tspan x="{x:.1f}">{_text(date)}</tspan><tspan x="{x:.1f}" dy="13">{_text(hour)}</tspan></text>'
        )
    out += [
        f'<line class="axis" x1="{chart.left}" y1="{chart.bottom}" x2="{chart.left + chart.plot_width}" y2="{chart.bottom}" stroke="#333333"/>',
        f'<line class="axis" x1="{chart.left}" y1="{chart.top}" x2="{chart.left}" y2="{chart.bottom}" stroke="#333333"/>',
        f'<text class="x-label" x="{chart.left + chart.plot_width / 2:.1f}" y="{chart.height - 14}" text-anchor="middle">{chart.x_label}</text>',
        f'<text class="y-label" x="18" y="{chart.top + chart.plot_height / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 18 {chart.top + chart.plot_height / 2:.1f})">{Y_LABEL}</text>',
    ]
    if not chart.bars:
        out.append(
            f'<text class="empty" x="{chart.left + chart.plot_width / 2:.1f}" y="{chart.top + chart.plot_height / 2:.1f}" '
            f'text-anchor="middle" fill="#777777">no events in this range</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- PNG -------------------------------------------------------------------------------

# 5x7 glyphs, one 5-bit row per entry (bit 4 = leftmost pixel); both cases,
# so ids are drawn as they are; anything else draws as "?".
_FONT: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    " ": (0, 0, 0, 0, 0, 0, 0), "-": (0, 0, 0, 0x1F, 0, 0, 0), ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08), "_": (0, 0, 0, 0, 0, 0, 0x1F),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02), ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0), "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0), "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "@": (0x0E, 0x11, 0x17, 0x15, 0x17, 0x10, 0x0E),
    "a": (0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F), "b": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E),
    "c": (0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E), "d": (0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F),
    "e": (0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E), "f": (0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08),
    "g": (0, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E), "h": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11),
    "i": (0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E), "j": (0x02, 0, 0x06, 0x02, 0x02, 0x12, 0x0C),
    "k": (0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12), "l": (0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "m": (0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11), "n": (0, 0, 0x16, 0x19, 0x11, 0x11, 0x11),
    "o": (0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E), "p": (0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10),
    "q": (0, 0, 0x0D, 0x13, 0x0F, 0x01, 0x01), "r": (0, 0, 0x16, 0x19, 0x10, 0x10, 0x10),
    "s": (0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E), "t": (0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06),
    "u": (0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D), "v": (0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "w": (0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A), "x": (0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11),
    "y": (0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E), "z": (0, 0, 0x1F, 0x02, 0x04, 0x08, 0x1F),
}
GLYPH_WIDTH, GLYPH_HEIGHT, GLYPH_ADVANCE = 5, 7, 6


class _Canvas:
    """An RGB raster, row-major, white to start with."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int]) -> None:
        # floor, not round: round() goes to even, so a 1 px rect at x.5 could vanish
        left, right = max(0, math.floor(x0)), min(self.width, math.floor(x1))
        top, bottom = max(0, math.floor(y0)), min(self.height, math.floor(y1))
        if right <= left:  # a sub-pixel bar still gets one column
            right = min(self.width, left + 1)
        row = bytes(colour) * (right - left)
        for y in range(top, bottom):
            start = (y * self.width + left) * 3
            self.pixels[start : start + len(row)] = row

    def text(self, x: float, y: float, text: str, colour: tuple[int, int, int], anchor: str = "start", vertical: bool = False) -> None:
        """`(x, y)` is the top-left of the text (the bottom-left when vertical,
        which reads upwards); `anchor` "middle" or "end" shifts along the text."""
        length = len(text) * GLYPH_ADVANCE - 1
        shift = {"start": 0, "middle": length / 2, "end": length}[anchor]
        for i, char in enumerate(text):
            glyph = _FONT.get(char) or _FONT["?"]
            offset = i * GLYPH_ADVANCE - shift
            for gy, bits in enumerate(glyph):
                for gx in range(GLYPH_WIDTH):
                    if bits & (0x10 >> gx):
                        if vertical:
                            self.rect(x + gy, y - offset - gx - 1, x + gy + 1, y - offset - gx, colour)
                        else:
                            self.rect(x + offset + gx, y + gy, x + offset + gx + 1, y + gy + 1, colour)

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def render_png(result: Mapping[str, Any], start_us: int | None = None, end_us: int | None = None) -> bytes:
    chart = layout(result, start_us, end_us)
    canvas = _Canvas(chart.width, chart.height)
    canvas.text(chart.width / 2, 14, chart.title, TEXT_COLOUR, "middle")
    for y, value in chart.y_ticks:
        canvas.rect(chart.left, y, chart.left + chart.plot_width, y + 1, GRID_COLOUR)
        canvas.rect(chart.left - 4, y, chart.left, y + 1, AXIS_COLOUR)
        canvas.text(chart.left - 7, y - 3, str(value), TEXT_COLOUR, "end")
    for bar in chart.bars:
        canvas.rect(bar.x, bar.top, bar.x + bar.width, chart.bottom, BAR_COLOUR)
    for x, date, hour in chart.x_labels:
        canvas.rect(x, chart.bottom, x + 1, chart.bottom + 4, AXIS_COLOUR)
        canvas.text(x, chart.bottom + 8, date, TEXT_COLOUR, "middle")
        canvas.text(x, chart.bottom + 18, hour, TEXT_COLOUR, "middle")
    canvas.rect(chart.left, chart.bottom, chart.left + chart.plot_width, chart.bottom + 1, AXIS_COLOUR)
    canvas.rect(chart.left - 1, chart.top, chart.left, chart.bottom + 1, AXIS_COLOUR)
    canvas.text(chart.left + chart.plot_width / 2, chart.height - 20, chart.x_label, TEXT_COLOUR, "middle")
    canvas.text(14, chart.top + chart.plot_height / 2, Y_LABEL, TEXT_COLOUR, "middle", vertical=True)
    if not chart.bars:
        canvas.text(chart.left + chart.plot_width / 2, chart.top + chart.plot_height / 2, "no events in this range", (0x77,) * 3, "middle")
    return canvas.png()


def write_chart(result: Mapping[str, Any], path: str, start_us: int | None = None, end_us: int | None = None) -> None:
    """Draw `result` to `path` over [start, end) when given; the suffix (.svg
    or .png) picks the format."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".svg":
        data = render_svg(result, start_us, end_us).encode("utf-8")
    elif suffix == ".png":
        data = render_png(result, start_us, end_us)
    else:
        raise ValueError(f"--plot {path}: the file name must end in .svg or .png")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
