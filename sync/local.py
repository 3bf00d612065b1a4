"""``partnero-sync dev``: the whole service on one machine, on embedded defaults."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys

import click
import redis

from sync.settings import Settings, redact_url
from sync.worker import queues

log = logging.getLogger(__name__)

#: Used when PARTNERO_WEBHOOK_SECRET is unset, and only by ``dev``: never in production.
DEV_SECRET = "partnero-dev-secret"


def run_dev(settings: Settings, host: str, port: int) -> None:
    if not settings.webhook_secrets:
        settings = settings.with_overrides(webhook_secrets=(DEV_SECRET,))
        os.environ["PARTNERO_WEBHOOK_SECRET"] = DEV_SECRET  # for the child processes below
        click.echo(f"PARTNERO_WEBHOOK_SECRET is not set: using the development secret {DEV_SECRET!r}")

    from sync.services import Services

    done = Services.build(settings, redis_connection=queues.connect(settings.redis_url)).migrate()
    click.echo(f"database: {redact_url(settings.database_url)}")
    for line in done:
        click.echo(f"  {line}")
    url = f"http://{host}:{port}/webhooks/partnero"
    if _redis_answers(settings.redis_url):
        click.echo(f"redis: {redact_url(settings.redis_url)}")
        _print_howto(url, settings.webhook_secrets[0])
        _run_processes(host, port)
    else:
        click.echo(
            f"redis: nothing answers at {redact_url(settings.redis_url)}; using an in-process "
            "stand-in (one process, queue lost on exit). Production needs a real REDIS_URL."
        )
        _print_howto(url, settings.webhook_secrets[0])
        _run_in_process(settings, host, port)


def _redis_answers(url: str) -> bool:
    try:
        return bool(queues.connect(url).ping())
    except redis.RedisError:
        return False


def _print_howto(url: str, secret: str) -> None:
    """How to send a signed test delivery. The development secret is shown; a configured one
    never is: the commands read it from PARTNERO_WEBHOOK_SECRET instead."""
    if secret == DEV_SECRET:
        env, key = f"PARTNERO_WEBHOOK_SECRET={DEV_SECRET} ", shlex.quote(DEV_SECRET)
    else:
        env, key = "", '"${PARTNERO_WEBHOOK_SECRET%%,*}"'
    click.echo(
        "\nReceiver: " + url + "\n"
        "Send a signed test delivery from another terminal:\n"
        f"    {env}.venv/bin/partnero-sync send-test --url {url}\n"
        "or with curl:\n"
        "    body='{\"event\":\"partner.created\",\"created_at\":\"2026-03-14T10:15:31.000000Z\","
        "\"data\":{\"id\":\"ptn_1\",\"email\":\"maria@example.com\"}}'\n"
        f"    sig=$(printf %s \"$body\" | openssl dgst -sha256 -hmac {key} | sed 's/^.* //')\n"
        f"    curl -i -X POST {url} -H \"Signature: $sig\" -H 'Content-Type: application/json' "
        "--data-binary \"$body\"\n"
        "Then: .venv/bin/partnero-sync status\n"
        + ("" if secret == DEV_SECRET else
           "(They sign with the secret in PARTNERO_WEBHOOK_SECRET, the first of a list: set it in that "
           "terminal too. It is not printed.)\n")
    )


def _run_processes(host: str, port: int) -> None:
    """Web (gunicorn) and worker as child processes, as the Procfile runs them."""
    bin_dir = os.path.dirname(sys.executable)
    commands = [
        [os.path.join(bin_dir, "gunicorn"), "app:create_app()", "--config", "python:app.server.gunicorn_config",
         "--bind", f"{host}:{port}"],
        [os.path.join(bin_dir, "partnero-sync"), "worker"],
    ]
    children = [subprocess.Popen(command) for command in commands]
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while all(child.poll() is None for child in children):
            try:
                children[0].wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            child.wait(timeout=30)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run_in_process(settings: Settings, host: str, port: int) -> None:
    """Web in the main thread and a worker in another (``sync.worker.process.run_in_thread``),
    sharing one in-memory Redis; the worker stops when the web server does, after the job in hand."""
    import fakeredis
    from werkzeug.serving import make_server

    from app import create_app
    from sync.services import Services
    from sync.worker.process import run_in_thread

    connection = fakeredis.FakeRedis()
    server = make_server(host, port, create_app(settings, redis_connection=connection), threaded=True)
    stop_worker = run_in_thread(Services.build(settings, connection), sweep_every=5)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop_worker()
