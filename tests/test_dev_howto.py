"""`partnero-sync dev` says how to send a signed delivery without ever printing a configured secret."""

from __future__ import annotations

import hashlib
import hmac
import shlex
import subprocess

from sync import local

URL = "http://127.0.0.1:5000/webhooks/partnero"


def howto(capsys, secret: str) -> str:
    local._print_howto(URL, secret)
    return capsys.readouterr().out


def test_a_configured_secret_is_never_printed(capsys):
    secret = "whsec-configured-7f3a9c"
    text = howto(capsys, secret)
    assert "send-test" in text and "curl" in text
    assert secret not in text
    assert "PARTNERO_WEBHOOK_SECRET" in text  # where the commands read it from instead


def test_the_printed_command_signs_with_the_configured_secret(capsys):
    """The curl line's signature step, run in a shell with the variable set (a list, as it may be),
    gives the signature the receiver checks: Partnero's HMAC-SHA256 of the body with the first secret."""
    text = howto(capsys, "whsec-first")
    sig_line = next(line.strip() for line in text.splitlines() if line.strip().startswith("sig="))
    body = '{"event":"partner.created"}'
    run = subprocess.run(["/bin/sh", "-c", f"body={shlex.quote(body)}; {sig_line}; printf %s \"$sig\""],
                         env={"PARTNERO_WEBHOOK_SECRET": "whsec-first,whsec-older", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True)
    assert run.stdout == hmac.new(b"whsec-first", body.encode(), hashlib.sha256).hexdigest()


def test_the_development_secret_is_shown(capsys):
    text = howto(capsys, local.DEV_SECRET)
    assert f"PARTNERO_WEBHOOK_SECRET={local.DEV_SECRET}" in text
    assert shlex.quote(local.DEV_SECRET) in text
