"""Mapping files cannot hurt the service: `mappings check` and `migrate` (real processes) refuse a
hostile file with file:line and no traceback, and what check accepts, at its limits, migrates,
previews and runs."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import sqlalchemy as sa

from sync.mapping.loader import MAX_DEPTH
from sync.mapping.spec import MAX_COLUMNS, MAX_EXPRESSION_LENGTH
from sync.partnero.samples import sample_delivery
from tests.conftest import MAPPINGS
from tests.test_processes import BIN, environment
from tests.unit.test_expression_bounds import doubled
from tests.warehouse_helpers import Pipe

PARTNER_HEAD = """\
entity: partner
events: [partner.created]
identity: data.id
warehouse:
  table: partners
  key: partner_id
  columns:
"""


HOSTILE = {
    "billion laughs": (
        PARTNER_HEAD + "    email: {from: data.email, transforms: [{default: &a [lol, lol, lol, lol, lol, lol, lol, "
        "lol, lol]}]}\n"
        + "".join(f"    c{n}: {{from: data.x, type: json, transforms: [{{default: &{n} [{', '.join([f'*{p}'] * 9)}]}}]}}\n"
                  for p, n in zip("abcdef", "bcdefg")),
        ":13: expands to more than 1,000,000 characters"),
    "nesting": (PARTNER_HEAD + "    email: {from: data.email, type: json, transforms: [{default: " + "[" * 50
                + "]" * 50 + "}]}\n", ":8: nested more than 20 levels deep"),
    "a number as a key": (PARTNER_HEAD + "    email: data.email\n    2: data.x\n", ":9: key '2' is not text"),
    "yes as a key": (PARTNER_HEAD + "    email: {from: data.email, transforms: [{map: {yes: 'y'}}]}\n",
                     ":8: key 'yes' is not text (YAML reads it as true/false)"),
    "an expression too long": (PARTNER_HEAD + "    email: \"data.e" + "x" * MAX_EXPRESSION_LENGTH + "\"\n",
                               ":8: warehouse.columns.email: expression longer than 500 characters"),
    "an expression too deep": (PARTNER_HEAD + "    email: \"" + " || ".join(["data.e"] * 40) + "\"\n",
                               ":8: warehouse.columns.email: expression nested more than 32 levels deep"),
    "an expression that multiplies": (PARTNER_HEAD + "    email: \"" + doubled(6) + "\"\n",
                                      ":8: warehouse.columns.email: expression can build a value 64 times the size of "
                                      "the delivery (at most 32)"),
    "too many columns": (PARTNER_HEAD + "".join(f"    c{i}: data.c{i}\n" for i in range(MAX_COLUMNS + 1)),
                         ":7: warehouse.columns: more than 200 columns"),
    "a bookkeeping column": (PARTNER_HEAD + "    sync_version: data.x\n",
                             ":8: warehouse.columns.sync_version: names starting with sync_ are kept for partnero-sync"),
    "a bookkeeping key": (PARTNER_HEAD.replace("key: partner_id", "key: sync_fingerprint") + "    email: data.email\n",
                          ":6: warehouse.key: names starting with sync_ are kept for partnero-sync"),
    "the key as a column": (PARTNER_HEAD + "    partner_id: data.other\n",
                            ":8: warehouse.columns.partner_id: duplicate column: the key column is filled from identity"),
    **{f"the table {name}": (PARTNER_HEAD.replace("table: partners", f"table: {name}") + "    email: data.email\n",
                             f":5: warehouse.table: {name} is partnero-sync's own table")
       for name in ("crm_outbox", "crm_commission_changes", "commission_entries", "webhook_events",
                    "partnero_sync_schema_version")},
    "a database's table": (PARTNER_HEAD.replace("table: partners", "table: pg_stats") + "    email: data.email\n",
                           ":5: warehouse.table: pg_stats: names starting with sqlite_ or pg_ belong to the database"),
}


@pytest.mark.parametrize("text, problem", HOSTILE.values(), ids=HOSTILE.keys())
def test_check_and_migrate_refuse_a_hostile_file_with_its_line_and_no_traceback(tmp_path, text, problem):
    directory = tmp_path / "mappings"
    directory.mkdir()
    path = directory / "partner.yml"
    path.write_text(text)
    env = environment(MAPPINGS_DIR=str(directory), DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    check = subprocess.run([str(BIN / "partnero-sync"), "mappings", "check"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 1
    assert f"{path}{problem}" in check.stderr, check.stderr
    migrate = subprocess.run([str(BIN / "partnero-sync"), "migrate"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert migrate.returncode == 2
    assert migrate.stderr.startswith("partnero-sync: configuration error: ") and f"{path}{problem}" in migrate.stderr
    for output in (check.stdout + check.stderr, migrate.stdout + migrate.stderr):
        assert "Traceback" not in output
    assert not (tmp_path / "x.db").exists()  # refused before the database was opened


def test_preview_refuses_an_expression_that_multiplies_at_once(tmp_path):
    """An identity that writes out 64 copies of the delivery, refused before any is built."""
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, directory)
    path = directory / "partner.yml"
    path.write_text(path.read_text().replace("identity: data.id", f"identity: \"to_string({doubled(6)})\""))
    saved = tmp_path / "delivery.json"
    saved.write_text(json.dumps(sample_delivery("partner.created", filler="f" * 500_000)))
    env = environment(MAPPINGS_DIR=str(directory))
    preview = subprocess.run([str(BIN / "partnero-sync"), "mappings", "preview", str(saved)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert preview.returncode == 2
    assert f"{path}:" in preview.stderr and ": identity: expression can build a value 384 times the size of the " \
        "delivery (at most 32)" in preview.stderr
    assert "Traceback" not in preview.stderr


def test_a_file_at_the_limits_is_accepted_and_migrates_previews_and_runs(tmp_path, database_url, redis_server_url):
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, directory)
    fields = ", ".join(f"data.f{i}" for i in range(80))
    wide = f"[{fields}]"[:MAX_EXPRESSION_LENGTH - 1] + "]"
    wide = wide[:wide.rfind(",")] + "]"
    deep = " || ".join(["data.missing"] * 30 + ["data.key"])
    columns = "".join(f"    c{i}: data.c{i}\n" for i in range(MAX_COLUMNS - 4))
    nested = "{default: " + "[" * (MAX_DEPTH - 7) + "x" + "]" * (MAX_DEPTH - 7) + "}"
    table = {f"k{i}": f"v{i}" for i in range(2000)}
    (directory / "partner.yml").write_text(
        PARTNER_HEAD.replace("table: partners", "table: wide_partners")
        + f"    wide: {{from: \"{wide}\", type: json}}\n"
        + f"    deep: \"{deep}\"\n"
        + f"    nested: {{from: data.none, type: json, transforms: [{nested}]}}\n"
        + f"    mapped: {{from: data.status, transforms: [{{map: {json.dumps(table)}}}]}}\n"
        + columns
    )
    env = environment(MAPPINGS_DIR=str(directory), DATABASE_URL=database_url, REDIS_URL=redis_server_url)
    check = subprocess.run([str(BIN / "partnero-sync"), "mappings", "check"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr
    migrate = subprocess.run([str(BIN / "partnero-sync"), "migrate"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    assert "created table wide_partners" in migrate.stdout

    delivery = sample_delivery("partner.created", status="k7", **{f"c{i}": i for i in range(MAX_COLUMNS - 4)})
    saved = tmp_path / "delivery.json"
    saved.write_text(json.dumps(delivery))
    preview = subprocess.run([str(BIN / "partnero-sync"), "mappings", "preview", str(saved)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert preview.returncode == 0, preview.stderr
    assert "warehouse wide_partners: upsert partner_id = 'ptn_8c1e6f0a'" in preview.stdout

    pipe = Pipe(database_url)
    from sync.mapping import load_mappings
    from sync.pipeline.processor import Processor
    from sync.store.schema import RESERVED_TABLES
    from sync.store.warehouse import Warehouse

    pipe.mappings = load_mappings(directory, RESERVED_TABLES)
    pipe.warehouse = Warehouse(pipe.mappings)
    pipe.processor = Processor(pipe.engine, pipe.inbox, pipe.mappings, pipe.warehouse)
    try:
        assert pipe.deliver(delivery) == ["processed"]
        row = pipe.row("wide_partners", "ptn_8c1e6f0a")
    finally:  # leave the shared database as the other tests expect it
        with pipe.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE wide_partners"))
    assert row["mapped"] == "v7" and row["deep"] == "maria-tech" and row[f"c{MAX_COLUMNS - 5}"] == str(MAX_COLUMNS - 5)
    assert row["nested"] is not None and row["wide"] == [None] * len(row["wide"])
