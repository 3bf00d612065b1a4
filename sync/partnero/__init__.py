"""Partnero's REST API: the client (``api``) and what partnero-sync does with it: backfill,
reconciliation, both through ``resync``; the webhook subscriptions (``webhooks``); and sample
deliveries (``samples``). Imports sync.pipeline and the layers below it."""
