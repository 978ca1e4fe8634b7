import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.gate = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)
        self.aux_head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.backbone(x).mean(dim=(2, 3))
        g = torch.sigmoid(self.gate(h))
        g.mul_(2.0)
        return self.head(h * g)


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.teacher = nn.Linear(16, 16)
        self.student = nn.Linear(16, 4)

    def forward(self, x):
        target = self.teacher(x).detach()
        return self.student(x + target)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, ids, mask):
        h = self.emb(ids) * mask["weights"].unsqueeze(-1)
        return self.out(h)


def make_tagger_inputs():
    ids = torch.randint(0, 100, (2, 12))
    return ids, {"weights": torch.ones(2, 12)}
