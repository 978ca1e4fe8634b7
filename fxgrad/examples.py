"""The bundled pitfall models that ``fxgrad demo`` analyses: one small model per kind of finding.

Each :class:`Example` is a small ``nn.Module``, a factory for its inputs, one line on what it shows, and what
eager PyTorch really does with it (:class:`Eager`: where it raises, which parameters get ``grad is None`` or
only zeros, whether gradients are silently wrong); ``tests/test_examples.py`` runs the eager backward of every
example and checks that description. The first three are the article's examples: the second and third do
*not* break gradients, whatever the article says.

Every model is also a valid ``TARGET``: ``fxgrad check fxgrad.examples:SigmoidMul --input 8x4``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EXAMPLES", "Eager", "Example", "get"]

_INPLACE_ERROR = "modified by an inplace operation"
_LEAF_ERROR = "a leaf Variable that requires grad is being used in an in-place operation"


# --------------------------------------------------------------------------------------------------------------
# The models. Their forward lines are what the demo shows, so they read like user code.
# --------------------------------------------------------------------------------------------------------------


class ArticleExample1(nn.Module):
    """The article's Example 1: a Linear layer, gradients flow."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ArticleExample2(nn.Module):
    """The article's Example 2: ``t * 2.0`` is differentiable; nothing is detached."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intermediate_tensor = self.linear(x)
        output = intermediate_tensor * 2.0
        return output


class ArticleExample3(nn.Module):
    """The article's Example 3: ``t *= 2.0`` after Linear; legal, because Linear saved neither tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intermediate_tensor = self.linear(x)
        intermediate_tensor *= 2.0
        return intermediate_tensor


class _EncoderHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


class SigmoidMul(_EncoderHead):
    """Sigmoid saves its output for backward; ``mul_`` overwrites it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.encoder(x))
        t.mul_(2.0)
        return self.head(t)


class Detach(_EncoderHead):
    """``.detach()`` between encoder and head: the encoder never trains."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x).detach()
        return self.head(features)


class NoGrad(_EncoderHead):
    """The encoder runs under ``torch.no_grad()``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.encoder(x)
        return self.head(features)


class DataRead(_EncoderHead):
    """``.data`` of an activation has no autograd history."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x).data
        return self.head(features)


class Argmax(nn.Module):
    """A hard choice: ``argmax`` has an integer result, so the scorer gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.scorer = nn.Linear(4, 3)
        self.table = nn.Embedding(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.scorer(x).argmax(dim=-1)
        return self.table(choice)


class Round(_EncoderHead):
    """``round`` has a gradient, but it is zero: the encoder gets zeros."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = torch.round(self.encoder(x))
        return self.head(levels)


class Item(_EncoderHead):
    """A Python number from ``.item()``, wrapped back with ``torch.tensor``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.encoder(x).sigmoid().mean().item()
        return self.head(x) * torch.tensor(gate)


class Rebuild(_EncoderHead):
    """``torch.tensor(t)`` copies the values of ``t`` and none of its history."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.tensor(self.encoder(x))
        return self.head(features)


class FloorDiv(_EncoderHead):
    """Bucketing with ``//``: ``floor_divide`` has no derivative at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buckets = self.encoder(x) // 0.5
        return self.head(buckets)


class NegativeSlope(_EncoderHead):
    """A leaky ReLU with a negative slope, in place: the in-place form saves only its output, which a negative
    slope leaves ambiguous."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.encoder(x), -0.1, inplace=True)
        return self.head(h)


class InplaceAsinh(_EncoderHead):
    """``torch.asinh_``: the in-place form has no derivative, although ``torch.asinh`` has one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.asinh_(self.encoder(x))
        return self.head(h)


class Unused(nn.Module):
    """A submodule that ``__init__`` builds and ``forward`` never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 2)
        self.aux_head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Finetune(nn.Module):
    """Fine-tuning: a frozen backbone, a new head, a spare head; the optimizer is built from the wrong parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4).requires_grad_(False)
        self.head = nn.Linear(4, 2)
        self.spare_head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


def finetune_step(model: nn.Module) -> dict[str, Any]:
    """The training step of :class:`Finetune`: the loss, and an optimizer over backbone and spare head."""
    assert isinstance(model, Finetune)
    params = [*model.backbone.parameters(), *model.spare_head.parameters()]
    return {"loss": lambda out: out.pow(2).mean(), "optimizer": torch.optim.SGD(params, lr=0.1)}


class FreezeActivation(_EncoderHead):
    """``requires_grad_(False)`` on an activation: only leaves' flags can change, forward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        h.requires_grad_(False)
        return self.head(h)


class ExpandWrite(_EncoderHead):
    """A write into an ``expand``ed view: many elements share one memory location, forward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        bias = h[:, :1].expand(-1, 4)
        bias.add_(1.0)
        return self.head(h)


class ParamInplace(nn.Module):
    """An in-place update of a parameter inside forward, with grad enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.linear.weight.mul_(0.5)
        return self.linear(x)


class DataWrite(_EncoderHead):
    """An in-place write through ``.data`` into Sigmoid's saved output: no error, wrong gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.encoder(x))
        t.data.mul_(2.0)
        return self.head(t)


class InputMutation(nn.Module):
    """Normalising the input in place changes the caller's tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(x.mean())
        return self.linear(x)


class ViewWrite(_EncoderHead):
    """An in-place write through a slice: the later read of the whole tensor sees it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        first = h[:, 0]
        first.mul_(2.0)
        return self.head(h)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: ``ReLU(inplace=True)`` and ``out += identity`` are legal here."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out += identity
        out = self.relu(out)
        return out


class StraightThrough(_EncoderHead):
    """A straight-through estimator: the detach is deliberate, and every parameter still gets its gradient, so
    there is nothing to report."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        q = h + (torch.round(h) - h).detach()
        return self.head(q)


# --------------------------------------------------------------------------------------------------------------
# Out-of-place references: what a forward means, for the examples whose claim is about gradient values.
# --------------------------------------------------------------------------------------------------------------


def _article3_reference(m: ArticleExample3, x: torch.Tensor) -> torch.Tensor:
    return m.linear(x) * 2.0


def _data_write_reference(m: DataWrite, x: torch.Tensor) -> torch.Tensor:
    return m.head(torch.sigmoid(m.encoder(x)) * 2.0)


def _view_write_reference(m: ViewWrite, x: torch.Tensor) -> torch.Tensor:
    h = m.encoder(x)
    scale = torch.ones(h.shape[-1])
    scale[0] = 2.0
    return m.head(h * scale)


def _basic_block_reference(m: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(m.bn1(m.conv1(x)))
    return F.relu(m.bn2(m.conv2(out)) + x)


# --------------------------------------------------------------------------------------------------------------
# The catalogue.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Eager:
    """What eager PyTorch does with an example (checked by ``tests/test_examples.py``)."""

    text: str
    #: "forward" or "backward": where eager raises a RuntimeError containing ``error``
    raises: str = ""
    error: str = ""
    #: parameters whose ``.grad`` stays None / is all zeros after ``loss.backward()``
    no_grad: tuple[str, ...] = ()
    zero_grad: tuple[str, ...] = ()
    #: the model changes its (first) input tensor
    mutates_input: bool = False
    #: with ``Example.reference``: whether eager's outputs and gradients equal the out-of-place reference's
    matches_reference: bool = True


@dataclass(frozen=True)
class Example:
    name: str
    description: str
    model: Callable[[], nn.Module]
    inputs: Callable[[], tuple[Any, ...]]
    eager: Eager
    #: the codes fxgrad reports (``suppressed``: the ones silenced by a comment on the line)
    codes: frozenset[str] = frozenset()
    suppressed: frozenset[str] = frozenset()
    reference: Callable[..., torch.Tensor] | None = None
    #: the training step's keyword arguments for ``analyze`` (``loss=``, ``optimizer=``), built for a model
    step: Callable[[nn.Module], dict[str, Any]] | None = None

    def analyze_kwargs(self, model: nn.Module) -> dict[str, Any]:
        return self.step(model) if self.step is not None else {}

    @property
    def target(self) -> str:
        return f"fxgrad.examples:{self.model.__name__}"  # type: ignore[attr-defined]


def _randn(*shape: int) -> Callable[[], tuple[Any, ...]]:
    def make() -> tuple[Any, ...]:
        return (torch.randn(*shape, generator=torch.Generator().manual_seed(0)),)

    return make


def _article_inputs() -> tuple[Any, ...]:
    return (torch.tensor([[2.0]], requires_grad=True),)


_ENC = ("encoder.weight", "encoder.bias")

EXAMPLES: tuple[Example, ...] = (
    Example("article1", "The article's Example 1: Linear, MSE loss", ArticleExample1, _article_inputs,
            Eager("backward runs; linear.weight.grad is set")),
    Example("article2", "The article's Example 2: `output = t * 2.0` (the article says it detaches)",
            ArticleExample2, _article_inputs,
            Eager("`*` is differentiable: linear.weight.grad is set; nothing to report")),
    Example("article3", "The article's Example 3: `t *= 2.0` after Linear (the article says grad is None)",
            ArticleExample3, _article_inputs,
            Eager("backward runs and the gradient is correct: Linear saved neither its output nor `t`"),
            frozenset({"FXG101"}), reference=_article3_reference),
    Example("sigmoid_mul", "`t = torch.sigmoid(h); t.mul_(2.0)`", SigmoidMul, _randn(8, 4),
            Eager("loss.backward() raises RuntimeError: ... modified by an inplace operation", raises="backward",
                  error=_INPLACE_ERROR), frozenset({"FXG102"})),
    Example("detach", "`.detach()` between encoder and head", Detach, _randn(8, 4),
            Eager("encoder.weight.grad is None", no_grad=_ENC), frozenset({"FXG001", "FXG201"})),
    Example("no_grad", "the encoder runs under `with torch.no_grad():`", NoGrad, _randn(8, 4),
            Eager("encoder.weight.grad is None", no_grad=_ENC), frozenset({"FXG003", "FXG201"})),
    Example("data_read", "`.data` of an activation", DataRead, _randn(8, 4),
            Eager("encoder.weight.grad is None", no_grad=_ENC), frozenset({"FXG002", "FXG201"})),
    Example("argmax", "`argmax` picks a row of an embedding", Argmax, _randn(8, 4),
            Eager("scorer.weight.grad is None", no_grad=("scorer.weight", "scorer.bias")),
            frozenset({"FXG006", "FXG201"})),
    Example("round", "`torch.round` of an activation", Round, _randn(8, 4),
            Eager("encoder.weight.grad is all zeros", zero_grad=_ENC), frozenset({"FXG007", "FXG202"})),
    Example("item", "`.item()` wrapped back with `torch.tensor`", Item, _randn(8, 4),
            Eager("encoder.weight.grad is None", no_grad=_ENC), frozenset({"FXG004", "FXG201"})),
    Example("rebuild", "`torch.tensor(t)` of an activation", Rebuild, _randn(8, 4),
            Eager("encoder.weight.grad is None", no_grad=_ENC), frozenset({"FXG008", "FXG201"})),
    Example("floor_div", "`h // 0.5` on an activation", FloorDiv, _randn(8, 4),
            Eager("loss.backward() raises RuntimeError: derivative for aten::floor_divide is not implemented",
                  raises="backward", error="derivative for aten::floor_divide is not implemented"),
            frozenset({"FXG009"})),
    Example("negative_slope", "`F.leaky_relu(h, -0.1, inplace=True)`", NegativeSlope, _randn(8, 4),
            Eager("loss.backward() raises RuntimeError: In-place leakyReLu backward calculation is triggered with a "
                  "negative slope which is not supported", raises="backward",
                  error="backward calculation is triggered with a negative slope"), frozenset({"FXG108"})),
    Example("inplace_asinh", "`torch.asinh_(h)`", InplaceAsinh, _randn(8, 4),
            Eager("loss.backward() raises RuntimeError: the derivative for 'inplace version of asinh' is not "
                  "implemented", raises="backward", error="the derivative for 'inplace version of asinh'"),
            frozenset({"FXG109"})),
    Example("unused", "a submodule that forward never calls", Unused, _randn(8, 4),
            Eager("aux_head.weight.grad is None", no_grad=("aux_head.weight", "aux_head.bias")),
            frozenset({"FXG203"})),
    Example("param_inplace", "`self.linear.weight.mul_(0.5)` in forward", ParamInplace, _randn(8, 4),
            Eager("forward raises RuntimeError: a leaf Variable that requires grad is being used in an in-place "
                  "operation", raises="forward", error=_LEAF_ERROR), frozenset({"FXG103"})),
    Example("freeze_activation", "`h.requires_grad_(False)` on an activation", FreezeActivation, _randn(8, 4),
            Eager("forward raises RuntimeError: you can only change requires_grad flags of leaf variables",
                  raises="forward", error="you can only change requires_grad flags of leaf variables"),
            frozenset({"FXG005", "FXG010"})),
    Example("expand_write", "`h[:, :1].expand(-1, 4).add_(1.0)`", ExpandWrite, _randn(8, 4),
            Eager("forward raises RuntimeError: more than one element of the written-to tensor refers to a single "
                  "memory location", raises="forward", error="more than one element of the written-to tensor"),
            frozenset({"FXG107"})),
    Example("data_write", "`t.data.mul_(2.0)` after Sigmoid", DataWrite, _randn(8, 4),
            Eager("backward runs but encoder's gradients are wrong: Sigmoid's backward reads the overwritten output",
                  matches_reference=False), frozenset({"FXG106"}), reference=_data_write_reference),
    Example("input_mutation", "`x.sub_(x.mean())` on the input", InputMutation, _randn(8, 4),
            Eager("the caller's input tensor is changed", mutates_input=True), frozenset({"FXG105"})),
    Example("view_write", "`first = h[:, 0]; first.mul_(2.0)`, then `h` is used", ViewWrite, _randn(8, 4),
            Eager("the later read of `h` sees the doubled column; outputs and gradients are those of the "
                  "out-of-place program"), frozenset({"FXG101", "FXG104"}), reference=_view_write_reference),
    Example("resnet_block", "ResNet basic block: `ReLU(inplace=True)`, `out += identity`", BasicBlock,
            _randn(2, 4, 8, 8),
            Eager("backward runs; gradients equal the out-of-place block's"), frozenset({"FXG101"}),
            reference=_basic_block_reference),
    Example("optimizer", "fine-tuning step: the optimizer holds the frozen backbone and the unused spare head, "
            "not the new head", Finetune, _randn(8, 4),
            Eager("head.weight.grad is set but optimizer.step() never changes it; spare_head.weight.grad is None",
                  no_grad=("spare_head.bias", "spare_head.weight")),
            frozenset({"FXG203", "FXG204", "FXG205", "FXG206"}), step=finetune_step),
    Example("ste", "straight-through estimator `h + (round(h) - h).detach()`: correct, nothing to report",
            StraightThrough, _randn(8, 4),
            Eager("encoder.weight.grad is set: the gradient passes straight through")),
)

_BY_NAME = {e.name: e for e in EXAMPLES}


def get(name: str) -> Example:
    """The example called ``name`` (``KeyError`` lists the names)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no example {name!r}; examples: {', '.join(_BY_NAME)}") from None
