from datetime import datetime, timezone

import pytest

from sync.envelope import MalformedDelivery, parse_timestamp, read_event


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
