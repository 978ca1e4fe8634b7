"""A training loop that breaks, inside ``fxgrad.watch``: run ``python docs/watch_demo.py``.

The model overwrites sigmoid's output in place; ``loss.backward()`` raises autograd's error, and ``fxgrad.watch``
adds the two lines that matter. A second loop cuts its encoder off with ``.detach()``: it trains without an error,
and ``fxgrad.watch`` warns once that the encoder gets no gradient, and where.
"""

import torch
from torch import nn

import fxgrad


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.enc(x))
        gate.mul_(2.0)
        return self.head(gate)


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.enc(x).detach()
        return self.head(features)


def train(model: nn.Module, steps: int = 5) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    gated = Gated()
    try:
        with fxgrad.watch(gated):
            train(gated)
    except RuntimeError as e:
        print(f"RuntimeError: {e}\n")
    frozen = Frozen()
    with fxgrad.watch(frozen):
        train(frozen)
