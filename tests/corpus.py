"""Small models that exercise fxgrad's rules and tracer; their ground truth comes from eager PyTorch.

Each case is an ``nn.Module`` class with a ``make_inputs()`` staticmethod, registered with :func:`case`. No case
carries an expected result: tests run :func:`oracle.eager_truth` on it and compare fxgrad with what eager did.

``static_ok=False`` marks the few cases that are legitimately only decidable with example inputs (what an opaque
or backend-dependent op saves), with the reason. ``reference`` names a program that computes the same forward
without the in-place/aliasing write (same parameters), for the checks that need one: reading an alias after an
in-place write (FXG104) changes the outputs, a ``.data`` write into a saved tensor (FXG106) changes the
gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fxgrad.examples import BasicBlock

__all__ = ["CASES", "Case", "build", "build_inputs", "case"]


@dataclass(frozen=True)
class Case:
    name: str
    factory: Callable[[], nn.Module]
    make_inputs: Callable[[], tuple[Any, ...]]
    what: str
    static_ok: bool = True
    reason: str = ""
    reference: Callable[[], nn.Module] | None = None


CASES: dict[str, Case] = {}


def case(*, static_ok: bool = True, reason: str = "",
         reference: str | None = None) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register a corpus model; its docstring says what it exercises."""
    assert static_ok or reason, "a case that static analysis cannot decide must say why"

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        ref = None
        if reference is not None:
            def ref() -> nn.Module:
                return globals()[reference]()
        what = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__name__
        CASES[cls.__name__] = Case(cls.__name__, cls, cls.make_inputs,  # type: ignore[attr-defined]
                                   what, static_ok, reason, ref)
        return cls

    return register


def build(c: Case, *, reference: bool = False, seed: int = 0) -> nn.Module:
    """The case's model (or its reference program) with seeded, identical initial parameters."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        factory = c.reference if reference else c.factory
        assert factory is not None
        return factory()


def build_inputs(c: Case, *, seed: int = 1) -> tuple[Any, ...]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tuple(c.make_inputs())


def _x() -> tuple[torch.Tensor]:
    return (torch.randn(4, 8),)


def _img() -> tuple[torch.Tensor]:
    return (torch.randn(2, 3, 8, 8),)


class _Two(nn.Module):
    """Two linear layers ``a`` and ``b``: the usual shape of a cut test (is ``a`` upstream of the cut?)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)

    make_inputs = staticmethod(_x)


# ----------------------------------------------------------------------------------------------------------------
# The article's three examples.
# ----------------------------------------------------------------------------------------------------------------


@case()
class Ex1Linear(nn.Module):
    """Article example 1: a Linear layer; gradients flow."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    make_inputs = staticmethod(_x)


@case()
class Ex2MulScalar(Ex1Linear):
    """Article example 2: `t * 2.0` is differentiable, nothing is detached."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.linear(x)
        out = t * 2.0
        return out


@case()
class Ex3InplaceMulScalar(Ex1Linear):
    """Article example 3: `t *= 2.0` after Linear: legal, Linear saves neither its output nor `t`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.linear(x)
        t *= 2.0
        return t


# ----------------------------------------------------------------------------------------------------------------
# Ops that save their output, then an in-place op on that output: backward raises.
# ----------------------------------------------------------------------------------------------------------------


@case()
class SigmoidMul_(Ex1Linear):
    """sigmoid saves its output; `mul_` on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.linear(x))
        t.mul_(2.0)
        return t


@case()
class TanhAdd_(Ex1Linear):
    """tanh saves its output; `add_` on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.linear(x).tanh()
        t.add_(1.0)
        return t


@case()
class ExpImul(Ex1Linear):
    """exp saves its output; `*=` on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.exp(self.linear(x))
        t *= 0.5
        return t


@case()
class ReluSetitem(Ex1Linear):
    """relu saves its output; `t[0] = 0` on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.relu(self.linear(x))
        t[0] = 0.0
        return t


@case()
class SoftmaxRelu_(Ex1Linear):
    """softmax saves its output; `relu_()` on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.linear(x).softmax(-1)
        t.relu_()
        return t


@case()
class LogSoftmaxTorchRelu_(Ex1Linear):
    """log_softmax saves its output; `torch.relu_` on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.log_softmax(self.linear(x), dim=-1)
        torch.relu_(t)
        return t


@case()
class ReluThenFReluInplace(Ex1Linear):
    """relu saves its output; `F.relu(..., inplace=True)` on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.linear(x))
        u = F.relu(t, inplace=True)
        return u * 3.0


@case()
class SigmoidModuleReluInplace(nn.Module):
    """nn.Sigmoid saves its output; `nn.ReLU(inplace=True)` after it breaks backward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.ReLU(inplace=True), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    make_inputs = staticmethod(_x)


@case()
class EluThenAdd_(Ex1Linear):
    """out-of-place elu saves its input, not its output: `add_` on the output is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.elu(self.linear(x))
        t.add_(1.0)
        return t


@case()
class LayerNormThenMul_(nn.Module):
    """layer_norm saves its input and statistics, not its output: `mul_` on the output is legal."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.lin(x))
        h.mul_(2.0)
        return h

    make_inputs = staticmethod(_x)


# ----------------------------------------------------------------------------------------------------------------
# Ops that save their inputs, then an in-place op on that input: backward raises.
# ----------------------------------------------------------------------------------------------------------------


@case()
class MulByParamThenAdd_(nn.Module):
    """`h * w` saves `h` for w's gradient; `h.add_()` afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = h * self.w
        h.add_(1.0)
        return y

    make_inputs = staticmethod(_x)


@case()
class MulActivationsThenMul_(_Two):
    """`a * b` of two activations saves both; `mul_` on the first."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = self.b(x)
        y = a * b
        a.mul_(2.0)
        return y


@case()
class DivThenDivisorAdd_(_Two):
    """`a / b` saves the divisor; `b.add_()` afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = self.b(x).exp()
        y = a / b
        b.add_(1.0)
        return y


@case()
class DivByConstantThenAdd_(Ex1Linear):
    """`a / 2.0` saves nothing: `a.add_()` afterwards is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.linear(x)
        y = a / 2.0
        a.add_(1.0)
        return y + a


@case()
class PowThenMul_(Ex1Linear):
    """`a.pow(2)` saves its base; `a.mul_()` afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.linear(x)
        y = a.pow(2)
        a.mul_(3.0)
        return y


@case()
class MatmulThenAdd_(nn.Module):
    """`h @ W` saves `h` for W's gradient; `h.add_()` afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.W = nn.Parameter(torch.randn(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = h @ self.W
        h.add_(1.0)
        return y

    make_inputs = staticmethod(_x)


@case()
class Conv2dInputMul_(nn.Module):
    """conv2d saves its input for the weight gradient; `mul_` on that input afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        y = self.c2(h)
        h.mul_(2.0)
        return y

    make_inputs = staticmethod(_img)


@case()
class LinearInputAdd_(_Two):
    """Linear saves its input for the weight gradient; `add_` on that input afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = self.b(h)
        h.add_(1.0)
        return y


@case()
class GeluInputAdd_(Ex1Linear):
    """gelu saves its input; `add_` on the input afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        y = F.gelu(h)
        h.add_(1.0)
        return y


@case()
class ClampInputSub_(Ex1Linear):
    """clamp saves its input (for the mask); `-=` on the input afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        y = h.clamp(-0.5, 0.5)
        h -= 1.0
        return y


# ----------------------------------------------------------------------------------------------------------------
# The same ops with nothing saved, then in-place: legal.
# ----------------------------------------------------------------------------------------------------------------


@case()
class AddThenAdd_(_Two):
    """`a + b` saves nothing: `a.add_()` afterwards is legal."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        y = a + self.b(x)
        a.add_(1.0)
        return y * a


@case()
class ScalarMulThenMul_(Ex1Linear):
    """`a * 2.0` saves nothing: `a.mul_()` afterwards is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.linear(x)
        y = a * 2.0
        a.mul_(3.0)
        return y + a


@case()
class LinearOutputAdd_(Ex1Linear):
    """Linear does not save its output: `add_` on it is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        h.add_(1.0)
        return h


@case()
class SumThenMul_(Ex1Linear):
    """sum saves only sizes: `mul_` on its input afterwards is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        s = h.sum(dim=1, keepdim=True)
        h.mul_(2.0)
        return h + s


@case()
class CatThenAdd_(_Two):
    """cat saves nothing: `add_` on one of its inputs afterwards is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        y = torch.cat([a, x], dim=1)
        a.add_(1.0)
        return self.b(y[:, 4:12]) + a[:, :4]


# ----------------------------------------------------------------------------------------------------------------
# Views and aliases.
# ----------------------------------------------------------------------------------------------------------------


@case()
class SigmoidViewMul_(Ex1Linear):
    """In-place on a view of a saved tensor: `y = h.sigmoid(); y[:, 0].mul_(2)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        y[:, 0].mul_(2.0)
        return y


@case()
class BaseOfSavedViewAdd_(Ex1Linear):
    """A view is saved (`v.pow(2)` saves `v`); `add_` on its base bumps the shared version counter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        v = h[:, :2]
        y = v.pow(2)
        h.add_(1.0)
        return y


@case()
class ViewSigmoidThenBaseAdd_(Ex1Linear):
    """sigmoid of a view saves only its output: `add_` on the view afterwards is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        v = h.view(-1)
        y = v.sigmoid()
        v.add_(1.0)
        return y


@case(reference="AliasReadAfterWriteRef")
class AliasReadAfterWrite(_Two):
    """`v = h[:, :4]; v.mul_(3)` then `h` is read: the read sees the write through the alias."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        v = h[:, :4]
        v.mul_(3.0)
        return self.b(h)


class AliasReadAfterWriteRef(AliasReadAfterWrite):
    """Reference: the write made out of place, so `h` keeps its values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        v = h[:, :4]
        v = v * 3.0
        return self.b(h)


@case(reference="ViewWriteReadViewRef")
class ViewWriteReadView(_Two):
    """`v = h.view(-1); v.add_(1)` then only `v` is read: no other alias sees the write."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        v = h.view(-1)
        v.add_(1.0)
        return self.b(v.view(4, 8))


class ViewWriteReadViewRef(ViewWriteReadView):
    """Reference: the write made out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        v = h.view(-1)
        v = v + 1.0
        return self.b(v.view(4, 8))


@case()
class AdvancedIndexThenMul_(Ex1Linear):
    """Advanced indexing copies (saves only the indices): `mul_` on the source afterwards is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        g = h[torch.tensor([0, 2])]
        h.mul_(2.0)
        return g.sum(0) + h.sum(0)


@case()
class InplaceUnderNoGradOnSaved(Ex1Linear):
    """In-place under `no_grad` on a saved tensor still bumps its version: backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        with torch.no_grad():
            y.mul_(2.0)
        return y


@case()
class InplaceUnderNoGradUnsaved(Ex1Linear):
    """In-place under `no_grad` on a tensor nothing saved: legal, autograd does not see the change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        with torch.no_grad():
            y.mul_(2.0)
        return y * 1.5


# ----------------------------------------------------------------------------------------------------------------
# In-place modules in real architectures.
# ----------------------------------------------------------------------------------------------------------------


@case()
class ConvReluInplace(nn.Module):
    """`nn.ReLU(inplace=True)` after Conv2d: legal, conv does not save its output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    make_inputs = staticmethod(_img)


@case()
class ConvBnReluInplace(nn.Module):
    """`nn.ReLU(inplace=True)` after BatchNorm2d (training): legal, batch_norm saves its input, not output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    make_inputs = staticmethod(_img)


@case()
class ResNetBasicBlock(BasicBlock):
    """torchvision's BasicBlock (the demo's copy): conv-bn-relu(inplace)-conv-bn, `out += identity`, relu(inplace)."""

    def __init__(self) -> None:
        super().__init__(3)

    make_inputs = staticmethod(_img)


@case()
class ActivationSetitem(_Two):
    """`h[:, 0] = g[:, 0]` on an activation nobody saved: legal; both sources get gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(x)
        h[:, 0] = g[:, 0]
        return h


@case()
class SetitemIntoFreshBuffer(_Two):
    """`buf = zeros(...); buf[:, :4] = h`: the fresh tensor gets history through the write."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buf = torch.zeros(4, 8)
        buf[:, :4] = self.b(x)
        return buf + self.a(x)


@case()
class AttentionInplaceOnWeights(nn.Module):
    """`attn = softmax(q @ k.T)`; in-place `attn.mul_(mask)`: softmax and `attn @ v` saved `attn`."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)
        self.v = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        attn = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
        out = attn @ v
        attn.mul_(0.5)
        return out

    make_inputs = staticmethod(_x)


@case()
class AttentionOutOfPlaceMask(AttentionInplaceOnWeights):
    """Attention with the mask applied out of place (`attn = attn * 0.5`): legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        attn = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
        attn = attn * 0.5
        return attn @ v


# ----------------------------------------------------------------------------------------------------------------
# Gradient cuts.
# ----------------------------------------------------------------------------------------------------------------


@case()
class Detach(_Two):
    """`.detach()` between two layers: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).detach()
        return self.b(h)


@case()
class DetachInplace(_Two):
    """`h.detach_()` on an activation: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.detach_()
        return self.b(h)


@case()
class DataRead(_Two):
    """`.data` between two layers: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).data
        return self.b(h)


@case()
class NoGradBlock(_Two):
    """`with torch.no_grad():` around the first layer: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.a(x)
        return self.b(h)


@case()
class SetGradEnabledCall(_Two):
    """`torch.set_grad_enabled(False)` as a call, re-enabled afterwards: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(False)
        h = self.a(x)
        torch.set_grad_enabled(True)
        return self.b(h)


@case()
class SetGradEnabledContext(_Two):
    """`with torch.set_grad_enabled(False):` around the first layer: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(False):
            h = self.a(x)
        return self.b(h)


@case()
class NoGradDecoratedHelper(_Two):
    """A `@torch.no_grad()` helper method computes the features: `a` gets no gradient."""

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.features(x))


@case()
class EnableGradInsideNoGrad(_Two):
    """`enable_grad` inside `no_grad`: only the layer inside `enable_grad` gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.a(x)
            with torch.enable_grad():
                g = self.b(h)
        return self.c(g)


@case()
class InferenceModeBlock(_Two):
    """`with torch.inference_mode():` around the first layer, cloned out: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            h = self.a(x)
        return self.b(h.clone())


@case()
class WholeForwardNoGrad(_Two):
    """Everything under `no_grad`: no output requires grad, so no parameter gets a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.b(self.a(x))


@case()
class ItemRetensor(_Two):
    """`torch.tensor(h.sum().item())`: the scale is a new leaf, `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.a(x).sum().item()
        scale = torch.tensor(s)
        return self.b(x) * scale


@case()
class NumpyRoundTrip(_Two):
    """`torch.from_numpy(h.detach().numpy())`: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = self.a(x).detach().numpy()
        h = torch.from_numpy(arr)
        return self.b(h)


@case()
class NumpyOfLiveTensor(_Two):
    """`.numpy()` on a tensor that requires grad: eager forward raises (not a leaf error)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = self.a(x).numpy()
        return self.b(torch.from_numpy(arr))


@case()
class NewTensorRebuild(_Two):
    """`x.new_tensor(h)` copies values into a new leaf: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        c = x.new_tensor(h)
        return self.b(c)


@case()
class RequiresGradFalseFunctional(_Two):
    """`self.a.weight.requires_grad_(False)` then `F.linear`: the weight gets no gradient, the bias does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.a.weight.requires_grad_(False)
        h = F.linear(x, w, self.a.bias)
        return self.b(h)


@case()
class RequiresGradFalseThenModule(_Two):
    """`self.a.weight.requires_grad_(False)` then `self.a(x)`: the module's weight gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.a.weight.requires_grad_(False)
        return self.b(self.a(x))


@case()
class RequiresGradFalseOnActivation(_Two):
    """`h.requires_grad_(False)` on a non-leaf: eager forward raises (not a leaf in-place error)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.requires_grad_(False)
        return self.b(h)


@case()
class ArgmaxBeforeOutput(_Two):
    """`argmax` result added to the output: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.a(x).argmax(dim=-1, keepdim=True)
        return self.b(x) + idx


@case()
class ComparisonMask(_Two):
    """`(h > 0).float()` mask: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (self.a(x)[:, :4] > 0).float()
        return self.b(x) * mask


@case()
class LongCast(_Two):
    """`h.long().float()`: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).long().float()
        return self.b(x) + h[:, :4]


@case()
class IntegerOutputOnly(_Two):
    """The only output is an argmax: nothing requires grad, no parameter gets a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)).argmax(dim=-1)


@case()
class RoundZeroGrad(_Two):
    """`round` between two layers: `a` gets an all-zero gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).round()
        return self.b(h)


@case()
class FloorZeroGrad(_Two):
    """`torch.floor` between two layers: `a` gets an all-zero gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.floor(self.a(x)))


@case()
class SignZeroGrad(_Two):
    """`sign(h) * g`: `a` gets an all-zero gradient, `b` a real one."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(self.a(x)) * self.b(x)


@case()
class UnusedSubmodule(_Two):
    """A submodule that forward never calls: its parameters are unused."""

    def __init__(self) -> None:
        super().__init__()
        self.head2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


@case()
class UnusedTupleOutputBranch(_Two):
    """A layer computed but its result dropped: its parameters get no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _ = self.a(x)
        return self.b(x)


@case()
class TiedWeights(nn.Module):
    """Embedding and output projection share one weight: one parameter, gradients from both uses."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.proj(self.emb(ids))))

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randint(0, 10, (4, 5)),)


@case()
class TiedWeightOneUseDetached(nn.Module):
    """A weight used twice, once through `.detach()`: it still gets a gradient from the other use."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w) + (x @ self.w.detach())

    make_inputs = staticmethod(_x)


@case()
class StraightThroughEstimator(_Two):
    """`h + (round(h) - h).detach()`: forward is quantised, gradients flow straight through to `a`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        q = torch.round(h)
        h = h + (q - h).detach()
        return self.b(h)


@case()
class BufferUpdateNoGrad(nn.Module):
    """A running statistic updated in place under `no_grad`, not used by the output: legal, nothing to flag."""

    running: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("running", torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        with torch.no_grad():
            self.running.mul_(0.9).add_(h.mean(0), alpha=0.1)
        return h

    make_inputs = staticmethod(_x)


@case()
class ParamInplaceGradEnabled(nn.Module):
    """`self.w.add_()` with grad enabled: eager forward raises the leaf error."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.w.add_(1.0)
        return x * self.w

    make_inputs = staticmethod(_x)


@case()
class ParamSetitemGradEnabled(ParamInplaceGradEnabled):
    """`self.w[0] = 0` with grad enabled: eager forward raises (a view of a leaf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.w[0] = 0.0
        return x * self.w


@case()
class ParamInplaceNoGrad(ParamInplaceGradEnabled):
    """`self.w.clamp_()` under `no_grad` before use: legal (a deliberate update)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.w.clamp_(-1.0, 1.0)
        return x * self.w


@case(reference="DataWriteIntoSavedRef")
class DataWriteIntoSaved(_Two):
    """`y = h.sigmoid(); y.data.mul_(2)`: no error, but sigmoid's backward uses the overwritten output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x).sigmoid()
        y.data.mul_(2.0)
        return self.b(y)


class DataWriteIntoSavedRef(DataWriteIntoSaved):
    """Reference: the same forward values, made without touching the saved tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x).sigmoid()
        y = y + y.detach()
        return self.b(y)


@case(reference="DataWriteUnsavedRef")
class DataWriteUnsaved(_Two):
    """`h.data.mul_(2)` on a Linear output that nobody saved yet: gradients are as if written out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.data.mul_(2.0)
        return self.b(h)


class DataWriteUnsavedRef(DataWriteUnsaved):
    """Reference: the same forward values, written out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = h + h.detach()
        return self.b(h)


@case(reference="ParamDataWriteAfterUseRef")
class ParamDataWriteAfterUse(nn.Module):
    """Weight clipping through `.data` after the weight was used: matmul saved it, gradients go silently wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x) @ self.w
        self.w.data.mul_(0.5)
        return y

    make_inputs = staticmethod(_x)


class ParamDataWriteAfterUseRef(ParamDataWriteAfterUse):
    """Reference: no write (the forward value does not depend on it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) @ self.w


@case()
class InputInplaceMul_(Ex1Linear):
    """`x.mul_()` on the graph input: the caller's tensor changes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)
        return self.linear(x)


@case()
class InputSetitem(Ex1Linear):
    """`x[:, 0] = 0` on the graph input: the caller's tensor changes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x[:, 0] = 0.0
        return self.linear(x)


@case()
class InputSavedThenMul_(Ex1Linear):
    """Linear saves its input `x` for the weight gradient; `x.mul_()` afterwards breaks backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        x.mul_(2.0)
        return y


# ----------------------------------------------------------------------------------------------------------------
# Recurrent cells.
# ----------------------------------------------------------------------------------------------------------------


@case()
class GRUCellLoop(nn.Module):
    """nn.GRUCell unrolled over three steps, `relu_` on the hidden state between steps (nothing saved it yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        h = xs.new_zeros(xs.shape[1], 8)
        for t in range(3):
            h = self.cell(xs[t], h)
            h.relu_()
        return self.head(h)

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(3, 4, 8),)


@case(static_ok=False, reason="nn.LSTMCell is opaque statically and what lstm_cell saves is backend dependent")
class LSTMCellMutateCell(nn.Module):
    """nn.LSTMCell over two steps, then `c.mul_()` on a cell state the second step saved: backward raises."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(4, 8)
        c = torch.zeros(4, 8)
        h1, c1 = self.cell(xs[0], (h, c))
        h2, _ = self.cell(xs[1], (h1, c1))
        c1.mul_(0.5)
        return self.head(h2)

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(2, 4, 8),)


@case()
class LSTMCellLoop(LSTMCellMutateCell):
    """nn.LSTMCell over two steps, only the last hidden state used: every parameter gets a gradient."""

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(4, 8)
        c = torch.zeros(4, 8)
        h1, c1 = self.cell(xs[0], (h, c))
        h2, _ = self.cell(xs[1], (h1, c1))
        return self.head(h2)


@case()
class RNNOutputOnly(nn.Module):
    """nn.RNN (tanh, batch_first); the output sequence is used, `h_n` dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(8, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(4, 3, 8),)


# ----------------------------------------------------------------------------------------------------------------
# Output structures.
# ----------------------------------------------------------------------------------------------------------------


@case()
class DictOutputOneDetached(_Two):
    """A dict output whose auxiliary entry is detached: `a` still gets a gradient through `logits`."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.a(x)
        return {"logits": self.b(h), "features": h.detach()}


@case()
class TupleOutputBothCut(_Two):
    """A tuple output whose only path from `a` is cut in both entries: `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.a(x)
        return self.b(h.detach()), h.argmax(-1)


# ----------------------------------------------------------------------------------------------------------------
# Clean counterparts: the construct is there, but nothing loses its gradient.
# ----------------------------------------------------------------------------------------------------------------


@case()
class ItemOfInputForScale(_Two):
    """`.item()` of the input (no history to lose) used as a scale: every parameter gets a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) / x.abs().max().item()


@case()
class RequiresGradFalseOnInput(_Two):
    """`x.clone().requires_grad_(False)` on the input: nothing is cut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(False)
        return self.b(self.a(x))


@case()
class ArgmaxGather(_Two):
    """`h.gather(-1, h.argmax(...))`: the indices carry no gradient, the gathered values do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        idx = h.argmax(dim=-1, keepdim=True)
        return self.b(h) * h.gather(-1, idx)


@case()
class NewTensorOfInput(_Two):
    """`x.new_tensor(x)` copies the input, which has no history: nothing is cut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) * x.new_tensor(x))


# ----------------------------------------------------------------------------------------------------------------
# Suppression comments.
# ----------------------------------------------------------------------------------------------------------------


@case()
class SuppressedDetach(_Two):
    """An intentional stop-gradient accepted with a suppression comment on its line."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).detach()  # fxgrad: ignore[FXG001]
        return self.b(h)


@case()
class SuppressedAll(_Two):
    """A bare `# fxgrad: ignore` silences every finding anchored on its line."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).detach()  # fxgrad: ignore
        return self.b(h)


# ----------------------------------------------------------------------------------------------------------------
# Harder in-place cases: aliases through other spellings, forward-time errors, savers that never run backward.
# ----------------------------------------------------------------------------------------------------------------


@case()
class DoubleReluInplace(nn.Module):
    """Two `nn.ReLU(inplace=True)` in a row: the first saved its result, the second overwrites it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.ReLU(inplace=True), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    make_inputs = staticmethod(_x)


@case()
class InplaceMulByParam(nn.Module):
    """`h.mul_(self.w)` on a Linear output: legal, autograd keeps what the in-place mul needs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h.mul_(self.w)
        return h

    make_inputs = staticmethod(_x)


@case()
class TransposePropertyInplaceOnSaved(Ex1Linear):
    """`y.T.mul_(2)`: the `.T` property is a view of sigmoid's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        y.T.mul_(2.0)
        return y


@case()
class DetachSharesVersionCounter(Ex1Linear):
    """`y.detach().mul_(2)`: a detached alias shares the version counter of sigmoid's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        d = y.detach()
        d.mul_(2.0)
        return y


@case()
class FloatAliasInplaceOnSaved(Ex1Linear):
    """`y.float()` of a float tensor is `y` itself: `mul_` on it overwrites sigmoid's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        g = y.float()
        g.mul_(2.0)
        return y


@case()
class ContiguousAliasInplaceOnSaved(Ex1Linear):
    """`y.contiguous()` of a contiguous tensor is `y` itself: `add_` on it overwrites sigmoid's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).tanh()
        g = y.contiguous()
        g.add_(1.0)
        return y


@case(static_ok=False, reason="reshape returns a view or a copy depending on strides, known only with shapes",
      reference="ReshapeCopyInplaceRef")
class ReshapeCopyInplace(Ex1Linear):
    """`y.t().reshape(-1)` copies (non-contiguous input): `mul_` on the copy leaves sigmoid's output alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        z = y.t().reshape(-1)
        z.mul_(2.0)
        return y.sum() + z.sum()


class ReshapeCopyInplaceRef(Ex1Linear):
    """Reference: the write made out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        z = y.t().reshape(-1)
        z = z * 2.0
        return y.sum() + z.sum()


@case(reference="ListIndexCopyInplaceRef")
class ListIndexCopyInplace(Ex1Linear):
    """`y[[0, 1]]` is a copy: `mul_` on it leaves sigmoid's output alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        g = y[[0, 1]]
        g.mul_(2.0)
        return y.sum(0) + g.sum(0)


class ListIndexCopyInplaceRef(Ex1Linear):
    """Reference: the write made out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        g = y[[0, 1]]
        g = g * 2.0
        return y.sum(0) + g.sum(0)


@case()
class CatOfSavedThenInplace(Ex1Linear):
    """cat makes a new tensor: `mul_` on it leaves the sigmoid outputs it copied alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.linear(x))
        c = torch.cat([s, s], dim=1)
        c.mul_(2.0)
        return c


@case()
class DropoutInplaceOnSaved(Ex1Linear):
    """`F.dropout(y, inplace=True)` on sigmoid's saved output (training): backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        F.dropout(y, 0.5, training=True, inplace=True)
        return y


@case()
class DropoutModuleInplaceAfterLinear(nn.Module):
    """`nn.Dropout(inplace=True)` after Linear: legal."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5, inplace=True), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    make_inputs = staticmethod(_x)


@case()
class SigmoidInplaceThenMul_(Ex1Linear):
    """`h.sigmoid_()` saves its result; `h.mul_()` afterwards overwrites it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        h.sigmoid_()
        h.mul_(2.0)
        return h


@case()
class MaskedFillOnSoftmax(Ex1Linear):
    """`masked_fill_` on softmax's saved output: backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.linear(x).softmax(-1)
        p.masked_fill_(p < 0.1, 0.0)
        return p


@case()
class DeadSaverInplace(Ex1Linear):
    """sigmoid saved its output, but that branch never reaches the loss: `mul_` on it is harmless."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        dead = torch.sigmoid(h)
        dead.mul_(2.0)
        return h * 3.0


@case()
class InplaceReadsSavedTensor(_Two):
    """`c.add_(b)` only reads `b`, which `a * b` saved: legal."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        y = a * b
        c = self.c(x)
        c.add_(b)
        return y + c


@case()
class ParamUpdateAfterSavedUse(nn.Module):
    """`h * w`, then `w.mul_()` under no_grad: the mul saved `w` for h's gradient, backward raises."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x) * self.w
        with torch.no_grad():
            self.w.mul_(0.5)
        return y

    make_inputs = staticmethod(_x)


@case()
class ParamUpdateAfterUnsavedUse(ParamUpdateAfterSavedUse):
    """`x * w` with an input that needs no grad, then `w.mul_()` under no_grad: `w` was not saved, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.w + self.lin(x)
        with torch.no_grad():
            self.w.mul_(0.5)
        return y


@case()
class BufferSavedThenUpdated(nn.Module):
    """`h * self.scale` saved the buffer for h's gradient; updating it under no_grad makes backward raise."""

    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("scale", torch.full((8,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x) * self.scale
        with torch.no_grad():
            self.scale.mul_(0.9)
        return y

    make_inputs = staticmethod(_x)


@case()
class ChunkViewInplace(Ex1Linear):
    """`a, b = h.chunk(2); a.mul_(2)`: eager forward raises (in-place on a multi-output view)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        a, b = h.chunk(2, dim=-1)
        a.mul_(2.0)
        return a + b


@case()
class ExpandedCloneInplace(Ex1Linear):
    """`e = h[:, :1].expand(4, 4).clone(); e.add_(1)`: the clone owns its memory, the write is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        e = h[:, :1].expand(-1, 4).clone()
        e.add_(1)
        return h + e


@case()
class ChunkThenOutOfPlace(Ex1Linear):
    """`a, b = h.chunk(2); a = a * 2`: the out-of-place spelling of ChunkViewInplace is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        a, b = h.chunk(2, dim=-1)
        a = a * 2.0
        return a + b


@case()
class NoGradViewInplace(Ex1Linear):
    """A view made under no_grad, written in place with grad enabled: eager forward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        with torch.no_grad():
            v = h[:, 0]
        v.mul_(2.0)
        return h


@case()
class OutKwargOnActivation(_Two):
    """`torch.add(a, b, out=a)` with `a` requiring grad: eager forward raises (out= is not differentiable)."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        torch.add(a, b, out=a)
        return a


@case(static_ok=False, reason="whether a graph input requires grad is only known from the example inputs")
class InputLeafRequiresGradInplace(Ex1Linear):
    """`x.mul_()` on an input that is a leaf requiring grad: eager forward raises the leaf error."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)
        return self.linear(x)

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(4, 8, requires_grad=True),)


# ----------------------------------------------------------------------------------------------------------------
# More parameter verdicts.
# ----------------------------------------------------------------------------------------------------------------


@case()
class ParamOnlyThroughData(nn.Module):
    """A parameter read only as `self.w.data`: it gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) @ self.w.data

    make_inputs = staticmethod(_x)


@case()
class FrozenParameter(_Two):
    """A parameter created with requires_grad=False is not trainable: not reported."""

    def __init__(self) -> None:
        super().__init__()
        self.a.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


@case()
class ParameterListLoop(nn.Module):
    """Parameters of an nn.ParameterList used in a Python loop: each gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.scales = nn.ParameterList([nn.Parameter(torch.randn(8)) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.scales:
            x = torch.tanh(x * s)
        return x

    make_inputs = staticmethod(_x)


@case()
class SharedModuleUnderNoGradAndGrad(_Two):
    """The same Linear called under no_grad and with grad: it still gets a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.a(x)
        return self.b(self.a(x) + t)


@case()
class TensorOfListWithItem(_Two):
    """`torch.tensor([h.sum().item(), 1.0])`: the list is rebuilt from Python numbers, `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.tensor([self.a(x).sum().item(), 1.0])
        return self.b(x) * s[0]


@case()
class AsTensorPassThrough(_Two):
    """`torch.as_tensor(h)` of a tensor returns it unchanged: `a` keeps its gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.as_tensor(self.a(x)))


@case()
class ZerosLikeCopy_(_Two):
    """`torch.zeros_like(h).copy_(h)`: the copy carries h's gradient back to `a`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        buf = torch.zeros_like(h)
        buf.copy_(h)
        return self.b(buf)


@case()
class SetGradEnabledFalseNeverRestored(_Two):
    """`torch.set_grad_enabled(False)` and never re-enabled: nothing after it gets a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        torch.set_grad_enabled(False)
        return self.b(h)


# ----------------------------------------------------------------------------------------------------------------
# Less common spellings of the same questions.
# ----------------------------------------------------------------------------------------------------------------


@case(reference="DropoutEvalInplaceOnSavedRef")
class DropoutEvalInplaceOnSaved(Ex1Linear):
    """`F.dropout(y, training=False, inplace=True)` is a no-op: sigmoid's saved output is not modified."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        F.dropout(y, 0.5, training=False, inplace=True)
        return y


class DropoutEvalInplaceOnSavedRef(Ex1Linear):
    """Reference: without the no-op dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).sigmoid()


@case()
class EinsumThenMul_(MatmulThenAdd_):
    """`einsum('ij,jk->ik', h, W)` saves `h` for W's gradient; `h.mul_()` afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = torch.einsum("ij,jk->ik", h, self.W)
        h.mul_(2.0)
        return y


@case()
class RpowThenMul_(Ex1Linear):
    """`2.0 ** h` saves its result; `mul_` on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 2.0 ** self.linear(x)
        y.mul_(2.0)
        return y


@case()
class RdivThenInputMul_(Ex1Linear):
    """`1.0 / h` is a reciprocal, which saves its result, not `h`: `h.mul_()` afterwards is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        y = 1.0 / h
        h.mul_(2.0)
        return y


@case()
class IdentityModuleAlias(nn.Module):
    """`nn.Identity()` returns its input: `mul_` on its output overwrites sigmoid's saved output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.ident = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ident(self.lin(x).sigmoid())
        y.mul_(2.0)
        return y

    make_inputs = staticmethod(_x)


@case()
class DetachRequiresGradLeafInplace(Ex1Linear):
    """`y.detach().requires_grad_()` is a new leaf that requires grad: `mul_` on it raises in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x).sigmoid()
        d = y.detach().requires_grad_()
        d.mul_(2.0)
        return y + d


@case(reference="ParamDataWriteAfterTransposedUseRef")
class ParamDataWriteAfterTransposedUse(nn.Module):
    """`h @ self.w.T` saved `w` (as a view) for h's gradient; `self.w.data.mul_()` changes it silently."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x) @ self.w.T
        self.w.data.mul_(0.5)
        return y

    make_inputs = staticmethod(_x)


class ParamDataWriteAfterTransposedUseRef(ParamDataWriteAfterTransposedUse):
    """Reference: no write (the forward value does not depend on it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) @ self.w.T


@case()
class EmbeddingMaxNormAfterUse(nn.Module):
    """`nn.Embedding(max_norm=...)` renormalises its weight in place at lookup; an earlier matmul saved it."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8, max_norm=1.0)
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        scores = self.lin(x) @ self.emb.weight.t()
        e = self.emb(ids)
        return scores.sum(1) + e.sum(1)

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(4, 8), torch.randint(0, 10, (4,))


@case()
class MultiheadAttentionBlock(nn.Module):
    """nn.MultiheadAttention (traced through) with a head; attention weights returned but unused."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x)
        return self.head(out)

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(2, 5, 8),)


@case()
class TransformerEncoderLayerBlock(nn.Module):
    """nn.TransformerEncoderLayer (training mode, dropout on): every parameter gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(2, 5, 8),)


@case()
class TopkIndicesOnly(_Two):
    """Only the indices of `topk` are used (as floats): integer results, `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, idx = self.a(x).topk(2, dim=1)
        return self.b(x)[:, :2] + idx.float()


@case()
class MaxDimIndexByPosition(_Two):
    """`h.max(dim=1)[1]`: the argmax half of a (values, indices) pair, `a` gets no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.a(x).max(dim=1)[1]
        return self.b(x) + idx.float().unsqueeze(1)


@case()
class SortIndicesGather(_Two):
    """`b(x).gather(1, sort(a(x)).indices)`: `a` only decides the order, it gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, order = torch.sort(self.a(x), dim=1)
        return self.b(x).gather(1, order)


@case()
class FloorDivideNoDerivative(_Two):
    """`h // 2.0` has no derivative: eager backward raises 'derivative for aten::floor_divide is not implemented'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) // 2.0)


@case(reference="LeakyReluNegativeSlope")
class LeakyReluInplaceNegativeSlope(Ex1Linear):
    """`F.leaky_relu(h, -0.1, inplace=True)`: the in-place backward cannot invert a negative slope; backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.linear(x), -0.1, inplace=True)


@case()
class LeakyReluNegativeSlope(Ex1Linear):
    """`F.leaky_relu(h, -0.1)` out of place: autograd saves the input, a negative slope is fine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.linear(x), -0.1)


@case(reference="LeakyReluNegativeSlope")
class LeakyReluModuleNegativeSlope(Ex1Linear):
    """`nn.LeakyReLU(-0.1, inplace=True)`: the module form of the in-place negative slope; backward raises."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.LeakyReLU(-0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


@case()
class LeakyReluInplaceZeroSlope(Ex1Linear):
    """`F.leaky_relu_(h, 0.0)`: a zero slope is no negative slope; backward runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu_(self.linear(x), 0.0)


@case()
class LeakyReluInplaceNegativeSlopeNoGradNeeded(Ex1Linear):
    """`F.leaky_relu_(x.clone(), -0.1)` on a tensor that does not require grad: autograd records no backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + F.leaky_relu_(x.clone(), -0.1)[:, :4]


@case(reference="EluNegativeAlpha")
class EluInplaceNegativeAlpha(Ex1Linear):
    """`F.elu_(h, alpha=-0.5)`: in-place elu with a negative alpha; backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu_(self.linear(x), alpha=-0.5)


@case(reference="CeluNegativeAlpha")
class CeluInplaceNegativeAlpha(Ex1Linear):
    """`F.celu(h, -0.5, inplace=True)`: celu_ is elu_ with that alpha; backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.celu(self.linear(x), -0.5, inplace=True)


@case(reference="RReLUEvalNegative")
class RReLUEvalInplaceNegative(Ex1Linear):
    """`nn.RReLU(-0.3, -0.1, inplace=True)` in eval mode is `leaky_relu_` with slope -0.2; backward raises."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.RReLU(-0.3, -0.1, inplace=True).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


@case()
class RReLUTrainInplaceNegative(Ex1Linear):
    """`nn.RReLU(-0.3, -0.1, inplace=True)` in training keeps its random slopes: backward runs."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.RReLU(-0.3, -0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


@case()
class EluNegativeAlpha(Ex1Linear):
    """`F.elu(h, -0.5)` out of place: autograd saves the input, a negative alpha is fine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.linear(x), -0.5)


@case()
class CeluNegativeAlpha(Ex1Linear):
    """`F.celu(h, -0.5)` out of place: a negative alpha is fine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.celu(self.linear(x), -0.5)


@case()
class RReLUEvalNegative(Ex1Linear):
    """`F.rrelu(h, -0.3, -0.1)` out of place in eval mode: `leaky_relu` with slope -0.2, which is fine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rrelu(self.linear(x), -0.3, -0.1, training=False)


@case(reference="AsinhOutOfPlace")
class AsinhInplace(Ex1Linear):
    """`torch.asinh_(h)`: the in-place form has no derivative ('inplace version of asinh'); backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.asinh_(self.linear(x))


@case()
class AsinhOutOfPlace(Ex1Linear):
    """`torch.asinh(h)` out of place: differentiable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.asinh(self.linear(x))


@case(reference="AcoshAtanhOutOfPlace")
class AcoshAtanhInplace(Ex1Linear):
    """`h.acosh_()` and `h.atanh_()` as methods: neither in-place form has a derivative; backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return (h.abs() + 1.5).acosh_() + (h.tanh() * 0.5).atanh_()


@case()
class AcoshAtanhOutOfPlace(Ex1Linear):
    """`h.acosh()` and `h.atanh()` out of place: differentiable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return (h.abs() + 1.5).acosh() + (h.tanh() * 0.5).atanh()


@case()
class AsinhInplaceNoGradNeeded(Ex1Linear):
    """`torch.asinh_(x.clone())` on a tensor that does not require grad: autograd records no backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + torch.asinh_(x.clone())[:, :4]


@case()
class IgammaOfActivation(Ex1Linear):
    """`torch.igamma(h, x)`: no derivative for its first argument; backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.igamma(self.linear(x).abs() + 0.5, x[:, :4].abs() + 0.5)


@case()
class IgammaOfInputAtActivation(Ex1Linear):
    """`torch.igamma(x, h)`: differentiable in its second argument; backward runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.igamma(x[:, :4].abs() + 0.5, self.linear(x).abs() + 0.5)


@case()
class ZetaOfActivation(Ex1Linear):
    """`torch.special.zeta(h, 2.0)`: no derivative for its first argument; backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(self.linear(x).abs() + 1.5, 2.0)


from . import corpus_forum  # noqa: E402,F401


@case(reference="LSTMStatesOutOfPlace")
class LSTMStatesWritten(nn.Module):
    """nn.LSTM's `h_n` scaled in place, then `c_n` and the output read: `(h_n, c_n)` are two tensors, not views of
    one (no later read sees the write), and oneDNN saves neither."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, c) = self.lstm(x)
        h.mul_(2.0)
        return self.head(h[-1] + c[-1] + out[:, -1])

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(3, 4, 8),)


class LSTMStatesOutOfPlace(LSTMStatesWritten):
    """The same program out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, c) = self.lstm(x)
        h = h * 2.0
        return self.head(h[-1] + c[-1] + out[:, -1])


@case(reference="GRUOutputViewOutOfPlace")
class GRUOutputViewWritten(nn.Module):
    """nn.GRU (the native cells on CPU: nothing saves its output); the last step, a view of the output, scaled in
    place, then the whole output read: that read sees the write (FXG104)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.gru(x)
        last = out[:, -1]
        last.mul_(2.0)
        return self.head(out.sum(1) + h[-1])

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(3, 4, 8),)


class GRUOutputViewOutOfPlace(GRUOutputViewWritten):
    """The same program without the write: the whole output as the GRU made it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.gru(x)
        return self.head(out.sum(1) + h[-1])
