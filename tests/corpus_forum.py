"""Corpus cases drawn from what users report on the PyTorch forums and GitHub issues.

Each case reduces one reported situation to a small model (tensors of at most 16 x 16). The thread it comes from is
named in a comment where there is one; the ground truth is eager PyTorch (``tests/oracle.py``), never written here.
Cases register into :data:`tests.corpus.CASES` through the same :func:`~tests.corpus.case` decorator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import corpus as _corpus
from .corpus import case


def _ref(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a reference program findable by name: ``case(reference=...)`` looks it up in corpus.py's namespace."""
    setattr(_corpus, cls.__name__, cls)
    return cls


def _x() -> tuple[torch.Tensor]:
    return (torch.randn(4, 8),)


def _seq() -> tuple[torch.Tensor]:
    return (torch.randn(3, 4, 8),)


class _One(nn.Module):
    """One Linear(8, 8) layer ``lin``: most forum reports are one op after one layer."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    make_inputs = staticmethod(_x)


class _Pair(nn.Module):
    """Two Linear(8, 8) layers ``a`` and ``b``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    make_inputs = staticmethod(_x)


# ----------------------------------------------------------------------------------------------------------------
# Activations written to in place after the op that saved them.
# ----------------------------------------------------------------------------------------------------------------


@case()
class FpnLateralIadd(nn.Module):
    """FPN top-down pass: `laterals[i - 1] += F.interpolate(laterals[i])` on ReLU outputs (saved by ReLU)."""

    # https://github.com/lyongo/NWPU-MOC/issues/4 ("output 0 of ReluBackward0"; fix: `+=` -> `=` ... `+`)

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        laterals = [F.relu(self.c1(x)), F.relu(self.c2(x))]
        for i in range(len(laterals) - 1, 0, -1):
            prev_shape = laterals[i - 1].shape[2:]
            laterals[i - 1] += F.interpolate(laterals[i], size=prev_shape, mode="nearest")
        return laterals[0]

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(1, 3, 8, 8),)


@case()
class FpnLateralOutOfPlace(FpnLateralIadd):
    """FPN top-down pass fixed: `laterals[i - 1] = laterals[i - 1] + F.interpolate(...)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        laterals = [F.relu(self.c1(x)), F.relu(self.c2(x))]
        for i in range(len(laterals) - 1, 0, -1):
            prev_shape = laterals[i - 1].shape[2:]
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=prev_shape, mode="nearest")
        return laterals[0]


@case()
class ReluThenItrueDivNumpyConst(_One):
    """`h = relu(...); h /= np.sqrt(hidden)`: ReLU saved its output, `/=` overwrites it."""

    # https://github.com/bayesiains/nflows/issues/89

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.lin(x))
        h /= np.sqrt(8)
        return h


@case()
class PreActResidualIadd(nn.Module):
    """Pre-activation residual: `out = self.relu(out); out += identity` (ReLU's saved output overwritten)."""

    # https://github.com/pytorch/vision/issues/807 (fmassa: "you have the following error in backward")

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv(x)
        out = self.relu(out)
        out += identity
        return out

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(1, 3, 6, 6),)


@case()
class GanDiscriminatorLeakyInplace(nn.Module):
    """GAN discriminator block Conv -> BatchNorm -> LeakyReLU(inplace=True): legal, BN saves its input only."""

    # https://github.com/pytorch/pytorch/issues/46638

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8, 0.8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(8, 1, 2),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.model(img)

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(2, 1, 8, 8),)


@case()
class LeakyInplaceThenDropoutInplace(nn.Module):
    """GAN generator: LeakyReLU(inplace=True) then Dropout(inplace=True) in training overwrites the saved result."""

    # https://github.com/dreamgonfly/GAN-tutorial/issues/1 (fix: drop inplace=True from LeakyReLU and Dropout)

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(0.3, inplace=True),
                                 nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    make_inputs = staticmethod(_x)


@case()
class ReluThenFunctionalDropoutInplace(_One):
    """`F.dropout(F.relu(h), training=True, inplace=True)`: dropout writes into ReLU's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.relu(self.lin(x)), p=0.5, training=True, inplace=True)


@case()
class SigmoidThenDropoutInplaceEval(_One):
    """`F.dropout(sigmoid(h), training=self.training, inplace=True)` with the model in eval(): dropout is a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(torch.sigmoid(self.lin(x)), p=0.5, training=self.training, inplace=True)


@case()
class SigmoidThenDropoutInplaceTrain(_One):
    """`F.dropout(sigmoid(h), training=True, inplace=True)`: dropout overwrites sigmoid's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(torch.sigmoid(self.lin(x)), p=0.5, training=True, inplace=True)


@case()
class SkipAliasOfInplaceRelu(nn.Module):
    """Xception-style `res = h; h = self.act(h)` with ReLU(inplace=True): the skip branch sees the ReLU'd values."""

    # https://github.com/osmr/imgclsmob/issues/13 ("modifies both old copy of x and a new copy")

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(8, 8)
        self.lin1 = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin0(x)
        res = h
        h = self.act(h)
        h = self.lin1(h)
        return h + res

    make_inputs = staticmethod(_x)


@case(reference="SkipAliasOfInplaceReluRef")
class SkipAliasOfInplaceReluWithRef(SkipAliasOfInplaceRelu):
    """Same skip alias, checked against the out-of-place program (the alias read changes the output)."""


@_ref
class SkipAliasOfInplaceReluRef(SkipAliasOfInplaceRelu):
    """Reference program: ReLU out of place, the skip branch keeps the pre-activation values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin0(x)
        res = h
        h = F.relu(h)
        h = self.lin1(h)
        return h + res


@case()
class SharedInplaceReluTwice(nn.Module):
    """One `nn.ReLU(inplace=True)` module reused after two Linear layers: legal, Linear saves neither output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.b(self.act(self.a(x))))

    make_inputs = staticmethod(_x)


@case()
class MaskSetitemOnRelu(_One):
    """`h = relu(...); h[h < 0.1] = 0`: boolean-mask assignment writes into ReLU's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.lin(x))
        h[h < 0.1] = 0
        return h


@case()
class MaskSetitemOnLinearOutput(_Pair):
    """`h = a(x); h[h < 0] = 0; b(h)`: boolean-mask assignment on an unsaved Linear output is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h[h < 0] = 0
        return self.b(h)


@case()
class IntIndexIaddOnLinear(_One):
    """`h[0] += 1` on a Linear output: legal in-place on an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h[0] += 1
        return h


@case()
class IntIndexIaddOnSigmoid(_One):
    """`s[0] += 1` on a sigmoid output: the write through the view hits the saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.lin(x))
        s[0] += 1
        return s


@case()
class SelfAliasIaddOnLinear(_One):
    """`h += h` on a Linear output: add saves nothing, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h += h
        return h


@case()
class SelfAliasImulOnLinear(_One):
    """`h *= h`: mul_ needs both operands for backward, and they are the tensor it overwrites."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h *= h
        return h


@case()
class SelfAliasIaddOnSigmoid(_One):
    """`s += s` on a sigmoid output: overwrites sigmoid's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.lin(x))
        s += s
        return s


# ----------------------------------------------------------------------------------------------------------------
# Attention masks.
# ----------------------------------------------------------------------------------------------------------------


@case()
class MaskedFillInplaceOnScores(nn.Module):
    """`scores.masked_fill_(mask, -inf)` before softmax: matmul saves q and k, not scores: legal."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)
        self.register_buffer("mask", torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(0, 1) / math.sqrt(8)
        scores.masked_fill_(self.mask, float("-inf"))
        return F.softmax(scores, dim=-1)

    make_inputs = staticmethod(_x)


@case()
class SoftmaxThenImulMask(MaskedFillInplaceOnScores):
    """`p = F.softmax(scores); p *= keep`: softmax saved its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = F.softmax(self.q(x) @ self.k(x).transpose(0, 1), dim=-1)
        p *= (~self.mask).float()
        return p


@case()
class AttentionDropoutInplaceOnSoftmax(MaskedFillInplaceOnScores):
    """Attention dropout with inplace=True on the softmax output: overwrites softmax's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = F.softmax(self.q(x) @ self.k(x).transpose(0, 1), dim=-1)
        p = F.dropout(p, p=0.1, training=True, inplace=True)
        return p @ x


@case()
class MaskedFillMaskFlippedAfterUse(MaskedFillInplaceOnScores):
    """`masked_fill(m, 0)` then `m.logical_not_()`: masked_fill saved its (bool) mask; backward checks it too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.q(x)
        m = h > 0
        y = h.masked_fill(m, 0.0)
        m.logical_not_()
        return y + m.float()


@case()
class WhereCondFlippedAfterUse(_One):
    """`torch.where(cond, h, 0)` then `cond.logical_not_()`: where saved cond; the version check covers bool tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        cond = h > 0
        y = torch.where(cond, h, torch.zeros_like(h))
        cond.logical_not_()
        return y


@case()
class WhereThenInplaceOnBranch(_One):
    """`y = torch.where(h > 0, h, 0.1 * h); h.mul_(2)`: where saves only the condition, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = torch.where(h > 0, h, 0.1 * h)
        h.mul_(2)
        return y


@case()
class ArgmaxHardAttention(nn.Module):
    """Hard attention `one_hot(scores.argmax(-1)) @ v`: the scoring layer gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(8, 4)
        self.v = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.score(x).argmax(-1)
        attn = F.one_hot(idx, num_classes=4).float()
        return attn @ self.v(x)[:4]

    make_inputs = staticmethod(_x)


@case()
class GumbelSoftmaxHardBuiltin(ArgmaxHardAttention):
    """`F.gumbel_softmax(logits, hard=True)`: straight-through, the scoring layer does get a gradient."""

    # https://github.com/pytorch/pytorch/issues/68941, https://github.com/shariqiqbal2810/maddpg-pytorch/issues/34

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = F.gumbel_softmax(self.score(x), tau=0.5, hard=True)
        return attn @ self.v(x)[:4]


@case()
class GumbelStraightThroughByHand(ArgmaxHardAttention):
    """Hand-written straight-through: `zeros_like(y).scatter_(-1, idx, 1.0) - y.detach() + y`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.softmax(self.score(x), dim=-1)
        idx = y.max(-1, keepdim=True)[1]
        y_hard = torch.zeros_like(y).scatter_(-1, idx, 1.0)
        attn = y_hard - y.detach() + y
        return attn @ self.v(x)[:4]


@case()
class ScatterInplaceOnSoftmax(nn.Module):
    """`p = softmax(h); p.scatter_(1, idx, 0.0)`: scatter_ overwrites softmax's saved output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("idx", torch.tensor([[0], [1], [2], [3]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = F.softmax(self.lin(x), dim=1)
        p.scatter_(1, self.idx, 0.0)
        return p

    make_inputs = staticmethod(_x)


@case()
class ScatterAddInplaceOnLinear(ScatterInplaceOnSoftmax):
    """`h.scatter_add_(1, idx, src)` on a Linear output with a live `src`: legal, gradients reach both."""

    def __init__(self) -> None:
        super().__init__()
        self.src = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h.scatter_add_(1, self.idx, self.src(x))
        return h


@case()
class IndexAddIntoZeros(nn.Module):
    """`out = zeros(...); out.index_add_(0, idx, h)`: graph-style aggregation into a fresh tensor, legal."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("idx", torch.tensor([0, 1, 0, 2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        out = torch.zeros(3, 8)
        out.index_add_(0, self.idx, h)
        return out

    make_inputs = staticmethod(_x)


@case()
class IndexPutAccumulateOnSoftmax(IndexAddIntoZeros):
    """`p.index_put_((idx,), v, accumulate=True)` on a softmax output: overwrites the saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = F.softmax(self.lin(x), dim=1)
        p.index_put_((self.idx,), torch.ones(4, 8), accumulate=True)
        return p


@case()
class MaskedScatterIntoZeros(_One):
    """`torch.zeros(4, 8).masked_scatter_(h > 0, h)`: writes a live tensor into a fresh one, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        out = torch.zeros(4, 8)
        out.masked_scatter_(h > 0, h)
        return out


# ----------------------------------------------------------------------------------------------------------------
# In-place methods whose backward needs their own result or input.
# ----------------------------------------------------------------------------------------------------------------


@case()
class ClampInplaceOnSigmoid(_One):
    """Hand-written BCE: `p = sigmoid(h); p.clamp_(eps, 1 - eps)` overwrites sigmoid's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.lin(x))
        p.clamp_(1e-6, 1 - 1e-6)
        return torch.log(p)


@case()
class ClampMinInplaceOnLinear(_Pair):
    """`h.clamp_min_(0)` on a Linear output, then another Linear: legal in-place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.clamp_min_(0)
        return self.b(h)


@case()
class ExpInplaceThenAdd(_One):
    """`h.exp_(); h.add_(1)`: exp_ saves its result, add_ overwrites it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h.exp_()
        h.add_(1)
        return h


@case()
class SigmoidInplaceMethodThenLinear(_Pair):
    """`h.sigmoid_()` then a Linear layer: legal, nothing writes the saved result afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.sigmoid_()
        return self.b(h)


@case()
class TanhInplaceTwice(_One):
    """`h.tanh_(); h.tanh_()`: the second tanh_ overwrites the first one's saved result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h.tanh_()
        h.tanh_()
        return h


@case()
class TorchSigmoidInplaceThenAdd(_One):
    """`torch.sigmoid_(h); h.add_(1)`: the functional spelling of an in-place sigmoid, then a write."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        torch.sigmoid_(h)
        h.add_(1)
        return h


@case()
class NanToNumInplaceOnLog(_One):
    """`y = log(h); y.nan_to_num_(0.0)`: log saves its input, not its output; legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.log(self.lin(x))
        y.nan_to_num_(0.0, posinf=0.0, neginf=0.0)
        return y


@case()
class AddcmulInplaceThenOperandWrite(_Pair):
    """`h.addcmul_(g, g)` then `g.add_(1)`: addcmul saved its operands."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(x)
        h.addcmul_(g, g, value=0.5)
        g.add_(1)
        return h + g


@case()
class LerpInplaceTowardsLive(_Pair):
    """`h.lerp_(g, 0.3)` on a Linear output towards another: legal in-place, both layers get gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.lerp_(self.b(x), 0.3)
        return h


@case()
class AbsThenInputWrite(_One):
    """`a = h.abs(); h.mul_(2)`: abs saved its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        a = h.abs()
        h.mul_(2)
        return a + h


@case()
class PowThenBaseWrite(_One):
    """`p = torch.pow(h, 2); h.add_(1)`: pow saved its base."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        p = torch.pow(h, 2)
        h.add_(1)
        return p


@case()
class PowThenResultWrite(_One):
    """`p = h ** 2; p.add_(1)`: pow with a scalar exponent saves the base only, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.lin(x) ** 2
        p.add_(1)
        return p


@case()
class SqrtThenResultWrite(_One):
    """`s = sqrt(h.abs() + 1); s.add_(1e-6)`: sqrt saved its result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sqrt(self.lin(x).abs() + 1)
        s.add_(1e-6)
        return s


@case()
class RsqrtThenResultWrite(_One):
    """`r = rsqrt(h.abs() + 1); r.mul_(2)`: rsqrt saved its result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.rsqrt(self.lin(x).abs() + 1)
        r.mul_(2)
        return r


@case()
class LogThenInputWrite(_One):
    """`z = h.abs() + 1; y = log(z); z.mul_(2)`: log saved its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.lin(x).abs() + 1
        y = torch.log(z)
        z.mul_(2)
        return y


@case()
class ReciprocalThenResultWrite(_One):
    """`r = reciprocal(z); r.mul_(2)`: reciprocal saved its result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.reciprocal(self.lin(x).abs() + 1)
        r.mul_(2)
        return r


@case()
class SinThenInputWrite(_One):
    """`s = sin(h); h.add_(1)`: sin saved its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        s = torch.sin(h)
        h.add_(1)
        return s


@case()
class CosThenResultWrite(_One):
    """`c = cos(h); c.add_(1)`: cos saves its input, not its result; legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = torch.cos(self.lin(x))
        c.add_(1)
        return c


@case()
class CumsumThenResultWrite(_One):
    """`c = h.cumsum(1); c.mul_(2)`: cumsum saves nothing, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.lin(x).cumsum(1)
        c.mul_(2)
        return c


@case()
class CumprodThenResultWrite(_One):
    """`c = h.cumprod(1); c.mul_(2)`: cumprod saved its result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.lin(x).cumprod(1)
        c.mul_(2)
        return c


@case()
class CumprodThenInputWrite(_One):
    """`c = h.cumprod(1); h.add_(1)`: cumprod saved its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        c = h.cumprod(1)
        h.add_(1)
        return c


@case()
class ProdThenResultWrite(_One):
    """`p = h.prod(1); p.add_(1)`: prod saved its result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.lin(x).prod(1)
        p.add_(1)
        return p


@case()
class MaxDimValuesThenWrite(_One):
    """`m = h.max(dim=1).values; m.add_(1)`: max along a dim saves its indices only, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.lin(x).max(dim=1).values
        m.add_(1)
        return m


@case()
class AmaxThenResultWrite(_One):
    """`m = h.amax(1); m.add_(1)`: amax saved its result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.lin(x).amax(1)
        m.add_(1)
        return m


@case()
class NormThenResultWrite(_One):
    """`n = torch.norm(h, dim=-1, keepdim=True); n.add_(1)`: the 2-norm saved its result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        n = torch.norm(h, dim=-1, keepdim=True)
        n.add_(1)
        return h / n


@case()
class NormalizeThenResultWrite(_One):
    """`y = F.normalize(h); y.mul_(10)`: normalize divides, the quotient is not saved; legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.normalize(self.lin(x), dim=-1)
        y.mul_(10)
        return y


# ----------------------------------------------------------------------------------------------------------------
# Normalisation written by hand, and the library norms followed by in-place ops.
# ----------------------------------------------------------------------------------------------------------------


@case()
class HandLayerNormStdIadd(nn.Module):
    """Hand-written LayerNorm: `std = var.sqrt(); std += eps` overwrites sqrt's saved result."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.gamma = nn.Parameter(torch.ones(8))
        self.beta = nn.Parameter(torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        std = var.sqrt()
        std += 1e-5
        return self.gamma * (h - mu) / std + self.beta

    make_inputs = staticmethod(_x)


@case()
class HandLayerNormGammaImul(HandLayerNormStdIadd):
    """Hand-written LayerNorm: `y = (h - mu) / std; y *= gamma; y += beta` (the quotient is not saved); legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        mu = h.mean(-1, keepdim=True)
        std = (h.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        y = (h - mu) / std
        y *= self.gamma
        y += self.beta
        return y


@case()
class GroupNormThenInputWrite(nn.Module):
    """`y = F.group_norm(h, 2); h.add_(1)`: group_norm saved its input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        y = F.group_norm(h, 2)
        h.add_(1)
        return y

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(2, 3, 6, 6),)


@case()
class GroupNormThenReluInplace(GroupNormThenInputWrite):
    """`F.relu(F.group_norm(h, 2), inplace=True)`: group_norm does not save its output, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.group_norm(self.conv(x), 2), inplace=True)


@case()
class BatchNormFunctionalThenInputWrite(GroupNormThenInputWrite):
    """`F.batch_norm(h, rm, rv, training=True)` then `h += 1`: batch_norm saved its input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rm", torch.zeros(4))
        self.register_buffer("rv", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        y = F.batch_norm(h, self.rm, self.rv, training=True)
        h += 1
        return y


@case()
class BatchNormEvalThenInputWrite(nn.Module):
    """BatchNorm2d in eval() still saves its input: `y = bn(h); h.add_(1)` breaks backward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        y = self.bn(h)
        h.add_(1)
        return y

    make_inputs = staticmethod(GroupNormThenInputWrite.make_inputs)


@case()
class LayerNormFunctionalThenInputWrite(_One):
    """`y = F.layer_norm(h, (8,)); h.mul_(2)`: layer_norm saved its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = F.layer_norm(h, (8,))
        h.mul_(2)
        return y


@case()
class WeightNormByHand(nn.Module):
    """Weight normalisation by hand: `w = g * v / v.norm(dim=1, keepdim=True)`; both `g` and `v` get gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.randn(4, 8))
        self.g = nn.Parameter(torch.ones(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.g * self.v / self.v.norm(dim=1, keepdim=True)
        return F.linear(x, w)

    make_inputs = staticmethod(_x)


@case()
class WeightNormParametrization(nn.Module):
    """`torch.nn.utils.parametrizations.weight_norm(nn.Linear)`: the weight is recomputed from original0/1."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.utils.parametrizations.weight_norm(nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    make_inputs = staticmethod(_x)


@case()
class SpectralNormParametrization(nn.Module):
    """`parametrizations.spectral_norm(nn.Linear)` in training: power iteration on buffers, weight_orig learns."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    make_inputs = staticmethod(_x)


@case()
class SpectralNormVectorUpdatedAfterUse(nn.Module):
    """Hand-written spectral norm: `sigma = u @ W @ v` with grad, then the power iteration updates `u` in place."""

    # torch.nn.utils.spectral_norm clones u and v for exactly this reason ("used in backward").

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8))
        self.register_buffer("u", F.normalize(torch.randn(4), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(8), dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.dot(self.u, torch.mv(self.w, self.v))
        with torch.no_grad():
            self.u.copy_(F.normalize(torch.mv(self.w, self.v), dim=0))
        return F.linear(x, self.w / sigma)

    make_inputs = staticmethod(_x)


@case()
class SpectralNormVectorUpdatedBeforeUse(SpectralNormVectorUpdatedAfterUse):
    """Hand-written spectral norm, power iteration first (under no_grad), then `sigma = u @ W @ v`: legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.u.copy_(F.normalize(torch.mv(self.w, self.v), dim=0))
        sigma = torch.dot(self.u, torch.mv(self.w, self.v))
        return F.linear(x, self.w / sigma)


# ----------------------------------------------------------------------------------------------------------------
# Recurrent loops.
# ----------------------------------------------------------------------------------------------------------------


@case()
class RnnPreallocatedOutputSlice(nn.Module):
    """RNN loop writing `out[i] = h` into a preallocated `torch.zeros`: legal, the copy is not saved by anyone."""

    def __init__(self) -> None:
        super().__init__()
        self.ih = nn.Linear(8, 8)
        self.hh = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(4, 8)
        out = torch.zeros(3, 4, 8)
        for t in range(3):
            h = torch.tanh(self.ih(x[t]) + self.hh(h))
            out[t] = h
        return out

    make_inputs = staticmethod(_seq)


@case()
class RnnPreallocatedOutputReadBack(RnnPreallocatedOutputSlice):
    """RNN loop that feeds `out[t - 1]` (a view of the preallocated output) back in, then writes `out[t]`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(3, 4, 8)
        out[0] = torch.tanh(self.ih(x[0]))
        for t in range(1, 3):
            out[t] = torch.tanh(self.ih(x[t]) + self.hh(out[t - 1]))
        return out


@case()
class RnnPreallocatedTanhReadBack(RnnPreallocatedOutputSlice):
    """RNN loop with `out[t] = tanh(ih(x) + out[t - 1])`: the tanh output is copied, the earlier row read by add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(3, 4, 8)
        for t in range(1, 3):
            out[t] = torch.tanh(self.ih(x[t]) * out[t - 1] + self.hh(x[t]))
        return out


@case()
class RnnZoneoutMaskImul(RnnPreallocatedOutputSlice):
    """RNN loop with `h = tanh(...); h *= keep`: the in-place mask overwrites tanh's saved output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(4, 8)
        keep = torch.ones(4, 8)
        keep[:, 0] = 0
        for t in range(3):
            h = torch.tanh(self.ih(x[t]) + self.hh(h))
            h *= keep
        return h


@case()
class RnnHiddenAccumulateIadd(RnnPreallocatedOutputSlice):
    """`h = zeros; for t: h += tanh(ih(x[t]))`: accumulating into a fresh hidden state is legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(4, 8)
        for t in range(3):
            h += torch.tanh(self.ih(x[t]))
        return self.hh(h)


@case()
class RnnTruncatedBpttDetach(RnnPreallocatedOutputSlice):
    """Truncated BPTT inside forward: `h = h.detach()` after step 1, so `ih`/`hh` still learn from later steps."""

    # https://forums.fast.ai/t/rnn-hidden-state-initializations-chapter-12/91887

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(4, 8)
        outs = []
        for t in range(3):
            h = F.relu(self.hh(h + self.ih(x[t])))
            outs.append(h)
            if t == 0:
                h = h.detach()
        return torch.stack(outs, dim=1)


@case()
class RnnStackThenSetitem(RnnPreallocatedOutputSlice):
    """`outs = torch.stack(hs); outs[-1] = 0`: stack saves nothing, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = [torch.tanh(self.ih(x[t])) for t in range(3)]
        outs = torch.stack(hs)
        outs[-1] = 0
        return outs


@case()
class LstmCellHiddenRelu_(nn.Module):
    """LSTMCell loop with `F.relu_(h)` on the cell's hidden output before feeding it back."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(4, 8)
        c = torch.zeros(4, 8)
        for t in range(3):
            h, c = self.cell(x[t], (h, c))
            F.relu_(h)
        return h

    make_inputs = staticmethod(_seq)


# ----------------------------------------------------------------------------------------------------------------
# Reinforcement learning, GANs and EMA: detach, no_grad and target networks.
# ----------------------------------------------------------------------------------------------------------------


@case()
class DqnTargetUnderNoGrad(nn.Module):
    """DQN: `with torch.no_grad(): target = self.target(x)`; the target network's parameters get no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 4)
        self.target = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.target(x).max(1, keepdim=True).values
        return self.q(x) - target

    make_inputs = staticmethod(_x)


@case()
class ActorCriticDetachedAdvantage(nn.Module):
    """Actor-critic: `adv = (ret - v).detach()`; actor loss uses adv, critic loss uses v; both learn."""

    # https://github.com/boyu-ai/Hands-on-RL/issues/92

    def __init__(self) -> None:
        super().__init__()
        self.actor = nn.Linear(8, 4)
        self.critic = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp = F.log_softmax(self.actor(x), dim=-1)
        v = self.critic(x)
        adv = (1.0 - v).detach()
        return -(logp * adv).mean(), F.mse_loss(v, torch.ones_like(v))

    make_inputs = staticmethod(_x)


@case()
class ActorCriticAllDetached(ActorCriticDetachedAdvantage):
    """Actor-critic returning only the actor loss with a detached advantage: the critic gets no gradient."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logp = F.log_softmax(self.actor(x), dim=-1)
        adv = (1.0 - self.critic(x)).detach()
        return -(logp * adv).mean(), adv.mean()


@case()
class MomentumEncoderEmaAfterGradUse(nn.Module):
    """BYOL/MoCo EMA `p_t.mul_(m).add_(p, alpha=1-m)` under no_grad, after the target net ran with grad enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.online = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))
        self.target = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.online(x)
        t = self.target(x)
        with torch.no_grad():
            for p_t, p in zip(self.target.parameters(), self.online.parameters(), strict=True):
                p_t.mul_(0.99).add_(p, alpha=0.01)
        return z - t

    make_inputs = staticmethod(_x)


@case()
class MomentumEncoderEmaBeforeNoGradUse(MomentumEncoderEmaAfterGradUse):
    """BYOL/MoCo done right: EMA update first, target net under no_grad; the target's parameters get no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.online(x)
        with torch.no_grad():
            for p_t, p in zip(self.target.parameters(), self.online.parameters(), strict=True):
                p_t.mul_(0.99).add_(p, alpha=0.01)
            t = self.target(x)
        return z - t


@case()
class EmaBufferLerpOfDetached(_One):
    """Running-mean buffer `self.ema.lerp_(h.detach().mean(0), 0.1)` under grad: legal buffer update."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("ema", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        self.ema.lerp_(h.detach().mean(0), 0.1)
        return h - self.ema


@case()
class RunningStatBufferUnderGrad(_One):
    """Hand-written BN statistics `self.running.mul_(0.9).add_(0.1 * h.mean(0))` without no_grad: legal once."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("running", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        self.running.mul_(0.9).add_(0.1 * h.mean(0))
        return h - self.running


@case()
class WganWeightClipBeforeUse(nn.Module):
    """WGAN critic: `for p in self.parameters(): p.data.clamp_(-c, c)` at the top of forward: legal."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for p in self.parameters():
            p.data.clamp_(-0.1, 0.1)
        return self.b(F.leaky_relu(self.a(x), 0.2))

    make_inputs = staticmethod(_x)


@case()
class GanGeneratorThroughFrozenDiscriminator(nn.Module):
    """GAN generator step with `requires_grad_(False)` on the discriminator: G learns through D, D does not."""

    # https://github.com/pytorch/pytorch/issues/39141 (update order between G and D steps)

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8))
        self.d = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
        for p in self.d.parameters():
            p.requires_grad_(False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log(1.0 - self.d(self.g(z)))

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(4, 5),)


@case()
class GanDiscriminatorOnDetachedFake(GanGeneratorThroughFrozenDiscriminator):
    """GAN discriminator step on `fake.detach()`: D learns, G gets no gradient."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.g = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8))
        self.d = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2, inplace=True), nn.Linear(16, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        fake = self.g(z)
        return self.d(fake.detach())


@case()
class FrozenParamUpdatedAfterSavedUse(_One):
    """A `requires_grad=False` scale multiplied into a live tensor, then `self.scale.mul_(0.9)`: mul saved it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x) * self.scale
        self.scale.mul_(0.9)
        return y


class _GradReverse(torch.autograd.Function):
    """Identity forward, negated gradient: the DANN gradient-reversal layer."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor) -> torch.Tensor:
        return h.view_as(h)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> torch.Tensor:
        return -g


class _SavesInput(torch.autograd.Function):
    """A custom square whose backward reads the input it saved with ``ctx.save_for_backward``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h)
        return h * h

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return 2 * h * g


class _RoundSte(torch.autograd.Function):
    """Quantisation-aware training's straight-through round: forward rounds, backward passes the gradient."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor) -> torch.Tensor:
        return torch.round(h)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> torch.Tensor:
        return g


@case()
class RoundSteFunction(_Pair):
    """Straight-through `round` as a `torch.autograd.Function` (QAT): `a` gets a non-zero gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_RoundSte.apply(self.a(x) * 4))


@case()
class GradientReversalFunction(nn.Module):
    """DANN gradient reversal as a `torch.autograd.Function`: the feature extractor still gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Linear(8, 8)
        self.dom = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dom(_GradReverse.apply(self.feat(x)))

    make_inputs = staticmethod(_x)


@case()
class CustomFunctionSavedInputThenWrite(_One):
    """A custom Function saves its input with `ctx.save_for_backward`, then `h.add_(1)` overwrites it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = _SavesInput.apply(h)
        h.add_(1)
        return y


@case()
class GradientReversalArithmetic(GradientReversalFunction):
    """Gradient reversal written as `h.detach() * 2 - h`: forward is `h`, gradient is `-1`, feat learns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.feat(x)
        return self.dom(h.detach() * 2 - h)


@case()
class ItemLossScaleOfActivation(_One):
    """`h / h.detach().abs().max().item()`: the scale is a Python float, `lin` still gets a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        scale = h.detach().abs().max().item()
        return h / scale


# ----------------------------------------------------------------------------------------------------------------
# Broadcasting, views, expand and the in-place view ops.
# ----------------------------------------------------------------------------------------------------------------


@case()
class MatmulBroadcastThenWeightWrite(_Pair):
    """`y = torch.matmul(h3d, w)` with broadcasting, then `w.add_(1)` where `w` is a live activation: saved."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).view(2, 2, 8)
        w = self.b(x)
        y = torch.matmul(h, w.t())
        w.add_(1)
        return y


@case()
class BmmThenInputWrite(_Pair):
    """`y = torch.bmm(a, b); a.mul_(2)`: bmm saved both operands."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x).view(2, 2, 8)
        b = self.b(x).view(2, 8, 2)
        y = torch.bmm(a, b)
        a.mul_(2)
        return y


@case()
class Conv1dThenBiasByHand(nn.Module):
    """`y = F.conv1d(x, w); y += b.view(1, -1, 1)`: conv saves its inputs, not its output; legal."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 2, 3))
        self.b = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(x, self.w)
        y += self.b.view(1, -1, 1)
        return y

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randn(2, 2, 8),)


@case()
class ExpandedViewInplace(_One):
    """`e = h[:, :1].expand(4, 8); e.add_(1)`: forward raises, the written tensor has overlapping memory."""

    # https://github.com/juliendenize/torchaug/issues/10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        e = h[:, :1].expand(4, 8)
        e.add_(1)
        return h


@case()
class ExpandedParamBiasAdd(_One):
    """`h + self.bias.expand(4, 8)`: an expanded parameter read out of place, legal and learns."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.bias.expand(4, 8)


@case()
class UnsqueezeInplaceOnLinear(_Pair):
    """`h.unsqueeze_(0)` on a Linear output (an in-place view op), then a Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.unsqueeze_(0)
        return self.b(h)


@case()
class TransposeInplaceOnSigmoid(_One):
    """`s.t_()` on a sigmoid output: metadata-only in-place; sigmoid's saved output is the same storage."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.lin(x))
        s.t_()
        return s


@case()
class SqueezeInplaceThenAdd(_One):
    """`s = sigmoid(h).unsqueeze(0); s.squeeze_(0); s.add_(1)`: the squeeze_ alias still writes sigmoid's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.lin(x)).unsqueeze(0)
        s.squeeze_(0)
        s.add_(1)
        return s


@case()
class TransposeInplaceThenLinear(_Pair):
    """`h.transpose_(0, 1)` twice on a Linear output, then a Linear: legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.transpose_(0, 1)
        h.transpose_(0, 1)
        return self.b(h)


@case()
class ResizeInplaceOnActivation(_One):
    """`h.resize_(32)` on a live activation: forward raises ('cannot resize variables that require grad')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h.resize_(32)
        return h


@case()
class CopyIntoSliceOfNewZeros(_One):
    """`out = h.new_zeros(4, 16); out[:, :8].copy_(torch.sigmoid(h))`: copy_ into a fresh tensor, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        out = h.new_zeros(4, 16)
        out[:, :8].copy_(torch.sigmoid(h))
        out[:, 8:] = h
        return out


@case()
class CatThenReluInplace(_Pair):
    """`F.relu(torch.cat([a, b]), inplace=True)`: cat saves nothing, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.cat([self.a(x), self.b(x)], dim=1), inplace=True)


@case()
class ExpThenReluInplace(_One):
    """`F.relu(torch.exp(h), inplace=True)`: exp saved its output, relu_ overwrites it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.exp(self.lin(x)), inplace=True)


@case()
class MaxPoolThenReluInplace(nn.Module):
    """`F.relu(F.max_pool2d(h, 2), inplace=True)`: max_pool saves its input and indices, legal."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.max_pool2d(self.conv(x), 2), inplace=True)

    make_inputs = staticmethod(GroupNormThenInputWrite.make_inputs)


@case()
class SoftplusThenReluInplace(_One):
    """`F.relu(F.softplus(h), inplace=True)`: softplus saves its input only, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.softplus(self.lin(x)), inplace=True)


@case()
class GeluThenInputWrite(_One):
    """`y = F.gelu(h); h.add_(1)`: gelu saved its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = F.gelu(h)
        h.add_(1)
        return y


@case()
class SiluThenOutputWrite(_One):
    """`y = F.silu(h); y.mul_(2)`: silu saves its input, not its output; legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.lin(x))
        y.mul_(2)
        return y


@case()
class SiluInplaceOnLinear(_Pair):
    """`F.silu(h, inplace=True)` on a Linear output, then a Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.a(x), inplace=True)
        return self.b(h)


@case()
class HardswishInplaceOnLinear(_Pair):
    """`F.hardswish(h, inplace=True)` on a Linear output, then a Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardswish(self.a(x), inplace=True)
        return self.b(h)


@case()
class EmbeddingScaleImul(nn.Module):
    """Transformer embedding `e = emb(idx); e *= sqrt(d)`: the embedding output is not saved, legal."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        e = self.emb(idx)
        e *= math.sqrt(8)
        return self.out(e)

    @staticmethod
    def make_inputs() -> tuple[torch.Tensor]:
        return (torch.randint(0, 10, (2, 5)),)


@case()
class CenterBySubMeanInplace(_Pair):
    """`h.sub_(h.mean(1, keepdim=True))`: mean saves nothing, legal in-place centring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.sub_(h.mean(1, keepdim=True))
        return self.b(h)


@case()
class CloneThenInplaceOnSigmoid(_One):
    """`s2 = sigmoid(h).clone(); s2.mul_(2)`: the clone is a new tensor, legal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.lin(x))
        s2 = s.clone()
        s2.mul_(2)
        return s + s2


@case()
class ReluInplaceOnModelInput(_One):
    """`self.act(x)` with ReLU(inplace=True) on the model's input: the caller's tensor changes."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.act(x))
