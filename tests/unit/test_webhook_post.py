"""sync.notify.webhook against the HTTPS catcher: each kind of answer, classified, and never a URL
or a body in an error."""

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from sync.core import backoff
from sync.notify import webhook


def test_a_message_taken(catcher):
    assert webhook.post(catcher.url("ops"), webhook.body("hello")) == 200
    assert catcher.messages("ops") == [{"text": "hello"}]


@pytest.mark.parametrize("status, kind", [(503, webhook.WebhookFailed), (500, webhook.WebhookFailed),
                                          (429, webhook.WebhookFailed), (404, webhook.WebhookRefused),
                                          (410, webhook.WebhookRefused), (400, webhook.WebhookRefused)])
def test_each_answer_classified_without_the_url(catcher, status, kind):
    catcher.fail(1, status=status, retry_after=7 if status == 429 else None)
    url = catcher.url("secret-token-in-the-path")
    with pytest.raises(kind) as raised:
        webhook.post(url, webhook.body("the body text"))
    assert str(raised.value) == f"HTTP {status}"
    assert raised.value.status == status
    if status == 429:
        assert raised.value.retry_after == 7
    assert catcher.messages() == []


def test_no_connection_and_time_out(catcher):
    port = catcher.port
    catcher.__exit__()
    with pytest.raises(webhook.WebhookFailed, match="^could not connect$"):
        webhook.post(f"https://127.0.0.1:{port}/hook/x", {"text": "x"})


def test_a_slow_endpoint_times_out(catcher):
    catcher.slow(1.0)
    with pytest.raises(webhook.WebhookFailed, match="^timed out$"):
        webhook.post(catcher.url(), {"text": "x"}, timeout=(1, 0.2))


def test_an_untrusted_certificate_fails_without_naming_the_host(monkeypatch, catcher):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with pytest.raises(webhook.WebhookFailed) as raised:  # requests' SSLError is a ConnectionError
        webhook.post(catcher.url(), {"text": "x"})
    assert "127.0.0.1" not in str(raised.value)


def test_formats():
    assert webhook.body("t") == {"text": "t"}
    card = webhook.body("t", format="teams", title="T")
    assert card["@type"] == "MessageCard" and card["title"] == "T" and card["text"] == "t"
    assert webhook.body("t", format="json", title="T", facts={"count": 3}) == {"count": 3, "title": "T", "text": "t"}


def test_a_retry_after_date_is_obeyed_as_partneros_is(catcher):
    """One reading of Retry-After for every HTTP client (sync.core.backoff.retry_after): seconds
    or an HTTP date, capped."""
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    catcher.fail(1, status=429, retry_after=format_datetime(when, usegmt=True))
    with pytest.raises(webhook.WebhookFailed) as raised:
        webhook.post(catcher.url(), {"text": "x"})
    assert 100 < raised.value.retry_after <= 120
    catcher.fail(1, status=503, retry_after=99999)
    with pytest.raises(webhook.WebhookFailed) as raised:
        webhook.post(catcher.url(), {"text": "x"})
    assert raised.value.retry_after == backoff.WEBHOOK_RETRY_AFTER_CAP
