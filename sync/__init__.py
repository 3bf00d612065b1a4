"""partnero-sync's service, in layers that import only downward: cli and local, services, worker,
partnero, pipeline, salesforce, ops, store, rules, settings, mapping, core."""
