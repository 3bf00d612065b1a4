"""PARTNERO_PROGRAMS and each program's own variables (issue: several Partnero programs)."""

from pathlib import Path

import pytest

from sync.core.errors import ConfigurationError
from sync.settings import Settings

TWO = {
    "PARTNERO_PROGRAMS": "affiliate, friends-eu",
    "PARTNERO_AFFILIATE_WEBHOOK_SECRET": "a-new, a-old",
    "PARTNERO_AFFILIATE_API_KEY": "key-a",
    "PARTNERO_AFFILIATE_CURRENCY": " usd ",
    "PARTNERO_FRIENDS_EU_WEBHOOK_SECRET": "f-secret",
    "PARTNERO_FRIENDS_EU_MAPPINGS_DIR": "mappings-friends",
    "PARTNERO_FRIENDS_EU_CURRENCY": "eur",
    "MAPPINGS_DIR": "shared-mappings",
}


def test_without_programs_there_is_one_named_default_from_the_unprefixed_variables():
    settings = Settings.from_env({"PARTNERO_WEBHOOK_SECRET": "s1,s2", "PARTNERO_API_KEY": "k",
                                  "PARTNERO_CURRENCY": "gbp", "MAPPINGS_DIR": "m"})
    (program,) = settings.programs
    assert (program.name, program.webhook_secrets, program.partnero.api_key, program.currency,
            program.mappings_dir) == ("default", ("s1", "s2"), "k", "GBP", Path("m"))
    assert not settings.named_programs
    assert program.variable("WEBHOOK_SECRET") == "PARTNERO_WEBHOOK_SECRET"
    assert settings.program("default") is not None and settings.program("affiliate") is None


def test_each_named_program_reads_its_own_variables():
    settings = Settings.from_env(TWO)
    affiliate, friends = settings.programs
    assert (affiliate.name, affiliate.webhook_secrets, affiliate.partnero.api_key, affiliate.currency,
            affiliate.mappings_dir) == ("affiliate", ("a-new", "a-old"), "key-a", "USD", Path("shared-mappings"))
    assert (friends.name, friends.webhook_secrets, friends.partnero.api_key, friends.currency,
            friends.mappings_dir) == ("friends-eu", ("f-secret",), None, "EUR", Path("mappings-friends"))
    assert friends.variable("WEBHOOK_SECRET") == "PARTNERO_FRIENDS_EU_WEBHOOK_SECRET"
    assert settings.require_webhook_secret() == ("a-new", "a-old", "f-secret")
    assert "f-secret" not in repr(settings) and "a-new" not in repr(settings.programs)


def test_a_program_without_its_secret_is_named_when_the_web_needs_it():
    settings = Settings.from_env({"PARTNERO_PROGRAMS": "affiliate,friends", "PARTNERO_AFFILIATE_WEBHOOK_SECRET": "x"})
    with pytest.raises(ConfigurationError, match="PARTNERO_FRIENDS_WEBHOOK_SECRET is not set"):
        settings.require_webhook_secret()
    with pytest.raises(ConfigurationError, match="PARTNERO_AFFILIATE_API_KEY is not set"):
        settings.program("affiliate").require_api_key()


def test_default_may_be_named_and_then_falls_back_to_the_unprefixed_variables():
    settings = Settings.from_env({"PARTNERO_PROGRAMS": "default,friends", "PARTNERO_WEBHOOK_SECRET": "old",
                                  "PARTNERO_FRIENDS_WEBHOOK_SECRET": "f"})
    assert settings.program("default").webhook_secrets == ("old",)
    own = Settings.from_env({"PARTNERO_PROGRAMS": "default", "PARTNERO_WEBHOOK_SECRET": "old",
                             "PARTNERO_DEFAULT_WEBHOOK_SECRET": "mine"})
    assert own.program("default").webhook_secrets == ("mine",)


@pytest.mark.parametrize("names, message", [
    ("Affiliate", "lower-case letters"),
    ("aff_iliate", "lower-case letters"),
    ("-aff", "lower-case letters"),
    ("a" * 41, "at most 40"),
    ("a,b,a", "names a more than once"),
    (" , ,", "only commas"),
])
def test_a_malformed_program_list_stops_start_up_with_a_sentence(names, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({"PARTNERO_PROGRAMS": names})


@pytest.mark.parametrize("env, message", [
    # A secret under a misspelt program name would make every delivery a 401.
    ({"PARTNERO_PROGRAMS": "affiliate", "PARTNERO_AFILIATE_WEBHOOK_SECRET": "x"},
     "PARTNERO_AFILIATE_WEBHOOK_SECRET is set but PARTNERO_PROGRAMS names affiliate"),
    ({"PARTNERO_FRIENDS_API_KEY": "x"}, "PARTNERO_FRIENDS_API_KEY is set but PARTNERO_PROGRAMS is not set"),
    ({"PARTNERO_PROGRAMS": "affiliate", "PARTNERO_WEBHOOK_SECRET": "x"},
     "PARTNERO_WEBHOOK_SECRET is set but PARTNERO_PROGRAMS \\(affiliate\\) does not name the default"),
    ({"PARTNERO_PROGRAMS": "affiliate", "PARTNERO_AFFILIATE_CURRENCY": "€"}, "PARTNERO_AFFILIATE_CURRENCY must be"),
    ({"PARTNERO_PROGRAMS": "affiliate", "PARTNERO_AFFILIATE_WEBHOOK_SECRET": " , "},
     "PARTNERO_AFFILIATE_WEBHOOK_SECRET holds only blanks"),
])
def test_a_variable_for_the_wrong_program_stops_start_up(env, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)
