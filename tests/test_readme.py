"""The README's promises: the rule table lists every rule as the catalog defines it, the quickstart is two
commands, and the commands it names exist."""

from __future__ import annotations

from pathlib import Path

from fxgrad.rules import RULES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_rule_table_is_the_catalog() -> None:
    for r in RULES:
        row = f"| {r.code} | {r.severity} | {r.summary} | {'yes' if r.fixable else 'no'} |"
        assert row in README, f"README's rule table is out of date for {r.code}: expected\n{row}"


def test_readme_quickstart_has_the_two_commands_ci_runs() -> None:
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in README and "pip install -q torch==2.13.0" in ci
    assert "pip install -e '.[dev]'" in README and "pip install -q -e '.[dev]'" in ci
    assert "fxgrad demo" in README
    assert ".venv/bin/python -m pytest" in README and ".venv/bin/python -m pytest" in ci
