"""The Partnero stand-in serves programs as Partnero does: one API key reads one program's lists
and webhooks, and a key revoked is a 401 for that program only."""

from __future__ import annotations

import pytest

from sync.partnero.api import ApiKeyRefused, PartneroApi
from sync.settings import PartneroApiSettings


def api(fake, key: str) -> PartneroApi:
    return PartneroApi(PartneroApiSettings(api_key=key, api_url=fake.url), sleep=lambda _: None)


def test_each_key_reads_its_own_programs_objects_and_webhooks(partnero_api):
    friends = partnero_api.program()
    partnero_api.add("partners", {"id": "ptn_1", "email": "a@example.com"})
    friends.add("partners", {"id": "ptn_1", "email": "b@example.com"})
    friends.add("partners", {"id": "ptn_2", "email": "c@example.com"})

    mine = api(partnero_api, partnero_api.api_key)
    assert [p["email"] for p in mine.page("partners", 1).objects] == ["a@example.com"]
    theirs = api(partnero_api, friends.api_key)
    assert [p["email"] for p in theirs.page("partners", 1).objects] == ["b@example.com", "c@example.com"]
    assert theirs.get("partners", "ptn_2")["email"] == "c@example.com"
    assert mine.get("partners", "ptn_2") is None

    created = theirs.create_webhook("sync", "https://example.com/webhooks/partnero/friends", ["partner.created"])
    assert [h["key"] for h in friends.webhooks] == [created["key"]] and partnero_api.webhooks == []
    assert mine.webhooks() == []
    # The first program's log holds every request; another program's, those made with its key.
    assert len(friends.requests) == 3 and len(partnero_api.requests) == 6


def test_a_revoked_key_is_refused_and_the_other_programs_key_still_reads(partnero_api):
    friends = partnero_api.program()
    friends.add("partners", {"id": "ptn_1"})
    partnero_api.revoke()
    with pytest.raises(ApiKeyRefused):
        api(partnero_api, partnero_api.api_key).page("partners", 1)
    assert len(api(partnero_api, friends.api_key).page("partners", 1).objects) == 1
    with pytest.raises(ApiKeyRefused):
        api(partnero_api, "no-program-has-this-key").page("partners", 1)
    with pytest.raises(ValueError):
        partnero_api.program(api_key=friends.api_key)
