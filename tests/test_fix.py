"""``fxgrad.fix``: every rewrite kind, the aliasing cases it must leave alone, and the proof, each against eager.

Every test runs the real eager model next to the fixed one (same inputs, same RNG, same cotangents) and compares
outputs, ``.grad`` of every parameter and requires-grad input, and buffers, with its own code (:func:`_eager`),
independently of fxgrad's own verification. Where the original's backward raises, the reference is a
hand-written out-of-place twin of the model with the same parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxgrad.errors import InputError, VerificationError
from fxgrad.examples import BasicBlock
from fxgrad.facts import compute_facts
from fxgrad.fixing import FixRecord, fix, fix_record
from fxgrad.verify import verify

INPLACE_ERROR = "modified by an inplace operation"

# --------------------------------------------------------------------------------------------------------------
# Eager ground truth, written here so that fxgrad's own verification is not what the tests trust.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Eager:
    outputs: list[torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    buffers: dict[str, torch.Tensor]
    inputs_after: list[torch.Tensor]
    error: str | None


def _leaves(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _leaves(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _leaves(v)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _leaves(getattr(obj, f.name))]
    return []


def _eager(model: nn.Module, inputs: tuple[Any, ...], *, seed: int = 0) -> Eager:
    """Forward and backward of a deep copy, with fixed random cotangents; the backward error is caught."""
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.grad = None
    ins = tuple(a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                for a in inputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = _leaves(m(*ins))
        live = [t for t in out if t.requires_grad]
        gen = torch.Generator().manual_seed(seed + 1)
        cots = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in live]
        error = None
        try:
            if live:
                torch.autograd.backward(live, cots)
        except RuntimeError as e:
            error = str(e)
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in m.named_parameters() if p.requires_grad}
    for i, a in enumerate(ins):
        if isinstance(a, torch.Tensor) and a.requires_grad:
            grads[f"input{i}"] = a.grad
    return Eager([t.detach() for t in out], grads, {n: b.clone() for n, b in m.named_buffers()},
                 [a.detach() for a in ins if isinstance(a, torch.Tensor)], error)


def _assert_same(a: Eager, b: Eager, *, buffers: bool = True, inputs: bool = True) -> None:
    assert a.error is None and b.error is None, (a.error, b.error)
    assert len(a.outputs) == len(b.outputs)
    for x, y in zip(a.outputs, b.outputs, strict=True):
        torch.testing.assert_close(x, y)
    assert a.grads.keys() == b.grads.keys()
    for name in a.grads:
        ga, gb = a.grads[name], b.grads[name]
        assert (ga is None) == (gb is None), name
        if ga is not None and gb is not None:
            torch.testing.assert_close(ga, gb, msg=name)
    if buffers:  # a traced module also stores the constants it folded (``torch.tensor([0, 2])``) as buffers
        assert a.buffers.keys() <= b.buffers.keys()
        for name in a.buffers:
            torch.testing.assert_close(a.buffers[name], b.buffers[name], msg=name)
    if inputs:
        for x, y in zip(a.inputs_after, b.inputs_after, strict=True):
            torch.testing.assert_close(x, y)


def _remaining_writes(gm: torch.fx.GraphModule) -> list[str]:
    """In-place ops left in a graph, other than writes into a fresh private clone."""
    facts = compute_facts(gm)
    out = []
    for nf in facts:
        if nf.view.writes is None or nf.target is None or nf.target_role in ("value", "control"):
            continue
        t = nf.target
        private = (t.op == "call_method" and t.target == "clone") and all(
            facts[u].index >= nf.index for u in t.users)
        if not private:
            out.append(nf.node.name)
    return out


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": {n: (m.training, getattr(m, "inplace", None)) for n, m in model.named_modules()},
        "ids": {n: id(p) for n, p in model.named_parameters()},
    }


def _assert_unchanged(model: nn.Module, snap: dict[str, Any]) -> None:
    now = _snapshot(model)
    assert now["modes"] == snap["modes"]
    assert now["requires_grad"] == snap["requires_grad"]
    assert now["ids"] == snap["ids"]
    for k, v in snap["state"].items():
        assert torch.equal(now["state"][k], v), k
    for k, g in snap["grads"].items():
        assert (g is None) == (now["grads"][k] is None)
        if g is not None:
            assert torch.equal(g, now["grads"][k])


def _record(gm: torch.fx.GraphModule) -> FixRecord:
    record = gm.meta["fxgrad"]
    assert isinstance(record, FixRecord)
    return record


# --------------------------------------------------------------------------------------------------------------
# Every rewrite kind: one spelling per model, each on an activation, each checked against eager.
# --------------------------------------------------------------------------------------------------------------


class Spelled(nn.Module):
    """``Linear`` -> one in-place spelling -> output; the spelling is a function of the activation."""

    def __init__(self, body: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.body(self, h, x)


def _add_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    h.add_(x, alpha=0.5)
    return h


def _mul_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.sigmoid(h)
    t.mul_(x)  # breaks backward: sigmoid saved t
    return t


def _clamp_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.exp(h)
    t.clamp_(max=1.5)  # breaks backward: exp saved its result
    return t


def _masked_fill_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(h)
    t.masked_fill_(x > 0, 0.25)
    return t


def _fill_tensor(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.exp(h)
    t.fill_(h[0, 0])  # a 0-dim tensor value: its gradient is the sum of t's
    return t * x


def _fill_whole(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = h * 1
    t.fill_(3.0)
    return t * h


def _zero_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.sigmoid(h)
    t.zero_()
    return t + h


def _relu_method(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return h.relu_()


def _copy_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.sigmoid(h)
    t.copy_(x * 2)
    return t + h


def _index_add_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.exp(h)
    t.index_add_(1, torch.tensor([0, 2]), x[:, :2])
    return t


def _torch_relu_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.relu_(h) * 2


def _torch_sigmoid_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(h)
    torch.sigmoid_(t)  # breaks backward: tanh saved t
    return t


def _f_leaky_relu_(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu_(h, 0.2)


def _f_relu_kwarg(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.sigmoid(h)
    return F.relu(t, inplace=True)  # breaks backward: sigmoid saved t


def _f_hardtanh_positional(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.hardtanh(h, -0.5, 0.5, True)


def _f_dropout_kwarg(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.dropout(h, 0.3, training=True, inplace=True)


def _out_kwarg(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    o = torch.empty_like(x)
    torch.sin(x, out=o)
    return h + o


def _iadd(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.exp(h)
    t += x  # harmless: exp's backward needs its result... which += overwrites: breaks
    return t


def _isub(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    h -= x
    return h


def _imul(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.sigmoid(h)
    t *= 3.0
    return t


def _itruediv(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = h * h
    t /= 2.0
    return t


def _setitem_slice(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.sigmoid(h)
    t[:, 0] = 0.0  # breaks backward: sigmoid saved t
    return t


def _setitem_mask(s: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = h * 2
    t[x > 0] = x[x > 0]
    return t * h


SPELLINGS: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    "x.add_()": (_add_, "method"),
    "x.mul_()": (_mul_, "method"),
    "x.clamp_()": (_clamp_, "method"),
    "x.masked_fill_()": (_masked_fill_, "method"),
    "x.fill_(tensor)": (_fill_tensor, "function"),
    "x.fill_()": (_fill_whole, "function"),
    "x.zero_()": (_zero_, "function"),
    "x.relu_()": (_relu_method, "method"),
    "x.copy_()": (_copy_, "clone-write"),
    "x.index_add_()": (_index_add_, "method"),
    "torch.relu_()": (_torch_relu_, "function"),
    "torch.sigmoid_()": (_torch_sigmoid_, "function"),
    "F.leaky_relu_()": (_f_leaky_relu_, "function"),
    "F.relu(inplace=True)": (_f_relu_kwarg, "inplace-kwarg"),
    "F.hardtanh(..., True)": (_f_hardtanh_positional, "inplace-kwarg"),
    "F.dropout(inplace=True)": (_f_dropout_kwarg, "inplace-kwarg"),
    "torch.sin(out=)": (_out_kwarg, "out"),
    "+=": (_iadd, "augmented"),
    "-=": (_isub, "augmented"),
    "*=": (_imul, "augmented"),
    "/=": (_itruediv, "augmented"),
    "x[:, 0] = v": (_setitem_slice, "clone-write"),
    "x[mask] = v": (_setitem_mask, "clone-write"),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_is_rewritten_and_matches_eager(spelling: str) -> None:
    body, kind = SPELLINGS[spelling]
    torch.manual_seed(0)
    model = Spelled(body)
    x = torch.randn(4, 6)
    snap = _snapshot(model)
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert [r.kind for r in record.rewrites] == [kind], record
    assert _remaining_writes(gm) == []
    assert record.verification is not None and record.verification.ok
    before = _eager(model, (x,))
    after = _eager(gm, (x,))
    if before.error is None:
        assert record.verification.reference == "eager"
        _assert_same(before, after)
    else:  # the original's backward raises: see the hand-written twins below
        assert INPLACE_ERROR in before.error
        # aten::copy has no derivative, so functionalizing `copy_` fails: fxgrad.decoupled takes over
        assert record.verification.reference == ("decoupled" if spelling == "x.copy_()" else "functionalize")
        assert after.error is None
    _assert_unchanged(model, snap)


BREAKING_TWINS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "x.mul_()": lambda s, h, x: torch.sigmoid(h) * x,
    "x.clamp_()": lambda s, h, x: torch.exp(h).clamp(max=1.5),
    "torch.sigmoid_()": lambda s, h, x: torch.sigmoid(torch.tanh(h)),
    "F.relu(inplace=True)": lambda s, h, x: F.relu(torch.sigmoid(h)),
    "+=": lambda s, h, x: torch.exp(h) + x,
    "*=": lambda s, h, x: torch.sigmoid(h) * 3.0,
    "x[:, 0] = v": lambda s, h, x: torch.cat([torch.zeros(h.shape[0], 1), torch.sigmoid(h)[:, 1:]], dim=1),
    "x.index_add_()": lambda s, h, x: torch.exp(h).index_add(1, torch.tensor([0, 2]), x[:, :2]),
}


@pytest.mark.parametrize("spelling", list(BREAKING_TWINS))
def test_breaking_spellings_match_a_hand_written_out_of_place_model(spelling: str) -> None:
    torch.manual_seed(0)
    model = Spelled(SPELLINGS[spelling][0])
    twin = Spelled(BREAKING_TWINS[spelling])
    twin.load_state_dict(model.state_dict())
    x = torch.randn(4, 6, requires_grad=True)
    assert INPLACE_ERROR in (_eager(model, (x,)).error or "")
    gm = fix(model, (x,))  # only="breaking" is the default with example inputs
    assert _record(gm).only == "breaking"
    _assert_same(_eager(twin, (x,)), _eager(gm, (x,)))


INPLACE_MODULES = [
    nn.ReLU(inplace=True), nn.LeakyReLU(0.1, inplace=True), nn.ReLU6(inplace=True), nn.Hardswish(inplace=True),
    nn.Hardtanh(-0.3, 0.4, inplace=True), nn.ELU(inplace=True), nn.SELU(inplace=True), nn.CELU(inplace=True),
    nn.SiLU(inplace=True), nn.Mish(inplace=True), nn.Threshold(0.1, -1.0, inplace=True),
    nn.Hardsigmoid(inplace=True), nn.Dropout(0.4, inplace=True), nn.AlphaDropout(0.2, inplace=True),
    nn.Dropout1d(0.3, inplace=True), nn.RReLU(inplace=True),
]


class WithActivation(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x)) * 2


@pytest.mark.parametrize("act", INPLACE_MODULES, ids=lambda m: type(m).__name__)
def test_inplace_modules_become_copies_with_inplace_false(act: nn.Module) -> None:
    torch.manual_seed(0)
    model = WithActivation(act)
    x = torch.randn(4, 6)
    snap = _snapshot(model)
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert [r.kind for r in record.rewrites] == ["module"]
    new = gm.get_submodule(str(next(n for n in gm.graph.nodes if n.op == "call_module" and n.name == "act").target))
    assert new is not act and type(new) is type(act) and new.inplace is False
    assert act.inplace is True  # the user's module keeps its flag
    assert gm.fc is model.fc  # parameters are shared
    assert _remaining_writes(gm) == []
    _assert_same(_eager(model, (x,)), _eager(gm, (x,)))  # dropout: same RNG, same mask
    _assert_unchanged(model, snap)


def test_code_reads_naturally() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu_(self.linear(x))
            y += x
            return y

    gm = fix(Net())
    assert "relu = torch.relu(linear)" in gm.code
    assert "add = relu + x" in gm.code
    assert "_ = " not in gm.code.replace("x = None", "")  # no in-place node names left
    rewrite = _record(gm).rewrites[0]
    assert rewrite.before == "relu_ = torch.relu_(linear)" and rewrite.after == "relu = torch.relu(linear)"
    assert rewrite.location is not None and rewrite.location.code == "y = torch.relu_(self.linear(x))"


# --------------------------------------------------------------------------------------------------------------
# Aliasing and caller-visible writes: left, with the reason; the result still matches eager.
# --------------------------------------------------------------------------------------------------------------


class ViewWriteBaseRead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        v = h[:, :2]
        v.mul_(2)  # writes h through the view; h is read below
        return h * 1


class BaseWriteViewRead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        v = h.t()
        h.add_(1)  # v, created before, sees the write
        return v * 2


class DetachAliasRead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        d = h.detach()
        h.mul_(2)  # d shares memory with h
        return h + d


class ChainedViewWrites(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        v = h.view(-1)
        h.add_(1)  # v is read only after the second write, but must see both
        h.mul_(2)
        return v + 0


class InputWrite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return self.fc(x)


class BufferTracer(torch.fx.Tracer):
    """Plain fx reads buffers at trace time; this tracer keeps ``self.seen`` as a graph node."""

    proxy_buffer_attributes = True


class BufferUpdate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add_(1)
        return self.fc(x)


class ParamUpdateNoGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.fc.weight.mul_(0.5)
        return self.fc(x)


class NoGradActivationWrite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        with torch.no_grad():
            h.mul_(2)  # invisible to autograd: gradients flow as if it did not run
        return h


class TransposeInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h.t_()
        return h * 2


LEFT_CASES: list[tuple[type[nn.Module], str, str]] = [
    (InputWrite, "FXG105", "graph input `x`"),
    (BufferUpdate, "", "buffer"),
    (ParamUpdateNoGrad, "", "parameter"),
    (NoGradActivationWrite, "FXG101", "grad disabled"),
]


@pytest.mark.parametrize(("cls", "code", "reason"), LEFT_CASES, ids=lambda c: getattr(c, "__name__", None))
def test_unsafe_ops_are_left_with_the_reason(cls: type[nn.Module], code: str, reason: str) -> None:
    torch.manual_seed(0)
    model = cls()
    x = torch.randn(4, 6)
    snap = _snapshot(model)
    gm = fix(model, (x,), only="all", tracer=BufferTracer if cls is BufferUpdate else None)
    _assert_unchanged(model, snap)
    record = _record(gm)
    assert record.rewrites == ()
    assert len(record.left) == 1
    left = record.left[0]
    assert left.code == code and reason in left.reason, left
    assert record.verification is not None and record.verification.ok
    _assert_same(_eager(model, (x,)), _eager(gm, (x,)))


class TransposeInPlaceOnSaved(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc(x))
        v = s[0]
        s.t_()  # bumps the version of sigmoid's saved output: backward raises
        return s * 2 + v.sum()


@pytest.mark.parametrize("cls", [TransposeInPlace, TransposeInPlaceOnSaved])
def test_inplace_view_ops_become_their_view(cls: type[nn.Module]) -> None:
    """``s.t_()`` changes the shape of ``s`` only (``v``, a view made before, keeps its own): ``s.t()`` read by the
    later readers of ``s`` is the same program, and backward no longer sees a version bump."""
    torch.manual_seed(0)
    model = cls()
    x = torch.randn(4, 6)
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert [r.after.split(" = ")[1] for r in record.rewrites] == [f"{r.after.split(' = ')[1].split('.')[0]}.t()"
                                                                  for r in record.rewrites]
    assert record.verified
    original = _eager(model, (x,))
    if cls is TransposeInPlaceOnSaved:
        assert INPLACE_ERROR in (original.error or "")

        class Twin(cls):  # type: ignore[valid-type,misc]
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                s = torch.sigmoid(self.fc(x))
                return s.t() * 2 + s[0].sum()

        twin = Twin()
        twin.load_state_dict(model.state_dict())
        _assert_same(_eager(twin, (x,)), _eager(gm, (x,)))
    else:
        _assert_same(original, _eager(gm, (x,)))


REPLAYED_CASES: list[tuple[type[nn.Module], list[str], tuple[str, ...]]] = [
    (ViewWriteBaseRead, ["mul_"], ("fc",)),
    (BaseWriteViewRead, ["add_"], ("t",)),
    (DetachAliasRead, ["mul_"], ("detach",)),
    (ChainedViewWrites, ["add_", "mul_"], ("view",)),
]


@pytest.mark.parametrize(("cls", "nodes", "replayed"), REPLAYED_CASES, ids=lambda c: getattr(c, "__name__", None))
def test_writes_whose_aliases_are_read_later_are_replayed_into_the_base(
        cls: type[nn.Module], nodes: list[str], replayed: tuple[str, ...]) -> None:
    """Eager runs these (nothing saved the written tensor): the fix must compute exactly what eager computes, the
    later reads of the base, the other views and the detached alias included."""
    torch.manual_seed(0)
    model = cls()
    x = torch.randn(4, 6)
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert [r.node for r in record.rewrites] == nodes and record.left == ()
    assert record.rewrites[0].replayed == replayed
    assert record.verification is not None and record.verification.reference == "eager"
    assert not any(n.op == "call_method" and str(n.target) in ("mul_", "add_") for n in gm.graph.nodes)
    _assert_same(_eager(model, (x,)), _eager(gm, (x,)))


class ViewWriteBaseDead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc(x))
        v = h[:, :2]
        v.mul_(2)  # breaks backward (sigmoid saved h); h itself is never read again
        return v


def test_write_through_a_view_whose_base_is_dead_is_rewritten() -> None:
    torch.manual_seed(0)
    model = ViewWriteBaseDead()
    x = torch.randn(4, 6)
    assert INPLACE_ERROR in (_eager(model, (x,)).error or "")
    gm = fix(model, (x,))
    assert [r.node for r in _record(gm).rewrites] == ["mul_"]

    class Twin(ViewWriteBaseDead):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.fc(x))[:, :2] * 2

    twin = Twin()
    twin.load_state_dict(model.state_dict())
    _assert_same(_eager(twin, (x,)), _eager(gm, (x,)))


class InputWriteBreaks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # saves x for fc.weight's gradient
        x.mul_(2)  # ... which this overwrites
        return h + x


def test_a_breaking_input_write_is_rewritten_and_the_record_says_the_input_is_no_longer_modified() -> None:
    """Backward of the original raises (fc saved x): the out-of-place program is its only working meaning."""
    torch.manual_seed(0)
    model = InputWriteBreaks()
    x = torch.randn(4, 6)
    assert INPLACE_ERROR in (_eager(model, (x,)).error or "")
    gm = fix(model, (x,))
    record = _record(gm)
    assert [r.node for r in record.rewrites] == ["mul_"]
    assert "no longer modified" in record.rewrites[0].unsafe_change
    assert record.verification is not None and record.verification.reference == "functionalize"
    assert any("input `x`" in c for c in record.verification.changes)
    caller_x = x.clone()
    gm(caller_x)
    assert torch.equal(caller_x, x)  # the caller's tensor is no longer modified

    class Twin(InputWriteBreaks):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + x * 2

    twin = Twin()
    twin.load_state_dict(model.state_dict())
    _assert_same(_eager(twin, (x,)), _eager(gm, (x,)))


# --------------------------------------------------------------------------------------------------------------
# The article's breaking case, a ResNet block, BatchNorm, dropout, tied weights.
# --------------------------------------------------------------------------------------------------------------


class SigmoidThenMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.linear(x))
        t.mul_(2.0)
        return t


def test_backward_raises_before_the_fix_and_matches_the_out_of_place_model_after() -> None:
    torch.manual_seed(0)
    model = SigmoidThenMul()
    x = torch.randn(5, 4)
    before = _eager(model, (x,))
    assert before.error is not None and INPLACE_ERROR in before.error
    gm = fix(model, (x,))
    record = _record(gm)
    assert [(r.node, r.codes) for r in record.rewrites] == [("mul_", ("FXG102",))]
    assert record.rewrites[0].after == "mul = sigmoid.mul(2.0)"
    assert record.verification is not None and record.verification.reference == "functionalize"
    assert "modified by an inplace operation" in record.verification.original_error
    assert {c.name for c in record.verification.gradients} == {"linear.weight", "linear.bias"}
    reference = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    reference[0].load_state_dict(model.linear.state_dict())
    want = _eager(_Scaled(reference, 2.0), (x,))
    got = _eager(gm, (x,))
    torch.testing.assert_close(got.outputs, want.outputs)
    torch.testing.assert_close(got.grads["linear.weight"], want.grads["0.0.weight"])
    torch.testing.assert_close(got.grads["linear.bias"], want.grads["0.0.bias"])


class _Scaled(nn.Sequential):
    def __init__(self, inner: nn.Module, k: float) -> None:
        super().__init__(inner)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x) * self.k


def test_resnet_block_all_rewritten_in_train_mode_with_buffers_updated_identically() -> None:
    torch.manual_seed(0)
    model = BasicBlock().train()
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    snap = _snapshot(model)
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert sorted(r.kind for r in record.rewrites) == ["augmented", "module", "module"]
    assert record.left == ()
    assert model.relu.inplace is True and gm.relu is not model.relu and gm.relu.inplace is False
    assert gm.conv1.weight is model.conv1.weight and gm.bn1 is model.bn1
    assert {c.name for c in record.verification.buffers} >= {"bn1.running_mean", "bn2.running_var"}  # type: ignore[union-attr]
    _assert_same(_eager(model, (x,)), _eager(gm, (x,)))  # includes running_mean / running_var / num_batches
    _assert_unchanged(model, snap)


def test_resnet_block_with_only_breaking_keeps_its_harmless_inplace_ops() -> None:
    torch.manual_seed(0)
    model = BasicBlock().train()
    x = torch.randn(2, 4, 5, 5)
    assert _eager(model, (x,)).error is None  # torchvision's block does not break backward
    gm = fix(model, (x,))
    record = _record(gm)
    assert record.only == "breaking" and record.rewrites == ()
    assert len(record.left) == 3 and all("only='breaking' keeps" in lf.reason for lf in record.left)
    assert gm.relu is model.relu
    _assert_same(_eager(model, (x,)), _eager(gm, (x,)))


class BnDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.bn(self.fc(x)))
        t.mul_(2.0)  # breaks backward
        return self.drop(t)


def test_batchnorm_and_dropout_in_train_mode() -> None:
    torch.manual_seed(0)
    model = BnDropout().train()
    x = torch.randn(8, 6)
    snap = _snapshot(model)
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert record.verification is not None and record.verification.reference == "functionalize"
    buffers = {c.name: c for c in record.verification.buffers}
    assert buffers["bn.running_mean"].ok and buffers["bn.num_batches_tracked"].ok

    class Twin(BnDropout):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(torch.sigmoid(self.bn(self.fc(x))) * 2.0, 0.5, self.training)

    twin = Twin()
    twin.load_state_dict(model.state_dict())
    _assert_same(_eager(twin, (x,)), _eager(gm, (x,)))  # same mask from the same seed, same running stats
    _assert_unchanged(model, snap)  # verification ran on copies: the user's BatchNorm stats did not move
    gm.eval()
    assert not gm.drop.training and model.drop.training


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(idx))
        h.mul_(0.5)  # breaks backward: tanh saved h
        return self.out(h)


def test_tied_weights_share_one_gradient() -> None:
    torch.manual_seed(0)
    model = Tied()
    idx = torch.tensor([[1, 2, 3], [4, 5, 1]])
    assert INPLACE_ERROR in (_eager(model, (idx,)).error or "")
    gm = fix(model, (idx,))
    assert gm.out.weight is gm.embed.weight is model.embed.weight
    names = {c.name for c in _record(gm).verification.gradients}  # type: ignore[union-attr]
    assert {"embed.weight", "out.weight"} <= names

    class Twin(Tied):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.embed(idx)) * 0.5)

    twin = Twin()
    twin.load_state_dict(model.state_dict())
    _assert_same(_eager(twin, (idx,)), _eager(gm, (idx,)))


# --------------------------------------------------------------------------------------------------------------
# Outputs of every shape, dtype repair, idempotence, the record, errors.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Output:
    logits: torch.Tensor
    extra: tuple[torch.Tensor, ...]


class Structured(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> Any:
        t = torch.sigmoid(self.fc(x))
        t.mul_(2.0)
        u = t.sum(dim=1)
        if self.kind == "tuple":
            return t, u
        if self.kind == "list":
            return [t, [u]]
        if self.kind == "dict":
            return {"t": t, "u": u, "n": 3}
        return Output(t, (u,))


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "dataclass"])
def test_structured_outputs(kind: str) -> None:
    torch.manual_seed(0)
    model = Structured(kind)
    x = torch.randn(4, 6, requires_grad=True)
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert record.verification is not None and record.verification.reference == "functionalize"
    names = [c.name for c in record.verification.outputs]
    assert len(names) == (3 if kind == "dict" else 2), names
    assert {c.name for c in record.verification.gradients} == {"fc.weight", "fc.bias", "input x"}
    out = gm(x)
    assert type(out) is type(model(x.detach())) or kind == "dataclass"


def test_verify_names_the_worst_tensor_and_the_rewrites() -> None:
    torch.manual_seed(0)
    model = SigmoidThenMul()
    x = torch.randn(5, 4)
    gm = fix(model, (x,), verify=False)
    wrong = copy.deepcopy(gm)
    with torch.no_grad():
        wrong.linear.bias.add_(1e-2)
    rewrites = _record(gm).rewrites
    with pytest.raises(VerificationError) as info:
        verify(model, wrong, (x,), rewrites=rewrites)
    text = str(info.value)
    assert re.search(r"(output|gradient) `[^`]+` differs by max abs [0-9.e-]+, max rel", text), text
    assert "`mul_`" in text and "Hint:" in text


@pytest.mark.parametrize("decoupled_runs", [True, False])
def test_decoupled_then_finite_differences_when_functionalize_cannot_run(monkeypatch: pytest.MonkeyPatch,
                                                                       decoupled_runs: bool) -> None:
    import fxgrad.verify as verify_module

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("not supported here")

    monkeypatch.setattr(verify_module, "_functionalized", refuse)
    if not decoupled_runs:
        monkeypatch.setattr(verify_module, "decoupled", lambda m: m)  # the original itself: its backward raises
    torch.manual_seed(0)
    model = SigmoidThenMul()
    x = torch.randn(3, 4, requires_grad=True)
    gm = fix(model, (x,))
    verification = _record(gm).verification
    assert verification is not None
    assert verification.reference == ("decoupled" if decoupled_runs else "finite-differences")
    assert any("functionalize could not run" in n for n in verification.notes)
    assert {c.name for c in verification.gradients} == {"linear.weight", "linear.bias", "input x"}
    assert all(c.ok for c in verification.gradients)


class HalfAccumulate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.exp(self.fc(x)).half()
        h += x  # float16 += float32 keeps float16
        return h.float()


def test_type_promotion_is_cast_back_to_the_inplace_dtype() -> None:
    torch.manual_seed(0)
    model = HalfAccumulate()
    x = torch.randn(4, 6)
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert any("cast back to torch.float16" in n for n in record.notes)
    assert "to = add.to(torch.float16)" in gm.code
    _assert_same(_eager(model, (x,)), _eager(gm, (x,)))


def test_fixing_twice_changes_nothing() -> None:
    torch.manual_seed(0)
    model = Spelled(_setitem_slice)
    x = torch.randn(4, 6)
    once = fix(model, (x,), only="all")
    twice = fix(once, (x,), only="all")
    record = _record(twice)
    assert record.rewrites == ()
    assert [lf.reason for lf in record.left] == [
        "it writes into its own fresh clone, which nothing else has read: already out-of-place"]
    assert twice.code == once.code


def test_without_example_inputs_all_is_the_default_and_nothing_is_verified() -> None:
    model = SigmoidThenMul()
    gm = fix(model)
    record = fix_record(gm)
    assert record.only == "all" and record.verification is None and not record.verified
    assert any("not verified" in n for n in record.notes)


def test_record_is_frozen_and_serialisable() -> None:
    torch.manual_seed(0)
    gm = fix(SigmoidThenMul(), (torch.randn(2, 4),))
    record = _record(gm)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.only = "all"  # type: ignore[misc]
    d = json.loads(json.dumps(record.to_dict()))
    assert d["rewrites"][0]["node"] == "mul_" and d["rewrites"][0]["location"]["line"] > 0
    assert d["verification"]["reference"] == "functionalize"
    assert "rewrote" in str(record) and "mul = sigmoid.mul(2.0)" in str(record)


def test_user_errors() -> None:
    with pytest.raises(InputError, match="only must be"):
        fix(SigmoidThenMul(), only="some")
    with pytest.raises(InputError, match=r"nn\.Module"):
        fix(operator.add)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"not made by fxgrad\.fix"):
        fix_record(torch.fx.symbolic_trace(nn.Linear(2, 2)))


def test_global_state_is_restored() -> None:
    model, x = BnDropout(), torch.randn(8, 6)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad():
        fix(model, (x,), only="all")
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.rand(3), expected)


class SharedRelu(nn.Module):
    """One ``ReLU(inplace=True)`` object at two call sites: on an activation (safe) and on the input (not)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu(x)  # writes the caller's x
        h = torch.sigmoid(self.fc(r))
        return self.relu(h)  # breaks backward: sigmoid saved h


def test_a_module_called_at_a_safe_and_an_unsafe_site_gets_a_copy_under_a_new_name() -> None:
    torch.manual_seed(0)
    model = SharedRelu()
    x = torch.randn(4, 6)
    assert INPLACE_ERROR in (_eager(model, (x,)).error or "")
    gm = fix(model, (x,), only="all")
    record = _record(gm)
    assert [r.node for r in record.rewrites] == ["relu_1"]
    assert [(lf.node, lf.code) for lf in record.left] == [("relu", "FXG105")]
    assert gm.relu is model.relu and model.relu.inplace is True
    assert gm.relu_out_of_place.inplace is False
    assert "relu = self.relu(x)" in gm.code and "relu_1 = self.relu_out_of_place(sigmoid)" in gm.code

    class Twin(SharedRelu):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(torch.sigmoid(self.fc(self.relu(x))))

    twin = Twin()
    twin.load_state_dict(model.state_dict())
    _assert_same(_eager(twin, (x,)), _eager(gm, (x,)))  # including the caller's x, written by both


def test_a_graph_module_from_symbolic_trace_with_nested_paths() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Sequential(nn.Tanh(), nn.Hardtanh(-0.5, 0.5, inplace=True)),
                          nn.Linear(6, 2))
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 6)
    assert INPLACE_ERROR in (_eager(model, (x,)).error or "")  # tanh saved its result; hardtanh_ overwrote it
    gm = fix(traced, (x,))
    assert [r.kind for r in _record(gm).rewrites] == ["module"]
    assert traced.get_submodule("1.1").inplace is True and model[1][1].inplace is True
    assert gm.get_submodule("1.1").inplace is False

    twin = nn.Sequential(nn.Linear(6, 6), nn.Sequential(nn.Tanh(), nn.Hardtanh(-0.5, 0.5)), nn.Linear(6, 2))
    twin.load_state_dict(model.state_dict())
    _assert_same(_eager(twin, (x,)), _eager(gm, (x,)))
