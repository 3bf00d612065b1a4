"""The commission ledger through the real processor, on SQLite, PostgreSQL and MariaDB: each reward
follows its newest state, adjustments are only ever added, the partner_commissions view adds up
exactly, money and points stay apart, and currencies are never added together."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
import sqlalchemy as sa

from sync.partnero.samples import TRANSACTION
from tests.warehouse_helpers import Pipe, envelope

PARTNER = "ptn_8c1e6f0a"
KEY = TRANSACTION["key"]


@pytest.fixture
def pipe(warehouse_url) -> Pipe:
    return Pipe(warehouse_url)


def sale(event: str, sent_at: str, txn: str = KEY, transaction: dict | None = None, **reward) -> dict:
    """A state of transaction ``txn`` whose one reward is the sample's with ``reward``'s changes
    (it carries the transaction's key, as Partnero's rewards do, unless given its own)."""
    rewards = [{**TRANSACTION["rewards"][0], "key": txn, **reward}]
    return envelope(event, sent_at, **{**TRANSACTION, "key": txn, "rewards": rewards, **(transaction or {})})


def moves(pipe: Pipe) -> list[tuple]:
    """Each entry as (type, partner, amount, currency, standing, status)."""
    return [(e["entry_type"], e["partner_id"], e["amount"], e["currency"], e["standing"], e["reward_status"])
            for e in pipe.entries()]


def sums(approved=0, pending=0, rejected=0, reversed=0) -> dict[str, Decimal]:
    found = {"approved": Decimal(str(approved)), "pending": Decimal(str(pending)),
             "rejected": Decimal(str(rejected)), "reversed": Decimal(str(reversed))}
    return {**found, "owed": found["approved"] + found["pending"]}


def test_approved_after_review(pipe):
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z", status="review_period"))
    assert pipe.totals() == {(PARTNER, "USD", True): sums(pending="44.7")}
    pipe.deliver(sale("transaction.updated", "2026-04-13T10:15:31Z", status="ok"))
    assert pipe.totals() == {(PARTNER, "USD", True): sums(approved="44.7")}
    # Nothing is edited: the pending commission moves to approved.
    assert moves(pipe) == [
        ("commission", PARTNER, Decimal("44.7"), "USD", "pending", "review_period"),
        ("adjustment", PARTNER, Decimal("-44.7"), "USD", "pending", "review_period"),
        ("adjustment", PARTNER, Decimal("44.7"), "USD", "approved", "ok"),
    ]


def test_rejected_after_approval(pipe):
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z", status="ok"),
                 sale("transaction.updated", "2026-03-20T00:00:00Z", status="rejected"))
    assert pipe.totals() == {(PARTNER, "USD", True): sums(rejected="44.7")}
    assert pipe.owed() == {PARTNER: Decimal(0)}


def test_amount_corrected_is_one_delta(pipe):
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z", amount=44.7),
                 sale("transaction.updated", "2026-03-15T00:00:00Z", amount=40.05))
    assert pipe.totals() == {(PARTNER, "USD", True): sums(pending="40.05")}
    assert moves(pipe)[1:] == [("adjustment", PARTNER, Decimal("-4.65"), "USD", "pending", "review_period")]


def test_an_older_state_arriving_late_changes_nothing(pipe):
    newer = sale("transaction.updated", "2026-03-20T00:00:00Z", status="ok", amount=50)
    older = sale("transaction.created", "2026-03-14T10:15:31Z", status="review_period")
    pipe.deliver(newer, older, newer)
    assert pipe.totals() == {(PARTNER, "USD", True): sums(approved="50")}
    assert [m[0] for m in moves(pipe)] == ["commission"]


@pytest.mark.parametrize("late", ["2026-03-25T00:00:00Z", "2026-03-16T00:00:00Z"],
                         ids=["after-the-refund", "before-it"])
def test_refund_then_late_update_stays_reversed(pipe, late):
    refund = envelope("transaction.deleted", "2026-03-20T00:00:00Z", key=KEY)
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z"), refund)
    assert pipe.totals() == {(PARTNER, "USD", True): sums(reversed="44.7")}
    # A newer state after the refund: what is reversed follows it, and nothing becomes owed again.
    pipe.deliver(sale("transaction.updated", late, status="ok", amount=50), refund)
    assert pipe.totals() == {(PARTNER, "USD", True): sums(reversed="50")}
    assert {m[0] for m in moves(pipe)[1:]} == {"reversal"}


def test_a_refund_before_the_sale_converges_with_the_other_order(warehouse_url):
    states = [sale("transaction.created", "2026-03-14T10:15:31Z"),
              sale("transaction.updated", "2026-03-15T00:00:00Z", status="ok", amount=12.5),
              envelope("transaction.deleted", "2026-03-20T00:00:00Z", key=KEY, rewards=[])]
    found = []
    for order in (states, states[::-1], [states[2], states[0], states[1]]):
        pipe = Pipe(warehouse_url)
        pipe.reset()
        pipe.deliver(*order)
        found.append(pipe.totals())
    assert found == [{(PARTNER, "USD", True): sums(reversed="12.5")}] * 3


def test_a_reward_moved_to_another_partner(pipe):
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z"),
                 sale("transaction.updated", "2026-03-15T00:00:00Z", partner="ptn_other"))
    assert pipe.totals() == {(PARTNER, "USD", True): sums(), ("ptn_other", "USD", True): sums(pending="44.7")}
    assert pipe.owed() == {PARTNER: Decimal(0), "ptn_other": Decimal("44.7")}


def test_a_reward_with_its_own_key_keeps_its_identity_across_partners(pipe):
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z", key="rwd_1"),
                 sale("transaction.updated", "2026-03-15T00:00:00Z", key="rwd_1", partner="ptn_other"))
    assert {e["reward_ref"] for e in pipe.entries()} == {"rwd_1#1"}  # one reward, moved
    assert pipe.owed() == {PARTNER: Decimal(0), "ptn_other": Decimal("44.7")}


def test_a_reward_gone_from_the_newest_state_no_longer_stands(pipe):
    two = [{**TRANSACTION["rewards"][0]}, {**TRANSACTION["rewards"][0], "partner": "ptn_tier2", "amount": 5}]
    pipe.deliver(envelope("transaction.created", "2026-03-14T10:15:31Z", **{**TRANSACTION, "rewards": two}),
                 envelope("transaction.updated", "2026-03-15T00:00:00Z", **{**TRANSACTION, "rewards": two[:1]}))
    assert pipe.owed() == {PARTNER: Decimal("44.7"), "ptn_tier2": Decimal(0)}


def test_two_currencies_are_never_added_together(pipe):
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z"),
                 sale("transaction.created", "2026-03-15T10:15:31Z", txn="in_eur", amount_units="eur", amount=10,
                      transaction={"amount_units": "EUR"}))
    assert pipe.totals() == {(PARTNER, "USD", True): sums(pending="44.7"), (PARTNER, "EUR", True): sums(pending="10")}
    with pytest.raises(AssertionError, match="several currencies"):
        pipe.owed()


def test_points_rewards_are_kept_apart_from_money(pipe):
    # A points program says so on the transaction; a reward may also say it itself.
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z", amount=30, amount_units="USD"),
                 sale("transaction.created", "2026-03-15T10:15:31Z", txn="in_pts", amount=500, amount_units="points",
                      transaction={"is_currency": False}),
                 sale("transaction.created", "2026-03-16T10:15:31Z", txn="in_credit", amount=5, is_currency=False))
    assert pipe.totals() == {
        (PARTNER, "USD", True): sums(pending="30"),
        (PARTNER, "POINTS", False): sums(pending="500"),
        (PARTNER, "USD", False): sums(pending="5"),
    }
    assert pipe.owed() == {PARTNER: Decimal("30")}


@pytest.mark.parametrize("status", [None, "on_hold", ""], ids=["missing", "unknown", "empty"])
def test_a_missing_or_unknown_status_counts_as_pending(pipe, status):
    reward = {k: v for k, v in TRANSACTION["rewards"][0].items() if k != "status"}
    if status is not None:
        reward["status"] = status
    pipe.deliver(envelope("transaction.created", "2026-03-14T10:15:31Z", **{**TRANSACTION, "rewards": [reward]}))
    assert pipe.totals() == {(PARTNER, "USD", True): sums(pending="44.7")}
    assert pipe.entries()[0]["reward_status"] == status  # as Partnero sent it


def test_the_view_adds_up_exactly(pipe):
    # Sums a float would get wrong: 0.1 + 0.2, and a large amount plus a millionth.
    rewards = [{**TRANSACTION["rewards"][0], "amount": a, "status": s}
               for a, s in (("0.1", "ok"), ("0.2", "ok"), ("123456789012.123456", "review_period"),
                            ("0.000001", "review_period"), ("0.000001", "rejected"))]
    pipe.deliver(envelope("transaction.created", "2026-03-14T10:15:31Z", **{**TRANSACTION, "rewards": rewards}))
    assert pipe.totals() == {(PARTNER, "USD", True): {
        "approved": Decimal("0.3"), "pending": Decimal("123456789012.123457"), "rejected": Decimal("0.000001"),
        "reversed": Decimal(0), "owed": Decimal("123456789012.423457")}}
    pipe.deliver(envelope("transaction.deleted", "2026-03-20T00:00:00Z", key=KEY))
    assert pipe.totals()[(PARTNER, "USD", True)] == sums(reversed="123456789012.423458")


def test_the_view_is_a_reserved_name_and_readable_with_plain_sql(pipe):
    from sync.store import schema

    assert "partner_commissions" in schema.RESERVED_TABLES
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z", status="ok"))
    with pipe.engine.connect() as conn:
        [row] = conn.execute(sa.text("SELECT partner_id, currency, owed FROM partner_commissions WHERE is_currency"))
    assert (row.partner_id, row.currency, Decimal(row.owed).normalize()) == (PARTNER, "USD", Decimal("44.7"))


def test_every_ledger_change_notes_the_partner_for_salesforce(warehouse_url):
    from sync.store.outbox import Outbox, crm_commission_changes

    pipe = Pipe(warehouse_url)
    pipe.processor.outbox = Outbox()
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z"))
    pipe.deliver(sale("transaction.updated", "2026-03-15T00:00:00Z", status="ok"))
    pipe.deliver(sale("transaction.updated", "2026-03-16T00:00:00Z", status="ok", partner="ptn_other"))
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z"))  # older news: nothing changes
    with pipe.engine.begin() as conn:
        noted = [p for (p,) in conn.execute(sa.select(crm_commission_changes.c.partner_id)
                                            .order_by(crm_commission_changes.c.id))]
        conn.execute(crm_commission_changes.delete())
    assert noted == [PARTNER, PARTNER, PARTNER, "ptn_other"]  # both sides of the move; older news: none


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_concurrent_batches_on_one_transaction_converge(server, request):
    """Threads applying states of the same transactions at once take turns on the transaction's
    row; none books twice, and the ledger follows the newest state."""
    from tests.conftest import empty_database

    pipe = Pipe(empty_database(server, request, None))
    states = [sale("transaction.updated", f"2026-03-{day:02d}T00:00:00Z", txn=f"txn_{t}",
                   status=("review_period", "ok", "rejected")[day % 3], amount=day)
              for t in range(3) for day in range(1, 13)]
    events = [pipe.store(document) for document in states[::-1]]
    errors = []

    def work(share):
        try:
            for i in range(0, len(share), 3):
                result = pipe.processor.process_batch(share[i:i + 3])
                assert not result.failed, result.failed
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(events[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    # The newest state of each: day 12, review_period, amount 12.
    assert pipe.totals() == {(PARTNER, "USD", True): sums(pending=3 * 12)}


def test_the_ledger_command_shows_a_partners_entries_and_totals_per_currency(database_url):
    import json

    from click.testing import CliRunner

    from sync.cli import main
    from tests.conftest import DEAD_REDIS_URL, MAPPINGS

    pipe = Pipe(database_url)
    pipe.deliver(sale("transaction.created", "2026-03-14T10:15:31Z"),
                 sale("transaction.updated", "2026-03-15T00:00:00Z", status="ok"),
                 sale("transaction.created", "2026-03-16T10:00:00Z", txn="in_eur", amount=0.000001,
                      amount_units="EUR", transaction={"amount_units": "EUR"}),
                 sale("transaction.created", "2026-03-17T10:00:00Z", txn="in_pts", amount=500, amount_units="points",
                      transaction={"is_currency": False}),
                 sale("transaction.created", "2026-03-18T10:00:00Z", txn="in_2", partner="ptn_other"))  # USD: most used
    # Only the database is needed: Redis may be away.
    env = {"DATABASE_URL": database_url, "MAPPINGS_DIR": str(MAPPINGS), "REDIS_URL": DEAD_REDIS_URL}
    result = CliRunner().invoke(main, ["ledger", PARTNER], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"Commission ledger of partner {PARTNER}: 5 entries"
    assert lines[2].split() == ["Occurred", "(UTC)", "Transaction", "Reward", "Type", "Amount", "Standing", "Status",
                                "Inbox"]
    assert lines[3].split() == ["2026-03-14", "10:15:30", KEY, f"{PARTNER}#1", "commission", "44.7", "USD",
                                "pending", "review_period", "#1"]
    assert lines[4].split()[4:7] == ["adjustment", "-44.7", "USD"] and lines[5].split()[4:8] == [
        "adjustment", "44.7", "USD", "approved"]
    assert lines[7].split()[4:10] == ["commission", "500", "POINTS", "(not", "money)", "pending"]
    totals = {line.split()[0]: line.split() for line in lines[9:13]}
    assert totals["Totals"] == ["Totals", "approved", "pending", "rejected", "reversed", "owed"]
    assert totals["USD"] == ["USD", "44.7", "0", "0", "0", "44.7", "sent", "to", "Salesforce"]
    assert totals["EUR"][:6] == ["EUR", "0", "0.000001", "0", "0", "0.000001"]
    assert " ".join(totals["EUR"][6:]) == "not in Salesforce: not the program currency"
    assert " ".join(totals["POINTS"]) == "POINTS (not money) 0 500 0 0 500 not in Salesforce: points or credits"
    assert "Program currency: USD (the most used; set PARTNERO_CURRENCY to choose)." in lines

    data = json.loads(CliRunner().invoke(main, ["ledger", PARTNER, "--json", "--limit", "2"], env=env).output)
    assert (data["partner_id"], data["entry_count"], len(data["entries"])) == (PARTNER, 5, 2)
    # The newest two, oldest first; amounts as exact text.
    assert [(e["transaction_key"], e["amount"]) for e in data["entries"]] == [("in_eur", "0.000001"), ("in_pts", "500")]
    assert {(t["currency"], t["is_currency"], t["owed"], t["in_salesforce"]) for t in data["totals"]} == {
        ("USD", True, "44.7", True), ("EUR", True, "0.000001", False), ("POINTS", False, "500", False)}
    assert (data["program_currency"], data["program_currency_from"]) == ("USD", "most used")

    missing = CliRunner().invoke(main, ["ledger", "ptn_nobody"], env=env)
    assert missing.exit_code == 1
    assert missing.stderr == "partnero-sync: no ledger entries for partner 'ptn_nobody'\n"
