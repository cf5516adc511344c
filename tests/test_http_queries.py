"""Bucket queries over HTTP (both forms, the 400 cases), per-user counts, and
the bar charts (buckets.svg, `query buckets --plot`)."""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Iterator

import pytest

from consumers.bucket_chart import render_png, render_svg, write_chart
from streams.events import WindowCount
from streams.timestamps import parse_timestamp_us
from tests.count_support import upsert
from tests.test_http_support import SEED_DATA, Service, run_cli, running_service

pytestmark = pytest.mark.timeout(60)

SVG = "{http://www.w3.org/2000/svg}"
SEED = json.loads((SEED_DATA / "events-aggregator" / "api_buckets_example.json").read_text())
CUSTOMER = SEED["request"]["json_body"]["customer_id"]
EXPECTED = SEED["response_200"]


def seed_counts(store, partitions: int = 2) -> None:
    """The seed's answer, split over source partitions (queries sum them)."""
    counts = []
    for bucket in EXPECTED["buckets"]:
        start = parse_timestamp_us(bucket["ts_start_of_hour"])
        first = bucket["count"] // partitions
        counts.append(WindowCount("customer_hourly", (CUSTOMER,), start, "p0", first, True))
        counts.append(WindowCount("customer_hourly", (CUSTOMER,), start, "p1", bucket["count"] - first, True))
    counts.append(WindowCount("page_view_url_hourly", ("ethan", "http://something.com"), 0, "p0", 3, True))
    counts.append(WindowCount("page_view_url_hourly", ("ethan", "http://something.com"), 3_600_000_000, "p0", 2, True))
    counts.append(WindowCount("page_view_url_hourly", ("mia", "http://something.com"), 0, "p0", 7, True))
    counts.append(WindowCount("button_click_hourly", ("ethan", "ABC"), 0, "p0", 5, True))
    upsert(store, counts)


def bars(svg_text: str) -> list[ET.Element]:
    root = ET.fromstring(svg_text)
    assert root.tag == f"{SVG}svg"
    return [e for e in root.iter(f"{SVG}rect") if e.get("class") == "bar"]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29]) & 0xFFFFFFFF
    return width, height


def test_seed_004_query_both_forms(tmp_path: Path) -> None:
    with running_service(tmp_path) as svc:
        seed_counts(svc.store)
        client = svc.client("ethan")
        request = SEED["request"]
        by_body = client.request("GET", request["path"], json=request["json_body"])
        assert by_body.status_code == 200 and by_body.json() == EXPECTED
        params = {k: request["json_body"][k] for k in ("start", "end")}
        assert client.get(request["path"], params=params).json() == EXPECTED
        # A start inside an hour includes that hour; end is exclusive.
        narrow = client.get(request["path"], params={"start": "2021-03-01T01:59:00Z", "end": "2021-03-01T03:00:00Z"}).json()
        assert [b["count"] for b in narrow["buckets"]] == [658, 185]
        assert client.get("/events/customers/nobody/buckets", params=params).json() == {"customer_id": "nobody", "buckets": []}


@pytest.fixture(scope="module")
def short_range_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("ranges"), query_max_range="30d") as svc:
        yield svc


@pytest.mark.parametrize(
    "params, body, message",
    [
        ({"start": "2021-03-01", "end": "2021-03-02T00:00:00Z"}, None, "bad timestamp"),
        ({"start": "2021-03-01T00:00:00", "end": "2021-03-02T00:00:00Z"}, None, "UTC offset"),
        ({"start": "2021-03-01T00:00:00Z", "end": "not a time"}, None, "bad timestamp"),
        ({"start": "2021-03-02T00:00:00Z", "end": "2021-03-01T00:00:00Z"}, None, "start must be before end"),
        ({"start": "2021-03-01T00:00:00Z", "end": "2021-03-01T00:00:00Z"}, None, "start must be before end"),
        ({"start": "2021-01-01T00:00:00Z", "end": "2021-03-01T00:00:00Z"}, None, "configured maximum"),
        ({"start": "2021-03-01T00:00:00Z"}, None, "Validation Error"),
        ({}, None, "Validation Error"),
        ({}, {"customer_id": "someone-else", "start": "2021-03-01T00:00:00Z", "end": "2021-03-02T00:00:00Z"}, "Validation Error"),
        ({}, {"start": 5, "end": "2021-03-02T00:00:00Z"}, "Validation Error"),
        ({}, ["not", "an", "object"], "Validation Error"),
        ({}, "{not json", "malformed JSON"),
    ],
)
def test_bad_ranges_are_400_with_a_reason(short_range_service: Service, params: dict, body, message: str) -> None:
    client = short_range_service.client("ethan")
    kwargs = {"content": body} if isinstance(body, str) else {"json": body} if body is not None else {}
    for path in (f"/events/customers/{CUSTOMER}/buckets", f"/events/customers/{CUSTOMER}/buckets.svg"):
        r = client.request("GET", path, params=params, **kwargs)
        assert r.status_code == 400, r.text
        assert message in r.json()["error"]


def test_per_user_all_time_counts(tmp_path: Path) -> None:
    with running_service(tmp_path) as svc:
        seed_counts(svc.store)
        ethan, mia = svc.client("ethan"), svc.client("mia")
        assert ethan.get("/web/page_view/count", params={"url": "http://something.com"}).json() == {"count": 5}
        assert mia.get("/web/page_view/count", params={"url": "http://something.com"}).json() == {"count": 7}
        assert ethan.get("/button/click/count", params={"button_id": "ABC"}).json() == {"count": 5}
        assert mia.get("/button/click/count", params={"button_id": "ABC"}).json() == {"count": 0}
        r = ethan.get("/web/page_view/count")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "url"]


def test_buckets_restricted_to_the_user_when_configured(tmp_path: Path) -> None:
    with running_service(tmp_path, restrict_buckets_to_user=True) as svc:
        span = {"start": "2021-03-01T00:00:00Z", "end": "2021-03-02T00:00:00Z"}
        assert svc.client("ethan").get(f"/events/customers/{CUSTOMER}/buckets", params=span).status_code == 403
        assert svc.client("ethan").get("/events/customers/ethan/buckets", params=span).status_code == 200


def test_buckets_svg_route(tmp_path: Path) -> None:
    with running_service(tmp_path, max_chart_buckets=3) as svc:
        seed_counts(svc.store)
        client = svc.client("ethan")
        span = {"start": "2021-03-01T00:00:00Z", "end": "2021-03-01T03:00:00Z"}
        r = client.get(f"/events/customers/{CUSTOMER}/buckets.svg", params=span)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
        drawn = bars(r.text)
        assert len(drawn) == 3
        heights = [float(b.get("height")) for b in drawn]
        assert heights[0] > heights[1] > heights[2] > 0  # 2499, 658, 185: bars follow the counts
        assert "hour starting (UTC)" in r.text and ">events<" in r.text
        wide = client.get(f"/events/customers/{CUSTOMER}/buckets.svg", params={"start": "2021-03-01T00:00:00Z", "end": "2021-03-02T00:00:00Z"})
        assert wide.status_code == 400 and "too many" in wide.json()["error"]
        assert client.get("/events/customers/nobody/buckets.svg", params=span).status_code == 200


def test_charts_png_and_svg(tmp_path: Path) -> None:
    result = {"customer_id": "c\x01<&>\"'ü", "buckets": [{"ts_start_of_hour": f"2021-03-01T{h:02d}:00:00.000000Z", "count": h * 3 + 1} for h in range(24)]}
    svg_path, png_path = tmp_path / "c.svg", tmp_path / "out" / "c.png"
    write_chart(result, str(svg_path))
    write_chart(result, str(png_path))
    assert len(bars(svg_path.read_text())) == 24
    width, height = png_size(png_path.read_bytes())
    assert width >= 480 and height > 200
    assert len(bars(render_svg({"customer_id": "x", "buckets": []}))) == 0
    png_size(render_png({"customer_id": "x", "buckets": []}))
    with pytest.raises(ValueError, match=".svg or .png"):
        write_chart(result, str(tmp_path / "c.jpg"))
    # 3000 hours: one bar per day, and a bounded width (tests/test_charts.py has the rest).
    many = {"customer_id": "x", "buckets": [{"ts_start_of_hour": f"2021-03-01T{h:02d}:00:00.000000Z", "count": 1}
                                            for h in range(24)]}
    assert len(bars(render_svg(many, 1_614_556_800_000_000, 1_614_556_800_000_000 + 3000 * 3_600_000_000))) == 125
    assert png_size(render_png(many, 1_614_556_800_000_000, 1_614_556_800_000_000 + 3000 * 3_600_000_000))[0] <= 1702


def test_query_buckets_plot_from_the_cli(tmp_path: Path) -> None:
    with running_service(tmp_path) as svc:
        seed_counts(svc.store)
    out = tmp_path / "chart.png"
    done = run_cli(
        ["query", "buckets", "--customer", CUSTOMER, "--start", "2021-03-01T00:00:00Z", "--end", "2021-03-02T00:00:00Z", "--plot", str(out)],
        svc.data_dir,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == EXPECTED
    png_size(out.read_bytes())  # the .svg path is the same write_chart, tested above
