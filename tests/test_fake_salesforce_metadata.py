"""The stand-in's Metadata API, driven through simple-salesforce's ``mdapi`` (zeep over verified TLS).

Shapes and their sources are cited in tests/fakes/salesforce_metadata.py; the answers checked
here are the ones simple-salesforce's own code reads: ``success``, ``fullName`` and each error's
``statusCode`` and ``message`` (``MetadataType._handle_api_response``), and the readMetadata
``records``.
"""

from __future__ import annotations

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest
from zeep.exceptions import Fault

from tests.fakes.salesforce_metadata import MAX_COMPONENTS

TRANSACTION = "Partnero_Transaction__c"
PARTNER_ID = "Contact.Partnero_Partner_Id__c"


@pytest.fixture
def fake(fresh_org):
    return fresh_org


@pytest.fixture
def sf(fake):
    """A client on a bearer token; its REST and Metadata connections are closed afterwards."""
    client = Salesforce(instance_url=fake.instance_url, session_id=fake.issue_session())
    yield client
    client.session.close()
    if client._mdapi is not None:  # zeep keeps a requests.Session of its own
        client._mdapi._client.transport.session.close()


def custom_object(md, name=TRANSACTION, **extra):
    return md.CustomObject(fullName=name, label="Partnero transaction", pluralLabel="Partnero transactions",
                           nameField=md.CustomField(label="Name", type="Text"),
                           deploymentStatus="Deployed", sharingModel="ReadWrite", **extra)


def text_field(md, full_name=PARTNER_ID, **extra):
    options = {"label": "Partnero partner id", "type": "Text", "length": 64, **extra}
    return md.CustomField(fullName=full_name, **options)


def raw(sf, operation, *args):
    """The call's result list as zeep reads it (simple-salesforce's create/upsert return None)."""
    return getattr(sf.mdapi._service, operation)(*args, _soapheaders=[sf.mdapi._session_header])


def grant(sf, fake, fields, *, editable=True, name="Partnero_Sync"):
    """Create (or widen) the permission set and assign it to the integration user."""
    md = sf.mdapi
    md.PermissionSet.upsert([md.PermissionSet(fullName=name, label="Partnero Sync", fieldPermissions=[
        md.PermissionSetFieldPermissions(field=f, readable=True, editable=editable) for f in fields])])
    found = sf.query(f"SELECT Id, Name FROM PermissionSet WHERE Name = '{name}'")["records"]
    assignee = sf.oauth2("userinfo")["user_id"]
    assigned = sf.query(f"SELECT Id FROM PermissionSetAssignment WHERE AssigneeId = '{assignee}' "
                        f"AND PermissionSetId = '{found[0]['Id']}'")["totalSize"]
    if not assigned:
        sf.PermissionSetAssignment.create({"AssigneeId": assignee, "PermissionSetId": found[0]["Id"]})
    return found[0]["Id"]


def described(sf, sobject, name):
    return next((f for f in getattr(sf, sobject).describe()["fields"] if f["name"] == name), None)


# ------------------------------------------------------------------ create, read, upsert


def test_create_object_and_fields_then_read_them_back(fake, sf):
    md = sf.mdapi
    md.CustomObject.create([custom_object(md)])
    md.CustomField.create([md.CustomField(fullName=f"{TRANSACTION}.Amount__c", label="Amount",
                                          type="Currency", precision=18, scale=2)])
    field = md.CustomField.read([f"{TRANSACTION}.Amount__c"])
    assert (field.fullName, field.type, field.precision, field.scale) == (
        f"{TRANSACTION}.Amount__c", "Currency", 18, 2)
    obj = md.CustomObject.read([TRANSACTION])
    assert (obj.fullName, obj.nameField.type, obj.sharingModel) == (TRANSACTION, "Text", "ReadWrite")
    assert [(f.fullName, f.type) for f in obj.fields] == [("Amount__c", "Currency")]
    # A name that does not exist answers a record without fullName, not an error.
    assert md.CustomField.read([f"{TRANSACTION}.Missing__c"]).fullName is None
    assert [c.detail for c in fake.calls if c.kind == "metadata"] == [
        "createMetadata", "createMetadata", "readMetadata", "readMetadata", "readMetadata"]
    assert fake.calls[0].path == "/services/Soap/m/59.0/"


def test_upsert_answers_created_then_updated(sf, fake):
    md = sf.mdapi
    first = raw(sf, "upsertMetadata", [text_field(md)])
    assert [(r.fullName, r.success, r.created, r.errors) for r in first] == [(PARTNER_ID, True, True, [])]
    again = raw(sf, "upsertMetadata", [text_field(md, length=80, externalId=True, unique=True)])
    assert [(r.success, r.created) for r in again] == [(True, False)]
    stored = md.CustomField.read([PARTNER_ID])
    assert (stored.length, stored.externalId, stored.unique) == (80, True, True)
    saved = raw(sf, "createMetadata", [text_field(md, "Account.Partnero_Customer_Key__c")])
    assert [(r.fullName, r.success) for r in saved] == [("Account.Partnero_Customer_Key__c", True)]
    assert not hasattr(saved[0], "created") or saved[0]["created"] is None  # a SaveResult has none


# ------------------------------------------------------------------ errors in results


@pytest.mark.parametrize("options, code, message", [
    ({"type": "Text"}, "FIELD_INTEGRITY_EXCEPTION", "Must specify 'length' for a CustomField of type Text"),
    ({"type": "Checkbox"}, "FIELD_INTEGRITY_EXCEPTION",
     "Must specify 'defaultValue' for a CustomField of type Checkbox"),
    ({"type": "Number"}, "FIELD_INTEGRITY_EXCEPTION", "Must specify 'precision' for a CustomField of type Number"),
    ({"type": "Date", "length": 10}, "FIELD_INTEGRITY_EXCEPTION",
     "Can not specify 'length' for a CustomField of type Date"),
    ({"type": "Lookup", "referenceTo": "Contact"}, "FIELD_INTEGRITY_EXCEPTION",
     "Must specify 'relationshipName' for a CustomField of type Lookup"),
])
def test_invalid_field_definitions_fail_in_the_save_result(sf, fake, options, code, message):
    md = sf.mdapi
    field = md.CustomField(fullName="Contact.Bad__c", label="Bad", **options)
    result = raw(sf, "createMetadata", [field])[0]
    assert (result.fullName, result.success) == ("Contact.Bad__c", False)
    assert [(e.statusCode, e.message) for e in result.errors] == [(code, message)]
    with pytest.raises(Exception) as exc:  # simple-salesforce turns failures into a bare Exception
        md.CustomField.create([field])
    assert str(exc.value) == f"\nContact.Bad__c: ({code}, {message}), "
    assert md.CustomField.read(["Contact.Bad__c"]).fullName is None


def test_one_bad_component_does_not_stop_the_others(sf, fake):
    md = sf.mdapi
    results = raw(sf, "upsertMetadata", [md.CustomField(fullName="Contact.Bad__c", label="Bad", type="Text"),
                                         text_field(md)])
    assert [(r.fullName, r.success, r.created) for r in results] == [
        ("Contact.Bad__c", False, False), (PARTNER_ID, True, True)]
    assert list(fake.metadata.components("CustomField")) == [PARTNER_ID]


def test_update_of_a_missing_field_and_create_of_an_existing_one(sf):
    md = sf.mdapi
    with pytest.raises(Exception) as missing:
        md.CustomField.update([text_field(md)])
    # The message recorded in simple-salesforce/simple-salesforce#602.
    assert str(missing.value) == (f"\n{PARTNER_ID}: (INVALID_CROSS_REFERENCE_KEY, In field: fullName - "
                                  f"no CustomField named {PARTNER_ID} found), ")
    md.CustomField.create([text_field(md)])
    again = raw(sf, "createMetadata", [text_field(md)])[0]
    assert (again.success, again.errors[0].statusCode) == (False, "DUPLICATE_DEVELOPER_NAME")


def test_a_type_change_over_existing_data_is_refused(sf, fake):
    md = sf.mdapi
    md.CustomField.create([text_field(md, "Contact.Partnero_Status__c")])
    md.CustomField.update([md.CustomField(fullName="Contact.Partnero_Status__c", label="Status",
                                          type="Number", precision=3, scale=0)])  # no data yet: allowed
    fake.add("Contact", {"LastName": "Doe", "Partnero_Status__c": 1})
    result = raw(sf, "upsertMetadata", [text_field(md, "Contact.Partnero_Status__c")])[0]
    assert (result.success, result.created) == (False, False)
    assert [(e.statusCode, e.message, e.fields) for e in result.errors] == [
        ("FIELD_INTEGRITY_EXCEPTION", "Cannot change type due to existing data", ["type"])]
    assert md.CustomField.read(["Contact.Partnero_Status__c"]).type == "Number"


def test_delete_and_delete_of_a_missing_component(sf):
    md = sf.mdapi
    md.CustomField.create([text_field(md)])
    md.CustomField.delete([PARTNER_ID])
    assert md.CustomField.read([PARTNER_ID]).fullName is None
    result = raw(sf, "deleteMetadata", "CustomField", [PARTNER_ID])[0]
    assert (result.success, result.errors[0].statusCode) == (False, "INVALID_CROSS_REFERENCE_KEY")


# ------------------------------------------------------------------ faults


def test_a_user_without_modify_metadata_gets_the_insufficient_access_fault(sf, fake):
    fake.metadata.modify_metadata = False
    md = sf.mdapi
    with pytest.raises(Fault) as exc:
        md.CustomField.upsert([text_field(md)])
    assert exc.value.code == "sf:INSUFFICIENT_ACCESS"
    assert exc.value.message == ("INSUFFICIENT_ACCESS: use of the Metadata API requires a user with "
                                 "the ModifyAllData or ModifyMetadata permissions")
    with pytest.raises(Fault):
        md.CustomObject.read([TRANSACTION])
    assert fake.calls[-1].status == 500 and fake.calls[-1].detail == "INSUFFICIENT_ACCESS"
    fake.metadata.modify_metadata = True
    md.CustomField.upsert([text_field(md)])
    assert fake.metadata.components("CustomField")[PARTNER_ID]["length"] == "64"


def test_more_than_ten_components_in_one_call_is_a_fault(sf, fake):
    md = sf.mdapi
    fields = [text_field(md, f"Contact.Field_{i}__c") for i in range(MAX_COMPONENTS + 1)]
    with pytest.raises(Fault) as exc:
        md.CustomField.create(fields)
    assert (exc.value.code, exc.value.message) == ("sf:EXCEEDED_ID_LIMIT", "EXCEEDED_ID_LIMIT: record limit "
                                                   "reached. cannot submit more than 10 records in this operation")
    assert fake.metadata.components("CustomField") == {}
    md.CustomField.create(fields[:MAX_COMPONENTS])
    assert len(fake.metadata.components("CustomField")) == MAX_COMPONENTS


def test_an_invalid_session_gets_the_invalid_session_fault(sf, fake):
    fake.expire_sessions()
    with pytest.raises(Fault) as exc:
        sf.mdapi.CustomObject.read([TRANSACTION])
    assert exc.value.code == "sf:INVALID_SESSION_ID"
    assert exc.value.message == "INVALID_SESSION_ID: Invalid Session ID found in SessionHeader: Illegal Session"


def test_the_soap_login_session_reaches_the_metadata_api(fake):
    client = Salesforce(username=fake.username, password=fake.password,
                        security_token=fake.security_token, domain=fake.login_domain)
    client.mdapi.CustomObject.create([custom_object(client.mdapi)])
    assert TRANSACTION in fake.metadata.components("CustomObject")
    client.session.close()


# ------------------------------------------------------------------ the rest of the org sees it


def test_a_new_field_is_hidden_until_a_permission_set_grants_it(sf, fake):
    md = sf.mdapi
    md.CustomField.create([text_field(md, externalId=True, unique=True)])
    assert described(sf, "Contact", "Partnero_Partner_Id__c") is None
    with pytest.raises(SalesforceMalformedRequest) as hidden:
        sf.Contact.create({"LastName": "Doe", "Partnero_Partner_Id__c": "ptn_1"})
    assert hidden.value.content[0]["errorCode"] == "INVALID_FIELD"

    grant(sf, fake, [PARTNER_ID], editable=False)
    field = described(sf, "Contact", "Partnero_Partner_Id__c")
    assert (field["type"], field["length"], field["externalId"], field["unique"]) == ("string", 64, True, True)
    assert (field["createable"], field["updateable"], field["custom"]) == (False, False, True)
    with pytest.raises(SalesforceMalformedRequest) as read_only:
        sf.Contact.create({"LastName": "Doe", "Partnero_Partner_Id__c": "ptn_1"})
    assert read_only.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"

    grant(sf, fake, [PARTNER_ID])
    assert described(sf, "Contact", "Partnero_Partner_Id__c")["updateable"] is True
    assert sf.Contact.upsert("Partnero_Partner_Id__c/ptn_1", {"LastName": "Doe"}) == 201
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_1")["LastName"] == "Doe"
    assert len(fake.records("PermissionSet")) == 1 and len(fake.records("PermissionSetAssignment")) == 1


def test_a_created_object_with_a_lookup_takes_writes_by_external_id(sf, fake):
    md = sf.mdapi
    md.CustomObject.create([custom_object(md)])
    fields = [md.CustomField(fullName=f"{TRANSACTION}.Partnero_Transaction_Id__c", label="Id", type="Text",
                             length=64, externalId=True, unique=True),
              md.CustomField(fullName=f"{TRANSACTION}.Amount__c", label="Amount", type="Number",
                             precision=18, scale=2),
              md.CustomField(fullName=f"{TRANSACTION}.Partnero_Partner__c", label="Partner", type="Lookup",
                             referenceTo="Contact", relationshipName="Partnero_Transactions",
                             relationshipLabel="Partnero transactions", deleteConstraint="SetNull"),
              text_field(md)]
    md.CustomField.create(fields)
    grant(sf, fake, [f.fullName for f in fields])
    lookup = described(sf, TRANSACTION, "Partnero_Partner__c")
    assert (lookup["type"], lookup["referenceTo"], lookup["relationshipName"]) == (
        "reference", ["Contact"], "Partnero_Partner__r")
    amount = described(sf, TRANSACTION, "Amount__c")
    assert (amount["type"], amount["precision"], amount["scale"]) == ("double", 18, 2)

    contact_id = fake.add("Contact", {"LastName": "Doe", "Partnero_Partner_Id__c": "ptn_1"})
    assert sf.Partnero_Transaction__c.upsert("Partnero_Transaction_Id__c/t1", {
        "Amount__c": 12.5, "Partnero_Partner__r": {"Partnero_Partner_Id__c": "ptn_1"}}) == 201
    stored = fake.get(TRANSACTION, "Partnero_Transaction_Id__c", "t1")
    assert (stored["Amount__c"], stored["Partnero_Partner__c"]) == (12.5, contact_id)
    with pytest.raises(SalesforceMalformedRequest) as typed:
        sf.Partnero_Transaction__c.upsert("Partnero_Transaction_Id__c/t2", {"Amount__c": "lots"})
    assert typed.value.content[0]["errorCode"] == "JSON_PARSER_ERROR"
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf.Partnero_Transaction__c.upsert("Partnero_Transaction_Id__c/t3", {"Nope__c": 1})
    assert unknown.value.content[0]["errorCode"] == "INVALID_FIELD"


def test_a_child_relationship_name_is_unique_on_the_target(sf):
    md = sf.mdapi
    md.CustomObject.create([custom_object(md)])

    def lookup(name):
        return md.CustomField(fullName=f"{TRANSACTION}.{name}", label=name, type="Lookup", referenceTo="Contact",
                              relationshipName="Partnero_Transactions", deleteConstraint="SetNull")

    md.CustomField.create([lookup("Partnero_Partner__c")])
    md.CustomField.upsert([lookup("Partnero_Partner__c")])  # the same field again is no clash
    result = raw(sf, "createMetadata", [lookup("Partnero_Referrer__c")])[0]
    assert [(e.statusCode, e.message) for e in result.errors] == [(
        "FIELD_INTEGRITY_EXCEPTION", "There is already a Child Relationship named Partnero_Transactions on Contact.")]


def test_a_hidden_field_is_no_column_in_queries(sf):
    sf.mdapi.CustomField.create([text_field(sf.mdapi)])
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Id FROM Contact WHERE Partnero_Partner_Id__c = 'ptn_1'")
    assert exc.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert sf.query("SELECT Id FROM Contact WHERE LastName = 'Doe'")["totalSize"] == 0


def test_a_permission_set_naming_a_missing_field_fails(sf, fake):
    md = sf.mdapi
    result = raw(sf, "createMetadata", [md.PermissionSet(fullName="Partnero_Sync", label="Partnero Sync",
                                                        fieldPermissions=[md.PermissionSetFieldPermissions(
                                                            field=PARTNER_ID, readable=True, editable=True)])])[0]
    assert (result.success, result.errors[0].statusCode) == (False, "INVALID_CROSS_REFERENCE_KEY")
    assert fake.records("PermissionSet") == []


def test_userinfo_names_the_user_to_assign(sf, fake):
    info = sf.oauth2("userinfo")
    assert (info["user_id"], info["organization_id"]) == (fake.user_id, fake.org_id)
    assert info["sub"].endswith(f"/id/{fake.org_id}/{fake.user_id}")
