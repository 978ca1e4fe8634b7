"""The model of docs/gradient-flow.png: `fxgrad check docs/gradient_flow_net.py:TwoBranchNet --input 3x4 --format html`."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class TwoBranchNet(nn.Module):
    """A shared stem, a detached side branch and a stack of blocks whose gate is overwritten in place."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(4, d), nn.ReLU())
        self.side = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        self.blocks = nn.ModuleList(Block(d) for _ in range(6))
        self.teacher = nn.Linear(4, d)
        self.aux_head = nn.Linear(d, 2)
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        side = self.side(h).detach()
        for block in self.blocks:
            h = block(h)
        t = torch.sigmoid(h)
        t.mul_(2.0)
        target = self.teacher(x).detach()  # fxgrad: ignore[FXG001]
        return self.head(t + side + target)
