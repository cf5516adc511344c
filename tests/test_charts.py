"""Charts a person would read: a time axis with gaps drawn as zero, ids as
they are, a bounded width (days, months or years when there are too many
hours), a single bucket that does not fill the plot. The tests render charts
and check their size and the bars they hold."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib
from datetime import datetime, timedelta, timezone

from consumers.bucket_chart import (
    BAR_COLOUR, MAX_BAR_WIDTH, MAX_PLOT_WIDTH, MARGIN_LEFT, MARGIN_RIGHT, layout, render_png, render_svg, write_chart,
)

SVG = "{http://www.w3.org/2000/svg}"
HOUR = 3_600_000_000
T0 = 1_614_556_800_000_000  # 2021-03-01T00:00:00Z


def result(customer: str, hours: dict[int, int]) -> dict:
    """`query buckets` JSON: `hours` maps hours after 2021-03-01T00:00Z to counts."""
    def stamp(h: int) -> str:
        return (datetime(2021, 3, 1, tzinfo=timezone.utc) + timedelta(hours=h)).strftime("%Y-%m-%dT%H:00:00.000000Z")

    return {"customer_id": customer,
            "buckets": [{"ts_start_of_hour": stamp(h), "count": n} for h, n in sorted(hours.items())]}


def svg_bars(text: str) -> list[ET.Element]:
    return [e for e in ET.fromstring(text).iter(f"{SVG}rect") if e.get("class") == "bar"]


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    raw, offset = b"", 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            raw += data[offset + 8:offset + 8 + length]
        offset += 12 + length
    pixels = zlib.decompress(raw)
    stride = width * 3 + 1
    return width, height, [pixels[y * stride + 1:(y + 1) * stride] for y in range(height)]


def bar_runs(row: bytes) -> int:
    """Runs of bar-coloured pixels along one pixel row."""
    colour, runs, inside = bytes(BAR_COLOUR), 0, False
    for x in range(0, len(row), 3):
        hit = row[x:x + 3] == colour
        runs += hit and not inside
        inside = hit
    return runs


def test_gaps_are_zero_bars_on_a_time_axis():
    # The sample's shape: events at 02:00 and 04:00, none at 03:00.
    chart = result("b4f9279a0196e40632e947dd1a88e857", {0: 3, 1: 3, 2: 2, 4: 3})
    bars = svg_bars(render_svg(chart, T0, T0 + 6 * HOUR))
    assert len(bars) == 6  # 00:00 to 05:00, one per hour of the range
    heights = [float(b.get("height")) for b in bars]
    assert heights[3] == 0 and heights[5] == 0 and all(h > 0 for h in heights[:3] + heights[4:5])
    xs = [float(b.get("x")) for b in bars]
    gaps = {round(b - a, 6) for a, b in zip(xs, xs[1:])}
    assert len(gaps) == 1  # evenly spaced: 02:00 and 04:00 do not stand side by side
    # Without a range: from the first to the last bucket.
    assert len(svg_bars(render_svg(chart))) == 5


def test_png_has_the_bars_and_the_ids_as_they_are():
    chart = result("b4f9abc", {0: 5, 1: 0, 2: 7, 3: 1})
    width, height, rows = decode_png(render_png(chart, T0, T0 + 4 * HOUR))
    assert (width, height) == (MARGIN_LEFT + 480 + MARGIN_RIGHT, 380)
    plot = layout(chart, T0, T0 + 4 * HOUR)
    assert bar_runs(rows[plot.bottom - 1]) == 3  # 4 slots, one of them zero
    upper = decode_png(render_png(result("B4F9ABC", {0: 5}), T0, T0 + 4 * HOUR))[2]
    lower = decode_png(render_png(result("b4f9abc", {0: 5}), T0, T0 + 4 * HOUR))[2]
    assert upper[10:24] != lower[10:24]  # the title: lower case is not drawn in capitals
    assert "b4f9abc" in plot.title


def test_the_width_is_bounded_and_many_hours_become_days():
    # 714 hourly buckets (the range that gave a 2,502 px image), every third hour.
    hours = {h: 1 + h % 5 for h in range(0, 714 * 3, 3)}
    chart = result("c", hours)
    plot = layout(chart, T0, T0 + 714 * 3 * HOUR)
    assert plot.unit == "day" and len(plot.bars) == 90  # 2,142 hours = 89.25 days
    assert plot.width <= MARGIN_LEFT + MAX_PLOT_WIDTH + MARGIN_RIGHT
    assert sum(b.count for b in plot.bars) == sum(hours.values())
    assert "day starting (UTC)" in render_svg(chart, T0, T0 + 714 * 3 * HOUR)
    width, _, rows = decode_png(render_png(chart, T0, T0 + 714 * 3 * HOUR))
    assert width <= MARGIN_LEFT + MAX_PLOT_WIDTH + MARGIN_RIGHT
    assert bar_runs(rows[plot.bottom - 1]) == 90
    # Years of hours: months, then years; never wider.
    decade = layout(chart, T0, T0 + 3650 * 24 * HOUR)
    assert decade.unit == "month" and len(decade.bars) == 120 and decade.width <= MAX_PLOT_WIDTH + 200
    century = layout(chart, T0, T0 + 36525 * 24 * HOUR)
    assert century.unit == "year" and len(century.bars) == 101  # calendar years 2021 to 2121


def test_one_bucket_does_not_fill_the_plot(tmp_path):
    chart = result("c", {4: 12})
    plot = layout(chart, T0 + 4 * HOUR, T0 + 5 * HOUR)
    (bar,) = plot.bars
    assert bar.width <= MAX_BAR_WIDTH < plot.plot_width / 4
    labels = [text for _, text, hour in plot.x_labels] + [hour for _, _, hour in plot.x_labels]
    assert "2021-03-01" in labels and "04:00" in labels
    for name in ("c.svg", "c.png"):
        write_chart(chart, str(tmp_path / name), T0 + 4 * HOUR, T0 + 5 * HOUR)
        assert (tmp_path / name).stat().st_size > 500


def test_the_cli_plots_the_queried_range(tmp_path):
    from tests.conftest import ROOT, run_cli

    sample = ROOT / "samples" / "events_sample.csv"
    assert run_cli("run", "--input", str(sample), "--lateness", "3h", "--data-dir", str(tmp_path)).returncode == 0
    out = tmp_path / "chart.svg"
    done = run_cli("query", "buckets", "--customer", "b4f9279a0196e40632e947dd1a88e857", "--start",
                   "2021-02-28T22:00:00Z", "--end", "2021-03-01T08:00:00Z", "--plot", str(out),
                   "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    bars = svg_bars(out.read_text())
    assert len(bars) == 10  # 22:00 to 07:00
    assert [b.find(f"{SVG}title").text.split(": ")[1] for b in bars] == ["0", "0", "3", "3", "2", "4", "3", "0", "0", "0"]
