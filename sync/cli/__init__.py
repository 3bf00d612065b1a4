"""The ``partnero-sync`` command: the group and its shared parts in ``base``, the commands in one
module per concern, each adding its own to the group. At the top of the layers: it may import any of
them, and ``sync.local``."""

from sync.cli import alerts, crm_setup, deliveries, partnero, salesforce, service  # noqa: F401 - each adds its commands
from sync.cli.base import main

__all__ = ["main"]
