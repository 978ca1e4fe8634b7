"""The model families the benchmarks run on, sized by graph node count.

Each family is what users actually write, so the figures carry over to their models:

* ``mlp``: residual MLP blocks (``LayerNorm -> Linear -> ReLU(inplace=True) -> Linear``, ``x = x + h``).
* ``resnet``: torchvision-style basic blocks with ``ReLU(inplace=True)`` and ``out += identity``; eager
  backward works on it, so it is also the model of the "cost of the fix" section.
* ``resnet-broken``: the same with a post-activation block whose backward raises, for the cost of verifying a
  fix that repairs something.
* ``transformer``: pre-norm transformer layers written with plain tensor ops (``view``/``transpose``/``@``/
  ``softmax``), so every tracer follows them down to the individual ops instead of stopping at
  ``nn.MultiheadAttention``.

Widths are small on purpose: the analysis cost depends on the number of graph nodes, not on tensor sizes, and
tiny tensors keep the eager baselines (and ``make_fx``, which runs the ops) from dominating the run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fxgrad.examples import BasicBlock  # torchvision's block: ReLU(inplace=True), out += identity

__all__ = ["FAMILIES", "Family", "build", "node_count", "nodes_of"]


class MLPBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(self.act(self.fc1(self.norm(x))))
        return x + h


class MLP(nn.Module):
    def __init__(self, blocks: int, dim: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(MLPBlock(dim) for _ in range(blocks)))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class BrokenBlock(BasicBlock):
    """A post-activation variant whose backward raises: ``relu`` saves its result and ``+=`` overwrites it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out += identity
        return out


class ResNet(nn.Module):
    def __init__(self, blocks: int, channels: int = 8, classes: int = 4, block: type[BasicBlock] = BasicBlock
                 ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.layers = nn.Sequential(*(block(channels) for _ in range(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = self.layers(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


class TransformerLayer(nn.Module):
    """A pre-norm transformer layer with attention spelled out in tensor ops."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.ln1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.size(0), x.size(1), x.size(2)
        h = self.ln1(x)
        q = self.q(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * self.scale
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x


class Transformer(nn.Module):
    def __init__(self, layers: int, dim: int = 16, heads: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(TransformerLayer(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.layers(x)))


@dataclass(frozen=True)
class Family:
    """How to build a family member with ``n`` blocks and an input for it at a given batch size."""

    name: str
    make: Callable[[int], nn.Module]
    example: Callable[[int], torch.Tensor]


FAMILIES: dict[str, Family] = {
    "mlp": Family("mlp", lambda n: MLP(n), lambda batch: torch.randn(batch, 16)),
    "resnet": Family("resnet", lambda n: ResNet(n), lambda batch: torch.randn(batch, 3, 8, 8)),
    "transformer": Family("transformer", lambda n: Transformer(n), lambda batch: torch.randn(batch, 8, 16)),
    # not a scaling family: the model on which ``fix`` has something to repair (verification cost)
    "resnet-broken": Family("resnet-broken", lambda n: ResNet(n, block=BrokenBlock),
                            lambda batch: torch.randn(batch, 3, 8, 8)),
}


def node_count(model: nn.Module) -> int:
    """Nodes of plain ``symbolic_trace``: the size unit of every "ms per 1,000 nodes" figure."""
    return len(torch.fx.symbolic_trace(model).graph.nodes)


_PER_BLOCK: dict[str, tuple[int, int]] = {}


def _shape(family: str) -> tuple[int, int]:
    """(nodes outside the blocks, nodes per block), measured once from two small members."""
    if family not in _PER_BLOCK:
        make = FAMILIES[family].make
        one, two = node_count(make(1)), node_count(make(2))
        _PER_BLOCK[family] = (one - (two - one), two - one)
    return _PER_BLOCK[family]


def nodes_of(family: str, blocks: int) -> int:
    """:func:`node_count` of a member with ``blocks`` blocks, without tracing it (the families grow by whole blocks)."""
    fixed, per_block = _shape(family)
    return fixed + per_block * blocks


def build(family: str, target_nodes: int, *, seed: int = 0) -> tuple[nn.Module, int]:
    """A member of ``family`` whose graph has about ``target_nodes`` nodes (at least one block) and its block count."""
    fixed, per_block = _shape(family)
    blocks = max(1, round((target_nodes - fixed) / per_block))
    torch.manual_seed(seed)
    return FAMILIES[family].make(blocks), blocks
