"""The training step (``loss=``, ``targets=``, ``optimizer=``), checked against a real eager step.

Each test runs the step for real on copies (forward, ``loss.backward()``, ``optimizer.step()``) and compares fxgrad
with what happened: which parameters got a ``.grad``, and which ones the optimizer changed.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxgrad
from fxgrad.testing import assert_gradients_flow

REPO = str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class StepTruth:
    no_grad: frozenset[str]  # trainable parameters whose .grad stayed None after loss.backward()
    updated: frozenset[str]  # parameters optimizer.step() changed


def eager_step(model: nn.Module, inputs: Sequence[Any], loss: Callable[..., torch.Tensor], targets: Sequence[Any],
               make_optimizers: Callable[[nn.Module], Sequence[torch.optim.Optimizer]]) -> StepTruth:
    model = copy.deepcopy(model)
    optimizers = make_optimizers(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss(model(*inputs), *targets).backward()
    no_grad = frozenset(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    for opt in optimizers:
        opt.step()
    updated = frozenset(n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n]))
    return StepTruth(no_grad, updated)


def _idle(report: fxgrad.Report) -> set[str]:
    return {n for n, p in report.params.items() if p.status in ("no-grad", "unused", "frozen")}


# ----------------------------------------------------------------------------------------------------------------
# A multi-task model whose loss uses one head
# ----------------------------------------------------------------------------------------------------------------


class MultiHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.cls = nn.Linear(8, 3)
        self.reg = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x))
        return {"cls": self.cls(h), "reg": self.reg(h)}


def classification_only(out: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out["cls"], y)


def both_heads(out: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out["cls"], y) + out["reg"].pow(2).mean()


def _multihead_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 8, generator=g), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("capture", ["trace", "run"])
@pytest.mark.parametrize("loss", [classification_only, both_heads])
def test_a_head_the_loss_ignores_gets_no_gradient(loss: Callable[..., torch.Tensor], capture: str) -> None:
    torch.manual_seed(0)
    model, (x, y) = MultiHead(), _multihead_data()
    truth = eager_step(model, (x,), loss, (y,), lambda m: [torch.optim.SGD(m.parameters(), lr=0.1)])
    report = fxgrad.analyze(model, x, loss=loss, targets=y, capture=capture)
    assert _idle(report) == truth.no_grad
    assert report.ok == (not truth.no_grad)
    if truth.no_grad:  # the reg head: its FXG201 says that the loss leaves it out, and where the loss is
        (finding,) = report.by_code("FXG201")
        assert set(finding.params) == truth.no_grad == {"reg.weight", "reg.bias"}
        assert "the loss `classification_only`" in finding.message and "test_step.py" in finding.message
        assert any("DistributedDataParallel" in n and "reg.weight" in n for n in report.notes)
    else:
        assert not any("DistributedDataParallel" in n for n in report.notes)
    static = fxgrad.analyze(model, loss=loss, targets=y)  # the same verdicts without inputs
    assert _idle(static) == truth.no_grad


# ----------------------------------------------------------------------------------------------------------------
# A GAN: two optimizers, two steps
# ----------------------------------------------------------------------------------------------------------------


class GAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.G = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
        self.D = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

    def forward(self, z: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fake = self.G(z)
        return self.D(fake.detach()), self.D(real)  # fxgrad: ignore[FXG001]


class GeneratorStep(GAN):
    def forward(self, z: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.D(self.G(z)), real


def d_loss(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    fake, real = out
    return (F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            + F.binary_cross_entropy_with_logits(real, torch.ones_like(real)))


def g_loss(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out[0], torch.ones_like(out[0]))


def _two_optimizers(m: nn.Module) -> list[torch.optim.Optimizer]:
    return [torch.optim.Adam(m.G.parameters(), lr=1e-2), torch.optim.Adam(m.D.parameters(), lr=1e-2)]


@pytest.mark.parametrize("cls, loss", [(GAN, d_loss), (GeneratorStep, g_loss)])
def test_gan_steps_with_two_optimizers(cls: type[nn.Module], loss: Callable[..., torch.Tensor]) -> None:
    """The discriminator step cuts the generator off on purpose (the comment on the detach): the generator is
    frozen for this step, not an error; the generator step reaches both, and both are in an optimizer."""
    torch.manual_seed(0)
    model = cls()
    z, real = torch.randn(5, 4), torch.randn(5, 6)
    truth = eager_step(model, (z, real), loss, (), lambda m: [_two_optimizers(m)[0 if cls is GeneratorStep else 1]])
    optimizers = _two_optimizers(model)
    report = fxgrad.analyze(model, (z, real), loss=loss, optimizer=optimizers)
    assert _idle(report) == set(truth.no_grad)
    assert report.ok and not report.errors, report
    if cls is GAN:
        assert truth.no_grad == {n for n, _ in model.G.named_parameters(prefix="G")}
        assert {report.params[n].status for n in truth.no_grad} == {"frozen"}
    else:
        assert not truth.no_grad


# ----------------------------------------------------------------------------------------------------------------
# Parameters and the optimizer
# ----------------------------------------------------------------------------------------------------------------


class Finetune(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)
        self.spare = nn.Linear(8, 3)  # built, never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


CASES: dict[str, tuple[Callable[[Finetune], None], Callable[[nn.Module], Any], set[str]]] = {
    # frozen backbone left in the optimizer: info only
    "frozen-in-optimizer": (lambda m: m.backbone.requires_grad_(False),
                            lambda m: torch.optim.AdamW(m.parameters(), lr=0.1), {"FXG206", "FXG205", "FXG203"}),
    # the head forgotten: it gets gradients and never trains
    "head-not-in-optimizer": (lambda m: m.spare.requires_grad_(False),
                              lambda m: torch.optim.SGD(m.backbone.parameters(), lr=0.1), {"FXG204"}),
    # everything right: only what trains is in the optimizer
    "clean": (lambda m: m.spare.requires_grad_(False),
              lambda m: torch.optim.SGD([*m.backbone.parameters(), *m.head.parameters()], lr=0.1), set()),
}


#: the optimizer rules' flagged and clean cases (tests/test_rules.py checks every code has a pair)
OPTIMIZER_PAIRS = {"FXG204": ("head-not-in-optimizer", "clean"), "FXG205": ("frozen-in-optimizer", "clean"),
                   "FXG206": ("frozen-in-optimizer", "clean")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_optimizer_verdicts_equal_what_step_changes(name: str) -> None:
    freeze, make, codes = CASES[name]
    torch.manual_seed(0)
    model = Finetune()
    freeze(model)
    x, y = _multihead_data()
    truth = eager_step(model, (x,), ce, (y,), lambda m: [make(m)])
    report = fxgrad.analyze(model, x, loss=ce, targets=y, optimizer=make(model))
    assert {f.code for f in report.findings} == codes, report
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    get_grad = trainable - truth.no_grad
    if "FXG204" in codes:  # gets a gradient, never updates
        (f,) = report.by_code("FXG204")
        assert set(f.params) == get_grad - truth.updated == {"head.weight", "head.bias"}
    if "FXG205" in codes:  # in the optimizer, never gets a gradient: the unused spare head
        (f,) = report.by_code("FXG205")
        assert set(f.params) == {"spare.weight", "spare.bias"} and not set(f.params) & truth.updated
    if "FXG206" in codes:  # frozen, in the optimizer: step() leaves it alone
        (f,) = report.by_code("FXG206")
        assert {n for n in f.params} == {n for n, _ in model.backbone.named_parameters(prefix="backbone")}
        assert not set(f.params) & truth.updated and f.severity == "info"
    assert report.ok == (not codes - {"FXG206", "FXG203"})


# ----------------------------------------------------------------------------------------------------------------
# An EMA teacher
# ----------------------------------------------------------------------------------------------------------------


class TeacherStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
        self.teacher = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
                t.mul_(0.99).add_(s, alpha=0.01)
        return self.student(x), self.teacher(x).detach()


def distill(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    student, teacher = out
    return F.mse_loss(student, teacher)


def test_ema_teacher_student_step_is_clean() -> None:
    torch.manual_seed(0)
    model, x = TeacherStudent(), torch.randn(4, 8)
    truth = eager_step(model, (x,), distill, (), lambda m: [torch.optim.SGD(m.student.parameters(), lr=0.1)])
    assert not truth.no_grad and truth.updated >= {n for n, _ in model.student.named_parameters(prefix="student")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = fxgrad.analyze(model, x, loss=distill, optimizer=torch.optim.SGD(model.student.parameters(), lr=0.1))
    assert report.ok and not report.findings, report
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the EMA ran on fxgrad's copy


# ----------------------------------------------------------------------------------------------------------------
# The command line and the pytest helper
# ----------------------------------------------------------------------------------------------------------------


def test_pytest_helper_takes_the_training_step() -> None:
    torch.manual_seed(0)
    model, (x, y) = MultiHead(), _multihead_data()
    with pytest.raises(AssertionError, match=r"reg\.weight"):
        assert_gradients_flow(model, x, loss=classification_only, targets=y)
    assert_gradients_flow(model, x, loss=classification_only, targets=y, allow=("reg",))
    assert_gradients_flow(model, x, loss=both_heads, targets=y)


def test_command_line_loss_targets_optimizer(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent('''
        import torch
        import torch.nn.functional as F
        from torch import nn

        class MultiHead(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Linear(8, 8)
                self.cls = nn.Linear(8, 3)
                self.reg = nn.Linear(8, 1)

            def forward(self, x):
                h = torch.relu(self.body(x))
                return {"cls": self.cls(h), "reg": self.reg(h)}

        def loss(out, y):
            return F.cross_entropy(out["cls"], y)

        def targets():
            return torch.tensor([0, 1, 2, 0])

        def optimizer(model):
            return torch.optim.SGD(model.body.parameters(), lr=0.1)
    '''))
    env = {"PYTHONPATH": REPO}
    base = [sys.executable, "-m", "fxgrad", "check", "train.py:MultiHead", "--input", "4x8", "--format", "json"]
    run = subprocess.run([*base, "--loss", "train.py:loss", "--targets", "train.py:targets", "--optimizer",
                          "train.py:optimizer"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 1, run.stderr
    import json

    codes = {f["code"]: f for f in json.loads(run.stdout)["findings"]}
    assert set(codes) == {"FXG201", "FXG204"}
    assert set(codes["FXG201"]["params"]) == {"reg.weight", "reg.bias"}
    assert set(codes["FXG204"]["params"]) == {"cls.weight", "cls.bias"}  # gets a gradient, in no group
    (tmp_path / "pyproject.toml").write_text('[tool.fxgrad]\nloss = "train.py:loss"\ntargets = "train.py:targets"\n')
    configured = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert {f["code"] for f in json.loads(configured.stdout)["findings"]} == {"FXG201"}, configured.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.fxgrad]\nloss = "loss"\n')
    bad = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "file.py:NAME" in bad.stderr
