"""Small re-creations of architectures people train, in plain PyTorch, for checking fxgrad against eager.

Each :class:`Arch` has a factory (random init, tiny sizes), a function making example inputs and a
``python_control_flow`` flag: True when ``forward`` branches or loops on tensor values or Python data, which
symbolic tracing cannot follow. No entry carries an expected verdict: the tests measure eager PyTorch
(:func:`tests.oracle.eager_truth`) and compare fxgrad with it.

The bug variants build the same model with one injected bug, on a line marked ``# BUG: inplace`` (an in-place
write into a tensor an earlier op saved for backward: eager ``backward()`` raises, or, inside a segment checkpointed
with ``use_reentrant=False``, computes silently wrong gradients) or ``# BUG: detach`` (a ``.detach()`` that cuts the
backbone's parameters off from every output).

DenseNet comes three ways: plain, memory-efficient (torchvision's ``memory_efficient=True``: the bottleneck under
``checkpoint(..., use_reentrant=False)``), and memory-efficient with an in-place write after the checkpointed
segment into a tensor saved inside it, which raises without checkpointing and is legal with it.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ARCHITECTURES", "BUGGY", "Arch", "build", "build_inputs"]


@dataclass(frozen=True)
class Arch:
    #: unique name of this entry (``resnet``, ``resnet+inplace``)
    name: str
    #: the architecture this entry re-creates; bug variants share it with their clean model
    family: str
    #: builds the model; bug variants' factories take ``bug=<mode>``
    factory: Callable[..., nn.Module]
    make_inputs: Callable[[], tuple[Any, ...]]
    #: forward branches or loops on tensor values or Python data (symbolic tracing cannot follow it)
    python_control_flow: bool
    #: None for a clean model; "inplace" or "detach" for a variant with an injected bug
    bug: str | None = None
    #: parameter-name prefixes the injected ``.detach()`` cuts off (detach bugs only)
    cut: tuple[str, ...] = ()
    #: the same forward without the injected in-place write (same parameters), where a check needs one
    reference: Callable[[], nn.Module] | None = None


def build(a: Arch, *, reference: bool = False, seed: int = 0) -> nn.Module:
    """The entry's model (or its reference program) with seeded, reproducible initial parameters."""
    factory = a.reference if reference else a.factory
    assert factory is not None, f"{a.name} has no reference program"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def build_inputs(a: Arch, *, seed: int = 1) -> tuple[Any, ...]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tuple(a.make_inputs())


def _images(n: int = 2, c: int = 3, size: int = 16) -> Callable[[], tuple[torch.Tensor]]:
    def make() -> tuple[torch.Tensor]:
        return (torch.randn(n, c, size, size),)
    return make


def _tokens(vocab: int = 32, batch: int = 2, seq: int = 8) -> Callable[[], tuple[torch.Tensor]]:
    def make() -> tuple[torch.Tensor]:
        return (torch.randint(0, vocab, (batch, seq)),)
    return make


# ----------------------------------------------------------------------------------------------------------------
# 1. ResNet (torchvision's BasicBlock)
# ----------------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, num_classes: int = 5, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2, down), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        if self.bug == "inplace":
            gate = torch.sigmoid(x)
            gate.mul_(2.0)  # BUG: inplace
            x = x * gate
        return self.fc(x)


# ----------------------------------------------------------------------------------------------------------------
# 2. MobileNetV3 (inverted residual with depthwise conv, Hardswish, squeeze-excitation with Hardsigmoid)
# ----------------------------------------------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, expanded: int, cout: int, stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        self.block = nn.Sequential(
            _conv_bn_act(cin, expanded, 1),
            _conv_bn_act(expanded, expanded, 3, stride, groups=expanded),  # depthwise
            SqueezeExcitation(expanded, max(expanded // 4, 8)),
            _conv_bn_act(expanded, cout, 1, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 5, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.features = nn.Sequential(
            _conv_bn_act(3, 8, 3, 2),
            InvertedResidual(8, 16, 8, 1),
            InvertedResidual(8, 24, 12, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(12, 16), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.bug == "detach":
            x = x.detach()  # BUG: detach
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


# ----------------------------------------------------------------------------------------------------------------
# 3. DenseNet (torchvision's _DenseLayer, optionally memory-efficient with activation checkpointing)
# ----------------------------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int, memory_efficient: bool, bug: str | None) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)
        self.memory_efficient = memory_efficient
        self.bug = bug

    def bn_function(self, *inputs: torch.Tensor) -> torch.Tensor:
        concated = torch.cat(inputs, 1)
        h = self.norm1(concated)
        if self.bug == "inplace":  # a hand-written SiLU in place of relu1, saving memory
            act = torch.sigmoid(h)
            act.mul_(h)  # BUG: inplace
            return self.conv1(act)
        if self.bug == "reference":  # the same SiLU out of place: same forward, no in-place write
            return self.conv1(torch.sigmoid(h) * h)
        if self.bug == "gated":
            return torch.tanh(self.conv1(self.relu1(h)))
        return self.conv1(self.relu1(h))

    def forward(self, prev_features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient:
            bottleneck = checkpoint(self.bn_function, *prev_features, use_reentrant=False)
        else:
            bottleneck = self.bn_function(*prev_features)
        if self.bug == "gated":
            # Overwrites tanh's output, which tanh saved for backward. Legal only because the segment is
            # checkpointed: backward recomputes tanh's output instead of reading this tensor.
            bottleneck.add_(1.0)
        if self.bug == "inplace_after":
            bottleneck = torch.tanh(bottleneck)
            bottleneck.add_(1.0)  # BUG: inplace
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, cin: int, growth: int, memory_efficient: bool, bug: str | None) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(cin + i * growth, growth, 2, memory_efficient, bug if i == 1 else None))

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, num_classes: int = 5, memory_efficient: bool = False, bug: str | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, 8, 3, 1, 1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(8))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("denseblock1", DenseBlock(2, 8, 4, memory_efficient, None))
        self.features.add_module("transition1", nn.Sequential(
            nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2, 2)))
        self.features.add_module("denseblock2", DenseBlock(2, 8, 4, memory_efficient, bug))
        self.features.add_module("norm5", nn.BatchNorm2d(16))
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


# ----------------------------------------------------------------------------------------------------------------
# 4. U-Net
# ----------------------------------------------------------------------------------------------------------------


class DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        return self.conv(torch.cat([x2, x1], dim=1))


class UNet(nn.Module):
    def __init__(self, n_channels: int = 3, n_classes: int = 2, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.inc = DoubleConv(n_channels, 8)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(8, 16))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(16, 32))
        self.up1 = Up(32, 16)
        self.up2 = Up(16, 8)
        self.outc = nn.Conv2d(8, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        if self.bug == "detach":
            x3 = x3.detach()  # BUG: detach
        x = self.up1(x3, x2)
        x = self.up2(x, x1)
        return self.outc(x)


# ----------------------------------------------------------------------------------------------------------------
# 5. LSTM and GRU language models
# ----------------------------------------------------------------------------------------------------------------


class RNNLanguageModel(nn.Module):
    def __init__(self, cell: str = "lstm", vocab: int = 32, dim: int = 16, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.encoder = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(0.2)
        rnn_type = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_type(dim, dim, num_layers=2, batch_first=True)
        self.decoder = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.drop(self.encoder(tokens))
        output, _hidden = self.rnn(emb)
        if self.bug == "detach":
            output = output.detach()  # BUG: detach
        if self.bug == "inplace":
            output = torch.tanh(output)
            output.mul_(0.5)  # BUG: inplace
        output = self.drop(output)
        return self.decoder(output)


# ----------------------------------------------------------------------------------------------------------------
# 6. GPT (nanoGPT-style decoder, causal mask cached by Python logic, tied embeddings)
# ----------------------------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_head: int, bug: str | None) -> None:
        super().__init__()
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.attn_dropout = nn.Dropout(0.1)
        self.n_head = n_head
        self.bug = bug
        self.cached_len = 0
        self.mask: torch.Tensor | None = None

    def causal_mask(self, seq_len: int, device: torch.device) -> torch.Tensor:
        if self.mask is None or seq_len > self.cached_len:
            self.mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)
            self.cached_len = seq_len
        return self.mask[:seq_len, :seq_len]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.causal_mask(t, x.device), float("-inf"))
        att = F.softmax(att, dim=-1)
        if self.bug == "inplace":
            att.mul_(0.9)  # BUG: inplace
        att = self.attn_dropout(att)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class GPTBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, bug: str | None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head, bug)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 32, block_size: int = 16, dim: int = 16, n_layer: int = 2,
                 bug: str | None = None) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(block_size, dim)
        self.drop = nn.Dropout(0.1)
        self.h = nn.ModuleList([GPTBlock(dim, 2, bug if i == n_layer - 1 else None) for i in range(n_layer)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _b, t = idx.size()
        if t > self.block_size:
            raise ValueError(f"sequence of length {t} is longer than the block size {self.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# ----------------------------------------------------------------------------------------------------------------
# 7. Llama (RMSNorm, rotary embeddings computed under no_grad from an inv_freq buffer, SwiGLU)
# ----------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


class RotaryEmbedding(nn.Module):
    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos(), emb.sin()
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class LlamaMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, bug: str | None) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act_fn = nn.SiLU()
        self.bug = bug

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bug == "inplace":  # a hand-written SiLU that saves memory
            gate = self.gate_proj(x)
            act = torch.sigmoid(gate)
            act.mul_(gate)  # BUG: inplace
            return self.down_proj(act * self.up_proj(x))
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaAttention(nn.Module):
    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.head_dim = dim // n_head
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.n_head, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, dim: int, n_head: int, bug: str | None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, n_head)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = LlamaMLP(dim, 2 * dim, bug)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 16, n_head: int = 2, n_layer: int = 2,
                 bug: str | None = None) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.rotary_emb = RotaryEmbedding(dim // n_head)
        self.layers = nn.ModuleList([LlamaDecoderLayer(dim, n_head, bug if i == 0 else None)
                                     for i in range(n_layer)])
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        cos, sin = self.rotary_emb(h, position_ids)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.lm_head(self.norm(h))


# ----------------------------------------------------------------------------------------------------------------
# 8. ViT
# ----------------------------------------------------------------------------------------------------------------


class ViTAttention(nn.Module):
    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.scale = (dim // n_head) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ViTAttention(dim, n_head)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, img: int = 16, patch: int = 4, dim: int = 16, depth: int = 2, num_classes: int = 5,
                 bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        self.pos_drop = nn.Dropout(0.1)
        self.blocks = nn.Sequential(*[ViTBlock(dim, 2) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.norm(self.blocks(x))
        feats = x[:, 0]
        if self.bug == "detach":
            feats = feats.detach()  # BUG: detach
        return self.head(feats)


# ----------------------------------------------------------------------------------------------------------------
# 9. DETR (CNN backbone, transformer encoder, decoder over learned queries with nn.MultiheadAttention, heads)
# ----------------------------------------------------------------------------------------------------------------


class DETR(nn.Module):
    def __init__(self, num_classes: int = 4, num_queries: int = 5, dim: int = 16, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.input_proj = nn.Conv2d(16, dim, 1)
        self.row_embed = nn.Parameter(torch.rand(8, dim // 2))
        self.col_embed = nn.Parameter(torch.rand(8, dim // 2))
        self.enc_attn = nn.MultiheadAttention(dim, 2, dropout=0.1)
        self.enc_norm = nn.LayerNorm(dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.dec_self_attn = nn.MultiheadAttention(dim, 2, dropout=0.1)
        self.dec_cross_attn = nn.MultiheadAttention(dim, 2, dropout=0.1)
        self.dec_norm1 = nn.LayerNorm(dim)
        self.dec_norm2 = nn.LayerNorm(dim)
        self.dec_norm3 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(0.1), nn.Linear(2 * dim, dim))
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.bbox_embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 4))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        if self.bug == "detach":
            features = features.detach()  # BUG: detach
        src = self.input_proj(features)
        b, _c, h, w = src.shape
        pos = torch.cat([self.col_embed[:w].unsqueeze(0).repeat(h, 1, 1),
                         self.row_embed[:h].unsqueeze(1).repeat(1, w, 1)], dim=-1).flatten(0, 1).unsqueeze(1)
        src = src.flatten(2).permute(2, 0, 1)  # (h*w, b, dim)
        q = src + pos
        memory = self.enc_norm(src + self.enc_attn(q, q, src, need_weights=False)[0])
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        tgt = torch.zeros_like(query_pos)
        q = tgt + query_pos
        tgt = self.dec_norm1(tgt + self.dec_self_attn(q, q, tgt, need_weights=False)[0])
        tgt2 = self.dec_cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.dec_norm2(tgt + tgt2)
        hs = self.dec_norm3(tgt + self.ffn(tgt)).transpose(0, 1)  # (b, queries, dim)
        return {"pred_logits": self.class_embed(hs), "pred_boxes": self.bbox_embed(hs).sigmoid()}


# ----------------------------------------------------------------------------------------------------------------
# 10. Faster R-CNN (forward(images, targets), per-image Python loop over the targets, dict of losses)
# ----------------------------------------------------------------------------------------------------------------


class FasterRCNN(nn.Module):
    def __init__(self, num_classes: int = 3, num_anchors: int = 3, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(inplace=True))
        self.rpn_conv = nn.Conv2d(16, 16, 3, 1, 1)
        self.rpn_cls_logits = nn.Conv2d(16, num_anchors, 1)
        self.rpn_bbox_pred = nn.Conv2d(16, num_anchors * 4, 1)
        self.box_head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(inplace=True))
        self.cls_score = nn.Linear(32, num_classes + 1)
        self.bbox_pred = nn.Linear(32, (num_classes + 1) * 4)
        self.stride = 4

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training and targets is None:
            raise ValueError("In training mode, targets should be passed")
        features = self.backbone(images)
        rpn = F.relu(self.rpn_conv(features))
        objectness = self.rpn_cls_logits(rpn)
        deltas = self.rpn_bbox_pred(rpn)
        if not self.training or targets is None:
            return [{"scores": s.sigmoid().flatten()} for s in objectness]
        losses: dict[str, list[torch.Tensor]] = {"loss_objectness": [], "loss_rpn_box_reg": [],
                                                 "loss_classifier": [], "loss_box_reg": []}
        for i, t in enumerate(targets):
            boxes, labels = t["boxes"], t["labels"]
            # RPN targets: the anchors at the cells covered by a ground-truth box are positives.
            labels_map = torch.zeros_like(objectness[i])
            for box in boxes:
                x0, y0, x1, y1 = (int(v) // self.stride for v in box.tolist())
                labels_map[:, y0:y1 + 1, x0:x1 + 1] = 1.0
            prob = torch.sigmoid(objectness[i])
            if self.bug == "inplace":
                prob.clamp_(1e-6, 1.0 - 1e-6)  # BUG: inplace
            losses["loss_objectness"].append(F.binary_cross_entropy(prob, labels_map))
            pos = labels_map.bool().any(0)
            if bool(pos.any()):
                d = deltas[i].view(-1, 4, *deltas.shape[-2:]).permute(1, 0, 2, 3)[:, :, pos]
                losses["loss_rpn_box_reg"].append(F.smooth_l1_loss(d, torch.zeros_like(d)))
            # RoI head on the ground-truth boxes, pooled to 2x2.
            rois = []
            for box in boxes:
                x0, y0, x1, y1 = (int(v) // self.stride for v in box.tolist())
                rois.append(F.adaptive_max_pool2d(features[i, :, y0:y1 + 1, x0:x1 + 1], (2, 2)))
            h = self.box_head(torch.stack(rois))
            logits = self.cls_score(h)
            losses["loss_classifier"].append(F.cross_entropy(logits, labels))
            reg = self.bbox_pred(h).view(len(labels), -1, 4)[torch.arange(len(labels)), labels]
            losses["loss_box_reg"].append(F.smooth_l1_loss(reg, boxes / images.shape[-1]))
        return {name: torch.stack(values).mean() for name, values in losses.items()}


def _detection_inputs() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    images = torch.randn(2, 3, 32, 32)
    targets = [
        {"boxes": torch.tensor([[2.0, 3.0, 13.0, 15.0], [16.0, 8.0, 30.0, 28.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[5.0, 5.0, 20.0, 25.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


# ----------------------------------------------------------------------------------------------------------------
# 11. VQ-VAE (codebook by argmin distance, straight-through estimator, commitment loss)
# ----------------------------------------------------------------------------------------------------------------


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int = 16, dim: int = 8, beta: float = 0.25) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_codes, dim)
        self.embedding.weight.data.uniform_(-1.0 / num_codes, 1.0 / num_codes)
        self.beta = beta

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, z.shape[-1])
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embedding.weight.t()
                     + self.embedding.weight.pow(2).sum(1))
        indices = torch.argmin(distances, dim=1)
        z_q = self.embedding(indices).view(z.shape)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return z_q.permute(0, 3, 1, 2).contiguous(), loss


class VQVAE(nn.Module):
    def __init__(self, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 4, 2, 1))
        self.quantizer = VectorQuantizer(16, 8)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(8, 16, 4, 2, 1), nn.ReLU(inplace=True),
                                     nn.ConvTranspose2d(16, 3, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_q, vq_loss = self.quantizer(self.encoder(x))
        recon = torch.sigmoid(self.decoder(z_q))
        if self.bug == "inplace":
            recon.clamp_(0.0, 1.0)  # BUG: inplace
        return recon, vq_loss


# ----------------------------------------------------------------------------------------------------------------
# 12. EMA teacher / student (mean teacher, MoCo-style momentum update in forward)
# ----------------------------------------------------------------------------------------------------------------


class EMATeacherStudent(nn.Module):
    def __init__(self, momentum: float = 0.99, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.momentum = momentum
        self.student = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 8)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update_teacher(self) -> None:
        for pt, ps in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            pt.mul_(self.momentum).add_(ps.detach(), alpha=1.0 - self.momentum)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        features = self.student(x1)
        if self.bug == "detach":
            features = features.detach()  # BUG: detach
        p = F.normalize(self.head(features), dim=-1)
        with torch.no_grad():
            self.update_teacher()
            z = F.normalize(self.teacher(x2), dim=-1)
        return 2 - 2 * (p * z.detach()).sum(dim=-1).mean()


def _two_views() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------

#: the clean models, by name
ARCHITECTURES: dict[str, Arch] = {}
#: the variants with an injected bug, by name (``<clean name>+<bug mode>``)
BUGGY: dict[str, Arch] = {}


def _clean(name: str, factory: Callable[..., nn.Module], make_inputs: Callable[[], tuple[Any, ...]], *,
           python_control_flow: bool, family: str | None = None) -> None:
    ARCHITECTURES[name] = Arch(name, family or name, factory, make_inputs, python_control_flow)


def _variant(base: str, mode: str, *, cut: tuple[str, ...] = (), reference: str | None = None) -> None:
    """``base`` built with ``bug=mode``; ``reference`` names the mode that computes the same forward without the
    in-place write (for the checks that need one: a silently wrong gradient)."""
    a = ARCHITECTURES[base]
    kind = "detach" if mode == "detach" else "inplace"
    factory = a.factory
    ref = None if reference is None else functools.partial(factory, bug=reference)
    BUGGY[f"{base}+{mode}"] = Arch(f"{base}+{mode}", a.family, functools.partial(factory, bug=mode), a.make_inputs,
                                   a.python_control_flow, kind, cut, ref)


def _dense(bug: str | None = None) -> DenseNet:
    return DenseNet(memory_efficient=True, bug=bug)


def _lstm(bug: str | None = None) -> RNNLanguageModel:
    return RNNLanguageModel("lstm", bug=bug)


def _gru(bug: str | None = None) -> RNNLanguageModel:
    return RNNLanguageModel("gru", bug=bug)


_clean("resnet", ResNet, _images(), python_control_flow=False)
_clean("mobilenet_v3", MobileNetV3, _images(), python_control_flow=False)
_clean("densenet", DenseNet, _images(), python_control_flow=False)
_clean("densenet_memory_efficient", _dense, _images(), python_control_flow=False, family="densenet")
_clean("densenet_memory_efficient_write_after_segment", functools.partial(_dense, bug="gated"), _images(),
       python_control_flow=False, family="densenet")
_clean("unet", UNet, _images(), python_control_flow=False)
_clean("lstm_lm", _lstm, _tokens(), python_control_flow=False)
_clean("gru_lm", _gru, _tokens(), python_control_flow=False)
_clean("gpt", GPT, _tokens(), python_control_flow=True)
_clean("llama", Llama, _tokens(), python_control_flow=False)
_clean("vit", ViT, _images(), python_control_flow=False)
_clean("detr", DETR, _images(size=32), python_control_flow=False)
_clean("faster_rcnn", FasterRCNN, _detection_inputs, python_control_flow=True)
_clean("vq_vae", VQVAE, _images(), python_control_flow=False)
_clean("ema_teacher_student", EMATeacherStudent, _two_views, python_control_flow=False)

_variant("resnet", "inplace")
_variant("mobilenet_v3", "detach", cut=("features.",))
_variant("densenet", "inplace")
# The same in-place write inside the checkpointed segment: backward recomputes the segment instead of reading
# what forward saved, so eager does not raise; the write runs again over the recomputed tensor.
_variant("densenet_memory_efficient", "inplace", reference="reference")
_variant("densenet_memory_efficient", "inplace_after")
_variant("unet", "detach", cut=("down2.",))
_variant("lstm_lm", "detach", cut=("encoder.", "rnn."))
_variant("gru_lm", "inplace")
_variant("gpt", "inplace")
_variant("llama", "inplace")
_variant("vit", "detach", cut=("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm."))
_variant("detr", "detach", cut=("backbone.",))
_variant("faster_rcnn", "inplace")
_variant("vq_vae", "inplace")
_variant("ema_teacher_student", "detach", cut=("student.",))
