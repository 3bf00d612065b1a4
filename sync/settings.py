"""The one settings object, built from the environment and shared by web, worker and CLI.

This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sync.core.errors import ConfigurationError
from sync.mapping.spec import DEFAULT_PROGRAM  # its one home is the mapping engine, below settings
from sync.mapping.spec import WEBHOOK_URL_SUFFIX  # what a mapping's notify url may name
from sync.mapping.spec import DEFAULT_MESSAGE_FORMAT, MESSAGE_FORMATS  # the webhooks' body formats

DEFAULT_DATABASE_URL = "sqlite:///partnero-sync.db"
#: How long a statement waits for a lock another session holds before it gives up (seconds):
#: well inside Partnero's five seconds for a delivery's answer, and far inside a job's time-out.
DEFAULT_LOCK_TIMEOUT = 2.0
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_MAPPINGS_DIR = "mappings"
DEFAULT_PARTNERO_API_URL = "https://api.partnero.com/v1"

#: Bodies larger than this are refused with 413 before they are read.
MAX_BODY_BYTES = 1024 * 1024

#: The peers whose ``X-Forwarded-Proto`` the web process believes: any. On a Heroku-style PaaS
#: the router is the only way to a web process, it connects from addresses not known in
#: advance, and it sets the header itself (replacing whatever the client sent).
DEFAULT_FORWARDED_ALLOW_IPS = ("*",)
#: More records due than this, for one Salesforce object, go in a Bulk API 2.0 job.
DEFAULT_BULK_THRESHOLD = 2000
#: What ALERT_WEBHOOK_FORMAT may say: the webhooks' body formats (``sync.notify.webhook.body``
#: builds each), whose one home is the mapping engine, as a notify entry's ``format`` says them too.
ALERT_FORMATS = MESSAGE_FORMATS
DEFAULT_ALERT_FORMAT = DEFAULT_MESSAGE_FORMAT
DEFAULT_ALERT_REMIND_AFTER = timedelta(hours=6)
#: A program's name: lower-case letters, digits and dashes (not first or last), at most 40 characters.
PROGRAM_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
#: What each program may set for itself, as PARTNERO_<NAME>_<what>.
PROGRAM_VARIABLES = tuple("WEBHOOK_SECRET API_KEY CURRENCY MAPPINGS_DIR".split())
_SECRET, _KEY, _CURRENCY, _MAPPINGS = PROGRAM_VARIABLES
_PROGRAM_VARIABLE = re.compile(r"PARTNERO_([A-Z0-9_]+?)_(" + "|".join(PROGRAM_VARIABLES) + ")")


SALESFORCE_VARIABLES = (
    "SALESFORCE_INSTANCE_URL",
    "SALESFORCE_SESSION_ID",
    "SALESFORCE_USERNAME",
    "SALESFORCE_PASSWORD",
    "SALESFORCE_SECURITY_TOKEN",
    "SALESFORCE_DOMAIN",
    "SALESFORCE_CONSUMER_KEY",
    "SALESFORCE_CONSUMER_SECRET",
    "SALESFORCE_PRIVATE_KEY",
    "SALESFORCE_PRIVATE_KEY_FILE",
)
#: The ways to connect, each with the variables it needs (SALESFORCE_DOMAIN is optional for
#: password and JWT logins: it defaults to "login").
SALESFORCE_MODES = {
    "session": ("SALESFORCE_INSTANCE_URL", "SALESFORCE_SESSION_ID"),
    "password": ("SALESFORCE_USERNAME", "SALESFORCE_PASSWORD", "SALESFORCE_SECURITY_TOKEN"),
    "jwt": ("SALESFORCE_USERNAME", "SALESFORCE_CONSUMER_KEY", "SALESFORCE_PRIVATE_KEY or SALESFORCE_PRIVATE_KEY_FILE"),
    "client_credentials": ("SALESFORCE_CONSUMER_KEY", "SALESFORCE_CONSUMER_SECRET", "SALESFORCE_DOMAIN"),
}


@dataclass(frozen=True)
class SalesforceSettings:
    """How to reach Salesforce; ``mode`` is None when CRM sync is off."""

    mode: str | None = None
    instance_url: str | None = None
    session_id: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    domain: str | None = None
    consumer_key: str | None = None
    consumer_secret: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    private_key_file: str | None = None

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    @property
    def renewable(self) -> bool:
        """Whether an expired session can be replaced by logging in again."""
        return self.mode not in (None, "session")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SalesforceSettings:
        given = {name: env[name].strip() for name in SALESFORCE_VARIABLES if env.get(name, "").strip()}
        if not given:
            return cls()

        def has(requirement: str) -> bool:
            return any(name in given for name in requirement.split(" or "))

        complete = [mode for mode, needs in SALESFORCE_MODES.items() if all(has(n) for n in needs)]
        if not complete:
            # Name what is missing for the way of connecting the given variables come closest to.
            def closeness(mode: str) -> tuple[int, int]:
                needs = SALESFORCE_MODES[mode]
                return (sum(has(n) for n in needs), -len(needs))

            mode = max(SALESFORCE_MODES, key=closeness)
            missing = [n for n in SALESFORCE_MODES[mode] if not has(n)]
            raise ConfigurationError(
                f"Salesforce is half configured ({', '.join(sorted(given))} set): for the "
                f"{mode.replace('_', ' ')} login, also set {' and '.join(missing)}. Leave every "
                "SALESFORCE_ variable unset to run without CRM sync."
            )
        mode = complete[0]
        domain = given.get("SALESFORCE_DOMAIN")
        if mode in ("password", "jwt") and domain is None:
            domain = "login"
        return cls(
            mode=mode,
            instance_url=given.get("SALESFORCE_INSTANCE_URL"),
            session_id=given.get("SALESFORCE_SESSION_ID"),
            username=given.get("SALESFORCE_USERNAME"),
            password=given.get("SALESFORCE_PASSWORD"),
            security_token=given.get("SALESFORCE_SECURITY_TOKEN"),
            domain=domain,
            consumer_key=given.get("SALESFORCE_CONSUMER_KEY"),
            consumer_secret=given.get("SALESFORCE_CONSUMER_SECRET"),
            private_key=given.get("SALESFORCE_PRIVATE_KEY"),
            private_key_file=given.get("SALESFORCE_PRIVATE_KEY_FILE"),
        )

    def describe(self) -> str:
        """One line for logs and /healthz, without any secret."""
        if not self.enabled:
            return "off (no SALESFORCE_ variables set): only the warehouse is synced"
        where = self.instance_url or f"{self.domain}.salesforce.com"
        who = f" as {self.username}" if self.username else ""
        return f"on: {self.mode.replace('_', ' ')} login to {where}{who}"


#: SALESFORCE_API_BUDGET's default: leave at least a fifth of the org's daily allowance to others.
DEFAULT_API_BUDGET = "80%"


@dataclass(frozen=True)
class ApiBudget:
    """How much of the org's daily API allowance this service may use (SALESFORCE_API_BUDGET):
    a share (``percent``) or a number of calls (``calls``), exactly one of them set."""

    percent: float | None = 80.0
    calls: int | None = None

    def limit(self, allowance: int) -> int:
        """The org's usage (calls in its 24 hours) at or past which flushes pause."""
        if self.calls is not None:
            return self.calls
        return int(allowance * (self.percent or 0) / 100)

    def describe(self) -> str:
        return f"{self.calls:,} calls" if self.calls is not None else f"{self.percent:g}% of the daily allowance"

    @classmethod
    def parse(cls, raw: str) -> ApiBudget:
        """``NN%`` (above 0, at most 100) or a whole number of calls (above 0); empty: 80%."""
        value = raw.strip() or DEFAULT_API_BUDGET
        try:
            if value.endswith("%"):
                percent = float(value[:-1].strip())
                if 0 < percent <= 100:
                    return cls(percent=percent)
            elif value.isdigit() and int(value) > 0:
                return cls(percent=None, calls=int(value))
        except ValueError:
            pass
        raise ConfigurationError(
            "SALESFORCE_API_BUDGET must be a share of the org's daily API allowance such as 50% (above 0, "
            f"at most 100%) or a number of calls such as 40000 (got {raw.strip()!r})"
        )


@dataclass(frozen=True)
class DashboardSettings:
    """Who may open the RQ dashboard, ``/ops`` and ``/metrics``; ``enabled`` is False when no
    credentials are set (then ``/rq`` and ``/ops`` are not served at all)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    allow_actions: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.username and self.password)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DashboardSettings:
        username = env.get("RQ_DASHBOARD_USERNAME", "").strip() or None
        password = env.get("RQ_DASHBOARD_PASSWORD", "") or None
        if bool(username) != bool(password):
            given, missing = (("RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD") if username
                              else ("RQ_DASHBOARD_PASSWORD", "RQ_DASHBOARD_USERNAME"))
            raise ConfigurationError(
                f"{given} is set but {missing} is not: set both to serve the dashboard at /rq and "
                "/ops, or neither to leave them off"
            )
        if password is not None and len(password) < 12:
            raise ConfigurationError("RQ_DASHBOARD_PASSWORD must be at least 12 characters long")
        if username is not None and ":" in username:
            raise ConfigurationError("RQ_DASHBOARD_USERNAME cannot contain ':' (HTTP Basic auth splits on it)")
        return cls(username, password, _flag(env, "RQ_DASHBOARD_ALLOW_ACTIONS"))


@dataclass(frozen=True)
class PartneroApiSettings:
    """How to reach Partnero's REST API; ``enabled`` is False while no API key is set."""

    api_key: str | None = field(default=None, repr=False)
    api_url: str = DEFAULT_PARTNERO_API_URL

    @property
    def enabled(self) -> bool:
        return bool(self.api_key)

    def require_key(self) -> str:
        """The API key; the commands that call Partnero cannot work without one."""
        if not self.api_key:
            raise ConfigurationError(
                "PARTNERO_API_KEY is not set: create an API key in Partnero (the program's Integration -> "
                "API page; one key belongs to one program) and set it"
            )
        return self.api_key

    @property
    def in_clear(self) -> bool:
        """Whether the API key would travel unencrypted (plain http, allowed to a local host only)."""
        return urlsplit(self.api_url).scheme.lower() == "http"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PartneroApiSettings:
        url = env.get("PARTNERO_API_URL", "").strip().rstrip("/") or DEFAULT_PARTNERO_API_URL
        scheme, sep, host = url.partition("://")
        if scheme.lower() not in ("http", "https") or not sep or not host:
            raise ConfigurationError(
                f"PARTNERO_API_URL must be an http(s) URL such as {DEFAULT_PARTNERO_API_URL} "
                f"(got {redact_url(url)!r})"
            )
        if scheme.lower() == "http" and not is_local_host(url):
            raise ConfigurationError(
                f"PARTNERO_API_URL is plain http to a host that is not this machine ({redact_url(url)!r}): "
                "the API key would travel unencrypted. Use https (such as "
                f"{DEFAULT_PARTNERO_API_URL}); plain http is allowed only to localhost, 127.0.0.0/8 or ::1"
            )
        return cls(api_key=env.get("PARTNERO_API_KEY", "").strip() or None, api_url=url)


def is_local_host(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback: localhost, 127.0.0.0/8 or ::1."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host.rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UnknownProgram(ConfigurationError):
    """A program this deployment does not serve was asked for by name."""


@dataclass(frozen=True)
class Program:
    """One Partnero program this deployment serves: its name, the secrets its webhooks are signed
    with, its API key, its currency and its mappings."""

    name: str
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    partnero: PartneroApiSettings = field(default_factory=PartneroApiSettings)
    #: Salesforce gets this program's commission totals in it. None: the one most used.
    currency: str | None = None
    mappings_dir: Path = Path(DEFAULT_MAPPINGS_DIR)
    #: Whether PARTNERO_PROGRAMS named it (else it is the one program of a deployment that names none).
    named: bool = False

    def variable(self, what: str) -> str:
        """The variable that sets ``what`` (WEBHOOK_SECRET, API_KEY, CURRENCY, MAPPINGS_DIR) for it."""
        if not self.named:
            return "MAPPINGS_DIR" if what == _MAPPINGS else f"PARTNERO_{what}"
        return program_variable(self.name, what)

    def require_webhook_secret(self) -> tuple[str, ...]:
        """Its secrets; the web process cannot verify its deliveries without one."""
        if not self.webhook_secrets:
            raise ConfigurationError(
                f"{self.variable('WEBHOOK_SECRET')} is not set: it must hold the signing secret of program "
                f"{self.name}'s webhook (several may be given, separated by commas, while rotating)"
            )
        return self.webhook_secrets

    def require_api_key(self) -> str:
        """Its API key; the commands that call Partnero for it cannot work without one."""
        if not self.partnero.api_key:
            raise ConfigurationError(
                f"{self.variable('API_KEY')} is not set: create an API key in Partnero (program {self.name}'s "
                "Integration -> API page; one key belongs to one program) and set it"
            )
        return self.partnero.api_key


def program_variable(name: str, what: str) -> str:
    """PARTNERO_<NAME>_<what>: the name upper-cased, its dashes as underscores."""
    return f"PARTNERO_{name.upper().replace('-', '_')}_{what}"


def parse_programs(env: Mapping[str, str], api_url: str, mappings_dir: Path) -> tuple[Program, ...] | None:
    """The programs PARTNERO_PROGRAMS names, each with its own variables; None when it is unset
    (then the deployment serves one program, ``default``, from the unprefixed variables).

    Program ``default`` may be listed: it then reads PARTNERO_DEFAULT_*, else the unprefixed
    variables. A per-program variable for a program not listed, or an unprefixed one left over
    while ``default`` is not listed, stops start-up: a secret set under the wrong name would
    otherwise make every delivery a 401.
    """
    raw = env.get("PARTNERO_PROGRAMS", "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if raw.strip() and not names:
        raise ConfigurationError("PARTNERO_PROGRAMS holds only commas: name the programs, such as affiliate,friends")
    _check_stray_variables(env, names)
    if not names:
        return None
    for name in names:
        if not PROGRAM_NAME.fullmatch(name):
            raise ConfigurationError(
                "PARTNERO_PROGRAMS names programs in lower-case letters, digits and dashes (not first or last), "
                f"at most 40 characters each, such as affiliate,friends (got {name[:50]!r})")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigurationError(f"PARTNERO_PROGRAMS names {', '.join(twice)} more than once")
    return tuple(_program(env, name, api_url, mappings_dir) for name in names)


def _program(env: Mapping[str, str], name: str, api_url: str, mappings_dir: Path) -> Program:
    def value(what: str) -> str:
        own = env.get(program_variable(name, what), "")
        if name == DEFAULT_PROGRAM and not own.strip():
            return env.get("MAPPINGS_DIR" if what == _MAPPINGS else f"PARTNERO_{what}", "")
        return own

    return Program(
        name=name,
        webhook_secrets=parse_secrets(value(_SECRET), program_variable(name, _SECRET)),
        partnero=PartneroApiSettings(api_key=value(_KEY).strip() or None, api_url=api_url),
        currency=parse_currency(value(_CURRENCY), program_variable(name, _CURRENCY)),
        mappings_dir=Path(value(_MAPPINGS).strip()) if value(_MAPPINGS).strip() else mappings_dir,
        named=True,
    )


def _check_stray_variables(env: Mapping[str, str], names: list[str]) -> None:
    """Refuse per-program variables of programs PARTNERO_PROGRAMS does not name, and (while it
    names programs but not ``default``) the unprefixed ones only ``default`` reads."""
    listed = {program_variable(n, "X")[:-2] for n in names}
    for variable in sorted(env):
        found = _PROGRAM_VARIABLE.fullmatch(variable)
        if found and env[variable].strip() and f"PARTNERO_{found.group(1)}" not in listed:
            given = f"PARTNERO_PROGRAMS names {', '.join(names)}" if names else "PARTNERO_PROGRAMS is not set"
            raise ConfigurationError(
                f"{variable} is set but {given}: add the program to PARTNERO_PROGRAMS, or rename the "
                "variable for the program it belongs to")
    if names and DEFAULT_PROGRAM not in names:
        for what in PROGRAM_VARIABLES[:3]:  # MAPPINGS_DIR is every program's default
            if env.get(f"PARTNERO_{what}", "").strip():
                raise ConfigurationError(
                    f"PARTNERO_{what} is set but PARTNERO_PROGRAMS ({', '.join(names)}) does not name the default "
                    f"program: set it per program as PARTNERO_<NAME>_{what}, or add default to PARTNERO_PROGRAMS")


@dataclass(frozen=True)
class Settings:
    """Everything the processes need to know, read once at start."""

    webhook_secrets: tuple[str, ...] = ()
    database_url: str = DEFAULT_DATABASE_URL
    #: The longest a statement of this service waits on a lock (``sync.store.db.make_engine``).
    database_lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    redis_url: str = DEFAULT_REDIS_URL
    mappings_dir: Path = Path(DEFAULT_MAPPINGS_DIR)
    log_level: str = "INFO"
    #: "json" or "text"; None: JSON unless standard output is a terminal.
    log_format: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    #: The sweeper wakes a worker for pending rows nobody holds that have waited longer than this.
    sweep_after_seconds: int = 60
    salesforce: SalesforceSettings = field(default_factory=SalesforceSettings)
    #: The share of the org's daily API allowance the flushes may use (SALESFORCE_API_BUDGET).
    salesforce_api_budget: ApiBudget = field(default_factory=ApiBudget)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    #: The program's currency: Salesforce gets commission totals in it. None: the one most used.
    currency: str | None = None
    partnero: PartneroApiSettings = field(default_factory=PartneroApiSettings)
    #: The peers trusted to say a request's scheme (FORWARDED_ALLOW_IPS): addresses, networks or "*".
    forwarded_allow_ips: tuple[str, ...] = DEFAULT_FORWARDED_ALLOW_IPS
    #: An object with more records due than this goes to Salesforce in a Bulk API 2.0 job
    #: (SALESFORCE_BULK_THRESHOLD; 0: never).
    bulk_threshold: int = DEFAULT_BULK_THRESHOLD
    #: The programs PARTNERO_PROGRAMS names; None: one program, ``default``, made of
    #: ``webhook_secrets``, ``partnero``, ``currency`` and ``mappings_dir`` (see ``programs``).
    program_list: tuple[Program, ...] | None = None
    # -- the operator's alerts (sync.ops.alerts) --
    #: Where alerts go (ALERT_WEBHOOK_URL, a secret: its token is in it); None: alerts are off.
    alert_webhook_url: str | None = field(default=None, repr=False)
    #: The alert's body (ALERT_WEBHOOK_FORMAT): slack, teams or json.
    alert_webhook_format: str = DEFAULT_ALERT_FORMAT
    #: A condition that stands is told again after this long without a message (ALERT_REMIND_AFTER).
    alert_remind_after: timedelta = DEFAULT_ALERT_REMIND_AFTER
    #: Where the web process is reached from outside (PUBLIC_URL): alerts link to its /ops. None: no link.
    public_url: str | None = None
    #: Every variable whose name ends in _WEBHOOK_URL that is set, by name: the URLs the mappings'
    #: ``notify`` entries name. Secrets: never in repr, logs or errors.
    webhook_urls: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)

    @property
    def alerts_enabled(self) -> bool:
        """Whether ALERT_WEBHOOK_URL is set (else no alert is sent, and ``status`` says so)."""
        return bool(self.alert_webhook_url)

    @property
    def programs(self) -> tuple[Program, ...]:
        """Every program this deployment serves, in PARTNERO_PROGRAMS' order."""
        if self.program_list is not None:
            return self.program_list
        return (Program(DEFAULT_PROGRAM, self.webhook_secrets, self.partnero, self.currency, self.mappings_dir),)

    def program(self, name: str) -> Program | None:
        """The program called ``name``; None when this deployment serves none by that name."""
        return next((p for p in self.programs if p.name == name), None)

    def require_program(self, name: str) -> Program:
        """The program called ``name``, for a command asked for it by name (``--program``);
        ``UnknownProgram`` naming the programs served when there is none."""
        program = self.program(name)
        if program is None:
            served = ", ".join(p.name for p in self.programs)
            where = "PARTNERO_PROGRAMS names" if self.named_programs else "this deployment serves one program,"
            raise UnknownProgram(f"there is no program {name[:50]!r}: {where} {served}")
        return program

    @property
    def named_programs(self) -> bool:
        """Whether PARTNERO_PROGRAMS names the programs (else there is one, ``default``)."""
        return self.program_list is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        secrets = parse_secrets(env.get("PARTNERO_WEBHOOK_SECRET", ""))
        level, log_format = log_options(env)
        partnero = PartneroApiSettings.from_env(env)
        mappings_dir = Path(env.get("MAPPINGS_DIR", "").strip() or DEFAULT_MAPPINGS_DIR)
        return cls(
            webhook_secrets=secrets,
            database_url=normalize_database_url(
                env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
            ),
            database_lock_timeout=parse_lock_timeout(env.get("DATABASE_LOCK_TIMEOUT", "")),
            redis_url=_redis_url(env.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL),
            mappings_dir=mappings_dir,
            log_level=level,
            log_format=log_format,
            salesforce=SalesforceSettings.from_env(env),
            salesforce_api_budget=ApiBudget.parse(env.get("SALESFORCE_API_BUDGET", "")),
            dashboard=DashboardSettings.from_env(env),
            currency=parse_currency(env.get("PARTNERO_CURRENCY", "")),
            partnero=partnero,
            forwarded_allow_ips=forwarded_allow_ips(env),
            bulk_threshold=parse_bulk_threshold(env.get("SALESFORCE_BULK_THRESHOLD", "")),
            program_list=parse_programs(env, partnero.api_url, mappings_dir),
            **alert_settings(env),
            webhook_urls=webhook_urls(env),
        )

    def require_webhook_secret(self) -> tuple[str, ...]:
        """Every program's secrets; the web process cannot verify a program's deliveries without one."""
        return tuple(secret for program in self.programs for secret in program.require_webhook_secret())

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)

    def __repr__(self) -> str:  # never show the secrets
        return (
            f"Settings(webhook_secrets=<{len(self.webhook_secrets)} set>, "
            f"database_url={redact_url(self.database_url)!r}, "
            f"redis_url={redact_url(self.redis_url)!r}, mappings_dir={str(self.mappings_dir)!r}, "
            f"salesforce={self.salesforce.describe()!r}, "
            f"dashboard={'on' if self.dashboard.enabled else 'off'}, "
            f"partnero_api={self.partnero.api_url!r} ({'key set' if self.partnero.enabled else 'no key'}), "
            f"programs={[p.name for p in self.programs]!r}, "
            f"alerts={self.alert_webhook_format + ' webhook set' if self.alerts_enabled else 'off'})"
        )


def webhook_urls(env: Mapping[str, str]) -> dict[str, str]:
    """The variables named ``<NAME>_WEBHOOK_URL`` that are set (not blank), by name."""
    return {name: value.strip() for name, value in env.items()
            if name.endswith(WEBHOOK_URL_SUFFIX) and value.strip()}


#: What LOG_FORMAT may say (``sync.ops.logs`` writes each).
LOG_FORMATS = ("json", "text")


def log_options(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """LOG_LEVEL and LOG_FORMAT (None: JSON unless standard output is a terminal).

    Read on their own by gunicorn's logger, which is set up before the app.
    """
    env = os.environ if environ is None else environ
    level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigurationError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got {level!r})")
    log_format = env.get("LOG_FORMAT", "").strip().lower() or None
    if log_format is not None and log_format not in LOG_FORMATS:
        raise ConfigurationError(f"LOG_FORMAT must be {' or '.join(LOG_FORMATS)} (got {log_format!r})")
    return level, log_format


def forwarded_allow_ips(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """FORWARDED_ALLOW_IPS: the peers (IP addresses and networks, or ``*`` for any) whose
    ``X-Forwarded-Proto`` says a request's scheme; from any other peer the header is ignored.

    Read on its own by the gunicorn configuration, which hands it to gunicorn before the app
    exists.
    """
    env = os.environ if environ is None else environ
    raw = env.get("FORWARDED_ALLOW_IPS", "")
    peers = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not raw.strip():
        return DEFAULT_FORWARDED_ALLOW_IPS
    for peer in peers:
        if peer == "*":
            continue
        try:
            ipaddress.ip_network(peer)  # strict, as gunicorn reads it: 10.0.0.1/8 is a mistake
        except ValueError:
            raise ConfigurationError(
                "FORWARDED_ALLOW_IPS must be * or IP addresses and networks separated by commas, "
                f"such as 10.0.0.0/8,127.0.0.1 (got {peer!r})"
            ) from None
    if not peers:
        raise ConfigurationError(
            "FORWARDED_ALLOW_IPS holds only commas: set it to * or to the router's addresses or "
            "networks, or leave it unset to trust any peer"
        )
    return peers


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """A span of time written as a whole number and a unit: 45s, 30m, 12h, 90d, 2w."""
    found = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text.lower())
    if found is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 90d or 2w (units: s, m, h, d, w)")
    return timedelta(seconds=int(found[1]) * _UNITS[found[2]])


def alert_settings(env: Mapping[str, str]) -> dict[str, object]:
    """ALERT_WEBHOOK_URL, ALERT_WEBHOOK_FORMAT, ALERT_REMIND_AFTER and PUBLIC_URL, checked (a
    mistake stops start-up with a sentence naming the variable, never showing the URL)."""
    url = env.get("ALERT_WEBHOOK_URL", "").strip() or None
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        raise ConfigurationError("ALERT_WEBHOOK_URL must be an http(s) URL (its value is not shown: it is a secret)")
    format_ = env.get("ALERT_WEBHOOK_FORMAT", "").strip().lower() or DEFAULT_ALERT_FORMAT
    if format_ not in ALERT_FORMATS:
        raise ConfigurationError(f"ALERT_WEBHOOK_FORMAT must be one of {', '.join(ALERT_FORMATS)} "
                                 f"(got {format_[:20]!r})")
    raw = env.get("ALERT_REMIND_AFTER", "").strip()
    try:
        remind_after = parse_duration(raw) if raw else DEFAULT_ALERT_REMIND_AFTER
    except ValueError as exc:
        raise ConfigurationError(f"ALERT_REMIND_AFTER: {exc}") from None
    if remind_after.total_seconds() <= 0:
        raise ConfigurationError("ALERT_REMIND_AFTER must be longer than 0, e.g. 6h")
    public = env.get("PUBLIC_URL", "").strip().rstrip("/") or None
    if public is not None and (urlsplit(public).scheme not in ("http", "https") or not urlsplit(public).netloc):
        raise ConfigurationError(f"PUBLIC_URL must be the http(s) address the service is reached at, such as "
                                 f"https://sync.example.com (got {redact_url(public)[:80]!r})")
    return {"alert_webhook_url": url, "alert_webhook_format": format_, "alert_remind_after": remind_after,
            "public_url": public}


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(f"{name} must be true or false (got {raw!r})")


def parse_bulk_threshold(raw: str) -> int:
    """SALESFORCE_BULK_THRESHOLD: a whole number of records, 0 or more (0: no bulk jobs)."""
    raw = raw.strip()
    if not raw:
        return DEFAULT_BULK_THRESHOLD
    if not raw.isdigit():
        raise ConfigurationError(
            f"SALESFORCE_BULK_THRESHOLD must be a whole number of records (0 turns bulk jobs off), not {raw[:40]!r}")
    return int(raw)


def parse_currency(raw: str, variable: str = "PARTNERO_CURRENCY") -> str | None:
    """A program's currency (``variable``): a currency code as the ledger keeps it (upper case); None when unset."""
    code = raw.strip().upper()
    if not code:
        return None
    if not re.fullmatch(r"[A-Z0-9_]{1,16}", code):
        raise ConfigurationError(
            f"{variable} must be a currency code such as USD or EUR, as Partnero sends it in "
            f"amount_units (got {raw.strip()!r})"
        )
    return code


def parse_secrets(raw: str, variable: str = "PARTNERO_WEBHOOK_SECRET") -> tuple[str, ...]:
    """Comma-separated secrets (of ``variable``), blanks dropped; order kept (the first is the current one).

    A value made only of blanks and commas is a mistake (a template left unfilled, a stray
    comma), not "no secret": it raises ``ConfigurationError``.
    """
    secrets = tuple(s.strip() for s in raw.split(",") if s.strip())
    if raw and not secrets:
        raise ConfigurationError(
            f"{variable} holds only blanks and commas: set it to the webhook signing "
            "secret (several may be given, separated by commas, while rotating)"
        )
    return secrets


def parse_lock_timeout(value: str) -> float:
    """DATABASE_LOCK_TIMEOUT: seconds, more than 0 and at most 60; empty: the default."""
    value = value.strip()
    if not value:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 60:
        raise ConfigurationError(f"DATABASE_LOCK_TIMEOUT must be a number of seconds above 0 and at most 60 (got {value!r})")
    return seconds


def normalize_database_url(url: str) -> str:
    """Accept the PaaS form ``postgres://`` and pick the psycopg (v3) driver for PostgreSQL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"DATABASE_URL must look like postgresql://user@host/db or sqlite:///file.db "
            f"(got {redact_url(url)!r})"
        )
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("mysql", "mariadb"):
        return f"mysql+pymysql://{rest}"
    return url


def _redis_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"REDIS_URL must start with redis://, rediss:// or unix:// (got {redact_url(url)!r})"
        )
    return url


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"
