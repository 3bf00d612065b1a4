import pytest

from sync.core.errors import ConfigurationError
from sync.settings import Settings, normalize_database_url, redact_url


def test_defaults():
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///partnero-sync.db"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert str(settings.mappings_dir) == "mappings"
    assert settings.webhook_secrets == ()
    assert settings.currency is None  # the ledger's most used


def test_the_scheme_is_taken_from_any_peer_unless_narrowed():
    assert Settings.from_env({}).forwarded_allow_ips == ("*",)
    assert Settings.from_env({"FORWARDED_ALLOW_IPS": " "}).forwarded_allow_ips == ("*",)
    narrowed = Settings.from_env({"FORWARDED_ALLOW_IPS": "10.0.0.0/8, 127.0.0.1,::1"})
    assert narrowed.forwarded_allow_ips == ("10.0.0.0/8", "127.0.0.1", "::1")


def test_the_program_currency_is_kept_as_the_ledger_keeps_currencies():
    assert Settings.from_env({"PARTNERO_CURRENCY": " eur "}).currency == "EUR"


def test_the_lock_wait_is_seconds_and_short_by_default():
    assert Settings.from_env({}).database_lock_timeout == 2
    assert Settings.from_env({"DATABASE_LOCK_TIMEOUT": " 0.5 "}).database_lock_timeout == 0.5


def test_secrets_are_comma_separated_for_rotation():
    settings = Settings.from_env({"PARTNERO_WEBHOOK_SECRET": " new , old ,, "})
    assert settings.webhook_secrets == ("new", "old")


def test_missing_secret_names_the_variable():
    with pytest.raises(ConfigurationError, match="PARTNERO_WEBHOOK_SECRET"):
        Settings.from_env({}).require_webhook_secret()


@pytest.mark.parametrize(
    "given, expected",
    [
        ("postgres://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgresql://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_database_url_forms(given, expected):
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"PARTNERO_CURRENCY": "US dollar"}, "PARTNERO_CURRENCY"),
        ({"FORWARDED_ALLOW_IPS": "router.internal"}, "FORWARDED_ALLOW_IPS"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.1/8"}, "FORWARDED_ALLOW_IPS"),  # host bits set: gunicorn refuses it
        ({"FORWARDED_ALLOW_IPS": " , "}, "FORWARDED_ALLOW_IPS"),
        ({"DATABASE_LOCK_TIMEOUT": "two"}, "DATABASE_LOCK_TIMEOUT"),
        ({"DATABASE_LOCK_TIMEOUT": "0"}, "DATABASE_LOCK_TIMEOUT"),
        ({"DATABASE_LOCK_TIMEOUT": "600"}, "DATABASE_LOCK_TIMEOUT"),
    ],
)
def test_malformed_values_name_the_variable(env, variable):
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env(env)


def test_secrets_and_passwords_never_show():
    settings = Settings.from_env(
        {"PARTNERO_WEBHOOK_SECRET": "whsec_topsecret", "DATABASE_URL": "postgres://app:hunter2@db/x"}
    )
    text = repr(settings) + str(settings)
    assert "whsec_topsecret" not in text and "hunter2" not in text
    assert "app:***@db" in text


def test_redact_url_keeps_urls_without_password():
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert redact_url("redis://:pw@host:1/0") == "redis://:***@host:1/0"


@pytest.mark.parametrize(
    "env, mode",
    [
        ({"SALESFORCE_INSTANCE_URL": "https://x.my.salesforce.com", "SALESFORCE_SESSION_ID": "00D!x"}, "session"),
        ({"SALESFORCE_USERNAME": "u", "SALESFORCE_PASSWORD": "p", "SALESFORCE_SECURITY_TOKEN": "t"}, "password"),
        ({"SALESFORCE_USERNAME": "u", "SALESFORCE_CONSUMER_KEY": "k", "SALESFORCE_PRIVATE_KEY": "-----BEGIN"}, "jwt"),
        ({"SALESFORCE_USERNAME": "u", "SALESFORCE_CONSUMER_KEY": "k", "SALESFORCE_PRIVATE_KEY_FILE": "/k.pem"}, "jwt"),
        ({"SALESFORCE_CONSUMER_KEY": "k", "SALESFORCE_CONSUMER_SECRET": "s", "SALESFORCE_DOMAIN": "acme.my"},
         "client_credentials"),
    ],
)
def test_each_salesforce_login(env, mode):
    salesforce = Settings.from_env(env).salesforce
    assert salesforce.mode == mode and salesforce.enabled
    assert salesforce.renewable == (mode != "session")


def test_no_salesforce_variables_means_crm_sync_is_off():
    salesforce = Settings.from_env({}).salesforce
    assert not salesforce.enabled
    assert salesforce.describe() == "off (no SALESFORCE_ variables set): only the warehouse is synced"


@pytest.mark.parametrize(
    "env, missing",
    [
        ({"SALESFORCE_USERNAME": "u", "SALESFORCE_PASSWORD": "p"}, "SALESFORCE_SECURITY_TOKEN"),
        ({"SALESFORCE_INSTANCE_URL": "https://x"}, "SALESFORCE_SESSION_ID"),
        ({"SALESFORCE_CONSUMER_KEY": "k", "SALESFORCE_CONSUMER_SECRET": "s"}, "SALESFORCE_DOMAIN"),
        ({"SALESFORCE_USERNAME": "u", "SALESFORCE_CONSUMER_KEY": "k"},
         "SALESFORCE_PRIVATE_KEY or SALESFORCE_PRIVATE_KEY_FILE"),
    ],
)
def test_half_a_salesforce_login_names_what_is_missing(env, missing):
    with pytest.raises(ConfigurationError, match=f"also set {missing}"):
        Settings.from_env(env)


def test_salesforce_secrets_never_show():
    settings = Settings.from_env({"SALESFORCE_USERNAME": "api@acme.com", "SALESFORCE_PASSWORD": "hunter2",
                                  "SALESFORCE_SECURITY_TOKEN": "tok3n"})
    text = repr(settings) + repr(settings.salesforce) + settings.salesforce.describe()
    assert "hunter2" not in text and "tok3n" not in text
    assert "api@acme.com" in text


@pytest.mark.parametrize("raw", [" ", ",", " , ,, ", "\t,\n"])
def test_a_secret_of_only_blanks_and_commas_is_a_configuration_error(raw):
    with pytest.raises(ConfigurationError, match="PARTNERO_WEBHOOK_SECRET holds only blanks and commas"):
        Settings.from_env({"PARTNERO_WEBHOOK_SECRET": raw})


@pytest.mark.parametrize("url", [
    "http://api.partnero.com/v1", "HTTP://api.partnero.com/v1", "http://10.0.0.7:8080/v1",
    "http://localhost.example.com/v1", "http://127.0.0.1.nip.io/v1", "http://user:hunter2@partnero.test/v1",
])
def test_plain_http_to_a_host_that_is_not_local_is_refused_naming_the_variable(url):
    with pytest.raises(ConfigurationError, match="PARTNERO_API_URL is plain http") as refused:
        Settings.from_env({"PARTNERO_API_URL": url, "PARTNERO_API_KEY": "k" * 32})
    assert "hunter2" not in str(refused.value) and "k" * 32 not in str(refused.value)


@pytest.mark.parametrize("url", [
    "http://localhost:8000/v1", "http://LOCALHOST/v1", "http://127.0.0.1:9000/v1", "http://127.3.4.5/v1",
    "http://[::1]:8000/v1",
])
def test_plain_http_to_this_machine_is_allowed_and_marked_as_in_clear(url):
    settings = Settings.from_env({"PARTNERO_API_URL": url}).partnero
    assert settings.api_url == url and settings.in_clear


def test_https_is_not_in_clear():
    assert not Settings.from_env({}).partnero.in_clear
    assert not Settings.from_env({"PARTNERO_API_URL": "https://partnero.test/v1"}).partnero.in_clear
