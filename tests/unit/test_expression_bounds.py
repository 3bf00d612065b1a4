"""An expression's work and result are bounded: the checker refuses one that could build more
than MAX_GROWTH times the delivery, what it accepts stays within its computed bound on hostile
deliveries, and evaluation refuses a result or a number of steps past the limits, whatever the
input."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jmespath
import pytest

from sync.mapping import FieldProblem, MappingError, load_mappings, plan
from sync.mapping.bounds import MAX_GROWTH, MAX_RESULT, MAX_STEPS, growth
from sync.partnero.samples import PARTNER
from sync.store.schema import RESERVED_TABLES
from tests.conftest import MAPPINGS


def doubled(levels: int) -> str:
    expression = "@"
    for _ in range(levels):
        expression = f"[{expression},{expression}]"
    return expression


def mappings_with(tmp_path: Path, column: str) -> Path:
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, directory)
    path = directory / "partner.yml"
    text = path.read_text()
    assert "    partner_key: data.key\n" in text
    path.write_text(text.replace("    partner_key: data.key\n", f"    partner_key: {json.dumps(column)}\n"))
    return directory


#: Expressions whose result grows with the delivery many times over, and the problem (after
#: "partner.yml:<line>: warehouse.columns.partner_key: ").
GROWING = {
    "doubling nested": (doubled(6), "expression can build a value 64 times the size of the delivery (at most 32)"),
    "projections of doublings": ("data.l[*].[@,@][][*].[@,@][][*].[@,@][][*].[@,@]",
                                 "times the size of the delivery (at most 32)"),
    "to_string repeated": ("[" + ", ".join(["to_string(@)"] * 6) + "]", "expression can build a value 36 times"),
    "join of copies": ("join('', [" + ", ".join(["to_string(@)"] * 20) + "])", "expression can build a value 120 "),
    "a literal per element": ("data.l[*].[`\"" + "x" * 100 + "\"`]", "times the size of the delivery (at most 32)"),
    "a separator from the delivery": ("join(to_string(@), data.l)",
                                      "join's separator is read from the delivery: it must be written in the "
                                      "expression"),
    "an unknown function": ("explode(@)", "unknown function explode()"),
}


@pytest.mark.parametrize("expression, problem", GROWING.values(), ids=GROWING.keys())
def test_an_expression_that_can_build_too_much_is_refused_at_check(tmp_path, expression, problem):
    with pytest.raises(MappingError) as raised:
        load_mappings(mappings_with(tmp_path, expression), RESERVED_TABLES)
    [found] = raised.value.problems
    assert (found.path.name, found.where) == ("partner.yml", "warehouse.columns.partner_key")
    assert problem in found.message


def test_the_shipped_expressions_are_well_within_the_bound():
    loaded = load_mappings(MAPPINGS, RESERVED_TABLES)
    for mapping in loaded.mappings:
        fields = [mapping.identity, mapping.version, *mapping.warehouse.columns, *mapping.warehouse.on_delete]
        for f in fields:
            if f.expression is not None:
                assert growth(f.expression.parsed)[0] <= 2, f.source


def _size(value) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


#: Deliveries shaped to make the expressions below build as much as they can: many tiny
#: elements (each gains its literal, brackets and commas), characters that to_string escapes
#: into twelve.
HOSTILE_DATA = [
    {"l": [{}] * 3000, "tags": [{"value": ""}] * 1000, "name": "😀" * 2000, "surname": "\"\\" * 2000},
    {"l": [0] * 5000, "tags": [{"value": 1}] * 2000, "name": "é" * 3000, "surname": ""},
    {"l": [[0], [[]], "\x01" * 50] * 500, "tags": [], "name": "\x01" * 3000, "surname": None},
]
ACCEPTED = [
    "data.l[*].{a: a, b: b}", "data.l[*].[@,@][]", "[@,@][*][@,@][]", "to_string(@)", "[to_string(data), data.name]",
    "join(', ', data.tags[].value)", "join(' ', [data.name, data.surname][?@]) || data.email",
    "map(&[@,@,@], data.l)", "values(data)[*].[@, @, @]", "data.l[*].[`\"xxxxxxxxxxxxxxx\"`]", "*.*.*",
    "join('', [to_string(@), to_string(@)])", doubled(4), "sort_by(data.tags, &to_string(@))",
    "data.l[?contains(to_string(@), `\"x\"`)]", "merge(data, {z: data.l})", "keys(@)", "data.l[:100]",
]


@pytest.mark.parametrize("expression", ACCEPTED)
def test_what_check_accepts_stays_within_its_bound(expression):
    times, unbounded = growth(jmespath.compile(expression).parsed)
    assert unbounded is None and times <= MAX_GROWTH
    for data in HOSTILE_DATA:
        document = {"event": "partner.created", "data": data}
        try:
            result = jmespath.search(expression, document)
        except jmespath.exceptions.JMESPathTypeError:
            continue  # a function refusing this input builds nothing
        bound, _ = growth(jmespath.compile(expression).parsed, _size(document))
        assert _size(result) <= bound * _size(document), (expression, _size(result) / _size(document), bound)


#: An accepted expression over a delivery it cannot be worth: a result past the limit (preview
#: reads a saved delivery of any size), or more steps than the budget.
PAST_THE_LIMITS = {
    "a result too large": ("[data, data, data, data]", {"filler": "f" * (MAX_RESULT // 3)},
                           f"the expression built a value of more than {MAX_RESULT:,} characters"),
    "too many steps": ("data.l[*].[a, b]", {"l": [{}] * (MAX_STEPS // 2)},
                       f"the expression took more than {MAX_STEPS:,} steps: it is not worth this delivery"),
}


@pytest.mark.parametrize("column, data, problem", PAST_THE_LIMITS.values(), ids=PAST_THE_LIMITS.keys())
def test_evaluation_refuses_what_is_past_the_limits_whatever_the_input(tmp_path, column, data, problem):
    mapping = load_mappings(mappings_with(tmp_path, column), RESERVED_TABLES).for_event("partner.created")
    started = time.monotonic()
    with pytest.raises(FieldProblem) as raised:
        plan(mapping, {"event": "partner.created", "data": {**PARTNER, **data}}, "f" * 64)
    assert str(raised.value) == f"partner.yml: warehouse.columns.partner_key: {problem}"
    assert time.monotonic() - started < 30


def test_a_record_id_computed_by_a_hostile_expression_is_bounded_too(tmp_path):
    """The web process computes the record id (identity) of every delivery it stores."""
    from sync.mapping import identify
    from sync.mapping.evaluate import record_key

    directory = mappings_with(tmp_path, "data.key")
    path = directory / "partner.yml"
    path.write_text(path.read_text().replace("identity: data.id", "identity: \"join('', data.l[*].to_string(@))\""))
    mapping = load_mappings(directory, RESERVED_TABLES).for_event("partner.created")
    document = {"event": "partner.created", "data": {**PARTNER, "l": [[]] * (MAX_STEPS // 2)}}
    started = time.monotonic()
    with pytest.raises(FieldProblem, match=f"partner.yml: identity: the expression took more than {MAX_STEPS:,} steps"):
        record_key(mapping, document)
    assert identify(mapping, document) is None
    assert time.monotonic() - started < 30
