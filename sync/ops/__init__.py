"""What an operator sees: logs, metrics, progress, text safe for a terminal, and the read models behind
``status``, ``/healthz``, ``/ops``, ``/metrics``, ``ledger`` and ``mappings preview``. Imports sync.store
and the layers below it."""
