"""Logging set-up shared by the web, the worker and the CLI."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "INFO") -> None:
    """Log to stderr at ``level`` unless the host (gunicorn, pytest) already set up handlers."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
    logging.getLogger("sync").setLevel(level)
    logging.getLogger("app").setLevel(level)
