"""Partnero's REST API: its client, and what partnero-sync does with it (backfill, reconcile,
webhook subscriptions)."""
