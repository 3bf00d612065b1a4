"""The ``partnero-sync`` group, and what its commands share: settings, errors as one line, dates
and durations."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta, timezone

import click

from sync.core.errors import ConfigurationError, SyncError, caused_by
from sync.ops import logs
from sync.ops.terminal import safe
from sync.settings import Settings, UnknownProgram, parse_duration, redact_url

#: Where ``load_settings`` leaves the settings, so an error line can name the database or Redis.
_SETTINGS = "partnero_sync.settings"


class _Group(click.Group):
    """Turns the failures an operator can expect into one clear line, never a traceback:
    configuration problems exit 2; a database or Redis that cannot be reached, a missing schema
    and the refusals partnero-sync raises on purpose exit 1. Anything else is a bug and keeps
    its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            click.echo(f"partnero-sync: configuration error: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:
            message = explain(exc, ctx.meta.get(_SETTINGS))
            if message is None:
                raise
            # It may carry what Salesforce or Partnero said: kept to one line, escape sequences shown.
            click.echo(f"partnero-sync: {safe(message)}", err=True)
            sys.exit(1)


def explain(exc: BaseException, settings: Settings | None = None) -> str | None:
    """One line for an expected failure (the database or Redis away, the schema missing, an error
    partnero-sync raised on purpose); None for anything else. Never shows a statement's
    parameters or a password."""
    import redis

    from sync.store import db

    message = db.explain(exc)
    if message is not None:
        return message + (f" (DATABASE_URL {redact_url(settings.database_url)})" if settings else "")
    unreachable = caused_by(exc, redis.RedisError)
    if unreachable is not None:
        message = str(exc) if isinstance(exc, SyncError) else f"Redis unavailable: {db.describe_error(unreachable)}"
        return message + (f" (REDIS_URL {redact_url(settings.redis_url)})" if settings else "")
    if isinstance(exc, SyncError):
        return str(exc)
    return None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """partnero-sync: Partnero webhooks into Salesforce and a SQL warehouse.

    Configured from the environment: PARTNERO_WEBHOOK_SECRET, DATABASE_URL (default
    sqlite:///partnero-sync.db), REDIS_URL (default redis://localhost:6379/0), MAPPINGS_DIR
    (default mappings), LOG_LEVEL (default INFO), SALESFORCE_* for the CRM sync (none set: only
    the warehouse is synced), and PARTNERO_API_KEY (with PARTNERO_API_URL) for the commands that
    call Partnero's REST API (backfill, reconcile, webhooks). Several Partnero programs:
    PARTNERO_PROGRAMS=affiliate,friends, then PARTNERO_<NAME>_WEBHOOK_SECRET, _API_KEY, _CURRENCY
    and _MAPPINGS_DIR per program. docs/configuration.md explains each.

    Exit status: 0 done; 1 the command failed (the database or Redis could not be reached, the
    schema is missing, or what the command reports); 2 bad arguments or configuration. `status`
    has its own: 0 healthy, 1 needs attention, 2 cannot tell.
    """


def load_settings() -> Settings:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    click.get_current_context().meta[_SETTINGS] = settings
    return settings


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx) -> timedelta:
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()
DATE = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


def utc(when: datetime | None) -> datetime | None:
    """A date given on the command line, read as UTC."""
    return when.replace(tzinfo=timezone.utc) if when else None


def served_program(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--program``'s value: a program this deployment serves (those PARTNERO_PROGRAMS names;
    without it, ``default``); None when the option is not given. Another name is a usage error
    (exit status 2) that lists the programs served."""
    if value is None:
        return None
    try:
        return load_settings().require_program(value).name
    except UnknownProgram as exc:
        raise click.BadParameter(str(exc)) from None
