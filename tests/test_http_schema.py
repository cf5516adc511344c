"""Issue 13, item 9: the OpenAPI document tells the truth.

schemathesis, a real OpenAPI fuzzer, reads the document the server serves and
sends it about 50 generated requests per operation (valid and invalid ones,
authenticated), against a real uvicorn server on a spool. Every built-in
check must pass: no 5xx, and every answer's status code, content type,
headers and body as the document says. Plus the specific lies the issue
found, as plain asserts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from streams.timestamps import parse_timestamp_us
from tests.test_http_support import USERS, Service, running_service

pytestmark = pytest.mark.timeout(600)



@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # Enough failed-login budget for the fuzzer's requests without credentials.
    with running_service(tmp_path_factory.mktemp("schema"), auth_failure_limit=1_000_000) as svc:
        yield svc


@pytest.fixture(scope="module")
def api_schema(service: Service) -> Any:
    loaded = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    loaded.config.update(basic_auth=("ethan", USERS["ethan"]))  # the document's `basic` scheme
    # A batch over max_batch (a schema-violating maxItems) or a body over
    # max_body_bytes is refused with 413 Payload Too Large, as documented.
    rejection = loaded.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return loaded


OPERATIONS = [
    ("POST", "/events"),
    ("POST", "/web/page_view"),
    ("POST", "/button/click"),
    ("GET", "/web/page_view/count"),
    ("GET", "/button/click/count"),
    ("GET", "/events/customers/{customer_id}/buckets"),
    ("GET", "/events/customers/{customer_id}/buckets.svg"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]


def current_timestamps(case: Any) -> Any:
    """The one rule a JSON schema cannot state: a client `timestamp` must lie
    within the lateness behind the collector's clock, and at most
    `max_clock_skew` ahead (the document says so in words). A generated
    integer timestamp is moved into that window, keeping its variety; a
    string one is replaced by the current time in one of the ISO shapes."""
    now = datetime.now(timezone.utc)
    events = case.body if isinstance(case.body, list) else [case.body]
    for event in events:
        if isinstance(event, dict) and "timestamp" in event:
            value = event["timestamp"]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                event["timestamp"] = type(value)(int(now.timestamp() * 1000) - int(value) % (8 * 60_000))
            elif isinstance(value, str):
                shapes = ["%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d %H:%M:%S+00:00", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M+0000"]
                event["timestamp"] = now.strftime(shapes[len(value) % len(shapes)])
    return case


def ordered_range(case: Any) -> Any:
    """The other rule across fields: `start` before `end`, at most
    `query_max_range` apart, both real instants. A generated pair that breaks
    it is replaced by one that keeps it."""
    query = case.query or {}
    if "start" in query and "end" in query:
        try:
            start, end = parse_timestamp_us(query["start"]), parse_timestamp_us(query["end"])
            ok = start < end <= start + 100 * 365 * 86_400_000_000
        except ValueError:
            ok = False
        if not ok:
            query["start"], query["end"] = "2021-03-01T00:00:00Z", "2021-03-02 00:00+00"
    return case


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    served = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_the_server_does_what_its_document_says(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    if mode is GenerationMode.NEGATIVE and path in ("/healthz", "/readyz", "/metrics"):
        pytest.skip("no input: nothing can be invalid")
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = strategy.map(current_timestamps).map(ordered_range)

    # About 50 examples per route: 25 valid and 25 invalid ones.
    @given(case=strategy)
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        case.call_and_validate()

    run()


def test_the_document_says_what_the_issue_found_missing(service: Service) -> None:
    document = service.client(None).get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/events", "/web/page_view", "/button/click"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "400", "401", "413", "422", "429", "503"} <= set(responses), path
        assert paths[path]["post"]["security"] == [{"basic": []}]
    for path in ("/events/customers/{customer_id}/buckets", "/events/customers/{customer_id}/buckets.svg"):
        required = {p["name"]: p.get("required") for p in paths[path]["get"]["parameters"]}
        assert required["start"] is True and required["end"] is True
    batch = paths["/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]["anyOf"][1]
    assert batch["minItems"] == 1 and batch["maxItems"] == service.http.max_batch
    page_view = paths["/web/page_view"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    address = page_view["properties"]["ipaddress"]["anyOf"]
    assert {f.get("format") for f in address} == {"ipv4", "ipv6", None}
    assert document["components"]["securitySchemes"]["basic"] == {
        "type": "http", "scheme": "basic", "description": "a user of the credentials file (`users add NAME`)"}
    # And the server agrees with the document on each of them.
    client = service.client("ethan")
    assert client.post("/events", json=[]).status_code == 422
    assert client.post("/events", content=b"{").status_code == 400
    assert client.post("/web/page_view", json={"url": "u", "session_id": "s", "ipaddress": "1.2.3"}).status_code == 422
    assert client.get("/events/customers/c/buckets").status_code == 400
