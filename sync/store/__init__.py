"""The only code that speaks SQL: the engine, the schema and its migrations, and one adapter per table
(inbox, warehouse, ledger, outbox, backfill runs). Imports only sync.settings, rules, mapping, core."""
