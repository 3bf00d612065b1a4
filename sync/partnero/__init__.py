"""Partnero's REST API: the client (``api``) and the webhook subscriptions it manages (``webhooks``)."""
