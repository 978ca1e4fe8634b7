"""The README's promises: the rule table lists every rule as the catalog defines it, the quickstart is two
commands, and the commands it names exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from fxgrad.rules import RULES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_rules_docs", ROOT / "tools" / "gen_rules_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_rule_table_is_the_catalog() -> None:
    for r in RULES:
        row = f"| {r.severity} | {r.summary} |"
        assert f"[{r.code}](docs/rules.md#" in README and row in README, f"README's rule table lacks {r.code}"
    assert _generator().render_readme(README) == README, "README's rule table is stale: run tools/gen_rules_docs.py"


def test_rule_docs_are_generated_from_the_rules() -> None:
    gen = _generator()
    docs = (ROOT / "docs" / "rules.md").read_text()
    assert docs == gen.render_docs(), "docs/rules.md is stale: run python tools/gen_rules_docs.py"
    for r in RULES:
        assert f"## {r.code} `{r.name}` ({r.severity})" in docs
        assert f"(docs/rules.md#{r.code.lower()}-{r.name}-{r.severity})" in README  # the anchor GitHub makes


def test_readme_quickstart_has_the_two_commands_ci_runs() -> None:
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in README and "pip install -q torch==2.13.0" in ci
    assert "pip install -e '.[dev]'" in README and "pip install -q -e '.[dev]'" in ci
    assert "fxgrad demo" in README
    assert ".venv/bin/python -m pytest" in README and ".venv/bin/python -m pytest" in ci
