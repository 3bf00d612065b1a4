"""Every key of every shipped mapping, removed in turn: a key the format requires (as
mappings/schema.json says) gives a problem naming the file and the key, never a traceback, in
`mappings check`, the web process and the worker; an optional key removed still loads."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml

from sync.mapping import MappingError, load_mappings
from sync.store.schema import RESERVED_TABLES
from tests.conftest import MAPPINGS, SECRETS
from tests.test_processes import BIN, environment, free_port, procfile, start

SCHEMA = jsonschema.Draft202012Validator(json.loads((MAPPINGS / "schema.json").read_text()))
#: The keys of a field written as a mapping: exactly one of from and value is needed.
FIELD_SOURCES = ("from", "value")


def _keys(node: object, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _keys(value, (*prefix, key))


def _without(document: dict, path: tuple[str, ...]) -> dict:
    reduced = copy.deepcopy(document)
    node = reduced
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return reduced


def _cases() -> list[tuple[str, tuple[str, ...], dict, bool]]:
    """(file name, the removed key's path, the file without it, whether the schema requires it)."""
    cases = []
    for path in sorted(MAPPINGS.glob("*.yml")):
        document = yaml.safe_load(path.read_text())
        assert not list(SCHEMA.iter_errors(document)), path  # the shipped file itself is valid
        for key in _keys(document):
            reduced = _without(document, key)
            cases.append((path.name, key, reduced, bool(list(SCHEMA.iter_errors(reduced)))))
    return cases


CASES = _cases()
REQUIRED = [case for case in CASES if case[3]]
OPTIONAL = [case for case in CASES if not case[3]]


def _expected(key: tuple[str, ...]) -> str:
    """What the problem says after ``file:line: ``: the key's dotted path and that it is missing
    (from and value are named together: a field needs one of them)."""
    if key[-1] in FIELD_SOURCES:
        return f"{'.'.join(key[:-1])}: from or value: missing"
    return f"{'.'.join(key)}: missing"


def _write(directory: Path, cases: list, one_file_each: bool) -> dict[Path, tuple[str, ...]]:
    """The shipped files, with the cases' files written over them (or, with ``one_file_each``,
    every case in a file of its own, and only those): {written file: removed key}."""
    directory.mkdir()
    written = {}
    if not one_file_each:
        for path in MAPPINGS.glob("*.yml"):
            (directory / path.name).write_text(path.read_text())
    for name, key, reduced, _required in cases:
        target = directory / (f"{Path(name).stem}-without-{'.'.join(key)}.yml" if one_file_each else name)
        target.write_text(yaml.safe_dump(reduced, sort_keys=False))
        written[target] = key
    return written


def _named(output: str, path: Path, key: tuple[str, ...]) -> bool:
    return re.search(re.escape(f"{path}:") + r"\d+: " + re.escape(_expected(key)), output) is not None


def test_the_cases_cover_both_kinds():
    # Every section's required keys are among them, and so are optional ones.
    removed = {".".join(key) for _name, key, _reduced, _required in REQUIRED}
    assert {"entity", "events", "identity", "warehouse", "warehouse.table", "warehouse.key", "warehouse.columns",
            "ledger.rewards", "ledger.amount", "salesforce.object", "salesforce.fields",
            "salesforce.references.Partnero_Partner__r.from"} <= removed
    assert {".".join(key) for _name, key, _reduced, _required in OPTIONAL} >= {"version", "deletes", "ledger",
                                                                               "ledger.is_currency", "salesforce"}


@pytest.mark.parametrize("name, key, reduced, required", REQUIRED,
                         ids=[f"{name}:{'.'.join(key)}" for name, key, _r, _q in REQUIRED])
def test_a_required_key_removed_is_a_problem_naming_the_file_and_the_key(tmp_path, name, key, reduced, required):
    [path] = _write(tmp_path / "mappings", [(name, key, reduced, required)], one_file_each=False)
    with pytest.raises(MappingError) as raised:
        load_mappings(tmp_path / "mappings", RESERVED_TABLES)
    assert _named(str(raised.value), path, key), str(raised.value)


@pytest.mark.parametrize("name, key, reduced, required", OPTIONAL,
                         ids=[f"{name}:{'.'.join(key)}" for name, key, _r, _q in OPTIONAL])
def test_an_optional_key_removed_still_loads(tmp_path, name, key, reduced, required):
    _write(tmp_path / "mappings", [(name, key, reduced, required)], one_file_each=False)
    loaded = load_mappings(tmp_path / "mappings", RESERVED_TABLES)
    assert {m.path.name for m in loaded.mappings} == {p.name for p in MAPPINGS.glob("*.yml")}


def test_check_and_the_worker_refuse_every_case_with_its_sentence_and_no_traceback(tmp_path):
    """All the cases at once, each in a file of its own (none loads, so none clashes with
    another): every one is listed, by the real processes."""
    written = _write(tmp_path / "mappings", REQUIRED, one_file_each=True)
    env = environment(MAPPINGS_DIR=str(tmp_path / "mappings"), DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    check = subprocess.run([str(BIN / "partnero-sync"), "mappings", "check"], env=env, capture_output=True,
                           text=True, timeout=120)
    worker = subprocess.run([str(BIN / "partnero-sync"), "worker"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert check.returncode == 1 and worker.returncode == 2
    assert worker.stderr.startswith("partnero-sync: configuration error: ")
    for output in (check.stderr, worker.stderr):
        assert "Traceback" not in output
        missed = [f"{path.name}: {'.'.join(key)}" for path, key in written.items() if not _named(output, path, key)]
        assert not missed, output
    assert not (tmp_path / "x.db").exists()


#: The web process logs its refusal as one line, cut at sync.ops.logs.MAX_MESSAGE: a few cases a run.
WEB_BATCH = 8


@pytest.mark.parametrize("batch", range(0, len(REQUIRED), WEB_BATCH))
def test_the_web_process_refuses_every_case_with_its_sentence_and_no_traceback(tmp_path, batch):
    written = _write(tmp_path / "mappings", REQUIRED[batch:batch + WEB_BATCH], one_file_each=True)
    env = environment(MAPPINGS_DIR=str(tmp_path / "mappings"), DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
                      PARTNERO_WEBHOOK_SECRET=SECRETS[0], PORT=str(free_port()))
    web = start(procfile()["web"], env, cwd=tmp_path)
    output = web.communicate(timeout=120)[0].decode().replace("\\n", "\n")
    assert web.returncode == 2 and "configuration error: " in output
    assert "Traceback" not in output and "more characters)" not in output
    missed = [f"{path.name}: {'.'.join(key)}" for path, key in written.items() if not _named(output, path, key)]
    assert not missed, output
