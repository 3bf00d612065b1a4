"""Backfill runs: at most one unfinished run of the same lists and ``since``. ``open_scope`` holds
which lists, from when, while a run is not over, under a UNIQUE index (NULLs, the runs that are
over, do not collide on any of SQLite, PostgreSQL, MariaDB): of two backfills started at the same
moment only one can insert its run.

Runs that are not over get their scope; where an earlier race left several of the same scope, the
newest keeps it and the older ones are marked abandoned (the newest is the one a backfill resumed).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from sync.store.runs import OVER, RunStatus, scope
from sync.store.sqltypes import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

INDEX = "ux_backfill_runs_open_scope"

_runs = sa.table(
    "backfill_runs",
    sa.column("id", sa.Integer),
    sa.column("entities", sa.String),
    sa.column("since", UTCDateTime()),
    sa.column("status", sa.String),
    sa.column("last_error", sa.Text),
    sa.column("open_scope", sa.String),
)


def upgrade() -> None:
    op.add_column("backfill_runs", sa.Column("open_scope", sa.String(160)))
    conn = op.get_bind()
    rows = conn.execute(sa.select(_runs.c.id, _runs.c.entities, _runs.c.since)
                        .where(_runs.c.status.not_in(OVER)).order_by(_runs.c.id.desc())).all()
    taken: set[str] = set()
    for run_id, entities, since in rows:
        key = scope(tuple(entities.split(",")), since)
        if key in taken:
            conn.execute(_runs.update().where(_runs.c.id == run_id).values(
                status=RunStatus.ABANDONED, last_error="replaced by a newer run of the same lists (migration 0009)"))
        else:
            conn.execute(_runs.update().where(_runs.c.id == run_id).values(open_scope=key))
            taken.add(key)
    op.create_index(INDEX, "backfill_runs", ["open_scope"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="backfill_runs")
    with op.batch_alter_table("backfill_runs") as batch:
        batch.drop_column("open_scope")
