"""The Partnero API client against the HTTPS stand-in: pages, retries, refusals, and no key in sight."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
import requests

from sync.core import backoff
from sync.core.errors import ConfigurationError, PermanentError, TransientError
from sync.partnero.api import (
    ATTEMPTS,
    MAX_LIMIT,
    ApiKeyRefused,
    Page,
    PartneroApi,
    PartneroRefused,
    PartneroUnavailable,
    _classify,
    parse_page,
)
from sync.settings import PartneroApiSettings
from tests.fakes.partnero import FakePartnero


class Waits(list):
    """Records the waits the client asks for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def waits() -> Waits:
    return Waits()


def client(fake: FakePartnero, waits: Waits, *, key: str | None = None, timeout: float = 30) -> PartneroApi:
    return PartneroApi(PartneroApiSettings(api_key=key or fake.api_key, api_url=fake.url), sleep=waits,
                       timeout=timeout)


def partners(count: int) -> list[dict]:
    return [{"id": f"ptn_{n}", "email": f"p{n}@example.com", "status": "active"} for n in range(count)]


@pytest.mark.parametrize("pagination", ["simple", "length_aware"])
def test_pages_walk_a_list_to_its_end_without_asking_for_an_empty_page(partnero_api, waits, pagination):
    partnero_api.pagination = pagination
    for partner in partners(7):
        partnero_api.add("partners", partner)
    pages = list(client(partnero_api, waits).pages("partners", limit=3))
    assert [p.number for p in pages] == [1, 2, 3]
    assert [o["id"] for p in pages for o in p.objects] == [f"ptn_{n}" for n in range(7)]
    assert [q for _, _, q in partnero_api.requests] == [{"limit": "3", "page": str(n)} for n in (1, 2, 3)]
    assert pages[-1].is_last and not pages[0].is_last
    if pagination == "length_aware":
        assert (pages[0].last_page, pages[0].total) == (3, 7)
    else:
        assert (pages[0].last_page, pages[0].total) == (None, None)

    # A list that fills its last page exactly ends there too: the next link (or last_page) says so.
    partnero_api.remove("partners", "ptn_6")
    partnero_api.requests.clear()
    assert [p.number for p in client(partnero_api, waits).pages("partners", limit=3)] == [1, 2]
    assert len(partnero_api.requests) == 2


def test_a_page_asks_for_the_most_partnero_gives_by_default_and_starts_where_told(partnero_api, waits):
    for partner in partners(3):
        partnero_api.add("customers", {"key": partner["id"]})
    api = client(partnero_api, waits)
    page = api.page("customers", 1)
    assert partnero_api.requests[-1] == ("GET", "/v1/customers", {"limit": str(MAX_LIMIT), "page": "1"})
    assert page.is_last and len(page.objects) == 3 and page.entity == "customers"
    assert [p.number for p in api.pages("customers", start=2, limit=1)] == [2, 3]
    with pytest.raises(ValueError):
        api.page("customers", 1, limit=MAX_LIMIT + 1)
    with pytest.raises(ValueError):
        api.page("webhooks", 1)


def test_the_stand_in_refuses_a_limit_over_250_as_laravel_does(partnero_api):
    answer = requests.get(f"{partnero_api.url}/partners", params={"limit": 251},
                          headers={"Authorization": f"Bearer {partnero_api.api_key}"}, timeout=10)
    assert answer.status_code == 422
    assert answer.json()["errors"] == {"limit": ["The limit field must not be greater than 250."]}


def test_requests_carry_the_bearer_key_json_and_our_name(partnero_api, waits):
    client(partnero_api, waits).page("partners", 1)
    headers = partnero_api.last_headers
    assert headers["Authorization"] == f"Bearer {partnero_api.api_key}"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("partnero-sync/")


def test_a_refused_key_is_a_configuration_error_at_once_and_never_shows_the_key(partnero_api, waits, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong_" + "k" * 30
    with pytest.raises(ApiKeyRefused) as refused:
        client(partnero_api, waits, key=wrong).page("partners", 1)
    assert isinstance(refused.value, ConfigurationError)
    assert "PARTNERO_API_KEY" in str(refused.value) and "(401" in str(refused.value)
    assert len(partnero_api.requests) == 1 and waits == []
    assert wrong not in str(refused.value) and wrong not in caplog.text


def test_a_rate_limit_is_waited_out_for_as_long_as_retry_after_says(partnero_api, waits, caplog):
    caplog.set_level(logging.WARNING, logger="sync.partnero.api")
    partnero_api.add("partners", partners(1)[0])
    partnero_api.throttle(2, retry_after=3)
    page = client(partnero_api, waits).page("partners", 1)
    assert [o["id"] for o in page.objects] == ["ptn_0"]
    assert waits == [3.0, 3.0]
    assert len(partnero_api.requests) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("429" in line and "3.0 s" in line for line in lines)


def test_a_long_retry_after_is_capped(partnero_api, waits):
    partnero_api.throttle(1, retry_after=3600)
    client(partnero_api, waits).page("partners", 1)
    assert waits == [float(backoff.API_RETRY_AFTER_CAP)]


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 3, 14, 10, 0, 0, tzinfo=timezone.utc)

    def retry_after(value, now):
        return backoff.retry_after(value, now, backoff.API_RETRY_AFTER_CAP)

    assert retry_after("7", now) == 7.0
    assert retry_after("Sat, 14 Mar 2026 10:00:20 GMT", now) == 20.0
    assert retry_after("Sat, 14 Mar 2026 09:59:00 GMT", now) == 0.0  # already past
    assert retry_after("9999", now) == float(backoff.API_RETRY_AFTER_CAP)
    assert retry_after(None, now) is None and retry_after("soon", now) is None and retry_after(" ", now) is None


def test_server_errors_are_retried_with_the_api_schedule_then_reported(partnero_api, waits, caplog):
    partnero_api.fail(2, status=502)
    assert client(partnero_api, waits).page("partners", 1).objects == []
    assert len(waits) == 2
    assert backoff.API_DELAYS[0] <= waits[0] <= backoff.API_DELAYS[0] * 1.2
    assert backoff.API_DELAYS[1] <= waits[1] <= backoff.API_DELAYS[1] * 1.2

    waits.clear()
    partnero_api.requests.clear()
    partnero_api.fail(ATTEMPTS + 1, status=503)
    with pytest.raises(PartneroUnavailable) as unavailable:
        client(partnero_api, waits).page("partners", 1)
    assert isinstance(unavailable.value, TransientError)
    assert "503" in str(unavailable.value)
    assert len(partnero_api.requests) == ATTEMPTS and len(waits) == ATTEMPTS - 1


def test_an_unreachable_partnero_is_unavailable_after_the_retries(waits):
    api = PartneroApi(PartneroApiSettings(api_key="k" * 32, api_url="https://127.0.0.1:1/v1"), sleep=waits)
    with pytest.raises(PartneroUnavailable, match="could not reach Partnero for GET /partners: ConnectionError"):
        api.page("partners", 1)
    assert len(waits) == ATTEMPTS - 1


def test_a_slow_answer_times_out_and_counts_as_unavailable(partnero_api, waits):
    partnero_api.latency = 0.3
    with pytest.raises(PartneroUnavailable, match="ReadTimeout"):
        client(partnero_api, waits, timeout=0.1).page("partners", 1)
    assert len(waits) == ATTEMPTS - 1


def test_get_returns_one_object_or_none(partnero_api, waits):
    partnero_api.add("transactions", {"key": "in_1/2 x", "amount": 149.0})
    api = client(partnero_api, waits)
    assert api.get("transactions", "in_1/2 x") == {"key": "in_1/2 x", "amount": 149.0}
    assert partnero_api.requests[-1][1] == "/v1/transactions/in_1%2F2%20x"
    assert api.get("transactions", "in_gone") is None
    assert waits == []


def test_a_list_changing_between_pages_is_seen_as_it_was_when_each_page_was_asked(partnero_api, waits):
    for partner in partners(4):
        partnero_api.add("partners", partner)
    asked: list[datetime] = []

    def before(entity: str, number: int) -> None:
        asked.append(datetime.now(timezone.utc))
        if number == 2:  # a partner signs up at the front: page 2 now starts one earlier
            partnero_api.partners.insert(0, {"id": "ptn_new", "email": "new@example.com"})
            partnero_api.update("partners", "ptn_3", status="archived")

    partnero_api.before_page(before)
    pages = list(client(partnero_api, waits).pages("partners", limit=2))
    assert [[o["id"] for o in p.objects] for p in pages] == [["ptn_0", "ptn_1"], ["ptn_1", "ptn_2"], ["ptn_3"]]
    assert pages[2].objects[0]["status"] == "archived"
    for page, when in zip(pages, asked):
        assert page.observed_at.tzinfo is not None
        assert page.observed_at <= when < page.observed_at + timedelta(seconds=5)


def test_webhooks_are_read_across_pages_of_the_webhooks_limit(partnero_api, waits):
    for n in range(150):
        partnero_api.add("webhooks", {"key": f"wh{n:03}", "name": "n", "url": "https://a.example/x",
                                      "is_active": True, "signature": "s", "events": ["partner.created"]})
    hooks = client(partnero_api, waits).webhooks()
    assert [h["key"] for h in hooks] == [f"wh{n:03}" for n in range(150)]
    assert [q for _, _, q in partnero_api.requests] == [{"limit": "100", "page": "1"}, {"limit": "100", "page": "2"}]


def test_a_refused_call_says_what_partnero_said_and_which_fields(partnero_api, waits):
    api = client(partnero_api, waits)
    with pytest.raises(PartneroRefused) as refused:
        api.create_webhook("sync", "ftp://example.com/hook", ["partner.created"])
    assert isinstance(refused.value, PermanentError) and refused.value.status == 422
    assert str(refused.value) == ("Partnero refused POST /webhooks (422): The url field must be a valid URL. "
                                  "(fields: url)")
    with pytest.raises(PartneroRefused) as missing:
        api.delete_webhook("nope")
    assert missing.value.status == 404 and waits == []


def _answer(status: int, body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = status, body
    return response


def test_a_message_that_quotes_what_we_sent_is_not_repeated():
    quoting = _answer(422, b'{"message": "The url https://secret.example/hook is taken.", "errors": {"url": []}}')
    assert str(_classify(quoting, "POST /webhooks", {"https://secret.example/hook"})) == (
        "Partnero refused POST /webhooks (422) (fields: url)")
    assert str(_classify(_answer(400, b"<html>"), "GET /partners", set())) == "Partnero refused GET /partners (400)"
    assert isinstance(_classify(_answer(403, b"{}"), "GET /partners", set()), ApiKeyRefused)
    assert isinstance(_classify(_answer(500, b""), "GET /partners", set()), PartneroUnavailable)


@pytest.mark.parametrize(("count", "limit", "last_page", "total", "has_next", "per_page", "number", "last"), [
    (3, 3, None, None, True, None, 1, False),    # a full page with a next link
    (3, 3, None, None, False, None, 1, True),    # no next link
    (3, 3, None, None, None, None, 1, False),    # no links at all, full page: ask on
    (2, 3, None, None, None, None, 1, True),     # no links or meta, fewer than asked for
    (3, 3, 2, None, None, None, 2, True),        # the last page by meta
    (0, 3, None, None, True, None, 5, True),     # empty
    (100, 250, None, None, True, 100, 1, False),  # capped: fewer than asked, and a next link
    (15, 250, None, None, True, None, 1, False),  # capped, without per_page: the next link decides
    (100, 250, 3, None, None, 100, 1, False),    # capped, no links: meta's last page decides
    (100, 250, None, 260, None, 100, 2, False),  # capped, no links: meta's total decides
    (60, 250, None, 260, None, 100, 3, True),
    (15, 250, None, None, None, 15, 1, False),   # no links, a full page of the server's size
    (9, 250, None, None, None, 15, 2, True),     # no links, shorter than the server's page size
])
def test_a_page_knows_when_it_is_the_last(count, limit, last_page, total, has_next, per_page, number, last):
    page = Page("partners", number, [{}] * count, last_page, total, datetime.now(timezone.utc), limit, has_next,
                per_page)
    assert page.is_last is last


LINK = "https://api.partnero.com/v1/partners?page="


@pytest.mark.parametrize(("body", "has_next", "per_page", "last"), [
    # A Laravel resource collection, as Partnero's reference shows it (simple pagination), capped at 100.
    ({"data": [{}] * 100, "links": {"first": LINK + "1", "last": None, "prev": None, "next": LINK + "2"},
      "meta": {"current_page": 1, "from": 1, "path": LINK[:-6], "per_page": 100, "to": 100}, "status": 1},
     True, 100, False),
    # A plain length-aware paginator: links is Laravel's list of page links; next_page_url tells.
    ({"current_page": 1, "data": [{}] * 15, "first_page_url": LINK + "1", "from": 1, "last_page": 2,
      "links": [{"url": None, "label": "&laquo; Previous", "active": False}], "next_page_url": LINK + "2",
      "path": LINK[:-6], "per_page": "15", "prev_page_url": None, "to": 15, "total": 20},
     True, 15, False),
    # A plain simple paginator on its last page.
    ({"current_page": 2, "data": [{}] * 15, "first_page_url": LINK + "1", "from": 16, "next_page_url": None,
      "path": LINK[:-6], "per_page": 15, "prev_page_url": LINK + "1", "to": 30}, False, 15, True),
])
def test_both_of_laravels_paginator_shapes_are_read(body, has_next, per_page, last):
    page = parse_page("partners", body.get("current_page", 1), 250, body, datetime.now(timezone.utc))
    assert (page.has_next, page.per_page, page.is_last) == (has_next, per_page, last)


@pytest.mark.parametrize("pagination", ["simple", "length_aware"])
@pytest.mark.parametrize("cap", [100, 15])
def test_a_list_partnero_pages_shorter_than_asked_is_read_to_its_end(partnero_api, waits, caplog, cap,
                                                                     pagination):
    caplog.set_level(logging.INFO, logger="sync.partnero.api")
    partnero_api.page_cap, partnero_api.pagination = cap, pagination
    for partner in partners(260):
        partnero_api.add("partners", partner)
    pages = list(client(partnero_api, waits).pages("partners"))
    expected = -(-260 // cap)
    assert [p.number for p in pages] == list(range(1, expected + 1))
    assert [o["id"] for p in pages for o in p.objects] == [f"ptn_{n}" for n in range(260)]
    assert [q for _, _, q in partnero_api.requests] == [
        {"limit": str(MAX_LIMIT), "page": str(n)} for n in range(1, expected + 1)]
    assert {p.per_page for p in pages} == {cap}
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"Partnero answered GET /partners with {cap} objects a page ({MAX_LIMIT} asked for): "
                    "following its pages to the end"]


def test_the_stand_in_caps_a_page_as_a_laravel_app_capping_per_page_does(partnero_api):
    partnero_api.page_cap = 100
    for partner in partners(101):
        partnero_api.add("partners", partner)
    answer = requests.get(f"{partnero_api.url}/partners", params={"limit": 250},
                          headers={"Authorization": f"Bearer {partnero_api.api_key}"}, timeout=10).json()
    assert len(answer["data"]) == 100
    assert answer["meta"]["per_page"] == 100 and (answer["meta"]["from"], answer["meta"]["to"]) == (1, 100)
    assert answer["links"]["next"] == f"{partnero_api.url}/partners?page=2"


def test_a_full_list_that_says_nothing_of_its_pages_is_ended_by_a_short_page(partnero_api, waits):
    for partner in partners(5):
        partnero_api.add("partners", partner)
    api = client(partnero_api, waits)

    def bare(method, url, **kwargs):  # an answer with data alone: no links, no meta
        answer = requests.Session.request(api.session, method, url, **kwargs)
        answer._content = json.dumps({"data": answer.json()["data"], "status": 1}).encode()
        return answer

    api.session.request = bare
    pages = list(api.pages("partners", limit=2))
    assert [len(p.objects) for p in pages] == [2, 2, 1]


def test_the_key_is_never_shown(partnero_api, waits, caplog):
    caplog.set_level(logging.DEBUG)
    settings = PartneroApiSettings(api_key=partnero_api.api_key, api_url=partnero_api.url)
    api = PartneroApi(settings, sleep=waits)
    partnero_api.throttle(1)
    partnero_api.fail(ATTEMPTS + 1)
    with pytest.raises(PartneroUnavailable) as unavailable:
        api.page("partners", 1)
    shown = [caplog.text, str(unavailable.value), repr(api), repr(settings)]
    assert waits and all(partnero_api.api_key not in text for text in shown)


def test_one_ca_bundle_trusts_the_partnero_and_salesforce_stand_ins_together(partnero_api, fake, waits):
    assert partnero_api.ca_bundle == fake.ca_bundle
    assert requests.get(f"{fake.instance_url}/services/data", timeout=10).ok
    assert client(partnero_api, waits).page("partners", 1).objects == []


def test_a_local_plain_http_url_is_warned_about_without_the_key(waits, caplog):
    caplog.set_level(logging.WARNING, logger="sync.partnero.api")
    key = "k" * 32
    PartneroApi(PartneroApiSettings(api_key=key, api_url="http://127.0.0.1:1/v1"), sleep=waits)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "plain http (http://127.0.0.1:1/v1): the API key travels unencrypted" in warning and key not in warning
    caplog.clear()
    PartneroApi(PartneroApiSettings(api_key=key, api_url="https://127.0.0.1:1/v1"), sleep=waits)
    assert caplog.records == []
