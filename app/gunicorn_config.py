"""gunicorn settings for the web process (``--config python:app.gunicorn_config``).

Threads let concurrent requests share one inbox commit (see ``sync.intake``); the numbers were
chosen by measurement (bench/README.md). WEB_CONCURRENCY, gunicorn's own variable, sets the
number of processes.
"""

import logging.config

from gunicorn.glogging import Logger

from sync import logs
from sync.settings import log_options

worker_class = "gthread"
threads = 16
# Partnero waits five seconds for an answer; a request still running after 30 s is stuck.
timeout = 30
graceful_timeout = 25
keepalive = 5
accesslog = None


class GunicornLogger(Logger):
    """gunicorn's logger, with its lines and the app's in our format (LOG_FORMAT, LOG_LEVEL)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        level, log_format = log_options()
        logging.config.dictConfig(logs.gunicorn_logconfig(level, log_format))


logger_class = GunicornLogger
