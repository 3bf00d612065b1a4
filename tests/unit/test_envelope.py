from datetime import datetime, timezone

import pytest

from sync.envelope import MalformedDelivery, parse, parse_timestamp, read_event


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"partner.created"', "JSON object"),
        (b"{}", 'no "event"'),
        (b'{"event": null}', 'no "event"'),
        (b'{"event": 7}', 'no "event"'),
        (b'{"event": "  "}', 'no "event"'),
        (b'{"event": "a\\u0000b"}', "not a Partnero event type"),
        (b'{"event": "' + b"x" * 101 + b'"}', "not a Partnero event type"),
    ],
)
def test_read_event_refuses(body, reason):
    with pytest.raises(MalformedDelivery, match=reason):
        read_event(body)


def test_parse_reads_the_envelope():
    envelope = parse(
        b'{"event":"partner.updated","webhook_key":"whk_1",'
        b'"created_at":"2025-05-07T10:30:00.000000Z","data":{"id":"ptn_1"}}'
    )
    assert envelope.event == "partner.updated"
    assert envelope.data == {"id": "ptn_1"}
    assert envelope.webhook_key == "whk_1"
    assert envelope.created_at == datetime(2025, 5, 7, 10, 30, tzinfo=timezone.utc)


def test_parse_falls_back_to_timestamp():
    envelope = parse(b'{"event":"customer.created","timestamp":1746613800,"data":{}}')
    assert envelope.created_at == datetime(2025, 5, 7, 10, 30, tzinfo=timezone.utc)


def test_parse_needs_a_data_object():
    with pytest.raises(MalformedDelivery, match='no "data"'):
        parse(b'{"event":"partner.created","data":[1]}')


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-03-14T10:15:30.000000Z", datetime(2026, 3, 14, 10, 15, 30, tzinfo=timezone.utc)),
        ("2026-03-14T12:15:30+02:00", datetime(2026, 3, 14, 10, 15, 30, tzinfo=timezone.utc)),
        ("2026-03-14 10:15:30", datetime(2026, 3, 14, 10, 15, 30, tzinfo=timezone.utc)),
        ("1773483330", datetime(2026, 3, 14, 10, 15, 30, tzinfo=timezone.utc)),
        ("yesterday", None),
        ("", None),
        (None, None),
        (True, None),
        (10**20, None),
    ],
)
def test_parse_timestamp(value, expected):
    assert parse_timestamp(value) == expected
