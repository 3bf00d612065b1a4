"""The receiver against hostile and odd clients, through real sockets and the gunicorn the
Procfile starts: slow clients hold no thread, every input gets an answer (never a 5xx), a
Signature header sent twice verifies, and a blank secret stops the web with one line."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from app.server.gunicorn_worker import REQUEST_SECONDS
from sync.core.signature import sign
from sync.partnero.samples import sample_delivery
from sync.settings import MAX_BODY_BYTES
from tests.conftest import SECRETS, signed
from tests.test_processes import BIN, environment, free_port, procfile, start
from tests.web_helpers import procfile_web

URL = "/webhooks/partnero"
#: What the issue asks: with dozens of slow clients connected, an answer within a second.
PROMPT = 1.0


@pytest.fixture(scope="module")
def web(tmp_path_factory, redis_server_url) -> Iterator[int]:
    """The Procfile's web process (one gunicorn worker, as on a small dyno); yields its port."""
    with procfile_web(tmp_path_factory.mktemp("web"), _healthy, REDIS_URL=redis_server_url) as port:
        yield port


def _healthy(port: int) -> bool:
    try:
        return exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
    except OSError:
        return False


def request(path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            extra: list[tuple[str, str]] = ()) -> bytes:
    """An HTTP/1.1 request as bytes; ``extra`` header lines may repeat a name."""
    lines = [f"{'POST' if body is not None else 'GET'} {path} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in {**(headers or {}), **({"Content-Length": str(len(body))} if body is not None
                                                           else {})}.items()]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def read_response(sock: socket.socket) -> tuple[int, dict | None, bytes]:
    """The next response on ``sock``: (status, JSON body or None, the raw bytes read)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    body = rest[:length]
    return status, (json.loads(body) if body[:1] == b"{" else None), data


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict | None]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        status, answer, _ = read_response(sock)
    return status, answer


def delivery(n: int) -> tuple[bytes, dict]:
    return signed(sample_delivery("partner.created", id=f"ptn_hostile_{n}_{time.time_ns()}"))


# -- slow clients ------------------------------------------------------------------------------


def test_dozens_of_slow_clients_hold_no_thread_and_are_answered_408(web):
    stop_trickling = threading.Event()
    opened: dict[str, list[socket.socket]] = {"stalled after the headers": [], "stalled in the headers": [],
                                              "trickling": [], "silent": [], "never closing": []}
    head = request(URL, b"x" * 100, {"Signature": "0" * 64})[:-100]  # headers, no body
    for _ in range(12):
        for kind, sockets in opened.items():
            sock = socket.create_connection(("127.0.0.1", web), timeout=REQUEST_SECONDS + 10)
            if kind == "stalled after the headers":
                sock.sendall(head)
            elif kind == "stalled in the headers":
                sock.sendall(head[:30])
            elif kind == "trickling":
                sock.sendall(head)
            elif kind == "never closing":  # answered, it neither reads nor closes: gthread waited on each
                sock.sendall(request("/healthz"))
            sockets.append(sock)

    def trickle() -> None:  # a byte every half second, on every trickling connection
        while not stop_trickling.wait(0.5):
            for sock in opened["trickling"]:
                try:
                    sock.send(b"x")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(0.5)  # they are all connected, and have sent what they send
        for n in range(3):  # gthread would need a free thread for each: all sixteen are taken
            assert exchange(web, request("/healthz"), timeout=PROMPT)[0] == 200
            body, headers = delivery(n)
            status, answer = exchange(web, request(URL, body, headers), timeout=PROMPT)
            assert (status, answer["status"]) == (202, "queued")
            time.sleep(0.3)

        # No request arrived whole in time: each is answered 408 and closed; the silent ones closed.
        for kind in ("stalled after the headers", "stalled in the headers", "trickling"):
            for sock in opened[kind]:
                status, answer, _ = read_response(sock)
                assert (status, answer) == (408, {"error": "request timeout"}), kind
        for sock in opened["silent"]:
            assert sock.recv(1) == b""
    finally:
        stop_trickling.set()
        trickler.join()
        for sockets in opened.values():
            for sock in sockets:
                sock.close()


def test_a_request_that_arrives_slowly_but_whole_is_served(web):
    body, headers = delivery(0)
    data = request(URL, body, headers)
    with socket.create_connection(("127.0.0.1", web), timeout=10) as sock:
        for start_at in range(0, len(data), len(data) // 5 + 1):
            sock.sendall(data[start_at:start_at + len(data) // 5 + 1])
            time.sleep(0.2)
        status, answer, _ = read_response(sock)
    assert (status, answer["status"]) == (202, "queued")


# -- framing -------------------------------------------------------------------------------------


def test_the_ways_a_body_can_be_framed_are_all_served(web):
    body, headers = delivery(1)
    # Expect: 100-continue: the client waits for the go-ahead before it sends the body.
    with socket.create_connection(("127.0.0.1", web), timeout=10) as sock:
        sock.sendall(request(URL, body, headers, extra=[("Expect", "100-continue")])[:-len(body)])
        status, _, raw = read_response(sock)
        assert status == 100
        sock.sendall(body)
        while True:  # gunicorn may say 100 Continue once more: a client must accept several 1xx
            status, answer, raw = read_response(sock)
            if status != 100:
                break
        assert (status, answer["status"]) == (202, "queued")

    # Chunked, in pieces.
    body, headers = delivery(2)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 50]), body[i:i + 50]) for i in range(0, len(body), 50))
    head = request(URL, None, headers, extra=[("Transfer-Encoding", "chunked")]).replace(b"GET", b"POST", 1)
    status, answer = exchange(web, head + chunked + b"0\r\n\r\n")
    assert (status, answer["status"]) == (202, "queued")

    # Two requests in one write, and a kept-alive connection used again.
    keep = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", web), timeout=10) as sock:
        sock.sendall(keep + keep)
        assert read_response(sock)[0] == 200 and read_response(sock)[0] == 200
        sock.sendall(keep)
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize(
    "data, status, error",
    [
        (b"POST /webhooks/partnero HTTP/1.1\nHost: x\nContent-Length: 2\n\nhi", 400, "bad request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431,
         "request header fields too large"),
    ],
    ids=["bare line feeds", "a head too large"],
)
def test_heads_that_cannot_be_framed_are_answered_at_once(web, data, status, error):
    assert exchange(web, data) == (status, {"error": error})


def test_a_body_over_the_limit_is_refused_from_its_length_without_being_read(web):
    with socket.create_connection(("127.0.0.1", web), timeout=10) as sock:
        sock.sendall(f"POST {URL} HTTP/1.1\r\nHost: x\r\nSignature: {'0' * 64}\r\n"
                     f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode())
        status, _, _ = read_response(sock)
        assert status == 413
        assert sock.recv(1) == b""  # closed: the rest of that body is never waited for


# -- what a signed body may contain --------------------------------------------------------------


@pytest.mark.parametrize(
    "body, error",
    [
        (b'{"event": "partner.created", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         "body nests arrays or objects more than 64 deep"),
        (b'{"event": "partner.created", "data": {"id": "p", "n": NaN}}',
         "body is not valid JSON (NaN is not a JSON number)"),
        (b'{"event": "partner.created", "event": "partner.deleted", "data": {"id": "p"}}',
         "body has an object with the same key twice"),
        (b'{"event": "partner.created", "data": {"id": 1' + b"0" * 5000 + b"}}", "body is not valid JSON"),
        (b'{"event": "partner.created", "data": {"id": "\xff"}}', "body is not valid JSON"),
    ],
    ids=["nested too deep", "NaN", "a key twice", "an integer of 5000 digits", "not UTF-8"],
)
def test_signed_json_the_parser_will_not_read_is_answered_400(web, body, error):
    status, answer = exchange(web, request(URL, body, {"Signature": sign(body, SECRETS[0])}))
    assert (status, answer) == (400, {"error": error})


@pytest.mark.parametrize(
    "values, status",
    [
        (["{good}", "{good}"], 202),  # a proxy repeated the header
        (["{wrong}", "{good}"], 202),  # either may match
        (["{good}", "{wrong}"], 202),
        (["{wrong}", "{wrong}"], 401),
    ],
    ids=["the same twice", "wrong then right", "right then wrong", "both wrong"],
)
def test_a_signature_header_sent_twice_verifies_if_either_matches(web, values, status):
    body, _ = delivery(3)
    good, wrong = sign(body, SECRETS[0]), sign(body, "not-the-secret")
    lines = [("Signature", v.format(good=good, wrong=wrong)) for v in values]
    assert exchange(web, request(URL, body, extra=lines))[0] == status


# -- configuration -------------------------------------------------------------------------------


def test_a_secret_of_only_blanks_stops_the_web_and_the_cli_with_one_line(tmp_path):
    env = environment(PORT=str(free_port()), DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
                      PARTNERO_WEBHOOK_SECRET=" , ,", LOG_FORMAT="text")
    web = start(procfile()["web"], env, cwd=tmp_path)
    output = web.communicate(timeout=60)[0].decode()
    assert web.returncode == 2
    assert "configuration error: PARTNERO_WEBHOOK_SECRET holds only blanks and commas" in output
    assert "Traceback" not in output and "Booting worker" not in output  # stopped before any worker

    cli = subprocess.run([str(BIN / "partnero-sync"), "send-test"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 2
    assert cli.stderr.strip() == ("partnero-sync: configuration error: PARTNERO_WEBHOOK_SECRET holds only blanks and "
                                  "commas: set it to the webhook signing secret (several may be given, separated by "
                                  "commas, while rotating)")


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"LOG_LEVEL": "LOUD"}, "configuration error: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ({"MAPPINGS_DIR": "/nowhere"}, "configuration error: 1 problem in the mapping files:"),
    ],
    ids=["a bad log level", "no mapping files"],
)
def test_any_configuration_error_stops_the_web_with_one_line(tmp_path, variables, message):
    env = environment(PORT=str(free_port()), DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
                      PARTNERO_WEBHOOK_SECRET=SECRETS[0], **variables)
    web = start(procfile()["web"], env, cwd=tmp_path)
    output = web.communicate(timeout=60)[0].decode()
    assert web.returncode == 2
    assert message in output and "Traceback" not in output
