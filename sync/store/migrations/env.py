"""Alembic's entry point for partnero-sync's fixed tables; run by ``sync.store.schema.migrate``.

The connection comes from the caller, who holds the migration lock on it.
"""

from alembic import context

from sync.store.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `partnero-sync migrate`, which connects and takes the lock")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it: Alembic's batch mode does that for us.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
