"""A generator of small programs written the way people write models: in-place ops, views, aliases, leaf writes.

A program is a list of ops that :class:`Program` interprets in ``forward`` (so fxgrad captures real Python:
``x[mask] = v``, ``h[:, :k].mul_()``, ``s.detach().clamp_()``, ``F.relu(self.b, inplace=True)``). The generator is
driven by one function ``pick(lo, hi) -> int`` so that hypothesis (``draw(st.integers(lo, hi))``) and a seeded
``random.Random`` (``rng.randint``) draw from the same space (``tests/test_fix_views.py``, ``tools/fix_coverage.py``).

``Program(..., private=True)`` is the independent reference for what a program means when eager cannot run it:
every op that computes a new tensor gets clones of its tensor inputs and returns a clone of its result, the bias
parameter (and the input, when it requires grad) is cloned once at the start of ``forward``. Nothing an op saves for
backward is then visible to the program and no leaf is written, so no in-place write can make forward or backward
raise, while views, aliases, ``.detach()`` and every write run exactly as eager runs them. It is written here, by
hand, and shares nothing with fxgrad.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Case", "Program", "build", "describe", "draw_case"]

Op = tuple[Any, ...]
Pick = Callable[[int, int], int]

UNARY = ("sigmoid", "tanh", "relu", "exp")
WRITES = ("add_", "mul_", "sigmoid_", "tanh_", "relu_", "clamp_", "fill_", "zero_", "iadd", "imul", "torch.relu_",
          "module", "set0", "setmask", "setslice", "setidx")
#: ways to reach the written tensor: directly, or through a view / alias made on the spot
THROUGH = (None, None, "cols", "t0", "flat", "detach", "data", "diag", "select")
VIEWS = ("t", "cols", "rows", "select", "flat", "diag", "detach", "data")
PARAM_WRITES = ("F.relu", "mul_", "setmask", "clamp_")
SCALARS = (0.5, -0.25, 2.0)


@dataclass(frozen=True)
class Case:
    rows: int
    dim: int
    ops: tuple[Op, ...]
    extra: int
    x_requires_grad: bool
    seed: int

    @property
    def detached_write(self) -> bool:
        """A ``.detach()`` / ``.data`` alias is made (where functionalize and eager disagree about writes)."""
        return any((op[0] == "write" and op[3] is not None and op[3][0] in ("detach", "data"))
                   or (op[0] == "view" and op[1] in ("detach", "data")) for op in self.ops)

    @property
    def data_alias(self) -> bool:
        """A ``.data`` alias is made: a write through it into a saved tensor gives silently wrong gradients in eager,
        which the private reference (whose saved tensors are private) does not reproduce."""
        return any((op[0] == "write" and op[3] is not None and op[3][0] == "data")
                   or (op[0] == "view" and op[1] == "data") for op in self.ops)


class Program(nn.Module):
    """``forward`` interprets ``ops`` over a list of values: ``x``, ``x @ w0``, then one value per op."""

    def __init__(self, dim: int, ops: tuple[Op, ...], extra: int, *, private: bool = False) -> None:
        super().__init__()
        self.w0 = nn.Parameter(torch.randn(dim, dim) * 0.5)
        self.w = nn.Parameter(torch.randn(dim, dim) * 0.5)
        self.b = nn.Parameter(torch.randn(dim) * 0.5)
        self.relu = nn.ReLU(inplace=True)
        self.ops = ops
        self.extra = extra
        self.private = private

    def _p(self, t: Any) -> Any:
        return t.clone() if self.private and isinstance(t, torch.Tensor) else t

    def _bias(self, local: dict[str, torch.Tensor]) -> torch.Tensor:
        return local["b"] if self.private else self.b

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local: dict[str, torch.Tensor] = {}
        if self.private:
            local["b"] = self.b.clone()
            if x.requires_grad:
                x = x.clone()
        p = self._p
        vals = [x, p(p(x) @ p(self.w0))]
        for op in self.ops:
            kind = op[0]
            if kind == "unary":
                vals.append(p(getattr(torch, op[1])(p(vals[op[2]]))))
            elif kind == "binary":
                other = p(vals[op[3]]) if op[3] is not None else op[4]
                a = p(vals[op[2]])
                vals.append(p(a + other if op[1] == "add" else a * other))
            elif kind == "matmul":
                vals.append(p(p(vals[op[1]]) @ p(self.w)))
            elif kind == "bias":
                vals.append(p(p(vals[op[1]]) + p(self._bias(local))))
            elif kind == "view":
                vals.append(_view(vals[op[2]], op[1], op[3]))
            elif kind == "pwrite":
                self._param_write(local, op)
            else:
                self._write(vals, op)
        return vals[-1], vals[self.extra]

    def _param_write(self, local: dict[str, torch.Tensor], op: Op) -> None:
        b = self._bias(local)
        if not self.private:
            self._param_write_into(b, op)
            return
        tmp = b.clone()
        self._param_write_into(tmp, op)
        b.copy_(tmp)

    @staticmethod
    def _param_write_into(b: torch.Tensor, op: Op) -> None:
        _, name, scalar = op
        if name == "F.relu":
            F.relu(b, inplace=True)
        elif name == "mul_":
            b.mul_(scalar)
        elif name == "clamp_":
            b.clamp_(min=scalar)
        else:
            b[b.abs() < 0.3] = 0.0

    def _write(self, vals: list[torch.Tensor], op: Op) -> None:
        _, name, t, through, partner, scalar, assign = op
        dest = vals[t] if through is None else _view(vals[t], through[0], through[1])
        other = vals[partner] if partner is not None else scalar
        if self.private:
            # The write lands in ``dest`` by ``copy_`` (which saves nothing) of the op run on a private clone.
            tmp = dest.clone()
            returned = self._write_into(tmp, name, self._p(other), scalar)
            dest.copy_(tmp)
            result = dest if returned is not None else None
        else:
            result = self._write_into(dest, name, other, scalar)
        if assign and result is not None and through is None:
            vals[t] = result

    def _write_into(self, dest: torch.Tensor, name: str, other: Any, scalar: float) -> torch.Tensor | None:
        """Run the write; the tensor it returns (``None`` for ``x[i] = v``)."""
        result = None
        if name == "iadd":
            dest += other
            result = dest
        elif name == "imul":
            dest *= other
            result = dest
        elif name in ("add_", "mul_"):
            result = getattr(dest, name)(other)
        elif name == "clamp_":
            result = dest.clamp_(min=scalar)
        elif name == "fill_":
            result = dest.fill_(scalar)
        elif name == "torch.relu_":
            result = torch.relu_(dest)
        elif name == "module":
            result = self.relu(dest)
        elif name == "set0":
            dest[0] = scalar
        elif name == "setmask":
            dest[dest > 0] = scalar
        elif name == "setslice":
            dest[:1] = scalar
        elif name == "setidx":
            dest[torch.tensor([0])] = scalar
        else:
            result = getattr(dest, name)()
        return result


def _view(v: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    if kind == "t":
        return v.t()
    if kind == "t0":
        return v.t()[0]
    if kind == "cols":
        return v[:, :k]
    if kind == "rows":
        return v[k:]
    if kind == "select":
        return v[k]
    if kind == "flat":
        return v.view(-1)
    if kind == "diag":
        return v.diagonal()
    if kind == "detach":
        return v.detach()
    return v.data


def _view_shape(shape: tuple[int, ...], kind: str, k: int) -> tuple[int, ...]:
    if kind == "t":
        return shape[::-1]
    if kind == "t0":
        return (shape[0],)
    if kind == "cols":
        return (shape[0], k)
    if kind == "rows":
        return (shape[0] - k, shape[1])
    if kind == "select":
        return (shape[1],)
    if kind == "flat":
        return (shape[0] * shape[1],) if len(shape) == 2 else shape
    if kind == "diag":
        return (min(shape),)
    return shape


def _view_ok(shape: tuple[int, ...], contiguous: bool, kind: str) -> bool:
    if kind in ("detach", "data"):
        return True
    if kind == "flat":
        return contiguous
    return len(shape) == 2


def _pick_from(pick: Pick, items: tuple[Any, ...] | list[Any]) -> Any:
    return items[pick(0, len(items) - 1)]


def _view_arg(pick: Pick, shape: tuple[int, ...], kind: str) -> int:
    if kind == "cols":
        return pick(1, shape[1])
    if kind == "rows":
        return pick(0, shape[0] - 1)
    if kind == "select":
        return pick(0, shape[0] - 1)
    return 0


def draw_case(pick: Pick, *, max_ops: int = 7) -> Case:
    """One program; ``pick(lo, hi)`` returns an int in ``[lo, hi]``."""
    rows, dim = pick(1, 4), pick(1, 4)
    x_requires_grad = pick(0, 3) == 0
    shapes: list[tuple[int, ...]] = [(rows, dim), (rows, dim)]
    contiguous = [True, True]
    family = [0, 1]  # which value's memory each value lives in (views and aliases share their base's)
    ops: list[Op] = []
    for _ in range(pick(1, max_ops)):
        n = len(shapes)
        src = pick(0, n - 1)
        kind = _pick_from(pick, ("unary", "binary", "matmul", "bias", "view", "view", "write", "write", "write",
                                 "pwrite"))
        shape = shapes[src]
        if kind == "unary":
            ops.append(("unary", _pick_from(pick, UNARY), src))
        elif kind == "binary":
            partners = [i for i in range(n) if shapes[i] == shape]
            partner = _pick_from(pick, [None, *partners])
            both = contiguous[src] and (partner is None or contiguous[partner])
            ops.append(("binary", _pick_from(pick, ("add", "mul")), src, partner, _pick_from(pick, SCALARS)))
            shapes.append(shape)
            contiguous.append(both)
            family.append(len(family))
            continue
        elif kind in ("matmul", "bias") and len(shape) == 2 and shape[1] == dim:
            ops.append((kind, src))
            shapes.append(shape)
            contiguous.append(True)
            family.append(len(family))
            continue
        elif kind == "view":
            view = _pick_from(pick, VIEWS)
            if not _view_ok(shape, contiguous[src], view):
                continue
            k = _view_arg(pick, shape, view)
            ops.append(("view", view, src, k))
            shapes.append(_view_shape(shape, view, k))
            contiguous.append(contiguous[src] and view in ("rows", "select", "flat", "detach", "data"))
            family.append(family[src])
            continue
        elif kind == "pwrite":
            ops.append(("pwrite", _pick_from(pick, PARAM_WRITES), _pick_from(pick, SCALARS)))
            continue
        elif kind == "write":
            # Writes into the input are drawn rarely: most programs should write activations.
            on_input = pick(0, 5) == 0
            targets = [i for i in range(n) if (family[i] == 0) == on_input]
            if not targets:
                continue
            t = _pick_from(pick, targets)
            through = _pick_from(pick, THROUGH)
            if through is not None and not _view_ok(shapes[t], contiguous[t], "flat" if through == "flat" else
                                                    ("t" if through == "t0" else through)):
                through = None
            k = _view_arg(pick, shapes[t], through) if through is not None else 0
            dest = _view_shape(shapes[t], through, k) if through is not None else shapes[t]
            name = _pick_from(pick, WRITES)
            if name == "setslice" and len(dest) == 0:
                name = "set0"
            partners = [i for i in range(n) if shapes[i] == dest and family[i] != family[t]]
            partner = _pick_from(pick, [None, *partners]) if name in ("add_", "mul_", "iadd", "imul") else None
            ops.append(("write", name, t, None if through is None else (through, k), partner,
                        _pick_from(pick, SCALARS), bool(pick(0, 1))))
            continue
        else:
            continue
        shapes.append(shape)
        contiguous.append(contiguous[src])
        family.append(len(family))
    extra = pick(1, len(shapes) - 1)
    return Case(rows, dim, tuple(ops), extra, x_requires_grad, pick(0, 2**16))


def build(case: Case, *, private: bool = False) -> tuple[Program, torch.Tensor]:
    """The program with seeded parameters, and its input."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.seed)
        model = Program(case.dim, case.ops, case.extra, private=private)
        x = (torch.randn(case.rows, case.dim) * 0.5).requires_grad_(case.x_requires_grad)
    return model, x


def describe(case: Case) -> str:
    """The case as Python (``Case(rows=..., ops=(...), ...)``): paste it to replay one program."""
    return repr(case)
