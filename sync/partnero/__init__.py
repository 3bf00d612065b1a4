"""Partnero's REST API: the client (``api``), and what partnero-sync does with it: backfill
(``backfill``, ``runs``), reconciliation (``reconcile``, ``drift``), both through ``listed`` and
``resync``; and the webhook subscriptions (``webhooks``)."""
