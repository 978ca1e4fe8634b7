"""fxgrad's verdicts against eager PyTorch, case by case.

Every expectation here is measured in the same test: :func:`oracle.eager_truth` runs the model's real forward
and backward, and fxgrad's report must say what eager did. Known disagreements stay in place as strict xfails
that name the fxgrad bug, so they turn into failures the day they are fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import fxgrad
from fxgrad.rules import RULES

from .corpus import CASES, Case, build, build_inputs
from .oracle import Truth, eager_truth, grads_differ
from .test_step import CASES as STEP_CASES
from .test_step import OPTIMIZER_PAIRS

# Static verdicts (no example inputs) that disagree with eager: fxgrad bugs, reported to the lead.
STATIC_BUGS: dict[str, str] = {}
# Dry-run verdicts (with example inputs) that disagree with eager.
DRYRUN_BUGS: dict[str, str] = {}


def _cases(bugs: dict[str, str]) -> list[object]:
    return [pytest.param(c, id=name, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=bugs[name])
                         if name in bugs else ())
            for name, c in CASES.items()]


def _truth(c: Case, *, reference: bool = False) -> Truth:
    return eager_truth(build(c, reference=reference), build_inputs(c))


def _outputs_differ(a: Truth, b: Truth) -> bool:
    return len(a.outputs) != len(b.outputs) or any(
        x.shape != y.shape or not torch.allclose(x, y, rtol=1e-4, atol=1e-6)
        for x, y in zip(a.outputs, b.outputs, strict=False))


def _silently_wrong(truth: Truth, ref: Truth | None) -> bool:
    """Same forward values as the out-of-place program, different gradients: a write autograd did not see."""
    return ref is not None and not _outputs_differ(truth, ref) and grads_differ(truth.grads, ref.grads)


def mismatches(report: fxgrad.Report, truth: Truth, ref: Truth | None, *, decidable: bool) -> list[str]:
    """Every way ``report`` disagrees with what eager did (empty: they agree)."""
    # Suppression hides a finding from the user; it does not change what fxgrad found.
    found = report.findings + report.suppressed
    codes = {f.code for f in found}
    status = {name: p.status for name, p in report.params.items()}
    bad: list[str] = []

    def expect(what: str, fxgrad_says: object, eager_says: object) -> None:
        if fxgrad_says != eager_says:
            bad.append(f"{what}: fxgrad {fxgrad_says!r}, eager {eager_says!r}")

    expect("reported parameters", set(status), set(truth.grads))
    if decidable:
        expect("FXG103 (forward raises the leaf error)", "FXG103" in codes, truth.leaf_error)
    if decidable and truth.forward_error is None:  # when forward raises, eager never reaches backward
        expect("FXG102 (backward raises the in-place error)", "FXG102" in codes, truth.inplace_error)
    if truth.forward_error is None:
        expect("FXG105 (the caller's input changes)", "FXG105" in codes, truth.inputs_mutated)
    if truth.clean_run:
        expect("no-grad or unused parameters", {n for n, s in status.items() if s in ("no-grad", "unused", "frozen")},
               set(truth.no_grad_params))
        expect("unused parameters", {n for n, s in status.items() if s == "unused"}, set(truth.unused_params))
        expect("zero-grad parameters", {n for n, s in status.items() if s == "zero-grad"},
               set(truth.zero_grad_params))
        if decidable:
            expect("FXG101 (legal in-place on an activation)", "FXG101" in codes, truth.activation_mutated)
    if ref is not None and truth.clean_run and decidable:
        expect("FXG104 (a later read sees the in-place write)", "FXG104" in codes, _outputs_differ(truth, ref))
        expect("FXG106 (silently wrong gradient)", "FXG106" in codes, _silently_wrong(truth, ref))
    if decidable:
        eager_ok = truth.clean_run and not (truth.no_grad_params - truth.unused_params) and not _silently_wrong(
            truth, ref)
        expect("no error-severity finding", not any(f.severity == "error" for f in found), eager_ok)
    return bad


@pytest.mark.parametrize("c", _cases(STATIC_BUGS))
def test_static_verdicts_match_eager(c: Case) -> None:
    truth = _truth(c)
    ref = _truth(c, reference=True) if c.reference else None
    report = fxgrad.analyze(build(c))
    assert report.mode == "static"
    problems = mismatches(report, truth, ref, decidable=c.static_ok)
    assert not problems, f"{c.name} ({c.what}):\n  " + "\n  ".join(problems) + f"\n{report}"


@pytest.mark.parametrize("c", _cases(DRYRUN_BUGS))
def test_dryrun_verdicts_match_eager(c: Case) -> None:
    truth = _truth(c)
    ref = _truth(c, reference=True) if c.reference else None
    if truth.forward_error is not None and not truth.leaf_error:
        # The model raises on any input; fxgrad may say so as an error or as a report that is not ok.
        try:
            report = fxgrad.analyze(build(c), build_inputs(c))
        except fxgrad.FxgradError as e:
            assert truth.forward_error.splitlines()[0][:40] in str(e)
            assert e.__cause__ is not None
            return
        assert not report.ok, f"eager forward raises ({truth.forward_error}) but the report is ok:\n{report}"
        return
    report = fxgrad.analyze(build(c), build_inputs(c))
    problems = mismatches(report, truth, ref, decidable=True)
    assert not problems, f"{c.name} ({c.what}):\n  " + "\n  ".join(problems) + f"\n{report}"


def test_corpus_is_large_and_documented() -> None:
    assert len(CASES) >= 45
    for c in CASES.values():
        assert c.what and c.what != c.name, f"{c.name} needs a docstring saying what it exercises"
    undecidable = [c for c in CASES.values() if not c.static_ok]
    assert all(c.reason for c in undecidable)
    assert len(undecidable) <= len(CASES) // 10, "static_ok=False is for the few legitimately undecidable cases"


# ----------------------------------------------------------------------------------------------------------------
# The article's examples.
# ----------------------------------------------------------------------------------------------------------------


def test_article_example_2_has_no_findings() -> None:
    c = CASES["Ex2MulScalar"]
    truth = _truth(c)
    assert truth.clean_run and not truth.no_grad_params and not truth.zero_grad_params
    report = fxgrad.analyze(build(c))
    assert report.findings == []
    assert {p.status for p in report.params.values()} == {"ok"}


def test_article_example_3_is_one_legal_inplace_warning() -> None:
    ex2, ex3 = _truth(CASES["Ex2MulScalar"]), _truth(CASES["Ex3InplaceMulScalar"])
    # `t *= 2.0` computes exactly what `t * 2.0` computes, gradients included: nothing breaks.
    assert ex3.clean_run and not grads_differ(ex2.grads, ex3.grads)
    report = fxgrad.analyze(build(CASES["Ex3InplaceMulScalar"]))
    assert report.findings == [] and report.ok and report.hidden == {"FXG101": 1}  # correct code: nothing shown
    report = fxgrad.analyze(build(CASES["Ex3InplaceMulScalar"]), select=["FXG101"])
    assert [f.code for f in report.findings] == ["FXG101"]
    assert report.ok
    finding = report.findings[0]
    assert finding.location is not None and finding.location.code == "t *= 2.0"


# ----------------------------------------------------------------------------------------------------------------
# One flagged and one clean model per code, each side backed by an eager measurement.
# ----------------------------------------------------------------------------------------------------------------


def _lost(t: Truth, r: Truth | None) -> bool:
    return t.clean_run and bool(t.no_grad_params - t.unused_params)


_SIGNALS: dict[str, Callable[[Truth, Truth | None], bool]] = {
    "cut": _lost,
    "zero": lambda t, r: t.clean_run and bool(t.zero_grad_params),
    "activation": lambda t, r: t.clean_run and t.activation_mutated,
    "inplace_error": lambda t, r: t.inplace_error,
    "leaf_error": lambda t, r: t.leaf_error,
    "alias": lambda t, r: r is not None and _outputs_differ(t, r),
    "input": lambda t, r: t.inputs_mutated,
    "silent": _silently_wrong,
    "unused": lambda t, r: t.clean_run and bool(t.unused_params),
    "no_derivative": lambda t, r: t.backward_error is not None and "not implemented" in t.backward_error,
    "forward_error": lambda t, r: t.forward_error is not None and not t.leaf_error,
    "slope_error": lambda t, r: t.backward_error is not None and "with a negative slope" in t.backward_error,
    "inplace_no_derivative": lambda t, r: t.backward_error is not None and "'inplace version of" in t.backward_error,
}

#: code -> the eager signal that tells its rule's flagged case (``Rule.flagged``) from its clean case
SIGNAL_OF: dict[str, str] = {
    "FXG001": "cut", "FXG002": "cut", "FXG003": "cut", "FXG004": "cut", "FXG005": "cut", "FXG006": "cut",
    "FXG007": "zero", "FXG008": "cut", "FXG009": "no_derivative", "FXG010": "forward_error",
    "FXG101": "activation", "FXG102": "inplace_error", "FXG103": "leaf_error", "FXG104": "alias", "FXG105": "input",
    "FXG106": "silent", "FXG107": "forward_error", "FXG108": "slope_error", "FXG109": "inplace_no_derivative",
    "FXG201": "cut", "FXG202": "zero", "FXG203": "unused",
}
#: code -> (flagged case, clean case, the eager signal that tells them apart); the optimizer codes' cases are run
#: against eager by tests/test_step.py
PAIRS: dict[str, tuple[str, str, str]] = {r.code: (r.flagged, r.clean, SIGNAL_OF[r.code]) for r in RULES
                                          if r.code not in OPTIMIZER_PAIRS}


@pytest.mark.parametrize("code", sorted(PAIRS))
def test_rule_flagged_and_clean(code: str) -> None:
    flagged, clean, signal = PAIRS[code]
    for name, expected in ((flagged, True), (clean, False)):
        c = CASES[name]
        truth = _truth(c)
        ref = _truth(c, reference=True) if c.reference else None
        assert _SIGNALS[signal](truth, ref) is expected, f"eager does not show {signal!r}={expected} for {name}"
        report = fxgrad.analyze(build(c))
        found = {f.code for f in report.findings + report.suppressed}  # FXG101 is off by default, not absent
        assert (code in found) is expected, f"{code} on {name}:\n{report}"


@pytest.mark.parametrize("code", sorted(r.code for r in RULES if r.check is not None))
def test_every_fact_a_rule_reads_reaches_it(code: str) -> None:
    """The gates are derived from the rules: a node reaches a rule's check only if the forward pass flagged it and
    it sets the rule's first fact. On the rule's flagged example (eager shows the problem: the test above) the node
    it reports must be flagged and set every fact the rule reads; on its clean example the rule finds nothing."""
    from fxgrad.facts import compute_facts
    from fxgrad.rules import RULES_BY_CODE, run_rules

    rule = RULES_BY_CODE[code]
    for name, expected in ((rule.flagged, True), (rule.clean, False)):
        c = CASES[name]
        assert _SIGNALS[SIGNAL_OF[code]](_truth(c), _truth(c, reference=True) if c.reference else None) is expected
        model = build(c)
        facts = compute_facts(fxgrad.trace(model), model=model)
        mine = [f for f in run_rules(facts) if f.code == code]
        assert bool(mine) is expected, f"{code} on {name}: {mine}"
        flagged = {nf.node.name: nf for nf in facts.flagged or ()}
        for f in mine:
            nf = flagged.get(f.node)
            assert nf is not None, f"{code} reported `{f.node}`, a node the forward pass did not flag"
            unset = [fact for fact in rule.reads if not getattr(nf, fact)]
            assert not unset, f"{code} on {name}: `{f.node}` does not set {unset}, which the rule says it reads"


def test_every_rule_has_a_flagged_and_a_clean_case() -> None:
    codes = [r.code for r in RULES]
    assert len(codes) == len(set(codes)), "rule codes must be unique"
    assert sorted(codes) == sorted(SIGNAL_OF.keys() | OPTIMIZER_PAIRS.keys()), (
        "every rule needs an eager signal here or an optimizer pair in tests/test_step.py")
    for r in RULES:
        assert r.flagged and r.clean and r.flagged != r.clean, r.code
        assert r.code[:4] == {"cut": "FXG0", "write": "FXG1", "param": "FXG2"}[r.family], r.code
        assert r.fix in ("safe", "unsafe", "none") and r.severity in ("error", "warning", "info"), r.code
        assert "" in r.messages and r.example and r.use_instead, f"{r.code} needs a message, an example, a fix"
    for code, (flagged, clean) in OPTIMIZER_PAIRS.items():  # run by tests/test_step.py against eager
        rule = next(r for r in RULES if r.code == code)
        assert (rule.flagged, rule.clean) == (flagged, clean), code
        assert code in STEP_CASES[flagged][2] and code not in STEP_CASES[clean][2], code
    for code, (flagged, clean, signal) in PAIRS.items():
        assert flagged in CASES and clean in CASES, code
        assert signal in _SIGNALS, code


#: backward errors fxgrad predicts from forward, every spelling, with close misses: case -> the code that must be
#: reported exactly when eager backward raises that code's error (its signal)
BACKWARD_ERROR_CASES: dict[str, str] = {
    "LeakyReluInplaceNegativeSlope": "FXG108", "LeakyReluModuleNegativeSlope": "FXG108",
    "LeakyReluInplaceZeroSlope": "FXG108", "LeakyReluInplaceNegativeSlopeNoGradNeeded": "FXG108",
    "LeakyReluNegativeSlope": "FXG108", "EluInplaceNegativeAlpha": "FXG108", "CeluInplaceNegativeAlpha": "FXG108",
    "RReLUEvalInplaceNegative": "FXG108", "RReLUTrainInplaceNegative": "FXG108",
    "AsinhInplace": "FXG109", "AcoshAtanhInplace": "FXG109", "AsinhOutOfPlace": "FXG109",
    "AsinhInplaceNoGradNeeded": "FXG109",
    "IgammaOfActivation": "FXG009", "IgammaOfInputAtActivation": "FXG009", "ZetaOfActivation": "FXG009",
}


@pytest.mark.parametrize("name", sorted(BACKWARD_ERROR_CASES))
def test_backward_errors_visible_in_forward_are_predicted_and_fixed(name: str) -> None:
    """The code exactly where eager backward raises its error, statically and in the dry-run; where the rule's fix
    is safe, ``fxgrad.fix`` repairs it: the fixed module's backward runs, with the out-of-place program's
    gradients."""
    from fxgrad.rules import RULES_BY_CODE

    c, code = CASES[name], BACKWARD_ERROR_CASES[name]
    truth = _truth(c)
    raises = _SIGNALS[SIGNAL_OF[code]](truth, None)
    assert raises or truth.clean_run, truth
    for report in (fxgrad.analyze(build(c)), fxgrad.analyze(build(c), build_inputs(c))):
        assert (code in report.codes()) is raises, f"{name}:\n{report}"
        assert report.ok is not raises
    if not raises or RULES_BY_CODE[code].fix != "safe":
        return
    assert c.reference is not None
    fixed = fxgrad.fix(build(c), build_inputs(c))
    record = fixed.meta["fxgrad"]
    assert record.rewrites and not record.left and record.verification is not None
    got, ref = eager_truth(fixed, build_inputs(c)), _truth(c, reference=True)
    assert got.clean_run and ref.clean_run
    assert set(got.grads) == set(ref.grads) and not grads_differ(got.grads, ref.grads)


def _template_pattern(template: str) -> str:
    import re
    import string

    return "".join(re.escape(text) + (".*?" if field else "")
                   for text, field, _, _ in string.Formatter().parse(template))


@pytest.mark.parametrize("code", sorted(r.code for r in RULES if r.check is not None))
def test_static_and_dry_run_findings_render_one_template(code: str) -> None:
    """Every finding's message is its rule's template filled in, whether the static pass or the dry-run found
    it (they used to word FXG009 and FXG103 differently)."""
    import re

    from fxgrad.rules import RULES_BY_CODE

    rule = RULES_BY_CODE[code]
    patterns = [re.compile(_template_pattern(t), re.S) for t in rule.messages.values()]
    c = CASES[rule.flagged]
    seen = set()
    for report in (fxgrad.analyze(build(c)), fxgrad.analyze(build(c), build_inputs(c))):
        for f in report.findings + report.suppressed:
            r = RULES_BY_CODE[f.code]
            assert any(re.fullmatch(_template_pattern(t), f.message, re.S) for t in r.messages.values()), \
                f"{f.code} ({f.verdict}) does not render its template: {f.message}"
            if f.code == code:
                seen.add(f.verdict)
                assert any(p.fullmatch(f.message) for p in patterns)
    assert seen == ({"static", "dry-run"} if rule.dryrun else {"static"}), f"{code}: found by {seen} on {rule.flagged}"


def test_no_derivative_tables_are_autograd_s() -> None:
    """The op tables behind FXG009 and FXG109 say what torch's own derivatives.yaml says (``not_implemented`` for
    an argument of an op a model calls), and the autograd node classes the dry-run asks raise at backward exactly
    when a gradient flows into that argument."""
    import re
    from pathlib import Path

    import torchgen

    from fxgrad import ops

    yaml = (Path(torchgen.__file__).parent / "packaged" / "autograd" / "derivatives.yaml").read_text()
    inplace = set(re.findall(r"- name: (\w+)_\(Tensor\(a!\) self\) -> Tensor\(a!\)\n  self: not_implemented\(\"inplace "
                             r"version of \1\"\)", yaml))
    assert inplace == set(ops.INPLACE_NO_DERIVATIVE)
    for op, arg in ops.NO_DERIVATIVE_FOR.items():
        aten = {"special_gammainc": "igamma", "special_gammaincc": "igammac"}.get(op, op)
        entry = rf"- name: {aten}\(Tensor self, Tensor other\) -> Tensor\n  {arg}: '?not_implemented"
        assert re.search(entry, yaml), op
    h, one = torch.rand(3, requires_grad=True) + 0.5, torch.ones(3)
    made = [torch.igamma(h, one), torch.igammac(h, one), h.clone().igamma_(one), h.clone().igammac_(one),
            torch.special.zeta(h + 1, one), torch.special.zeta(h + 1, 2.0)]
    assert {type(t.grad_fn).__name__ for t in made} == set(ops.NO_DERIVATIVE_GRAD_FNS)
    for second in (torch.ones(3), torch.ones(3, requires_grad=True)):
        with pytest.raises(RuntimeError, match="is not implemented"):
            torch.igamma(h, second).sum().backward()
    x = torch.ones(3, requires_grad=True)
    torch.igamma(torch.ones(3), x + 1).sum().backward()  # the other argument has a derivative
    assert x.grad is not None


def test_findings_name_the_users_line() -> None:
    c = CASES["SigmoidMul_"]
    assert _truth(c).inplace_error
    (finding,) = fxgrad.analyze(build(c)).by_code("FXG102")
    assert finding.location is not None
    assert finding.location.file.endswith("corpus.py")
    assert finding.location.code == "t.mul_(2.0)"
    assert [r.location.code for r in finding.related if r.location] == ["t = torch.sigmoid(self.linear(x))"]


# ----------------------------------------------------------------------------------------------------------------
# analyze() leaves the model and the process as they were.
# ----------------------------------------------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grad": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "inplace": {k: getattr(m, "inplace", None) for k, m in model.named_modules()},
        "versions": {k: v._version for k, v in model.state_dict(keep_vars=True).items()},
    }


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    for key in a:
        x, y = a[key], b[key]
        assert isinstance(x, dict) and isinstance(y, dict)
        if x.keys() != y.keys():
            return False
        for k in x:
            u, v = x[k], y[k]
            if isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor):
                if u.shape != v.shape or not torch.equal(u, v):
                    return False
            elif u != v:
                return False
    return True


@pytest.mark.parametrize("name", ["ConvBnReluInplace", "ResNetBasicBlock", "RequiresGradFalseThenModule",
                                  "ParamInplaceNoGrad", "BufferUpdateNoGrad",
                                  "SetGradEnabledCall", "InferenceModeBlock", "SigmoidModuleReluInplace"])
@pytest.mark.parametrize("with_inputs", [False, True], ids=["static", "dry-run"])
@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
def test_analyze_leaves_the_model_untouched(name: str, with_inputs: bool, grad_enabled: bool) -> None:
    c = CASES[name]
    model = build(c)
    # State a user might have: an accumulated gradient, a frozen parameter, a submodule in eval mode.
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 0.25)
    params[-1].requires_grad_(False)
    list(model.modules())[-1].eval()
    before = _snapshot(model)
    torch.set_grad_enabled(True)
    rng = torch.get_rng_state()
    with torch.set_grad_enabled(grad_enabled):
        fxgrad.analyze(model, build_inputs(c) if with_inputs else None)
        assert torch.is_grad_enabled() is grad_enabled
    assert torch.equal(torch.get_rng_state(), rng)
    assert _same(before, _snapshot(model))
    assert torch.is_grad_enabled()


def test_the_untouched_check_can_fail() -> None:
    """The snapshot comparison above sees what eager forward changes (running stats, requires_grad, grad mode)."""
    for name in ("ConvBnReluInplace", "RequiresGradFalseThenModule", "ParamInplaceNoGrad"):
        model = build(CASES[name])
        before = _snapshot(model)
        model(*build_inputs(CASES[name]))
        assert not _same(before, _snapshot(model)), name
    model = build(CASES["SetGradEnabledCall"])
    try:
        torch.set_grad_enabled(True)
        torch.set_grad_enabled(False)
        model(*build_inputs(CASES["SetGradEnabledCall"]))  # leaves grad mode on: eager changes global state
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)


# ----------------------------------------------------------------------------------------------------------------
# Selecting and suppressing findings.
# ----------------------------------------------------------------------------------------------------------------


def test_ignore_and_select_filter_findings() -> None:
    c = CASES["InputSavedThenMul_"]
    truth = _truth(c)
    assert truth.inplace_error and truth.inputs_mutated
    full = fxgrad.analyze(build(c))
    assert {"FXG102", "FXG105"} <= set(full.codes())

    no102 = fxgrad.analyze(build(c), ignore=["FXG102"])
    assert "FXG102" not in no102.codes() and "FXG105" in no102.codes()
    assert [f.code for f in no102.suppressed] == ["FXG102"]

    no_family = fxgrad.analyze(build(c), ignore=["FXG1"])
    assert not [code for code in no_family.codes() if code.startswith("FXG1")]
    assert {"FXG102", "FXG105"} <= {f.code for f in no_family.suppressed}

    only_inputs = fxgrad.analyze(build(c), select=["FXG105"])
    assert only_inputs.codes() == ["FXG105"]
    # Filtering hides findings; it does not change the parameter verdicts.
    assert {k: p.status for k, p in only_inputs.params.items()} == {k: p.status for k, p in full.params.items()}

    with pytest.raises(fxgrad.InputError, match="FXG999"):
        fxgrad.analyze(build(c), ignore=["FXG999"])


def test_suppression_comment_silences_its_code_only() -> None:
    flagged, suppressed = CASES["Detach"], CASES["SuppressedDetach"]
    assert _truth(suppressed).no_grad_params == _truth(flagged).no_grad_params == {"a.weight", "a.bias"}
    assert "FXG001" in fxgrad.analyze(build(flagged)).codes()
    report = fxgrad.analyze(build(suppressed))
    assert "FXG001" not in report.codes()
    # the accepted cut takes its consequence with it: the parameters it cuts off are frozen on purpose
    assert [f.code for f in report.suppressed] == ["FXG001", "FXG201"] and report.ok
    assert report.params["a.weight"].status == "frozen" and "frozen on purpose" in report.params["a.weight"].cause


class _FrozenBlock(nn.Module):
    """A frozen backbone, accepted once on the `with` line that opens its no_grad block."""

    def __init__(self, accepted: bool) -> None:
        super().__init__()
        self.backbone, self.head = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)), nn.Linear(4, 2)
        self.accepted = accepted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.accepted:
            with torch.no_grad():  # fxgrad: ignore[FXG003]
                h = self.backbone(x)
                h = h * 2.0
        else:
            with torch.no_grad():
                h = self.backbone(x)
                h = h * 2.0
        return self.head(h)


@pytest.mark.parametrize("capture", ["trace", "run"])
def test_a_comment_on_a_with_line_covers_the_block(capture: str) -> None:
    x = torch.randn(2, 4)
    truth = eager_truth(_FrozenBlock(True), (x,))
    assert truth.clean_run and truth.no_grad_params == {f"backbone.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    plain = fxgrad.analyze(_FrozenBlock(False), x, capture=capture)
    assert "FXG003" in plain.codes() and not plain.ok
    report = fxgrad.analyze(_FrozenBlock(True), x, capture=capture)
    assert report.ok and not report.findings, report
    assert {f.code for f in report.accepted} >= {"FXG003", "FXG201"}
    assert {n for n, p in report.params.items() if p.status == "frozen"} == truth.no_grad_params


class _TwoCuts(nn.Module):
    """A teacher cut off on purpose, and an encoder cut off by mistake."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher, self.enc, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = self.teacher(x).detach()  # fxgrad: ignore[FXG001]
        h = self.enc(x).detach()
        return self.head(h) - target


@pytest.mark.parametrize("with_inputs", [False, True])
def test_an_accepted_cut_freezes_only_what_it_cuts(with_inputs: bool) -> None:
    x = torch.randn(2, 4)
    truth = eager_truth(_TwoCuts(), (x,))
    assert truth.no_grad_params == {"teacher.weight", "teacher.bias", "enc.weight", "enc.bias"}
    report = fxgrad.analyze(_TwoCuts(), x if with_inputs else None)
    assert {n: p.status for n, p in report.params.items() if p.status != "ok"} == {
        "teacher.weight": "frozen", "teacher.bias": "frozen", "enc.weight": "no-grad", "enc.bias": "no-grad"}
    (error,) = report.errors
    assert error.code == "FXG201" and set(error.params) == {"enc.weight", "enc.bias"} and not report.ok


def test_bare_suppression_comment_silences_every_code_on_its_line() -> None:
    c = CASES["SuppressedAll"]
    assert _truth(c).no_grad_params == {"a.weight", "a.bias"}
    report = fxgrad.analyze(build(c))
    assert report.findings == []
    assert {f.code for f in report.suppressed} == {"FXG001", "FXG201"}
    # the verdict stays true (no gradient), now said to be on purpose
    assert report.params["a.weight"].status == "frozen" and _truth(c).clean_run


def test_findings_are_immutable_records() -> None:
    """A Finding is a named tuple (the rules make thousands): immutable, hashable, comparable by value, and its
    dict form has every field."""
    from fxgrad.capture import SourceLocation
    from fxgrad.report import Finding, Related

    loc = SourceLocation("m.py", 3, "forward", "h.relu_()")
    related = (Related("saved by", "sigmoid", loc),)
    a = Finding("FXG102", "error", "relu_", "x.relu_()", "msg", "blocks.0", loc, ("w",), True, related=related)
    b = Finding(code="FXG102", severity="error", node="relu_", target="x.relu_()", message="msg", module="blocks.0",
                location=loc, params=("w",), fixable=True, related=related)
    assert a == b and hash(a) == hash(b) and a.verdict == "static" and a.where == "m.py:3"
    assert set(a.to_dict()) == set(Finding._fields)
    assert a.to_dict()["related"] == [{"role": "saved by", "node": "sigmoid", "location": {
        "file": "m.py", "line": 3, "function": "forward", "code": "h.relu_()"}}]
    proved = a._replace(verdict="dry-run")
    assert proved.verdict == "dry-run" and a.verdict == "static"
    with pytest.raises(AttributeError):
        a.code = "FXG101"  # type: ignore[misc]


@pytest.mark.parametrize("c", list(CASES.values()), ids=list(CASES))
def test_rules_see_every_node_they_could_flag(c: Case) -> None:
    """The rules look only at the nodes the forward pass flagged (:attr:`GraphFacts.flagged`); shown every node,
    they must find exactly the same. (The corpus cases' findings are checked against eager above.) The rules build
    findings without ``Finding.__new__``: each must still have every field."""
    import dataclasses

    from fxgrad.facts import compute_facts
    from fxgrad.report import Finding
    from fxgrad.rules import run_rules

    model = build(c)
    facts = compute_facts(fxgrad.trace(model), model=model)
    assert facts.flagged is not None
    findings = run_rules(facts)
    assert findings == run_rules(dataclasses.replace(facts, flagged=None))
    assert all(len(f) == len(Finding._fields) and f.verdict == "static" for f in findings)


class _BatchImages(nn.Module):
    """torchvision's GeneralizedRCNNTransform.batch_images: a fresh buffer filled through views, then read."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        batched = images[0].new_full([len(images), 3, 8, 8], 0)
        for i, img in enumerate(images):
            batched[i, :, : img.shape[1], : img.shape[2]].copy_(img)
        return self.conv(batched)


@pytest.mark.parametrize("capture", ["auto", "run"])
def test_filling_a_buffer_through_views_is_not_an_alias_warning(capture: str) -> None:
    """No gradient is involved in the write, and the later read is meant to see it: nothing to report."""
    images = [torch.rand(3, 8, 8), torch.rand(3, 6, 8)]
    truth = eager_truth(_BatchImages(), (images,))
    assert truth.clean_run and not truth.no_grad_params
    report = fxgrad.analyze(_BatchImages(), (images,), capture=capture)
    assert report.findings == [] and report.ok, report


class _Composite(nn.Module):
    """``F.<name>`` on a linear layer's output, then its output (``write="out"``) or its input written in place."""

    def __init__(self, name: str, write: str) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.fn = getattr(torch.nn.functional, name)
        self.args = {"softmin": (-1,)}.get(name, ())
        self.write = write

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = self.fn(h, *self.args)
        (y if self.write == "out" else h).mul_(2.0)
        return y.sum()


def _backward_raises(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        model(x).backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return True
    return False


@pytest.mark.parametrize("write", ["out", "in"])
@pytest.mark.parametrize("name", ["softmin", "relu6", "selu", "softsign", "tanhshrink"])
def test_composite_functionals_save_what_eager_saves(name: str, write: str) -> None:
    """``torch.nn.functional`` functions written in Python over other ops stay one call in the graph; what their
    last ops save (``ops.COMPOSITE_SAVED``) decides FXG102 statically as eager decides it (``F.softmin`` ends in a
    softmax, which saves its result: a write on it raises; ``F.softsign`` divides by its input ...)."""
    x = torch.randn(4, 8)
    torch.manual_seed(0)
    raises = _backward_raises(_Composite(name, write), x)
    for inputs in (None, (x,)):
        torch.manual_seed(0)
        report = fxgrad.analyze(_Composite(name, write), inputs)
        assert ("FXG102" in {f.code for f in report.findings}) == raises, (name, write, report.mode, report)


def test_a_write_after_an_op_without_a_table_is_not_called_safe() -> None:
    """``F.gumbel_softmax`` has no table entry: a write on its output (its last op is a softmax, so eager raises) is
    not proved statically, and the report says so in a note shown by default; the dry-run decides: FXG102."""

    class Gumbel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.gumbel_softmax(self.lin(x), tau=0.5)
            y.mul_(2.0)
            return y.sum()

    x = torch.randn(4, 8)
    assert _backward_raises(Gumbel(), x)
    static = fxgrad.analyze(Gumbel())
    assert not any(f.severity == "error" for f in static.findings)
    assert any(n.startswith("not proved statically") and "mul_()" in n for n in static.notes), static.notes
    assert "FXG102" in {f.code for f in fxgrad.analyze(Gumbel(), (x,)).findings}


class _Encoder(nn.Module):
    """An opaque ``nn.TransformerEncoderLayer`` (``norm_first`` either way); then its output, or its input, scaled in
    place."""

    def __init__(self, write: str, norm_first: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.write = write

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        y = self.layer(h)
        (y if self.write == "out" else h).mul_(2.0)
        return y.sum()


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_layer_results_are_saved_by_nothing(norm_first: bool) -> None:
    """A transformer layer returns a LayerNorm's output or a residual sum, which nothing saves: a write on it is
    harmless in eager, and the static pass says nothing of it. Whether its input is saved depends on the layer
    (``norm_first``: its first LayerNorm saves it, and a write raises; else the attention's projection reads a
    copy of the transposed input, and it does not): statically that write is not called safe (a note says the
    dry-run decides), and the dry-run says what eager does."""
    x = torch.randn(2, 5, 8)
    torch.manual_seed(0)
    assert not _backward_raises(_Encoder("out", norm_first), x)
    static = fxgrad.analyze(_Encoder("out", norm_first))
    assert static.ok and not any("not proved statically" in n for n in static.notes), static.notes
    torch.manual_seed(0)
    assert _backward_raises(_Encoder("in", norm_first), x) == norm_first
    static = fxgrad.analyze(_Encoder("in", norm_first))
    assert any(n.startswith("not proved statically") for n in static.notes), static.notes
    dry = fxgrad.analyze(_Encoder("in", norm_first), (x,))
    assert ("FXG102" in {f.code for f in dry.findings}) == norm_first, dry
