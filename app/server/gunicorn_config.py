"""gunicorn settings for the web process (``--config python:app.server.gunicorn_config``).

Threads let concurrent requests share one inbox commit (see ``sync.pipeline.intake``); the numbers were
chosen by measurement (bench/README.md). WEB_CONCURRENCY, gunicorn's own variable, sets the
number of processes. Requests are read whole before a thread takes them
(``app.server.gunicorn_worker``), so slow clients cannot hold the threads.

Behind a TLS-terminating router the scheme a browser used arrives as ``X-Forwarded-Proto``:
gunicorn believes it from the peers FORWARDED_ALLOW_IPS names (``sync.settings``; default any,
as a PaaS's router is the only way in), and the app then sees ``https`` where the browser did.
gunicorn's control socket (for ``gunicornc``) is off: by default every instance on a machine
would share one path, and one stopping would delete another's socket. Each web worker runs the
monitor (``sync.ops.monitor``), started by the ``post_worker_init`` hook.
"""

import logging.config
import sys

from gunicorn.glogging import Logger

from sync.core.errors import ConfigurationError
from sync.ops import logs
from sync.settings import forwarded_allow_ips as trusted_peers
from sync.settings import log_options


def _configured(read):
    """``read()``; a mistake in the environment is one line on stderr and exit status 2, said
    before any logger exists, as the CLI says it."""
    try:
        return read()
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


worker_class = "app.server.gunicorn_worker.ReadAheadWorker"
threads = 16
# Partnero waits five seconds for an answer; a request still running after 30 s is stuck.
timeout = 30
graceful_timeout = 25
keepalive = 5
accesslog = None
# The read-ahead frames HTTP/1.1 requests; HTTP/2 would bypass it.
http_protocols = "h1"
# Named here from our settings, not left to gunicorn's own reading of the variable.
forwarded_allow_ips = ",".join(_configured(trusted_peers))
# Only the scheme is taken from them: the app is served at the root, so no header may move it
# (gunicorn would otherwise take SCRIPT_NAME and PATH_INFO from a trusted peer's headers).
forwarder_headers = ""
control_socket_disable = True


class GunicornLogger(Logger):
    """gunicorn's logger, with its lines and the app's in our format (LOG_FORMAT, LOG_LEVEL)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        level, log_format = _configured(log_options)
        logging.config.dictConfig(logs.gunicorn_logconfig(level, log_format))


logger_class = GunicornLogger


def on_starting(server) -> None:
    """Check the configuration once, in the master: a mistake is one line and exit status 2,
    not a traceback from every worker that tries to boot."""
    from app import check_configuration

    try:
        check_configuration()
    except ConfigurationError as exc:
        server.log.error("configuration error: %s", exc)
        sys.exit(2)


# -- the monitor (sync.ops.monitor): the operator's alerts, one thread per web worker --


def post_worker_init(worker) -> None:
    """Start this web worker's monitor (gunicorn's hook, not ``create_app``: the tests build apps
    by the hundred); one process of all of them sends, whichever holds the lease."""
    from sync.ops import monitor

    services = worker.app.wsgi().extensions["partnero"]  # the loaded app (gunicorn keeps it)
    worker.partnero_monitor = monitor.start(services)


def worker_exit(server, worker) -> None:
    """Stop the monitor and give its lease up, so another process sends without waiting for it to expire."""
    watching = getattr(worker, "partnero_monitor", None)
    if watching is not None:
        watching.stop(timeout=5)
