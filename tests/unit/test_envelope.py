from datetime import datetime, timezone

import pytest

from sync.core import envelope
from sync.core.envelope import ExactFloat, MalformedDelivery, parse, parse_timestamp, read_event


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


# -- the one parse the receiver and the worker share ----------------------------------------


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"[" * 65 + b"]" * 65, "nests arrays or objects more than 64 deep"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "more than 64 deep"),
        (b"[" * 200_000, "more than 64 deep"),  # deeper than any parser's stack: refused before parsing
        (b'{"event": "x", "amount": NaN}', "NaN is not a JSON number"),
        (b'{"event": "x", "amount": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"event": "x", "event": "y"}', "the same key twice"),
        (b'{"event": "x", "data": {"id": 1, "id": 2}}', "the same key twice"),
        (b'{"event": "x", "n": 1' + b"0" * 5000 + b"}", "not valid JSON"),  # more digits than Python reads
        (b'{"event": "x", "s": "\xed\xa0\x80"}', "not valid JSON"),  # a surrogate encoded in UTF-8 is not UTF-8
        (b'\xef\xbb\xbf{"event": "x"}', "not valid JSON"),  # a byte order mark
        ('{"event": "x"}'.encode("utf-16"), "not valid JSON"),
    ],
)
def test_parse_refuses_what_json_leaves_open(body, reason):
    with pytest.raises(MalformedDelivery, match=reason):
        parse(body)


def test_parse_keeps_what_json_allows():
    # 64 levels deep, brackets inside strings (they nest nothing), an escaped lone surrogate
    # (valid JSON: whoever stores it judges it), and numbers with the digits they were sent with.
    deep = b'{"a":' * 63 + b"[1]" + b"}" * 63
    assert parse(deep)["a"]["a"]["a"]
    document = parse(b'{"s": "' + b"[" * 500 + b'", "lone": "\\ud800", "amount": 12.50, "big": 1e400}')
    assert document["s"] == "[" * 500 and document["lone"] == "\ud800"
    assert isinstance(document["amount"], ExactFloat) and document["amount"].text == "12.50"
    assert document["big"].text == "1e400"


def test_read_event_uses_the_same_parse():
    with pytest.raises(MalformedDelivery, match="more than 64 deep"):
        read_event(b'{"event": "partner.created", "data": ' + b"[" * 70 + b"]" * 70 + b"}")


@pytest.mark.parametrize("value", ["١٧٧٣٤٨٣٣٣٠", "²", "9" * 5000, "1" * 13, 10**5000, 1e300, float("inf"),
                                   "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"],
                         ids=["arabic digits", "superscript", "5000 digits", "13 digits", "a huge int", "1e300",
                              "infinity", "year 1", "year 9999"])
def test_parse_timestamp_never_raises_on_odd_times(value):
    assert parse_timestamp(value) is None


@pytest.mark.parametrize("body", [
    b'{"amount": 29.997, "units": "USD", "n": 3, "ok": true, "none": null, "list": [1.5, {"x": "\\u00e9"}]}',
    b'{"amount": 2.50, "big": 1e2, "long": 0.1000000000000000055511151231257827}',  # digits of their own
    b'{"deep": [[[{"a": [149.0]}]]], "quote": "say \\"hi\\"\\n"}',
])
def test_dump_writes_back_what_parse_read_exactly(body):
    document = envelope.parse(body)
    written = envelope.dump(document)
    again = envelope.parse(written)
    assert again == document
    assert envelope.dump(again) == written

    def numbers(value):
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value.text] if isinstance(value, envelope.ExactFloat) else []

    assert numbers(again) == numbers(document)  # every number with the digits it was sent with


def test_dump_refuses_what_is_not_json():
    with pytest.raises(TypeError):
        envelope.dump({"when": object()})
