"""`partnero-sync webhooks`: list, register (create, then update the same URL) and delete, against
the HTTPS stand-in for Partnero's API."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from sync.cli import main
from sync.mapping import load_mappings
from sync.partnero.webhooks import check_url, plan, receiver_url, render, same_url
from sync.settings import Program
from tests.conftest import MAPPINGS, partnero_env

URL = "https://sync.example.com/webhooks/partnero"


def run(fake, *args: str, **env: str):
    return CliRunner().invoke(main, ["webhooks", *args], catch_exceptions=False,
                              env={**partnero_env(fake), "MAPPINGS_DIR": str(MAPPINGS), "LOG_LEVEL": "DEBUG",
                                   "PARTNERO_WEBHOOK_SECRET": "", **env})


@pytest.fixture
def mapped_events() -> list[str]:
    return sorted(load_mappings(MAPPINGS).events)


def test_register_creates_one_subscription_then_updates_it(partnero_api, mapped_events, caplog):
    caplog.set_level(logging.DEBUG)
    created = run(partnero_api, "register", "--url", URL)
    assert created.exit_code == 0, created.output
    [hook] = partnero_api.webhooks
    assert hook["url"] == URL and hook["events"] == mapped_events and hook["name"] == "partnero-sync"
    assert created.stdout.startswith(f"created webhook {hook['key']} (partnero-sync)")
    assert created.stdout.count(hook["signature"]) == 1
    assert f"\nPARTNERO_WEBHOOK_SECRET={hook['signature']}\n" in created.stdout
    assert created.stderr == ""

    # A subscription that drifted (fewer events, switched off) is put back, not doubled.
    partnero_api.update("webhooks", hook["key"], events=["partner.created"], is_active=False)
    updated = run(partnero_api, "register", "--url", URL + "/", "--name", "warehouse sync")
    assert updated.exit_code == 0, updated.output
    assert len(partnero_api.webhooks) == 1
    assert partnero_api.webhooks[0]["events"] == mapped_events and partnero_api.webhooks[0]["is_active"] is True
    assert partnero_api.webhooks[0]["name"] == "warehouse sync"
    assert updated.stdout.startswith(f"updated webhook {hook['key']} (warehouse sync)")
    assert updated.stdout.count(hook["signature"]) == 1
    assert [m for m, p, _ in partnero_api.requests if p.startswith("/v1/webhooks")] == ["GET", "POST", "GET", "PUT"]
    assert hook["signature"] not in caplog.text and partnero_api.api_key not in caplog.text


def test_an_update_answered_without_the_secret_says_the_old_one_stays(partnero_api):
    assert run(partnero_api, "register", "--url", URL).exit_code == 0
    secret = partnero_api.webhooks[0]["signature"]
    partnero_api.signature_on_update = False
    updated = run(partnero_api, "register", "--url", URL)
    assert updated.exit_code == 0
    assert "stays valid" in updated.stdout and "PARTNERO_WEBHOOK_SECRET=" not in updated.stdout
    assert secret not in updated.output


def test_event_types_partnero_does_not_offer_are_left_out_with_a_warning(partnero_api, mapped_events):
    assert "transaction.updated" in mapped_events  # handled by the mappings; not in Partnero's reference
    partnero_api.events.discard("transaction.updated")
    result = run(partnero_api, "register", "--url", URL)
    assert result.exit_code == 0, result.output
    assert partnero_api.webhooks[0]["events"] == [e for e in mapped_events if e != "transaction.updated"]
    assert "Partnero does not offer transaction.updated" in result.stderr
    assert "transaction.updated" not in result.stdout
    assert [m for m, p, _ in partnero_api.requests] == ["GET", "POST", "POST"]


def test_register_warns_about_a_plain_http_url_and_refuses_one_that_is_not_a_url(partnero_api):
    plain = run(partnero_api, "register", "--url", "http://sync.example.com/webhooks/partnero")
    assert plain.exit_code == 0
    assert "not https" in plain.stderr
    assert partnero_api.webhooks[0]["url"] == "http://sync.example.com/webhooks/partnero"

    bad = run(partnero_api, "register", "--url", "sync.example.com")
    assert bad.exit_code == 2 and "--url" in bad.stderr
    assert len(partnero_api.webhooks) == 1


def test_list_shows_the_subscriptions_without_their_secrets(partnero_api):
    assert run(partnero_api, "register", "--url", URL).exit_code == 0
    partnero_api.add("webhooks", {"key": "old", "name": "zapier", "url": "https://hooks.example/z",
                                  "is_active": False, "signature": "zzzsecretzzz", "events": ["customer.created"]})
    table = run(partnero_api, "list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["KEY", "NAME", "URL", "ACTIVE", "EVENTS"]
    assert "zapier" in lines[2] and " no " in lines[2] and lines[2].endswith("customer.created")
    as_json = run(partnero_api, "list", "--json")
    listed = json.loads(as_json.stdout)
    assert [h["key"] for h in listed] == [h["key"] for h in partnero_api.webhooks]
    assert all("signature" not in h for h in listed)
    for hook in partnero_api.webhooks:
        assert hook["signature"] not in table.output + as_json.output


def test_delete_removes_one_and_says_when_there_is_none(partnero_api):
    assert run(partnero_api, "register", "--url", URL).exit_code == 0
    key = partnero_api.webhooks[0]["key"]
    deleted = run(partnero_api, "delete", key)
    assert deleted.exit_code == 0 and deleted.stdout == f"deleted webhook {key}\n"
    assert partnero_api.webhooks == []
    missing = run(partnero_api, "delete", key)
    assert missing.exit_code == 1
    assert missing.stderr == (f"partnero-sync: Partnero has no webhook with key {key!r} in this program "
                              "(`partnero-sync webhooks list` shows them)\n")


@pytest.mark.parametrize("args", [["list"], ["register", "--url", URL], ["delete", "abc"]])
def test_a_refused_key_is_one_line_and_exit_status_2(partnero_api, args):
    result = run(partnero_api, *args, PARTNERO_API_KEY="not-the-key-123")
    assert result.exit_code == 2
    assert result.stderr.startswith("partnero-sync: configuration error: Partnero refused the API key (401")
    assert "PARTNERO_API_KEY" in result.stderr and "not-the-key-123" not in result.output
    assert partnero_api.webhooks == []


def test_unreachable_partnero_is_exit_status_1(partnero_api, monkeypatch):
    monkeypatch.setattr("sync.core.backoff.API_DELAYS", (0,))  # the retries, without their waits
    result = CliRunner().invoke(main, ["webhooks", "list"], env={
        **partnero_env(partnero_api), "PARTNERO_API_URL": "https://127.0.0.1:1/v1"})
    assert result.exit_code == 1
    assert result.stderr.startswith("partnero-sync: could not reach Partnero for GET /webhooks")


def test_the_plan_finds_the_subscription_for_a_url():
    hooks = [{"key": "a", "url": "https://other.example/webhooks/partnero"},
             {"key": "b", "url": "HTTPS://Sync.Example.com/webhooks/partnero/"},
             {"key": "c", "url": URL}]
    assert plan(hooks, URL) == (hooks[1], ("c",))
    assert plan(hooks[:1], URL) == (None, ())
    assert same_url(URL, URL + "/") and not same_url(URL, URL.replace("https", "http"))
    assert check_url(URL) == [] and check_url("https://sync.example.com") == []
    for bad in ("ftp://sync.example.com/webhooks/partnero", "https://sync.example.com/?a=1", "https:///x"):
        with pytest.raises(ValueError):
            check_url(bad)
    assert render([]).startswith("no webhooks")


def test_each_program_has_its_own_receiver_under_the_public_url():
    default, affiliate = Program("default"), Program("affiliate", named=True)
    for given in ("https://sync.example.com", "https://sync.example.com/", URL, URL + "/", URL + "/friends"):
        assert receiver_url(given, default) == URL
        assert receiver_url(given, affiliate) == URL + "/affiliate"
    # A path in front (an app served under a prefix) is kept.
    assert receiver_url("https://example.com/sync", affiliate) == "https://example.com/sync/webhooks/partnero/affiliate"
    prefixed = "https://example.com/sync/webhooks/partnero"
    assert receiver_url(prefixed, default) == prefixed
