"""Salesforce orgs for the tests, made on the stand-in as an admin makes them in Setup: fresh (the
standard objects only), partly set up, or set up for the shipped mappings (docs/salesforce.md's
table)."""

from __future__ import annotations

from tests.fakes.salesforce import FakeSalesforce

#: The key fields, as the README tells an admin to create them: Text(255), External ID, Unique.
KEYS = {"Contact": "Partnero_Partner_Id__c", "Account": "Partnero_Customer_Key__c",
        "Partnero_Transaction__c": "Partnero_Transaction_Key__c"}


def set_up_contact(fake: FakeSalesforce) -> None:
    fake.add_field("Contact", KEYS["Contact"], external_id=True, unique=True)
    fake.add_field("Contact", "Partnero_Status__c", length=40)
    fake.add_field("Contact", "Partnero_Program__c", length=40)
    for total in ("Total", "Approved", "Pending"):
        fake.add_field("Contact", f"Partnero_Commission_{total}__c", "currency", precision=18, scale=2)


def set_up_account(fake: FakeSalesforce) -> None:
    fake.add_field("Account", KEYS["Account"], external_id=True, unique=True)
    fake.add_field("Account", "Partnero_Email__c", "email", length=80)
    fake.add_field("Account", "Partnero_Status__c", length=40)
    fake.add_field("Account", "Partnero_Program__c", length=40)
    fake.add_field("Account", "Partnero_Partner__c", "reference", reference_to="Contact")


def set_up_transaction(fake: FakeSalesforce) -> None:
    name = "Partnero_Transaction__c"
    if not fake.has_object(name):
        fake.define_object(name, fields=())
    fake.add_field(name, KEYS[name], external_id=True, unique=True)
    fake.add_field(name, "Amount__c", "currency", precision=18, scale=2)
    fake.add_field(name, "Currency__c", length=3)
    fake.add_field(name, "Action__c", length=40)
    fake.add_field(name, "Status__c", "picklist", length=255)
    fake.add_field(name, "Partnero_Program__c", length=40)
    fake.add_field(name, "Partnero_Customer__c", "reference", reference_to="Account")
    fake.add_field(name, "Partnero_Partner__c", "reference", reference_to="Contact")


def set_up(fake: FakeSalesforce) -> FakeSalesforce:
    """Every object and field the shipped mappings write, as an admin creates them."""
    set_up_contact(fake)
    set_up_account(fake)
    set_up_transaction(fake)
    return fake
