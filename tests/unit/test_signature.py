import hashlib
import hmac

import pytest

from sync.core.signature import Verdict, header_values, sign, verify

BODY = b'{"event":"partner.created","data":{"id":"ptn_1"}}'
SECRET = "whsec_current"
GOOD = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def test_sign_is_lowercase_hex_hmac_sha256_of_the_raw_bytes():
    assert sign(BODY, SECRET) == GOOD
    assert GOOD == GOOD.lower() and len(GOOD) == 64


@pytest.mark.parametrize(
    "candidates, secrets, expected",
    [
        ([GOOD], [SECRET], Verdict.OK),
        ([GOOD.upper()], [SECRET], Verdict.OK),
        ([f"  {GOOD}\n"], [SECRET], Verdict.OK),
        ([GOOD], ["whsec_new", SECRET], Verdict.OK),  # rotation: any secret may match
        (["0" * 64, GOOD], [SECRET], Verdict.OK),  # both headers sent, one right
        ([], [SECRET], Verdict.MISSING),
        ([""], [SECRET], Verdict.MALFORMED),
        (["sha256=" + GOOD], [SECRET], Verdict.MALFORMED),
        ([GOOD[:-1]], [SECRET], Verdict.MALFORMED),
        ([GOOD + "0"], [SECRET], Verdict.MALFORMED),
        (["z" * 64], [SECRET], Verdict.MALFORMED),
        (["0" * 64], [SECRET], Verdict.MISMATCH),
        ([GOOD], ["another-secret"], Verdict.MISMATCH),
        ([GOOD], [], Verdict.MISMATCH),
        ([sign(BODY, SECRET.encode().hex())], [SECRET], Verdict.MISMATCH),
    ],
)
def test_verify(candidates, secrets, expected):
    assert verify(BODY, candidates, secrets) is expected


def test_a_changed_byte_breaks_the_signature():
    assert verify(BODY + b" ", [GOOD], [SECRET]) is Verdict.MISMATCH


def test_header_names_match_in_any_case():
    headers = {"signature": "a", "X-PARTNERO-SIGNATURE": "b", "Content-Type": "c"}
    assert sorted(header_values(headers)) == ["a", "b"]


def test_a_header_sent_twice_is_split_at_its_commas():
    # gunicorn (like most servers) joins a repeated header into one value with commas.
    assert header_values({"Signature": f"{GOOD}, {GOOD}"}) == [GOOD, f" {GOOD}"]
    assert header_values({"Signature": f"{'0' * 64},{GOOD}", "X-Partnero-Signature": "a"}) == ["0" * 64, GOOD, "a"]


@pytest.mark.parametrize(
    "value, expected",
    [
        (f"{GOOD}, {GOOD}", Verdict.OK),  # the same header twice
        (f"{'0' * 64}, {GOOD}", Verdict.OK),  # two different values: either may match
        (f"{GOOD},{'0' * 64}", Verdict.OK),
        (f"{'0' * 64}, {'1' * 64}", Verdict.MISMATCH),
        (f"{GOOD}, not-hex", Verdict.OK),
        (" , ", Verdict.MALFORMED),
    ],
)
def test_repeated_signature_headers_verify_if_any_value_matches(value, expected):
    assert verify(BODY, header_values({"Signature": value}), [SECRET]) is expected
