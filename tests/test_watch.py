"""``fxgrad.watch`` inside real training loops, each checked against the same loop without it."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import fxgrad

from .oracle import INPLACE_ERROR

HERE = str(Path(__file__).resolve())


class SigmoidMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.enc(x))  # the saver
        t.mul_(2.0)  # the culprit
        return self.head(t)


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x).detach()  # the cut
        return self.head(h)


def train(model: nn.Module, steps: int = 3, *, optimizer: bool = True) -> None:
    """A plain training loop, as a user writes it."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if optimizer else None
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model(torch.randn(4, 8, generator=g)).pow(2).mean()
        if opt is not None:
            opt.zero_grad()
        loss.backward()
        if opt is not None:
            opt.step()


def test_a_failing_backward_names_the_saver_and_the_culprit() -> None:
    torch.manual_seed(0)
    model = SigmoidMul()
    with pytest.raises(RuntimeError) as plain:
        train(copy.deepcopy(model))
    assert INPLACE_ERROR in str(plain.value)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError) as watched, fxgrad.watch(model):
        train(model)
    text = str(watched.value)
    assert type(watched.value) is RuntimeError and str(plain.value) in text  # the same error, explained
    assert watched.value.__cause__ is not None and INPLACE_ERROR in str(watched.value.__cause__)
    assert f"{HERE.split('/')[-1]}" in text and "# the culprit" in text and "# the saver" in text
    assert "t.mul_(2.0)" in text and "torch.sigmoid" in text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the analysis touched nothing
    assert not model._forward_pre_hooks and not model._forward_hooks  # hooks removed


@pytest.mark.parametrize("optimizer", [True, False])
def test_a_cut_warns_once_naming_the_line_and_the_parameters(optimizer: bool) -> None:
    torch.manual_seed(0)
    model = Detached()
    plain = copy.deepcopy(model)
    train(plain, steps=1, optimizer=optimizer)
    assert plain.enc.weight.grad is None and plain.head.weight.grad is not None  # what eager does
    with warnings.catch_warnings(record=True) as caught, fxgrad.watch(model):
        warnings.simplefilter("always")
        train(model, optimizer=optimizer)
    ours = [w for w in caught if issubclass(w.category, fxgrad.FxgradWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    text = str(ours[0].message)
    assert "enc.weight" in text and "enc.bias" in text and "head.weight" not in text
    assert "# the cut" not in text and f"{Path(HERE).name}:" in text  # the cut's file:line
    assert ours[0].filename == HERE  # the warning points at the user's loop, not at fxgrad


def test_the_happy_path_says_nothing_and_leaves_no_hook() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))

    with warnings.catch_warnings():
        warnings.simplefilter("error", fxgrad.FxgradWarning)
        with fxgrad.watch(model) as w:
            train(model)
    assert w.checked and w.last_inputs is not None
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_decorator_and_start_stop_forms() -> None:
    torch.manual_seed(0)
    model = SigmoidMul()

    @fxgrad.watch(model)
    def step() -> None:
        train(model, steps=1)

    with pytest.raises(RuntimeError, match="the culprit"):
        step()
    w = fxgrad.watch(model).start()
    try:
        with pytest.raises(RuntimeError) as info:
            train(model, steps=1)
        explained = w.explain(info.value)
        assert explained is not None and "the culprit" in str(explained)
    finally:
        w.stop()
    assert not model._forward_pre_hooks


def test_errors_it_cannot_explain_pass_through_unchanged() -> None:
    model = nn.Linear(8, 2)

    def boom(_: Callable[..., object]) -> None:
        raise ValueError("not autograd's")

    with pytest.raises(ValueError, match=r"^not autograd's$"), fxgrad.watch(model):
        boom(model)


def test_the_demo_script_fails_with_both_lines_and_warns_once() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "docs" / "watch_demo.py"
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(script.parent.parent)})
    assert run.returncode == 0, run.stderr
    assert INPLACE_ERROR in run.stdout and "gate.mul_(2.0)" in run.stdout and "torch.sigmoid" in run.stdout
    assert run.stderr.count("FxgradWarning") == 1 and "enc.weight" in run.stderr and "watch_demo.py:" in run.stderr


def test_a_gan_discriminator_step_does_not_warn_about_the_generator() -> None:
    """The discriminator's optimizer is about to update the discriminator only: the generator, cut off on purpose
    in this step, gets no gradient here and is not this optimizer's business."""
    torch.manual_seed(0)
    G, D = nn.Linear(4, 6), nn.Linear(6, 1)
    gan = nn.ModuleDict({"G": G, "D": D})
    opt_d = torch.optim.SGD(D.parameters(), lr=0.1)

    class Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gan = gan

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.gan["D"](self.gan["G"](z).detach())

    model = Step()
    with warnings.catch_warnings(record=True) as caught, fxgrad.watch(model):
        warnings.simplefilter("always")
        for _ in range(2):
            opt_d.zero_grad()
            model(torch.randn(3, 4)).mean().backward()
            assert G.weight.grad is None and D.weight.grad is not None  # eager: the generator gets nothing here
            opt_d.step()
    assert not [w for w in caught if issubclass(w.category, fxgrad.FxgradWarning)]
