"""The bundled examples: each one's documented eager behaviour, measured, and what fxgrad reports for it."""

from __future__ import annotations

import copy
import inspect
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

import fxgrad
from fxgrad import examples
from fxgrad.capture import node_origin
from fxgrad.cli import main
from fxgrad.examples import EXAMPLES, Example
from fxgrad.rules import RULES

from .oracle import INPLACE_ERROR, LEAF_ERROR, eager_truth, grads_differ

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _examples_get_their_lines() -> bool:
    gm = fxgrad.trace(examples.ArticleExample3())
    files = {loc.file for n in gm.graph.nodes if (loc := node_origin(n).location) is not None}
    return files == {os.path.abspath(examples.__file__)}


# Until fxgrad/capture.py stops counting fxgrad/examples.py as library code (reported to the lead), the bundled
# models get no source line of their own, and the straight-through example's `# fxgrad: ignore[FXG001]` is not
# seen; the marker switches itself off once they do.
_LINES_PENDING = pytest.mark.xfail(not _examples_get_their_lines(), strict=True,
                                   reason="capture.py treats fxgrad/examples.py as library code")


class _Reference(nn.Module):
    """An example's out-of-place meaning, on the same parameters, as a module ``eager_truth`` can run."""

    def __init__(self, ex: Example, model: nn.Module) -> None:
        super().__init__()
        self.m = model
        self.fn = ex.reference

    def forward(self, *args: Any) -> torch.Tensor:
        assert self.fn is not None
        return self.fn(self.m, *args)


def _ids(ex: Example) -> str:
    return ex.name


@pytest.mark.parametrize("ex", EXAMPLES, ids=_ids)
def test_example_eager_behaviour_and_findings(ex: Example) -> None:
    torch.manual_seed(0)
    model = ex.model()
    inputs = ex.inputs()
    truth = eager_truth(model, inputs)
    eager = ex.eager

    # what eager PyTorch does, as the example documents it
    if eager.raises == "forward":
        assert truth.forward_error is not None and eager.error in truth.forward_error
    elif eager.raises == "backward":
        assert truth.forward_error is None
        assert truth.backward_error is not None and eager.error in truth.backward_error
    else:
        assert truth.clean_run, (truth.forward_error, truth.backward_error)
        assert truth.no_grad_params == frozenset(eager.no_grad)
        assert truth.zero_grad_params == frozenset(eager.zero_grad)
    assert truth.inputs_mutated == eager.mutates_input
    if ex.reference is not None:
        ref = eager_truth(_Reference(ex, copy.deepcopy(model)), inputs)
        ref_grads = {name.removeprefix("m."): g for name, g in ref.grads.items()}
        assert len(truth.outputs) == len(ref.outputs)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(truth.outputs, ref.outputs, strict=True))
        assert grads_differ(truth.grads, ref_grads) != eager.matches_reference

    # what fxgrad reports (with suppressed findings counted: whether the comment is seen is tested below)
    report = fxgrad.analyze(model, inputs, **ex.analyze_kwargs(model))
    found = {f.code for f in report.findings} | {f.code for f in report.suppressed}
    assert found == ex.codes | ex.suppressed
    assert report.ok == (not any(f.severity == "error" for f in report.findings))
    if eager.raises or (ex.reference is not None and not eager.matches_reference):
        assert not report.ok  # an example on which backward raises or computes wrong gradients is an error


def test_examples_cover_every_documented_pitfall() -> None:
    codes = set().union(*(ex.codes | ex.suppressed for ex in EXAMPLES))
    assert {r.code for r in RULES} - codes == set()
    assert {ex.codes for ex in EXAMPLES[:2]} == {frozenset()}  # the article's Examples 1 and 2: nothing to find
    assert len({ex.name for ex in EXAMPLES}) == len(EXAMPLES)


@_LINES_PENDING
@pytest.mark.parametrize("ex", [e for e in EXAMPLES if e.codes - {"FXG203"} or e.suppressed], ids=_ids)
def test_examples_point_at_their_own_lines(ex: Example) -> None:
    torch.manual_seed(0)
    model = ex.model()
    report = fxgrad.analyze(model, ex.inputs(), **ex.analyze_kwargs(model))
    off = {r.code for r in RULES if not r.default}  # shown only when selected: correct code reports nothing
    assert {f.code for f in report.findings} == ex.codes - off
    assert {f.code for f in report.suppressed} == ex.suppressed | (ex.codes & off)
    lines, start = inspect.getsourcelines(type(model))
    for f in report.findings + report.suppressed:
        if f.code in ("FXG203", "FXG204", "FXG205", "FXG206"):
            continue  # an unused parameter, or what the optimizer holds, has no line
        assert f.location is not None, f
        assert f.location.file == os.path.abspath(examples.__file__)
        assert start <= f.location.line < start + len(lines), f


def test_demo_runs_and_lists_every_example() -> None:
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "fxgrad", "demo"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for ex in EXAMPLES:
        assert ex.name in proc.stdout
    assert "FXG102" in proc.stdout and "FXG106" in proc.stdout


def test_demo_shows_one_full_report(capsys: pytest.CaptureFixture[str]) -> None:
    ex = examples.get("sigmoid_mul")
    truth = eager_truth(ex.model(), ex.inputs())
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    assert main(["demo", "sigmoid_mul"]) == 0
    out = capsys.readouterr().out
    assert "FXG102" in out and "ERRORS (1)" in out and ex.eager.text in out
    assert "fxgrad check fxgrad.examples:SigmoidMul --input 8x4" in out


def test_demo_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no example 'nope'" in err


def test_param_inplace_example_is_the_leaf_error() -> None:
    # the one example whose forward raises: fxgrad says so before any forward runs
    ex = examples.get("param_inplace")
    truth = eager_truth(ex.model(), ex.inputs())
    assert truth.leaf_error and LEAF_ERROR in (truth.forward_error or "")
    model = ex.model()
    report = fxgrad.analyze(model, None, **ex.analyze_kwargs(model))
    assert report.codes() == ["FXG103"]
