"""When a request has fully arrived, told from its bytes (app.server.framing): what the web worker reads
before a thread takes the request."""

from __future__ import annotations

import pytest

from app.server.framing import MAX_HEAD, RequestFramer, Verdict

HEAD = b"POST /webhooks/partnero HTTP/1.1\r\nHost: x\r\n"


def feed_bytewise(data: bytes, max_body: int = 1000) -> tuple[RequestFramer, list[Verdict]]:
    """Feed ``data`` one byte at a time, as the slowest client would send it."""
    framer = RequestFramer(max_body)
    return framer, [framer.feed(data[i:i + 1]) for i in range(len(data))]


@pytest.mark.parametrize(
    "request_bytes",
    [
        HEAD + b"\r\n",
        HEAD + b"Content-Length: 5\r\n\r\nhello",
        HEAD + b"Content-Length: 0\r\n\r\n",
        b"\r\n" + HEAD + b"Content-Length: 2\r\n\r\nhi",  # one empty line may come first
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nTrailer: yes\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["no body", "length", "empty body", "leading empty line", "chunked", "chunked with a trailer", "get"],
)
def test_a_request_is_ready_exactly_when_its_last_byte_arrives(request_bytes):
    framer, verdicts = feed_bytewise(request_bytes)
    assert verdicts[:-1] == [Verdict.WAIT] * (len(request_bytes) - 1)
    assert verdicts[-1] is Verdict.READY and framer.complete
    assert bytes(framer.buffer) == request_bytes


def test_bytes_past_the_request_stay_in_the_buffer_for_the_next_one():
    framer = RequestFramer(1000)
    pipelined = HEAD + b"Content-Length: 2\r\n\r\nhi" + HEAD + b"\r\n"
    assert framer.feed(pipelined) is Verdict.READY
    assert bytes(framer.buffer) == pipelined  # gunicorn's parser reads the second request from them


def test_a_body_over_the_limit_is_handed_over_at_once_as_incomplete():
    framer = RequestFramer(1000)
    assert framer.feed(HEAD + b"Content-Length: 1001\r\n\r\n") is Verdict.READY  # the app answers 413 from the head
    assert not framer.complete
    chunked = RequestFramer(10)
    assert chunked.feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\nff\r\n" + b"x" * 10) is Verdict.WAIT
    assert chunked.feed(b"x") is Verdict.READY and not chunked.complete  # past the limit: the app reads it and says 413


def test_the_client_waiting_for_100_continue_is_noticed():
    framer = RequestFramer(1000)
    assert framer.feed(HEAD + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n") is Verdict.WAIT
    assert framer.expects_continue
    assert framer.feed(b"hi") is Verdict.READY
    old = RequestFramer(1000)
    old.feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert not old.expects_continue  # HTTP/1.0 ignores it


@pytest.mark.parametrize(
    "request_bytes, verdict",
    [
        (b"POST / HTTP/1.1\nHost: x\n\n", Verdict.BAD_REQUEST),  # bare LF: the head would never end for gunicorn
        (HEAD + b"X: " + b"a" * MAX_HEAD, Verdict.HEAD_TOO_LARGE),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 5000, Verdict.BAD_REQUEST),  # no end to a chunk size
        # Framing gunicorn refuses by itself, from the bytes at hand: handed over at once.
        (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", Verdict.READY),
        (HEAD + b"Content-Length: -1\r\n\r\n", Verdict.READY),
        (HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Verdict.READY),
        (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", Verdict.READY),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", Verdict.READY),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhiXX", Verdict.READY),
        (HEAD + b"No colon here\r\n\r\n", Verdict.READY),
    ],
    ids=["bare LF", "huge head", "endless chunk size", "two lengths", "negative length", "length and chunked",
         "not chunked", "bad chunk size", "chunk without its CRLF", "header without a colon"],
)
def test_what_cannot_be_framed_is_answered_or_handed_over_without_waiting(request_bytes, verdict):
    framer = RequestFramer(1000)
    assert framer.feed(request_bytes) is verdict
    assert not framer.complete


def test_a_trickled_head_is_framed_where_its_lines_split():
    # Each byte resumes the scan where the last one left it, including a CRLF split across reads.
    framer, verdicts = feed_bytewise(HEAD + b"X-Filler: " + b"a" * 5_000 + b"\r\n\r\n")
    assert verdicts[-1] is Verdict.READY and set(verdicts[:-1]) == {Verdict.WAIT}
    _, verdicts = feed_bytewise(b"POST / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n")
    assert verdicts.index(Verdict.BAD_REQUEST) == len(b"POST / HTTP/1.1\r\nHost: x")  # at the bare LF
