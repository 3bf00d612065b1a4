"""The README's commands are the contract with a newcomer: keep them true."""

from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SETUP = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
RUN = f"{SETUP} && .venv/bin/partnero-sync dev"
TEST = f"{SETUP} && .venv/bin/pytest"


def test_the_readme_gives_the_two_commands():
    assert f"\n{RUN}\n" in README
    assert f"\n{TEST}\n" in README


def test_ci_runs_exactly_the_readme_test_command():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TEST in lines


def test_the_readme_shows_the_procfile_as_it_is():
    assert (ROOT / "Procfile").read_text() in README


def _blocks(language: str) -> list[str]:
    import re

    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_readme_mapping_example_is_a_valid_mapping(tmp_path):
    from sync.mapping import load_mappings

    example = next(b for b in _blocks("yaml") if b.startswith("# yaml-language-server"))
    (tmp_path / "partner.yml").write_text(example)
    [mapping] = load_mappings(tmp_path).mappings
    assert mapping.warehouse.table == "partners"


def test_the_readme_ledger_example_matches_the_shipped_one():
    import yaml

    example = yaml.safe_load(next(b for b in _blocks("yaml") if b.startswith("ledger:")))["ledger"]
    shipped = yaml.safe_load((ROOT / "mappings" / "transaction.yml").read_text())["ledger"]
    # book_on is no longer needed (every state that is not a delete tells the rewards), and
    # key and is_currency are optional: an example may leave them out, never differ.
    example.pop("book_on", None)
    assert example and {name: shipped.get(name) for name in example} == example


def test_the_readme_commission_query_agrees_with_the_ledger(pg_url):
    import sqlalchemy as sa

    from sync.partnero.samples import sample_delivery
    from tests.conftest import empty_tables
    from tests.warehouse_helpers import Pipe, envelope

    empty_tables(pg_url)
    pipe = Pipe(pg_url)
    second = {"key": "t2", "partner": "ptn_8c1e6f0a", "amount": 10, "amount_units": "USD",
              "rewards": [{"partner": "ptn_8c1e6f0a", "amount": 2.5, "amount_units": "USD", "status": "ok"},
                          {"partner": "ptn_x", "amount": 1.25, "amount_units": "USD", "status": "rejected"}]}
    pipe.deliver(sample_delivery("transaction.created"), envelope("transaction.created", "2026-03-15T00:00:00Z", **second))
    [query] = _blocks("sql")
    with pipe.engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(sa.text(query))]
    # Each row it gives (per partner, and per currency when it says) is the ledger's owed.
    view = pipe.totals()
    for row in rows:
        [(key, totals)] = [(k, t) for k, t in view.items() if k[0] == row["partner_id"]
                           and row.get("currency", k[1]) == k[1] and k[2]]
        assert Decimal(row["owed"]).normalize() == totals["owed"], row
    assert {row["partner_id"] for row in rows} >= {"ptn_8c1e6f0a"}
    assert pipe.owed()["ptn_8c1e6f0a"] == Decimal("47.2")


def test_the_readme_salesforce_example_is_a_valid_section(tmp_path):
    from sync.mapping import load_mappings

    example = next(b for b in _blocks("yaml") if b.startswith("salesforce:"))
    customer = (ROOT / "mappings" / "customer.yml").read_text().split("\nsalesforce:")[0]
    (tmp_path / "customer.yml").write_text(customer + "\n" + example)
    [mapping] = load_mappings(tmp_path).mappings
    assert mapping.salesforce.object == "Account"
    assert [r.name for r in mapping.salesforce.references] == ["Partnero_Partner__r"]


def test_every_test_the_readme_names_exists():
    import re

    named = re.findall(r"(tests/[\w/]+\.py)::(\w+)", README)
    assert len(named) >= 20  # the Guarantees section names the test behind each promise
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M)]
    assert not missing, missing
