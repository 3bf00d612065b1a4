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
