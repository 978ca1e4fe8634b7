"""fxgrad against eager PyTorch on small re-creations of architectures people train (``tests/architectures.py``).

For every model, clean and with an injected bug, the test measures eager (:func:`oracle.eager_truth`: a real
forward and backward on a deep copy) and compares ``fxgrad.analyze(model, inputs)`` with it. Disagreements are
fxgrad bugs: they stay as strict xfails that say what eager does and what fxgrad says.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import fxgrad

from . import architectures
from .architectures import ARCHITECTURES, BUGGY, Arch, build, build_inputs
from .oracle import Truth, eager_truth, grads_differ
from .test_rules import mismatches

ARCH_FILE = os.path.abspath(architectures.__file__)

_ZERO_VALUED_INPUTS = (
    "eager: dec_self_attn.in_proj_weight, dec_self_attn.out_proj.weight and dec_norm1.weight get all-zero "
    "gradients; fxgrad: status 'ok' (no FXG202). DETR's first decoder layer runs on tgt = torch.zeros_like("
    "query_pos): the self-attention's value input is zero and nn.MultiheadAttention's in_proj_bias is initialised "
    "to zero, so in_proj_weight's gradient is zero (q/k only reweight identical zero values), out_proj's input is "
    "zero, and dec_norm1 normalises an all-zero tensor. fxgrad's zero-grad verdict only knows ops whose derivative "
    "is zero (round, floor, sign), not values that are zero; dryrun='real' says the same. Minimal: "
    "forward(x) = self.out(self.lin(torch.zeros_like(x))) -> eager lin.weight zero-grad, fxgrad 'ok'.")
#: clean models whose report disagrees with eager (default capture)
CLEAN_BUGS: dict[str, str] = {"detr": _ZERO_VALUED_INPUTS}
#: bug variants whose report misses or misplaces the bug eager shows
BUG_REPORT_BUGS: dict[str, str] = {}
#: bug variants whose report disagrees with eager elsewhere (parameter statuses, other codes)
BUG_MATCH_BUGS: dict[str, str] = {"detr+detach": _ZERO_VALUED_INPUTS}
#: entries whose capture="run" report disagrees with eager
RUN_BUGS: dict[str, str] = {"detr": _ZERO_VALUED_INPUTS, "detr+detach": _ZERO_VALUED_INPUTS}


def _params(entries: dict[str, Arch], bugs: dict[str, str]) -> list[Any]:
    return [pytest.param(a, id=name, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=bugs[name])
                         if name in bugs else ())
            for name, a in entries.items()]


# ----------------------------------------------------------------------------------------------------------------
# Helpers: eager's verdicts, and what analysis must leave as it was
# ----------------------------------------------------------------------------------------------------------------


def _outputs_differ(a: Truth, b: Truth) -> bool:
    return len(a.outputs) != len(b.outputs) or any(
        x.shape != y.shape or not torch.allclose(x, y, rtol=1e-4, atol=1e-6)
        for x, y in zip(a.outputs, b.outputs, strict=False))


def _silently_wrong(truth: Truth, ref: Truth | None) -> bool:
    """Eager runs, computes the reference's outputs, and different gradients: a write autograd did not see."""
    return (ref is not None and truth.clean_run and not _outputs_differ(truth, ref)
            and grads_differ(truth.grads, ref.grads))


def _eager_ok(truth: Truth, ref: Truth | None) -> bool:
    """Backward runs, every trainable parameter gets a ``.grad``, and the gradients are the right ones."""
    return truth.clean_run and not truth.no_grad_params and not _silently_wrong(truth, ref)


def _truths(a: Arch) -> tuple[Truth, Truth | None]:
    truth = eager_truth(build(a), build_inputs(a))
    ref = eager_truth(build(a, reference=True), build_inputs(a)) if a.reference is not None else None
    return truth, ref


_PLAIN = (int, float, bool, str, type(None))


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything of ``model`` that analysis must not change: state, ``.grad``, flags, plain attributes."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {n: p.grad is None for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "attrs": {(mod, k): v for mod, m in model.named_modules() for k, v in vars(m).items()
                  if not k.startswith("_") and isinstance(v, _PLAIN)},
        "tensor_attrs": {(mod, k) for mod, m in model.named_modules() for k, v in vars(m).items()
                         if isinstance(v, torch.Tensor)},
    }


def _assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    changed = [k for k, v in after["state"].items() if not torch.equal(v, before["state"][k])]
    assert not changed, f"analysis changed the model's state: {changed}"
    assert all(after["grads"].values()), "analysis left a .grad on the model"
    assert after["requires_grad"] == before["requires_grad"]
    assert after["attrs"] == before["attrs"], "analysis changed a module attribute"
    assert after["tensor_attrs"] == before["tensor_attrs"], "analysis set a tensor attribute on a module"


def _analyse(a: Arch, **kwargs: Any) -> fxgrad.Report:
    """``fxgrad.analyze`` on a fresh model, checking that it leaves the model as it was."""
    model, inputs = build(a), build_inputs(a)
    before = _snapshot(model)
    assert all(p.grad is None for p in model.parameters())
    report = fxgrad.analyze(model, inputs, **kwargs)
    _assert_unchanged(model, before)
    if a.python_control_flow:  # symbolic tracing cannot follow it: fxgrad must have run the model
        assert report.capture == "run", report.notes
    return report


def _check_against_eager(report: fxgrad.Report, truth: Truth, ref: Truth | None, name: str) -> None:
    problems = mismatches(report, truth, ref, decidable=True)
    assert not problems, f"{name} (capture={report.capture}):\n  " + "\n  ".join(problems) + f"\n{report}"
    status = {n: p.status for n, p in report.params.items()}
    eager_status = {n: "unused" if n in truth.unused_params else "no-grad" if n in truth.no_grad_params
                    else "zero-grad" if n in truth.zero_grad_params else "ok" for n in truth.grads}
    if truth.clean_run:
        assert status == eager_status, {n: (s, eager_status.get(n)) for n, s in status.items()
                                        if s != eager_status.get(n)}
    else:
        assert set(status) == set(eager_status)
    assert report.ok == _eager_ok(truth, ref), f"report.ok={report.ok}, eager ok={_eager_ok(truth, ref)}\n{report}"


def _marked(finding: fxgrad.Finding, marker: str) -> None:
    loc = finding.location
    assert loc is not None, f"{finding.code} has no location: {finding.message}"
    assert loc.file == ARCH_FILE, loc
    assert marker in loc.code, f"{finding.code} at {loc}: {loc.code!r}"


# ----------------------------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These models are tiny: intra-op threads gain nothing, and OpenMP threads spinning at a barrier make every op
    ~100x slower while another process holds one of the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)



def test_at_least_twelve_architectures() -> None:
    families = {a.family for a in ARCHITECTURES.values()}
    assert len(families) >= 12, sorted(families)
    bug_families = {a.family for a in BUGGY.values()}
    assert len(bug_families) >= 8, sorted(bug_families)
    assert all(a.family in families for a in BUGGY.values())
    with open(ARCH_FILE) as f:
        source = f.read()
    assert "import torchvision" not in source and "import timm" not in source and "transformers" not in source


@pytest.mark.parametrize("a", _params(ARCHITECTURES, CLEAN_BUGS))
def test_clean_model_matches_eager(a: Arch) -> None:
    truth, ref = _truths(a)
    assert truth.forward_error is None, truth.forward_error
    report = _analyse(a)
    _check_against_eager(report, truth, ref, a.name)
    if truth.clean_run and not truth.no_grad_params:  # correct code reports nothing by default
        assert report.findings == [], report


@pytest.mark.parametrize("a", _params(BUGGY, BUG_REPORT_BUGS))
def test_injected_bug_is_reported_at_its_line(a: Arch) -> None:
    truth, ref = _truths(a)
    clean = eager_truth(build(ARCHITECTURES[a.name.split("+")[0]]), build_inputs(a))
    assert _eager_ok(clean, None), "the clean model must train before its bug is injected"
    assert truth.forward_error is None, truth.forward_error
    report = _analyse(a)
    assert not _eager_ok(truth, ref) and not report.ok, report
    if a.bug == "inplace":
        # eager either raises in backward, or (a write autograd cannot see) computes wrong gradients
        silent = _silently_wrong(truth, ref)
        assert truth.inplace_error or silent, truth
        code = "FXG102" if truth.inplace_error else "FXG106"
        findings = report.by_code(code)
        assert findings, f"eager: {truth.backward_error or 'silently wrong gradients'}; no {code}:\n{report}"
        for f in findings:
            _marked(f, "# BUG: inplace")
    else:
        cut = {n for n in truth.grads if n.startswith(a.cut)}
        assert cut and cut <= truth.no_grad_params, (cut, truth.no_grad_params)
        assert truth.clean_run
        (detach,) = report.by_code("FXG001")
        _marked(detach, "# BUG: detach")
        lost = report.by_code("FXG201")
        assert lost, report
        for f in lost:
            _marked(f, "# BUG: detach")
        assert {n for f in lost for n in f.params} == set(truth.no_grad_params - truth.unused_params)
        assert cut <= set(detach.params)


@pytest.mark.parametrize("a", _params(BUGGY, BUG_MATCH_BUGS))
def test_bug_variant_matches_eager(a: Arch) -> None:
    truth, ref = _truths(a)
    report = _analyse(a)
    _check_against_eager(report, truth, ref, a.name)


@pytest.mark.parametrize("a", _params({**ARCHITECTURES, **BUGGY}, RUN_BUGS))
def test_run_capture_matches_eager(a: Arch) -> None:
    """``capture="run"`` on every model, traceable or not: the recorded graph must judge gradients like eager."""
    truth, ref = _truths(a)
    report = _analyse(a, capture="run")
    assert report.capture == "run"
    _check_against_eager(report, truth, ref, a.name)
