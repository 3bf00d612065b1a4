"""gunicorn settings for the web process (``--config python:app.gunicorn_config``).

Threads let concurrent requests share one inbox commit (see ``sync.intake``); the numbers were
chosen by measurement (bench/README.md). WEB_CONCURRENCY, gunicorn's own variable, sets the
number of processes. Requests are read whole before a thread takes them
(``app.gunicorn_worker``), so slow clients cannot hold the threads.
"""

import logging.config
import sys

from gunicorn.glogging import Logger

from sync import logs
from sync.errors import ConfigurationError
from sync.settings import log_options

worker_class = "app.gunicorn_worker.ReadAheadWorker"
threads = 16
# Partnero waits five seconds for an answer; a request still running after 30 s is stuck.
timeout = 30
graceful_timeout = 25
keepalive = 5
accesslog = None
# The read-ahead frames HTTP/1.1 requests; HTTP/2 would bypass it.
http_protocols = "h1"


class GunicornLogger(Logger):
    """gunicorn's logger, with its lines and the app's in our format (LOG_FORMAT, LOG_LEVEL)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        try:
            level, log_format = log_options()
        except ConfigurationError as exc:  # before any logger: one line on stderr, as the CLI says it
            print(f"configuration error: {exc}", file=sys.stderr)
            sys.exit(2)
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
