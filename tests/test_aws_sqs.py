"""The SQS transport against moto: batching limits, round trip, deletion only
after commit, visibility extension while held, and the held-message bound."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from aws.settings import AwsConfig
from producers.sqs_queue import MAX_BATCH_ENTRIES
from producers.sqs_reader import SqsReader
from producers.sqs_writer import MAX_BATCH_BYTES, SqsWriter
from streams.batches import BatchKind, RecordBatch
from tests.aws_fixtures import read_batches, client, unique

pytestmark = pytest.mark.timeout(60)

CONFIG = AwsConfig(sqs_wait_seconds=0, sqs_visibility_timeout=30, sqs_message_bytes=4096, backoff_base=0.01, backoff_cap=0.05)


def records(n: int, pad: int = 40) -> list[bytes]:
    return [json.dumps({"customer_id": f"c{i}", "n": i, "pad": "x" * pad}).encode() for i in range(n)]


def queue_counts(sqs, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def read(reader, until, timeout: float = 20.0) -> list[RecordBatch]:
    return read_batches(reader, until, timeout)


def first_idle(batches: list[RecordBatch]) -> bool:
    return batches[-1].kind is BatchKind.IDLE


def test_send_batches_respect_entry_and_size_limits(aws_env: str) -> None:
    sqs = client("sqs", aws_env)
    queue = unique("q")
    calls: list[list[dict]] = []
    sqs.meta.events.register("provide-client-params.sqs.SendMessageBatch", lambda params, **_: calls.append(params["Entries"]))
    writer = SqsWriter(queue, client=sqs, config=CONFIG, create_resources=True)
    sent = records(2000)
    big = [json.dumps({"customer_id": "big", "pad": "y" * 100_000}).encode() for _ in range(5)]

    assert writer.send(sent + big) == 2005

    assert all(len(entries) <= MAX_BATCH_ENTRIES for entries in calls)
    assert all(sum(len(e["MessageBody"].encode()) for e in entries) <= MAX_BATCH_BYTES for entries in calls)
    bodies = [e["MessageBody"] for entries in calls for e in entries]
    assert all(len(b.encode()) <= 4096 for b in bodies if '"big"' not in b)  # packed by size
    assert [line.encode() for b in bodies for line in b.split("\n")] == sent + big  # order and content kept


def test_unsendable_records_are_rejected_for_the_dead_letter_output(aws_env: str) -> None:
    writer = SqsWriter(unique("q"), client=client("sqs", aws_env), config=CONFIG, create_resources=True)
    good = records(2)
    too_big = b'{"pad": "' + b"z" * (256 * 1024) + b'"}'
    line_break = b'{"a": 1}\n{"b": 2}'
    bad_char = '{"a": "\ufffe"}'.encode()

    assert writer.send([good[0], too_big, line_break, bad_char, good[1]]) == 2

    assert [(r.index, r.reason) for r in writer.take_rejected()] == [(1, "oversize"), (2, "sink rejected"), (3, "sink rejected")]


def test_round_trip_and_messages_are_deleted_only_after_commit(aws_env: str) -> None:
    sqs = client("sqs", aws_env)
    queue = unique("q")
    writer = SqsWriter(queue, client=sqs, config=CONFIG, create_resources=True)
    sent = records(300)
    writer.send(sent)
    messages = writer.messages_sent
    assert messages > 3

    reader = SqsReader(queue, client=sqs, config=CONFIG, poll_interval=0.02)
    batches = read(reader, first_idle)
    data = [(p, r) for b in batches if b.kind is BatchKind.DATA for p, r in zip(b.positions, b.records)]

    assert sorted(r for _, r in data) == sorted(sent)
    positions = [p for p, _ in data]
    assert positions == list(range(1, 301))  # one partition, a monotonic counter
    assert {b.partition for b in batches} == {f"sqs:{queue}"}
    assert queue_counts(sqs, reader.queue_url) == (0, messages)  # all held, none deleted

    ends = sorted(h.end for h in reader._held.values())
    wholly_before = sum(1 for end in ends if end <= 150)
    assert 0 < wholly_before < messages
    reader.commit(f"sqs:{queue}", 150)  # records at positions < 150 are durable

    remaining = queue_counts(sqs, reader.queue_url)[1]
    assert reader.deleted == wholly_before and remaining == messages - wholly_before == reader.held()
    assert all(h.end > 150 for h in reader._held.values())

    reader.commit(f"sqs:{queue}", 301)
    assert queue_counts(sqs, reader.queue_url) == (0, 0) and reader.held() == 0


def test_commit_deletes_exactly_the_messages_wholly_before_the_position(aws_env: str) -> None:
    sqs = client("sqs", aws_env)
    queue = unique("q")
    config = AwsConfig(sqs_wait_seconds=0, sqs_message_bytes=100)  # one 60-byte record per message
    writer = SqsWriter(queue, client=sqs, config=config, create_resources=True)
    writer.send(records(10, pad=10))
    reader = SqsReader(queue, client=sqs, config=config, poll_interval=0.02)
    read(reader, first_idle)

    reader.commit(f"sqs:{queue}", 4)  # positions 1..3 durable: three messages

    assert reader.deleted == 3 and queue_counts(sqs, reader.queue_url) == (0, 7)


def test_held_messages_stay_invisible_past_the_visibility_timeout(aws_env: str) -> None:
    sqs = client("sqs", aws_env)
    queue = unique("q")
    config = AwsConfig(sqs_wait_seconds=0, sqs_visibility_timeout=2)
    SqsWriter(queue, client=sqs, config=config, create_resources=True).send(records(5))
    reader = SqsReader(queue, client=sqs, config=config, poll_interval=0.05)
    started = time.monotonic()

    # Hold everything for 4.5 s (more than two timeouts) without committing.
    batches = read(reader, lambda b: time.monotonic() - started > 4.5)
    assert sum(len(b.records) for b in batches) == 5  # received once, never redelivered
    other = sqs.receive_message(QueueUrl=reader.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    assert other.get("Messages", []) == []
    assert reader.extended >= 2

    # Not committed and no longer extended: SQS delivers them again (at-least-once).
    time.sleep(2.2)
    again = sqs.receive_message(QueueUrl=reader.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    assert len(again.get("Messages", [])) == 1


def test_held_messages_are_bounded(aws_env: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="producers.sqs_reader")
    sqs = client("sqs", aws_env)
    queue = unique("q")
    config = AwsConfig(sqs_wait_seconds=0, sqs_message_bytes=100, sqs_max_held_messages=3)
    SqsWriter(queue, client=sqs, config=config, create_resources=True).send(records(8, pad=10))
    reader = SqsReader(queue, client=sqs, config=config, poll_interval=0.02)
    held: list[int] = []
    started = time.monotonic()

    def until(batches: list[RecordBatch]) -> bool:
        held.append(reader.held())
        if batches[-1].kind is BatchKind.DATA and sum(len(b.records) for b in batches) == 3:
            threading.Timer(0.3, lambda: reader.commit(f"sqs:{queue}", 4)).start()  # free room later
        return sum(len(b.records) for b in batches) >= 6 or time.monotonic() - started > 5

    batches = read(reader, until)

    assert max(held) <= 3
    assert sum(len(b.records) for b in batches) == 6
    # The pause is said once, with the knob; the resumption after the commit too.
    pauses = [r for r in caplog.records if "the bound (sqs_max_held_messages)" in r.getMessage()]
    assert len(pauses) == 1 and pauses[0].levelname == "WARNING", caplog.text
    assert "receiving again" in caplog.text
