"""SARIF output: valid against the SARIF 2.1.0 schema, every rule described, results on the user's lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

import fxgrad
from fxgrad.cli import main
from fxgrad.rules import RULES
from fxgrad.sarif import SRCROOT, to_sarif

from .oracle import INPLACE_ERROR, eager_truth
from .test_cli import _import, _line

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())

MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.aux = nn.Linear(2, 2)
        self.teacher = nn.Linear(4, 2)

    def forward(self, x):
        t = torch.sigmoid(self.enc(x))
        t.mul_(2.0)
        y = self.head(t)
        return y + self.teacher(x).detach()  # fxgrad: ignore[FXG001]
'''


def _validate(log: dict[str, Any]) -> None:
    jsonschema.validate(log, SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_sarif_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "models"
    src.mkdir()
    path = src / "net.py"
    path.write_text(MODEL)
    truth = eager_truth(_import(path).Net(), (torch.randn(3, 4),))
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    monkeypatch.chdir(tmp_path)

    assert main(["check", "models/net.py:Net", "--input", "3x4", "--format", "sarif"]) == 1
    log = json.loads(capsys.readouterr().out)
    _validate(log)
    run = log["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == [r.code for r in RULES]
    assert run["originalUriBaseIds"][SRCROOT]["uri"] == tmp_path.resolve().as_uri() + "/"

    results = {r["ruleId"]: r for r in run["results"]}
    assert set(results) == {"FXG102", "FXG203", "FXG001", "FXG201"}
    mul = results["FXG102"]
    assert mul["level"] == "error"
    phys = mul["locations"][0]["physicalLocation"]
    assert phys["artifactLocation"] == {"uri": "models/net.py", "uriBaseId": SRCROOT}
    assert phys["region"]["startLine"] == _line(path, "t.mul_(2.0)")
    assert mul["relatedLocations"][0]["physicalLocation"]["region"]["startLine"] == _line(path, "torch.sigmoid")
    assert run["tool"]["driver"]["rules"][mul["ruleIndex"]]["id"] == "FXG102"

    # a finding with no line of its own (an unused submodule) is shown on the model's class
    unused = results["FXG203"]
    assert unused["locations"][0]["physicalLocation"]["region"]["startLine"] == _line(path, "class Net")
    assert truth.no_grad_params >= {"aux.weight", "aux.bias"}

    # silenced on its line: kept, as an in-source suppression that viewers hide; the teacher it cuts off is
    # frozen on purpose, its FXG201 accepted with it (eager: the teacher gets no gradient)
    assert results["FXG001"]["suppressions"] == [{"kind": "inSource"}]
    assert results["FXG201"]["suppressions"] == [{"kind": "inSource"}]
    assert truth.no_grad_params >= {"teacher.weight", "teacher.bias"}


def test_sarif_root_and_files_outside_it(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text(MODEL)
    model = _import(path).Net()
    report = fxgrad.analyze(model, (torch.randn(3, 4),))

    log = to_sarif(report, root=tmp_path.parent)
    _validate(log)
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert uri == {"uri": f"{tmp_path.name}/net.py", "uriBaseId": SRCROOT}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = to_sarif(report, root=elsewhere)
    _validate(log)
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert uri == {"uri": path.resolve().as_uri()}  # outside the root: an absolute file URI, no base


def test_sarif_of_a_clean_model_has_rules_and_no_results() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    truth = eager_truth(model, (torch.randn(3, 4),))
    assert truth.clean_run and not truth.no_grad_params
    log = to_sarif(fxgrad.analyze(model, (torch.randn(3, 4),)))
    _validate(log)
    assert log["runs"][0]["results"] == [] and len(log["runs"][0]["tool"]["driver"]["rules"]) == len(RULES)
