"""``fxgrad.testing.assert_gradients_flow``: fails exactly when eager training would not train every parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxgrad.testing import assert_gradients_flow

from .oracle import INPLACE_ERROR, eager_truth


class Clean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        h *= 2.0  # legal in-place: a warning, not a failure
        return self.head(h)


class FrozenEncoder(Clean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).detach())


class FrozenOnPurpose(Clean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).detach())  # fxgrad: ignore[FXG001, FXG201]


class Breaks(Clean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.enc(x))
        t.mul_(2.0)
        return self.head(t)


class WithUnused(Clean):
    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(4, 4)


def _x() -> tuple[torch.Tensor]:
    return (torch.randn(3, 4),)


def test_passes_when_every_parameter_trains() -> None:
    truth = eager_truth(Clean(), _x())
    assert truth.clean_run and not truth.no_grad_params and not truth.zero_grad_params
    report = assert_gradients_flow(Clean(), _x())
    assert report.codes() == [] and report.hidden == {"FXG101": 1}


def test_fails_on_a_parameter_without_gradient_unless_allowed() -> None:
    truth = eager_truth(FrozenEncoder(), _x())
    assert truth.no_grad_params == {"enc.weight", "enc.bias"}
    with pytest.raises(AssertionError) as err:
        assert_gradients_flow(FrozenEncoder(), _x())
    text = str(err.value)
    assert "gradients do not flow in FrozenEncoder" in text and "enc.weight" in text and "FXG201" in text
    assert "PARAMETERS: 2 of 4 get a gradient" in text  # the rendered report
    assert_gradients_flow(FrozenEncoder(), _x(), allow=("FXG201",))
    assert_gradients_flow(FrozenEncoder(), _x(), allow=("FXG2",))
    assert_gradients_flow(FrozenEncoder(), _x(), allow=("enc.*",))
    assert_gradients_flow(FrozenEncoder(), _x(), allow=("enc",))  # a module prefix
    with pytest.raises(AssertionError):
        assert_gradients_flow(FrozenEncoder(), _x(), allow=("en",))  # a prefix of a module's name is not one
    with pytest.raises(AssertionError):
        assert_gradients_flow(FrozenEncoder(), _x(), allow=("enc.weight",))  # enc.bias is still not allowed
    with pytest.raises(AssertionError):
        assert_gradients_flow(FrozenEncoder(), _x(), allow=("FXG001",))  # the cut is allowed, the verdict not


def test_a_comment_on_the_line_accepts_it() -> None:
    truth = eager_truth(FrozenOnPurpose(), _x())
    assert truth.no_grad_params == {"enc.weight", "enc.bias"}
    report = assert_gradients_flow(FrozenOnPurpose(), _x())
    assert {f.code for f in report.suppressed} == {"FXG001", "FXG201"}


def test_fails_when_backward_would_raise() -> None:
    truth = eager_truth(Breaks(), _x())
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    with pytest.raises(AssertionError, match="FXG102"):
        assert_gradients_flow(Breaks(), _x())
    with pytest.raises(AssertionError, match="FXG102"):
        assert_gradients_flow(Breaks(), _x(), allow=("enc.*", "head.*"))  # params do not excuse a crash
    assert_gradients_flow(Breaks(), _x(), allow=("FXG102",))


def test_fails_on_an_unused_parameter() -> None:
    truth = eager_truth(WithUnused(), _x())
    assert truth.unused_params == {"aux.weight", "aux.bias"} == truth.no_grad_params
    with pytest.raises(AssertionError, match=r"FXG203 aux\.weight"):
        assert_gradients_flow(WithUnused(), _x())
    assert_gradients_flow(WithUnused(), _x(), allow=("aux.*",))
    assert_gradients_flow(WithUnused(), _x(), allow=("FXG203",))


def test_allow_must_be_strings() -> None:
    with pytest.raises(TypeError):
        assert_gradients_flow(Clean(), _x(), allow=(nn.Linear,))  # type: ignore[arg-type]
