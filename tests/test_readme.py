"""The README's commands are the contract with a newcomer: keep them true."""

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

    example = next(b for b in _blocks("yaml") if b.startswith("ledger:"))
    shipped = yaml.safe_load((ROOT / "mappings" / "transaction.yml").read_text())
    assert yaml.safe_load(example)["ledger"] == shipped["ledger"]


def test_the_readme_commission_query_agrees_with_the_ledger(pg_url):
    import sqlalchemy as sa

    from sync.samples import sample_delivery
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
        owed = {partner: amount.normalize() for partner, amount in conn.execute(sa.text(query))}
    assert owed == pipe.owed() == {"ptn_8c1e6f0a": __import__("decimal").Decimal("47.2")}


def test_the_readme_salesforce_example_is_a_valid_section(tmp_path):
    from sync.mapping import load_mappings

    example = next(b for b in _blocks("yaml") if b.startswith("salesforce:"))
    customer = (ROOT / "mappings" / "customer.yml").read_text().split("\nsalesforce:")[0]
    (tmp_path / "customer.yml").write_text(customer + "\n" + example)
    [mapping] = load_mappings(tmp_path).mappings
    assert mapping.salesforce.object == "Account"
    assert [r.name for r in mapping.salesforce.references] == ["Partnero_Partner__r"]
