"""Values that leave autograd through Python, and still carry the node they came from.

A model that calls ``.item()`` or ``.numpy()`` hands a plain value to Python, computes with it, and often rebuilds a
tensor from the result (``torch.tensor(h.mean().item() * 2)``). Gradients stop there, and the run capture must
say so at that line: it needs to know that the rebuilt tensor came from the value that left. So the run capture
hands the model a float subclass (or an ndarray subclass) that carries its node, and records the Python (or
numpy) arithmetic on it as graph nodes, as fx records arithmetic on proxies: the graph then computes what eager
computes, and the rebuilt tensor is linked to the op it came from.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.fx

__all__ = ["OPERATORS", "REFLECTED", "Recorder", "escape", "escaped_node"]


class Recorder(Protocol):
    """What an escaped value needs from the recording that made it."""

    def node(self, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.fx.Node: ...

    def to_graph(self, value: Any) -> Any: ...

    def escape(self, node: torch.fx.Node, value: Any) -> Any: ...


#: Tensor dunders that fx spells as ``operator`` calls (the faithful tracer keeps ``x += y`` as ``operator.iadd``)
OPERATORS: dict[str, Callable[..., Any]] = {
    "__getitem__": operator.getitem, "__setitem__": operator.setitem,
    "__add__": operator.add, "__sub__": operator.sub, "__mul__": operator.mul, "__truediv__": operator.truediv,
    "__floordiv__": operator.floordiv, "__mod__": operator.mod, "__pow__": operator.pow,
    "__matmul__": operator.matmul, "__and__": operator.and_, "__or__": operator.or_, "__xor__": operator.xor,
    "__lshift__": operator.lshift, "__rshift__": operator.rshift, "__neg__": operator.neg,
    "__invert__": operator.invert, "__eq__": operator.eq, "__ne__": operator.ne, "__lt__": operator.lt,
    "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge, "__abs__": operator.abs,
    "__iadd__": operator.iadd, "__isub__": operator.isub, "__imul__": operator.imul,
    "__itruediv__": operator.itruediv, "__ifloordiv__": operator.ifloordiv, "__imod__": operator.imod,
    "__ipow__": operator.ipow, "__iand__": operator.iand, "__ior__": operator.ior, "__ixor__": operator.ixor,
}
#: reflected dunders: ``2 - x`` arrives as ``x.__rsub__(2)``
REFLECTED = {"__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul,
              "__rtruediv__": operator.truediv, "__rfloordiv__": operator.floordiv, "__rmod__": operator.mod,
              "__rpow__": operator.pow, "__rmatmul__": operator.matmul, "__rand__": operator.and_,
              "__ror__": operator.or_, "__rxor__": operator.xor}


class _EscapedFloat(float):
    """A float that left autograd (``.item()``). Arithmetic on it is recorded as graph nodes, as fx records it on
    proxies, so ``torch.tensor(h.item() * 2)`` is linked to ``.item()`` and the graph computes what eager does."""

    _fxgrad_node: torch.fx.Node
    _fxgrad_rec: Recorder


def _recorded(op: Callable[..., Any], reflected: bool) -> Callable[[Any, Any], Any]:
    def method(self: Any, *other: Any) -> Any:
        plain = [float(v) if isinstance(v, _EscapedFloat) else v for v in (self, *other)]
        if any(isinstance(v, torch.Tensor) for v in plain):
            return NotImplemented  # the tensor's own reflected method records the op
        args = tuple(reversed(plain)) if reflected else tuple(plain)
        result = op(*args)
        if result is NotImplemented or type(result) is not float:
            return result
        rec = self._fxgrad_rec
        node = rec.node("call_function", op, rec.to_graph(tuple(reversed((self, *other))) if reflected
                                                          else (self, *other)), {})
        return rec.escape(node, result)

    return method


for _name in ("__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__", "__mod__", "__pow__", "__neg__",
              "__abs__"):
    setattr(_EscapedFloat, _name, _recorded(OPERATORS[_name], reflected=False))
for _name in ("__radd__", "__rsub__", "__rmul__", "__rtruediv__", "__rfloordiv__", "__rmod__", "__rpow__"):
    setattr(_EscapedFloat, _name, _recorded(REFLECTED[_name], reflected=True))

_ESCAPED: tuple[type, ...] = (_EscapedFloat,)


@functools.cache
def _escaped_array_class() -> type:
    """``.numpy()`` results as an ndarray subclass whose ufunc calls are recorded (numpy is imported only when a
    model calls ``.numpy()``, so fxgrad does not depend on it)."""
    global _ESCAPED
    import numpy as np

    ufuncs = {np.add: operator.add, np.subtract: operator.sub, np.multiply: operator.mul,
              np.true_divide: operator.truediv, np.power: operator.pow, np.negative: operator.neg}

    class _EscapedArray(np.ndarray):
        _fxgrad_node: torch.fx.Node | None = None
        _fxgrad_rec: Recorder | None = None

        def __array_finalize__(self, parent: Any) -> None:  # views and results keep the link
            self._fxgrad_node = getattr(parent, "_fxgrad_node", None)
            self._fxgrad_rec = getattr(parent, "_fxgrad_rec", None)

        def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
            plain = [i.view(np.ndarray) if isinstance(i, _EscapedArray) else i for i in inputs]
            result = getattr(ufunc, method)(*plain, **kwargs)
            rec, op = self._fxgrad_rec, ufuncs.get(ufunc)
            if (rec is None or op is None or method != "__call__" or kwargs or not isinstance(result, np.ndarray)
                    or any(type(i) is np.ndarray for i in inputs)):  # fx cannot spell a plain array constant
                return result
            node = rec.node("call_function", op, rec.to_graph(tuple(inputs)), {})
            return rec.escape(node, result)

    _ESCAPED = (_EscapedFloat, _EscapedArray)
    return _EscapedArray


def escape(rec: Recorder, node: torch.fx.Node, value: Any) -> Any:
    """``value`` (made by ``node``) as the user's code will get it: a float or an array that carries its node, or
    ``value`` itself when it is of another kind."""
    if type(value) is float:
        value = _EscapedFloat(value)
    elif type(value).__module__ == "numpy" and hasattr(value, "view"):
        value = value.view(_escaped_array_class())
    else:
        return value
    value._fxgrad_node, value._fxgrad_rec = node, rec
    return value


def escaped_node(value: Any) -> torch.fx.Node | None:
    """The node an escaped value came from, or None."""
    return getattr(value, "_fxgrad_node", None) if isinstance(value, _ESCAPED) else None
