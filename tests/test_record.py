"""The run capture (``capture="run"``): models the tracer cannot follow, checked against eager PyTorch.

Every verdict is compared with :func:`oracle.eager_truth` (a real forward and backward on a copy of the model) in
the same test. The corpus runs here once more through the run capture, so its fidelity is measured on the same
258 programs as the tracer's.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import fxgrad
from fxgrad.record import RECORDED_KEY, record

from .corpus import CASES, Case, build, build_inputs
from .oracle import INPLACE_ERROR, LEAF_ERROR, eager_truth
from .test_rules import _truth, mismatches

#: corpus cases whose run-capture verdicts differ from eager, and why
RUN_CAPTURE_LIMITS = {
    "SkipAliasOfInplaceReluWithRef": "`res = h; h = relu_(h); h + res`: at run time `res` and `h` are one tensor "
                                     "object, so no capture that follows the run can tell that the user meant the "
                                     "value before the write (FXG104 on a plain alias needs the tracer)",
}


def _corpus() -> list[object]:
    return [pytest.param(c, id=name, marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                                             reason=RUN_CAPTURE_LIMITS[name])
                         if name in RUN_CAPTURE_LIMITS else ()) for name, c in CASES.items()]


@pytest.mark.parametrize("c", _corpus())
def test_run_capture_verdicts_match_eager_on_the_corpus(c: Case) -> None:
    truth = _truth(c)
    ref = _truth(c, reference=True) if c.reference else None
    if truth.forward_error is not None and not truth.leaf_error:
        with pytest.raises(fxgrad.FxgradError):
            report = fxgrad.analyze(build(c), build_inputs(c), capture="run")
            assert not report.ok  # a report is fine too, as long as it is not "ok"
            raise fxgrad.FxgradError("not ok")
        return
    report = fxgrad.analyze(build(c), build_inputs(c), capture="run")
    assert report.capture == "run"
    problems = mismatches(report, truth, ref, decidable=True)
    assert not problems, f"{c.name} ({c.what}):\n  " + "\n  ".join(problems) + f"\n{report}"


# ----------------------------------------------------------------------------------------------------------------
# Python control flow on tensor values
# ----------------------------------------------------------------------------------------------------------------


class BranchOnValue(nn.Module):
    """`if h.sum() > 0:` picks a branch; the negative branch overwrites sigmoid's saved output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            return self.b(h)
        return torch.sigmoid(h).mul_(2.0)  # the breaking line


def _branch_case(positive: bool) -> tuple[BranchOnValue, torch.Tensor]:
    """A seeded model and an input that takes the branch asked for."""
    torch.manual_seed(0)
    model = BranchOnValue()
    for _ in range(100):
        x = torch.randn(4, 8)
        if (model.a(x).sum() > 0) == positive:
            return model, x
    raise AssertionError("no input takes the branch")


@pytest.mark.parametrize("positive", [True, False])
def test_branch_on_a_value_is_analysed_for_the_branch_taken(positive: bool) -> None:
    model, x = _branch_case(positive)
    truth = eager_truth(model, (x,))
    with pytest.raises(fxgrad.TraceError):
        fxgrad.analyze(model, x, capture="trace")
    report = fxgrad.analyze(model, x)  # auto: the tracer fails, the run capture takes over
    assert report.capture == "run"
    assert any("because tracing stops at" in n and "h.sum() > 0" in n and "branches these inputs took" in n
               for n in report.notes)
    assert ("FXG102" in report.codes()) == truth.inplace_error
    if positive:
        assert truth.clean_run and report.ok and not report.findings
    else:
        (finding,) = report.by_code("FXG102")
        assert finding.location is not None and finding.location.code.endswith("# the breaking line")
        assert finding.location.file == str(Path(__file__).resolve())
        # the branch not taken is not a "never used" claim about the model, only about these inputs
        assert {n for n, p in report.params.items() if p.status == "unused"} == {"b.weight", "b.bias"}


class LoopOverTargets(nn.Module):
    """Faster-RCNN's shape: `for t in targets:` over a list of dicts, one loss per image."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(8, 8)
        self.cls = nn.Linear(8, 3)
        self.box = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        h = F.relu(self.backbone(x))
        losses = []
        for i, t in enumerate(targets):
            logits = self.cls(h[i : i + 1].expand(len(t["labels"]), -1))
            losses.append(F.cross_entropy(logits, t["labels"]))
            if len(t["boxes"]):
                losses.append(F.smooth_l1_loss(self.box(h[i]).expand_as(t["boxes"]), t["boxes"]))
        return {"loss": torch.stack(losses).sum()}


def _targets() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(1)
    return torch.randn(2, 8), [{"labels": torch.tensor([0, 2]), "boxes": torch.rand(2, 4)},
                               {"labels": torch.tensor([1]), "boxes": torch.zeros(0, 4)}]


def test_loop_over_targets_matches_eager() -> None:
    model, inputs = LoopOverTargets(), _targets()
    truth = eager_truth(model, inputs)
    report = fxgrad.analyze(model, inputs)
    assert report.capture == "run" and report.ok and not report.findings
    assert all(p.status == "ok" for p in report.params.values()) and truth.clean_run and not truth.no_grad_params


# ----------------------------------------------------------------------------------------------------------------
# Values that leave autograd through Python
# ----------------------------------------------------------------------------------------------------------------


class ItemArithmetic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.a(x).mean().item() * 2.0 + 1.0  # the cut
        return self.b(x) * torch.tensor(scale)


class NumpyArithmetic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_np = self.a(x).detach().numpy()  # the cut
        h_np = h_np * 0.5 + 1.0
        return self.b(torch.from_numpy(h_np))


@pytest.mark.parametrize("cls, code", [(ItemArithmetic, "FXG004"), (NumpyArithmetic, "FXG001")])
def test_python_arithmetic_on_escaped_values_keeps_the_cut_at_its_line(cls: type[nn.Module], code: str) -> None:
    """The value that left autograd comes back after Python/numpy arithmetic: the graph records the arithmetic,
    so the cut is reported at its own line, and the graph computes eager's output."""
    torch.manual_seed(0)
    model, x = cls(), torch.randn(4, 8)
    truth = eager_truth(model, (x,))
    report = fxgrad.analyze(model, x, capture="run")
    assert {n for n, p in report.params.items() if p.status == "no-grad"} == set(truth.no_grad_params) == {
        "a.weight", "a.bias"}
    (cut,) = report.by_code(code)
    assert cut.location is not None and cut.location.code.endswith("# the cut")
    gm = record(model, x)
    torch.testing.assert_close(gm(x), model(x))


# ----------------------------------------------------------------------------------------------------------------
# Activation checkpointing
# ----------------------------------------------------------------------------------------------------------------


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool, bug: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.reentrant, self.bug = reentrant, bug

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.a(x))
        if self.bug:
            t.mul_(2.0)  # overwrites sigmoid's output
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:  # control flow: only the run capture follows it
            return x
        return self.b(checkpoint(self.segment, x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("bug", [False, True])
def test_activation_checkpointing_is_understood(reentrant: bool, bug: bool) -> None:
    """Checkpointing recomputes the segment in backward: no cut, no `.data` write, verdicts equal eager's; the
    segment's own in-place bug is still found at its line."""
    torch.manual_seed(0)
    model, x = Checkpointed(reentrant, bug), torch.randn(4, 8, requires_grad=True)
    truth = eager_truth(model, (x,))
    report = fxgrad.analyze(model, x)
    assert report.capture == "run"
    if bug and reentrant:  # the recomputation's own backward raises, as without checkpointing
        assert truth.inplace_error, truth
        (finding,) = report.by_code("FXG102")
        assert finding.location is not None and "overwrites sigmoid's output" in finding.location.code
    elif bug:  # non-reentrant: the write is the segment's last op, the recomputation stops before it
        assert truth.clean_run and not truth.no_grad_params
        assert report.ok and not report.errors, report
    else:
        assert truth.clean_run and not truth.no_grad_params
        assert report.ok and not report.findings, report
        assert all(p.status == "ok" for p in report.params.values())


# ----------------------------------------------------------------------------------------------------------------
# What forward itself does wrong: findings, not refusals
# ----------------------------------------------------------------------------------------------------------------


class CounterParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.c = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            return x
        self.c += 1  # in place on a parameter
        return self.a(x) * self.c


class InferenceBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(8, 8)
        self.head = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            return x
        with torch.inference_mode():
            h = self.backbone(x)
        return self.head(h)  # saves an inference tensor


@pytest.mark.parametrize("cls, code, eager_error, marker", [
    (CounterParameter, "FXG103", LEAF_ERROR, "# in place on a parameter"),
    (InferenceBackbone, "FXG010", "Inference tensors cannot be saved for backward", "# saves an inference tensor"),
])
def test_forward_errors_are_findings_at_their_line(cls: type[nn.Module], code: str, eager_error: str,
                                                   marker: str) -> None:
    torch.manual_seed(0)
    model, x = cls(), torch.randn(4, 8)
    before = copy.deepcopy(model.state_dict())
    truth = eager_truth(model, (x,))
    assert truth.forward_error is not None and eager_error in truth.forward_error
    report = fxgrad.analyze(model, x)
    assert report.capture == "run" and not report.ok
    (finding,) = report.by_code(code)
    assert finding.location is not None and finding.location.code.endswith(marker)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------------------------------------------
# No state left behind
# ----------------------------------------------------------------------------------------------------------------


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.register_buffer("step", torch.zeros(()))
        self.counter = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.step = self.step + 1
        self.counter += 1
        return self.a(x)


@pytest.mark.parametrize("capture", ["trace", "run"])
@pytest.mark.parametrize("with_inputs", [False, True])
def test_capture_never_writes_to_the_users_module(capture: str, with_inputs: bool) -> None:
    """`self.step = self.step + 1` and `self.counter += 1` in forward: after analysis the model holds the same
    objects, its state_dict has no Proxy, and eager still counts."""
    model, x = Counting(), torch.randn(2, 8)
    attrs = dict(vars(model))
    if capture == "run" and not with_inputs:
        with pytest.raises(fxgrad.InputError, match="needs example inputs"):
            fxgrad.analyze(model, capture="run")
    else:
        report = fxgrad.analyze(model, x if with_inputs else None, capture=capture)
        assert report.ok
    assert vars(model).keys() == attrs.keys() and all(vars(model)[k] is v for k, v in attrs.items())
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    assert model.counter == 0 and float(model.step) == 0.0
    model(x)
    assert model.counter == 1 and float(model.step) == 1.0


def test_a_compiled_model_is_analysed_through_its_own_module_without_compiling() -> None:
    from torch._dynamo.utils import counters

    model, x = _branch_case(False)
    compiled = torch.compile(model, backend="eager")
    frames = dict(counters["frames"])
    report = fxgrad.analyze(compiled, x)
    assert dict(counters["frames"]) == frames  # Dynamo compiled nothing
    assert report.capture == "run" and "FXG102" in report.codes()
    assert set(report.params) == {n for n, _ in model.named_parameters()}  # no `_orig_mod.` prefix
    assert "FXG102" in fxgrad.analyze(model, x).codes()


def test_the_recorded_graph_is_deterministic_and_runs_like_eager() -> None:
    model, inputs = LoopOverTargets(), _targets()
    first, second = record(model, inputs), record(model, inputs)
    assert first.code == second.code
    assert first.meta[RECORDED_KEY] == {"capture": "run", "inputs": "real"}
    torch.testing.assert_close(first(*inputs), model(*inputs))


def test_shape_only_inputs_run_on_meta_and_values_need_real_inputs() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.a(x)).mul_(2.0)

    report = fxgrad.analyze(Plain(), fxgrad.spec((100_000, 8)), capture="run")  # nothing is allocated
    assert report.capture == "run" and "FXG102" in report.codes()
    with pytest.raises(fxgrad.InputError, match="reads tensor values") as info:
        fxgrad.analyze(BranchOnValue(), fxgrad.spec((4, 8)))
    assert info.value.__cause__ is not None and "h.sum() > 0" in str(info.value)


def test_fix_on_a_run_capture_says_it_is_specialised_and_verifies() -> None:
    model, x = _branch_case(False)
    truth = eager_truth(model, (x,))
    assert INPLACE_ERROR in (truth.backward_error or "")
    gm = fxgrad.fix(model, x)
    record_ = gm.meta["fxgrad"]
    assert record_.capture == "run" and record_.verified and len(record_.rewrites) == 1
    assert any("branches these inputs took" in n for n in record_.notes)
    out = gm(x)
    out.sum().backward()  # the fixed module's backward runs
    torch.testing.assert_close(out, model(x))


def test_forward_that_raises_names_the_users_line() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 1e9:
                return x
            return self.a(x.view(-1, 3))  # wrong shape

    with pytest.raises(fxgrad.TraceError, match="wrong shape") as info:
        fxgrad.analyze(Broken(), torch.randn(4, 8))
    assert info.value.__cause__ is not None


def test_cli_capture_flag_and_config_key(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 2)

            def forward(self, x):
                return torch.sigmoid(self.lin(x)).mul_(2.0)
    '''))
    (tmp_path / "pyproject.toml").write_text('[tool.fxgrad]\ncapture = "run"\n')
    env_cmd = [sys.executable, "-m", "fxgrad", "check", "nets.py:Net", "--input", "3x4"]
    repo = str(Path(__file__).resolve().parent.parent)
    run = subprocess.run(env_cmd, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": repo})
    assert run.returncode == 1 and "captured by running it on the inputs" in run.stdout, run.stderr
    traced = subprocess.run([*env_cmd, "--capture", "trace"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": repo})
    assert traced.returncode == 1 and "traced symbolically" in traced.stdout, traced.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.fxgrad]\ncapture = "sometimes"\n')
    bad = subprocess.run(env_cmd, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": repo})
    assert bad.returncode == 2 and "capture" in bad.stderr and "auto, trace, run" in bad.stderr


class WriteAfterCheckpoint(nn.Module):
    """The segment saves its output (sigmoid); forward then writes into it: backward reads the recomputed one."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            return x
        h = checkpoint(lambda t: torch.sigmoid(self.a(t)), x, use_reentrant=self.reentrant)
        return h.mul_(2.0)


class NonReentrantWriteThenMore(Checkpointed):
    def segment(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.a(x))
        t.mul_(2.0)  # runs again in the recomputation
        return torch.tanh(t)


@pytest.mark.parametrize("reentrant", [True, False])
def test_a_write_after_a_checkpointed_segment_is_not_an_error(reentrant: bool) -> None:
    torch.manual_seed(0)
    model, x = WriteAfterCheckpoint(reentrant), torch.randn(4, 8, requires_grad=True)
    truth = eager_truth(model, (x,))
    assert truth.clean_run and not truth.no_grad_params
    report = fxgrad.analyze(model, x)
    assert report.ok and not report.errors, report


def test_a_write_inside_a_non_reentrant_segment_followed_by_ops_is_silently_wrong() -> None:
    torch.manual_seed(0)
    model, x = NonReentrantWriteThenMore(reentrant=False, bug=True), torch.randn(4, 8, requires_grad=True)
    truth = eager_truth(model, (x,))
    assert truth.clean_run  # eager does not raise ...
    reference = copy.deepcopy(model)
    reference.reentrant = True  # ... but the gradient differs from the program without checkpointing
    out_of_place = eager_truth(_OutOfPlace(reference), (x,))
    assert any(not torch.allclose(truth.grads[n], g) for n, g in out_of_place.grads.items() if g is not None)
    report = fxgrad.analyze(model, x)
    (finding,) = report.by_code("FXG106")
    assert finding.location is not None and "runs again in the recomputation" in finding.location.code
    assert not report.by_code("FXG102")


class _OutOfPlace(nn.Module):
    """The same segment without checkpointing and without the in-place write."""

    def __init__(self, inner: NonReentrantWriteThenMore) -> None:
        super().__init__()
        self.a, self.b = inner.a, inner.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(torch.sigmoid(self.a(x)) * 2.0))


def test_reentrant_checkpoint_without_an_input_that_requires_grad_cuts_its_parameters() -> None:
    """The classic: `use_reentrant=True` and an input that does not require grad (frozen embeddings, raw pixels):
    the segment runs without autograd and its parameters get no gradient."""
    torch.manual_seed(0)
    model, x = Checkpointed(reentrant=True), torch.randn(4, 8)

    class WithSkip(nn.Module):  # another path keeps the output differentiable, so eager raises nothing
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.skip = model, nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + self.skip(x)

    wrapped = WithSkip()
    truth = eager_truth(wrapped, (x,))
    assert truth.clean_run and truth.no_grad_params == {"inner.a.weight", "inner.a.bias"}
    report = fxgrad.analyze(wrapped, x)
    assert {n for n, p in report.params.items() if p.status == "no-grad"} == truth.no_grad_params
    assert not report.ok and any("use_reentrant=True" in n and "no gradient" in n for n in report.notes)


@pytest.mark.parametrize("capture", ["trace", "run"])
def test_a_bare_sequential_names_the_layer_not_the_callers_line(capture: str) -> None:
    """No line of the user's runs inside a bare `nn.Sequential`: the finding names the layer's module path, and
    never the line that called fxgrad."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.ReLU(inplace=True), nn.Linear(4, 2))
    x = torch.randn(2, 4)
    assert INPLACE_ERROR in (eager_truth(model, (x,)).backward_error or "")
    report = fxgrad.analyze(model, x, capture=capture)
    (finding,) = report.by_code("FXG102")
    assert finding.location is None and finding.module == "2" and finding.where == "2"


class KeywordModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 2.0) -> torch.Tensor:
        h = torch.sigmoid(self.a(x)) * scale
        return h if mask is None else h * mask


def test_a_dict_of_forwards_parameter_names_is_a_keyword_call(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = KeywordModel(), torch.randn(2, 8)
    inputs = {"x": x, "scale": 3.0}
    assert fxgrad.inputs.bind_keywords(model, inputs) == (x, None, 3.0)
    assert fxgrad.inputs.bind_keywords(model, {"image": x}) == {"image": x}  # not forward's names: one argument
    truth = eager_truth(model, (x, None, 3.0))
    report = fxgrad.analyze(model, inputs)
    assert not mismatches(report, truth, None, decidable=True) and report.ok
    (tmp_path / "kw.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 2)

            def forward(self, x, mask=None):
                return torch.sigmoid(self.lin(x)).mul_(2.0)

        def inputs():
            return {"x": torch.randn(3, 4)}
    '''))
    repo = str(Path(__file__).resolve().parent.parent)
    run = subprocess.run([sys.executable, "-m", "fxgrad", "check", "kw.py:Net", "--inputs", "kw.py:inputs"],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": repo})
    assert run.returncode == 1 and "FXG102" in run.stdout, run.stderr


class PythonOperators(nn.Module):
    """`**`, `/` reflected, unary `-`, `abs()`, `+x` and `/=`: Tensor wrappers whose names differ from their
    dunder (`Tensor.__pow__` is named `pow`), so the graph must spell them as operators."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            return x
        h = self.a(x)
        h = h ** 2 + 1.0 / (abs(h) + 1.0) - (+h) + (-h)
        h /= 2.0
        return torch.sigmoid(h).mul_(2.0)


def test_python_operators_replay_like_eager_and_fix_verifies() -> None:
    torch.manual_seed(0)
    model, x = PythonOperators(), torch.randn(4, 8)
    gm = record(model, x)
    torch.testing.assert_close(gm(x), model(x))
    assert "torch._tensor" not in gm.code
    assert INPLACE_ERROR in (eager_truth(model, (x,)).backward_error or "")
    fixed = fxgrad.fix(model, x)
    assert fixed.meta["fxgrad"].verified
