"""When has an HTTP/1.1 request fully arrived? Told from its bytes alone: pure, no I/O.

The web worker (``app.server.gunicorn_worker``) reads each request into memory before a thread handles
it; ``RequestFramer`` says when to stop reading, or which answer to give at once. It follows the
framing gunicorn's parser applies (RFC 9112), and leaves every other judgement to gunicorn: a
request it cannot frame is handed over as soon as gunicorn can refuse it from the bytes at hand.
"""

from __future__ import annotations

from enum import Enum

#: The longest request line and headers read ahead (gunicorn allows more; no webhook needs it).
MAX_HEAD = 64 * 1024
#: The longest chunk-size or trailer line of a chunked body.
MAX_CHUNK_LINE = 4096


class Verdict(Enum):
    WAIT = "wait for more bytes"
    READY = "hand the request over"
    BAD_REQUEST = "answer 400"
    HEAD_TOO_LARGE = "answer 431"


_HEX = frozenset(b"0123456789abcdefABCDEF")


class RequestFramer:
    """Fed a connection's bytes as they arrive; ``feed`` answers what to do now.

    READY means gunicorn can parse the request from ``buffer`` without waiting on the socket:
    the whole request is there (``complete``), or the head is and the body is over
    ``max_body`` (the app refuses it from the head; ``complete`` is False and the connection
    must not be reused).
    """

    def __init__(self, max_body: int, max_head: int = MAX_HEAD):
        self.max_body = max_body
        self.max_head = max_head
        self.buffer = bytearray()
        self.complete = False
        #: The client waits for "100 Continue" before it sends the body.
        self.expects_continue = False
        self._verdict = Verdict.WAIT
        self._scanned = 0  # where the search for the end of the head resumes
        self._body_start: int | None = None
        self._length: int | None = None  # Content-Length
        self._chunked = False
        self._pos = 0  # chunked: where the next chunk-size (or trailer) line starts
        self._remaining = 0  # chunked: data bytes of the current chunk not yet seen
        self._in_trailer = False
        self._data = 0  # chunked: body data bytes seen so far

    def feed(self, data: bytes) -> Verdict:
        if self._verdict is not Verdict.WAIT:
            self.buffer += data
            return self._verdict
        self.buffer += data
        self._verdict = self._judge()
        return self._verdict

    def _judge(self) -> Verdict:
        if self._body_start is None:
            verdict = self._head()
            if verdict is not None:
                return verdict
        if self._chunked:
            return self._chunks()
        if len(self.buffer) - self._body_start >= (self._length or 0):
            self.complete = True
            return Verdict.READY
        return Verdict.WAIT

    def _head(self) -> Verdict | None:
        """Find the end of the head and read its framing headers; None when the body follows."""
        buffer = self.buffer
        start = 2 if buffer[:2] == b"\r\n" else 0  # one empty line may precede the request line
        resume = max(start, self._scanned - 3)  # only the new bytes (and a line end they complete)
        end = buffer.find(b"\r\n\r\n", resume)
        if end < 0:
            if len(buffer) > self.max_head:
                return Verdict.HEAD_TOO_LARGE
            if buffer.count(b"\n", resume) != buffer.count(b"\r\n", max(start, resume - 1)):
                return Verdict.BAD_REQUEST  # a bare LF: the head would never end as gunicorn reads it
            self._scanned = len(buffer)
            return Verdict.WAIT
        if end > self.max_head:
            return Verdict.HEAD_TOO_LARGE
        lines = bytes(buffer[start:end]).split(b"\r\n")
        if any(b"\n" in line for line in lines):
            return Verdict.BAD_REQUEST
        self._body_start = end + 4
        lengths, codings, expect = [], [], []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return Verdict.READY  # gunicorn refuses a header line without a colon
            name = name.lower()
            value = value.strip()
            if name == b"content-length":
                lengths += [v.strip() for v in value.split(b",")]
            elif name == b"transfer-encoding":
                codings += [v.strip().lower() for v in value.split(b",")]
            elif name == b"expect":
                expect.append(value.lower())
        if codings:
            if lengths or codings[-1] != b"chunked":
                return Verdict.READY  # ambiguous or unsupported framing: gunicorn refuses it
            self._chunked = True
            self._pos = self._body_start
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
                return Verdict.READY  # gunicorn refuses a malformed or conflicting length
            self._length = int(lengths[0])
            if self._length > self.max_body:
                return Verdict.READY  # refused from the head: the body is never read
        self.expects_continue = expect == [b"100-continue"] and lines[0].endswith(b"HTTP/1.1")
        return None

    def _chunks(self) -> Verdict:
        """Walk the chunked body as far as it has arrived."""
        buffer = self.buffer
        while True:
            if self._remaining:
                available = len(buffer) - self._pos
                if available < self._remaining + 2:
                    if self._data + available > self.max_body:
                        return Verdict.READY  # over the limit: the app refuses it after reading that much
                    return Verdict.WAIT
                if buffer[self._pos + self._remaining:self._pos + self._remaining + 2] != b"\r\n":
                    return Verdict.READY  # gunicorn refuses a chunk that does not end where it says
                self._data += self._remaining
                self._pos += self._remaining + 2
                self._remaining = 0
                if self._data > self.max_body:
                    return Verdict.READY
            end = buffer.find(b"\r\n", self._pos)
            if end < 0:
                return Verdict.BAD_REQUEST if len(buffer) - self._pos > MAX_CHUNK_LINE else Verdict.WAIT
            line = bytes(buffer[self._pos:end])
            self._pos = end + 2
            if self._in_trailer:
                if not line:
                    self.complete = True
                    return Verdict.READY
                continue
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 16 or not _HEX.issuperset(size):
                return Verdict.READY  # gunicorn refuses a malformed chunk size
            self._remaining = int(size, 16)
            if self._remaining == 0:
                self._in_trailer = True
