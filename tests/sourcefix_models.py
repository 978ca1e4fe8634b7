"""Models whose in-place ops make ``loss.backward()`` raise, in the spellings ``fxgrad fix --diff`` edits.

``tests/test_sourcefix.py`` copies this file, checks that each model's eager backward raises, applies the diff
(``patch -p1``) or ``--write``, imports the edited copy and checks that it trains with the verified GraphModule's
gradients. The comments and the odd formatting are part of the test: the edits must keep them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TanhReluBlock(nn.Module):
    """A torchvision-style block: conv, BN, ``tanh``, then ``nn.ReLU(inplace=True)`` (tanh saved its output)."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)  # memory-saving, as torchvision writes it
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(self.bn(self.conv(x)))
        out = self.act(out)
        return self.proj(out)


class SequentialHead(nn.Module):
    """The in-place module is built inside ``nn.Sequential(...)``, with ``inplace`` passed by position."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(4, 8),
            nn.Sigmoid(),
            nn.LeakyReLU(0.1, True),  # slope, inplace
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.drop = nn.Dropout(p=0.25, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.sigmoid(self.lin(x)))


class GateStack(nn.Module):
    """In-place dropout in a user block, the blocks built by a list comprehension in ``nn.ModuleList``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Gate() for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Functional(nn.Module):
    """``F.relu(h, inplace=True)``, ``torch.relu_(g)`` as a statement, and ``y = e.mul_(0.5)`` with ``e`` read later."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        h = F.relu(h, inplace=True)
        g = torch.sigmoid(self.b(x))
        torch.relu_(g)  # clamp the gate
        e = torch.exp(self.c(x))
        y = e.mul_(0.5)
        return h + g + y * e


class Augmented(nn.Module):
    """``t += 1.0`` and ``s[:, 0] = 0.0`` on tensors that sigmoid saved."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.a(x))
        t += 1.0  # shift (kept comment)
        s = torch.sigmoid(self.b(x))
        s[:, 0] = 0.0
        return t * s


class Expressions(nn.Module):
    """In-place ops used as expressions: returned, passed on, and one whose tensor is read again in the same line."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(self.a(x))
        z = self.head(e.mul_(2.0)) + e.sum()
        t = torch.sigmoid(z)
        t.mul_(
            3.0,  # a call over several lines, comment inside
        )
        return t.sigmoid_()


def make_act() -> nn.Module:
    return nn.ReLU(inplace=True)


class HelperBuilt(nn.Module):
    """The in-place module comes from a helper function: fxgrad cannot edit where it is built, and says so."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = make_act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(torch.tanh(self.lin(x)))


class Clean(nn.Module):
    """Nothing to fix."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


class ViewThenBase(nn.Module):
    """``first = h[:, 0]; first.mul_(2.0)`` with ``h`` read after: the write must reach ``h``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.lin(x))
        first = h[:, 0]
        first.mul_(2.0)
        return h


class ViewStatement(nn.Module):
    """``h[:, 0].mul_(2.0)`` on sigmoid's output: the base is cloned, and the write still reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.lin(x))
        h[:, 0].mul_(2.0)
        return h


class Spellings(nn.Module):
    """More spellings: an op without an out-of-place method, ``F.relu_``, ``*=`` of a sum, ``x[i] += v``, ``out=``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.add_module("c", nn.Linear(4, 4))
        self.add_module("act", nn.Hardtanh(-1.0, 1.0, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.a(x))
        a.fill_(0.5)
        b = torch.tanh(self.b(x))
        F.relu_(b)
        c = torch.exp(self.c(x))
        c *= b + 1.0
        s = torch.sigmoid(x)
        s[:, 0] += 1.0
        o = torch.empty(3, 4)
        torch.sin(s, out=o)
        return a + b + c + self.act(torch.tanh(o))


class Promotes(nn.Module):
    """``t += x`` and ``u.add_(x)`` on float16 tensors that sigmoid saved: in place keeps float16, ``t + x`` is
    float32, so the fix casts back."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.a(x).half())
        t += x
        u = torch.sigmoid(self.a(x).half())
        u.add_(x)
        return (t * u).float()


class TwoNames(nn.Module):
    """``identity = out`` before ``out += x``: one tensor, two names; the edit of ``out`` alone changes ``identity``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(self.lin(x))
        identity = out
        out += x
        return identity * 2
