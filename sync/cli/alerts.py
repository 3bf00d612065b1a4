"""``partnero-sync alerts test``: a test alert sent to ALERT_WEBHOOK_URL now, its outcome printed."""

from __future__ import annotations

import sys

import click

from sync.cli.base import load_settings, main


@main.group()
def alerts() -> None:
    """The operator's alerts (ALERT_WEBHOOK_URL): see docs/operating.md, Alerts."""


@alerts.command("test")
def test() -> None:
    """Send a test alert now and print how the endpoint answered (never its URL). It is recorded
    as the last alert sent, which `status` shows. Exit status 1 when it was not taken or alerts
    are off (ALERT_WEBHOOK_URL is not set)."""
    from sync.ops.alerts import send_test
    from sync.services import Services
    from sync.store.alerts import AlertStore

    settings = load_settings()
    if not settings.alerts_enabled:
        click.echo("alerts are off: ALERT_WEBHOOK_URL is not set", err=True)
        sys.exit(1)
    services = Services.build(settings)
    ok, outcome = send_test(AlertStore(services.inbox.engine), settings, services.clock())
    click.echo(f"test alert ({settings.alert_webhook_format}): {outcome}")
    sys.exit(0 if ok else 1)
