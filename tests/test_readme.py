"""The README and the pages of docs/ are the contract with a newcomer: keep them true.

Every page is held to the same checks: the commands its code names exist with the options it
gives them, the repository paths and modules it names exist, the environment variables it names
are in the configuration table, the tests it names exist, its examples load, and every link
between pages (and to the repository's files, with their anchors) resolves."""

import re
import shlex
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from sync.settings import PROGRAM_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SETUP = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
RUN = f"{SETUP} && .venv/bin/partnero-sync dev"
TEST = f"{SETUP} && .venv/bin/pytest"

#: Variables of the service, however they are spelled in a page, and the ones it reads through
#: the libraries it runs on (gunicorn's and requests' own), which sync/settings.py does not read.
OURS = re.compile(r"\b(?:PARTNERO|SALESFORCE|RQ|DATABASE|REDIS|MAPPINGS?|LOG|WEB|FORWARDED|REQUESTS)_[A-Z0-9_]*[A-Z0-9]\b")
VARIABLE = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
READ_BY_LIBRARIES = {"PORT", "WEB_CONCURRENCY", "REQUESTS_CA_BUNDLE"}
#: Names spelled like our variables that are not variables: the code an outbox row records when its
#: mapping cannot compute it.
NOT_VARIABLES = {"MAPPING_ERROR"}
#: A program's own variable, as the configuration table names it (PARTNERO_<NAME>_API_KEY) and as
#: a page spells it for one program (PARTNERO_FRIENDS_EU_API_KEY).
PER_PROGRAM = re.compile(r"\bPARTNERO_(?:<NAME>|[A-Z0-9_]+?)_(WEBHOOK_SECRET|API_KEY|CURRENCY|MAPPINGS_DIR)\b")
#: Folders of the repository: a name in code that starts with one is a path that must exist.
REPO_PATH = re.compile(r"(?<![\w./-])((?:app|sync|tests|bench|mappings|docs|deploy|\.ci)/[\w./-]*)")
MODULE = re.compile(r"(?<![\w.-])((?:app|sync)(?:\.\w+)+)")
TEST_NAME = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _read(page: Path) -> str:
    return page.read_text()


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path, language: str | None = None) -> list[tuple[str, str]]:
    """The fenced code blocks of a page, as (language, text), indentation of a list item removed."""
    found, current, indent, lang = [], None, 0, ""
    for line in _read(page).splitlines():
        fence = re.match(r"^(\s*)```(\w*)\s*$", line)
        if current is None and fence:
            current, indent, lang = [], len(fence.group(1)), fence.group(2)
        elif current is not None and fence and not fence.group(2):
            found.append((lang, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line[indent:] if line[:indent].strip() == "" else line)
    return [(lang, text) for lang, text in found if language is None or lang == language]


def prose(page: Path) -> str:
    """A page without its fenced code blocks."""
    return re.sub(r"^\s*```\w*\s*\n.*?^\s*```\s*$", "", _read(page), flags=re.S | re.M)


def inline_code(page: Path) -> list[str]:
    """The page's `code spans` outside fenced blocks, a span broken over lines joined again."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose(page))]


def code(page: Path) -> list[str]:
    """Everything a page writes as code: its fenced blocks and its code spans."""
    return [text for _, text in blocks(page)] + inline_code(page)


def _page(name: str) -> Path:
    return ROOT / name


def _example(page: str, start: str, language: str = "yaml") -> str:
    return next(text for _, text in blocks(_page(page), language) if text.startswith(start))


# The two commands, CI, and the Procfile.

def test_the_readme_gives_the_two_commands():
    text = _read(README)
    assert f"\n{RUN}\n" in text
    assert f"\n{TEST}\n" in text


def test_ci_runs_exactly_the_readme_test_command():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TEST in lines


def test_the_readme_shows_the_procfile_as_it_is():
    assert (ROOT / "Procfile").read_text() in _read(README)


# The examples load.

def test_the_mapping_example_is_a_valid_mapping(tmp_path):
    from sync.mapping import load_mappings

    (tmp_path / "partner.yml").write_text(_example("docs/mappings.md", "# yaml-language-server"))
    [mapping] = load_mappings(tmp_path).mappings
    assert mapping.warehouse.table == "partners"


def test_the_ledger_example_matches_the_shipped_one():
    import yaml

    example = yaml.safe_load(_example("docs/mappings.md", "ledger:"))["ledger"]
    shipped = yaml.safe_load((ROOT / "mappings" / "transaction.yml").read_text())["ledger"]
    # book_on is no longer needed (every state that is not a delete tells the rewards), and
    # key and is_currency are optional: an example may leave them out, never differ.
    example.pop("book_on", None)
    assert example and {name: shipped.get(name) for name in example} == example


def test_the_commission_query_agrees_with_the_ledger(pg_url):
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
    [query] = [text for page in PAGES for _, text in blocks(page, "sql")]
    assert query in _read(_page("docs/warehouse-and-ledger.md"))
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


def test_the_salesforce_example_is_a_valid_section(tmp_path):
    from sync.mapping import load_mappings

    example = _example("docs/salesforce.md", "salesforce:")
    customer = (ROOT / "mappings" / "customer.yml").read_text().split("\nsalesforce:")[0]
    (tmp_path / "customer.yml").write_text(customer + "\n" + example)
    [mapping] = load_mappings(tmp_path).mappings
    assert mapping.salesforce.object == "Account"
    assert [r.name for r in mapping.salesforce.references] == ["Partnero_Partner__r"]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_yaml_and_json_block_parses(page):
    import json

    import yaml

    for language, text in blocks(page):
        if language == "yaml":
            assert yaml.safe_load(text) is not None, text
        elif language == "json":
            json.loads(text)


# What the code of every page names exists.

def test_every_test_a_page_names_exists():
    named = {(page, path, name) for page in PAGES for path, name in TEST_NAME.findall(_read(page))}
    guarantees = [n for n in named if n[0].name == "guarantees.md"]
    assert len(guarantees) >= 20  # the guarantees page names the test behind each promise
    missing = [f"{_name(page)}: {path}::{name}" for page, path, name in sorted(named)
               if not (ROOT / path).is_file()
               or not re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M)]
    assert not missing, missing


def _command_lines(text: str) -> list[list[str]]:
    """Each `partnero-sync …` invocation in a piece of code, as the words after the program's name.

    A span of a table may give alternatives (`webhooks list|register --url URL|delete KEY`) and
    optional parts (`[--json]`): each alternative is one invocation."""
    found = []
    for line in text.replace("\\|", "|").splitlines():
        line = line.split(" #", 1)[0]
        for part in re.split(r"&&|;|\|\|", line):
            words = part.replace("[", " ").replace("]", " ").split()
            starts = [i for i, word in enumerate(words) if word.rsplit("/", 1)[-1] == "partnero-sync"]
            if not starts:
                continue
            rest = words[starts[0] + 1:]
            if not any("|" in word for word in rest):
                found.append(rest)
                continue
            # Before the first word with a "|" is shared; after it, "|" separates alternatives.
            first = next(i for i, word in enumerate(rest) if "|" in word)
            for alternative in " ".join(rest[first:]).split("|"):
                found.append(rest[:first] + alternative.split())
    return found


def _unknown_in(words: list[str]) -> str | None:
    """What in a `partnero-sync` invocation the command does not have: a command, or an option."""
    import click

    from sync.cli import main

    command: click.Command = main
    for word in words:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            known = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            if option not in known:
                return f"{command.name} has no option {option}"
        elif isinstance(command, click.Group):
            if word not in command.commands:
                return f"{command.name} has no command {word!r}"
            command = command.commands[word]
    return None


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_command_a_page_gives_exists_with_its_options(page):
    problems = []
    for text in code(page):
        if _is_code_map(text):  # the code map: descriptions, checked for its paths below
            continue
        for words in _command_lines(text):
            problem = _unknown_in(words)
            if problem:
                problems.append(f"`partnero-sync {' '.join(words)}`: {problem}")
    assert not problems, problems


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_path_and_module_a_page_names_exists(page):
    import importlib

    missing = []
    for text in code(page):
        for path in REPO_PATH.findall(text):
            path = path.rstrip(".,:")
            if not (ROOT / path).exists():
                missing.append(path)
        for program in re.findall(r"\.venv/bin/([\w-]+)", text):
            if not (Path(sys.executable).parent / program).exists():
                missing.append(f".venv/bin/{program}")
        for dotted in MODULE.findall(text):
            parts = dotted.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    found = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError:
                    continue
            else:
                missing.append(dotted)
                continue
            for name in parts[i:]:
                if not hasattr(found, name):
                    missing.append(dotted)
                    break
                found = getattr(found, name)
    assert not missing, missing


def _configuration_table() -> set[str]:
    text = _read(_page("docs/configuration.md"))
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    per_program = {f"PARTNERO_<NAME>_{m.group(1)}" for row in rows for m in PER_PROGRAM.finditer(row)
                   if "<NAME>" in m.group(0)}
    return {name for row in rows for name in VARIABLE.findall(row)} | per_program


def _as_named(name: str) -> str:
    """``name``, or the configuration table's form of it when it is one program's own variable."""
    found = PER_PROGRAM.fullmatch(name)
    if found and name not in ("PARTNERO_WEBHOOK_SECRET", "PARTNERO_API_KEY", "PARTNERO_CURRENCY"):
        return f"PARTNERO_<NAME>_{found.group(1)}"
    return name


def test_the_configuration_table_names_every_variable_and_only_those():
    read = set(re.findall(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"', (ROOT / "sync" / "settings.py").read_text()))
    table = _configuration_table()
    assert read <= table, read - table
    per_program = {name for name in table if "<NAME>" in name}
    assert per_program == {f"PARTNERO_<NAME>_{what}" for what in PROGRAM_VARIABLES}
    assert table - per_program <= read | READ_BY_LIBRARIES, table - per_program - read - READ_BY_LIBRARIES


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_variable_a_page_names_is_in_the_configuration_table(page):
    named = {_as_named(name) for text in code(page) for name in OURS.findall(text)} - NOT_VARIABLES
    assert named <= _configuration_table(), named - _configuration_table()


def unknown_metrics(text: str) -> list[str]:
    """The ``partnero_sync_*`` names in ``text`` that neither sync/ops/metrics.py nor app/metrics.py
    defines (a histogram's or counter's series suffix is allowed), sorted."""
    source = (ROOT / "sync" / "ops" / "metrics.py").read_text() + (ROOT / "app" / "metrics.py").read_text()
    missing = []
    for metric in set(re.findall(r"\bpartnero_sync_(\w+)", text)):
        name = re.sub(r"_(total|bucket|sum|count)$", "", metric)
        if f'"{name}"' not in source:
            missing.append(f"partnero_sync_{metric}")
    return sorted(missing)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_metric_a_page_names_exists(page):
    missing = unknown_metrics("\n".join(code(page)))
    assert not missing, missing


# The code map.

def _is_code_map(text: str) -> bool:
    return text.split(maxsplit=1)[:1] == ["app/"]


def _code_map() -> list[tuple[str, bool]]:
    """The architecture page's tree as (path, is a leaf) pairs."""
    [tree] = [text for _, text in blocks(_page("docs/architecture.md"), "text") if _is_code_map(text)]
    paths, stack = [], []  # the paths in order; the folders down to the current line
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2  # two spaces a level
        stack[depth:] = [line.split()[0]]
        paths.append("".join(stack))
    return [(path, not any(other != path and other.startswith(path) for other in paths)) for path in paths]


def test_the_code_map_names_what_exists_and_every_module():
    tree = _code_map()
    missing = [path for path, _ in tree if not (ROOT / path).exists()]
    assert not missing, missing
    leaves = [path for path, leaf in tree if leaf]
    modules = sorted(str(p.relative_to(ROOT)) for top in ("app", "sync") for p in (ROOT / top).rglob("*.py")
                     if "__pycache__" not in p.parts and not p.name.startswith("__"))
    unmapped = [m for m in modules if not any(m == leaf or (leaf.endswith("/") and m.startswith(leaf))
                                              for leaf in leaves)]
    assert not unmapped, unmapped


def test_every_method_the_architecture_page_names_exists():
    """`Class.method` and `module.function()` on the architecture page name code that exists."""
    sources = {p: p.read_text() for top in ("app", "sync") for p in (ROOT / top).rglob("*.py")}
    missing = []
    for span in inline_code(_page("docs/architecture.md")):
        method = re.fullmatch(r"([A-Z]\w+)\.(\w+)", span)
        function = re.fullmatch(r"(\w+)\.(\w+)\(\)", span)
        in_class = rf"^class {method[1]}\b(?:(?!^class ).)*?^    def {method[2]}\(" if method else ""
        if method and not any(re.search(in_class, text, re.M | re.S) for text in sources.values()):
            missing.append(span)
        if function and not any(p.stem == function[1] and re.search(rf"^def {function[2]}\(", text, re.M)
                                for p, text in sources.items()):
            missing.append(span)
    assert not missing, missing


# Links between pages, and to the repository's files.

def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    slugs, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def _links(page: Path) -> list[str]:
    return LINK.findall(re.sub(r"`[^`]*`", "", prose(page)))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_link_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):
            continue  # another site
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if ROOT not in (resolved, *resolved.parents) or not resolved.exists():
            broken.append(target)
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(target)
    assert not broken, broken


def test_every_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in _links(README)}
    assert not [_name(page) for page in PAGES[1:] if page.resolve() not in linked]



def test_the_configuration_table_names_the_webhook_url_variables():
    """Settings read every variable ending in _WEBHOOK_URL (a notify entry's url): the table says so."""
    from sync.mapping.spec import WEBHOOK_URL_SUFFIX

    assert f"| `<NAME>{WEBHOOK_URL_SUFFIX}` |" in _read(_page("docs/configuration.md"))
