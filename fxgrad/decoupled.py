"""Eager PyTorch without its two refusals: the reference for a fix whose original cannot run.

Eager refuses two things the programs ``fxgrad.fix`` repairs do: reading in backward a saved tensor that a later
in-place op changed (backward raises), and writing in place into a leaf that requires grad (forward raises).
Everything else about the program, eager defines: which tensors share memory, what a write through a view or a
``.detach()`` / ``.data`` alias changes, which writes autograd records. :func:`decoupled` returns a shallow copy of
a module whose forward runs under both of these, and nothing else changes:

* ``torch.autograd.graph.saved_tensors_hooks``: every saved tensor is packed with its version and a copy. Backward
  gets the tensor itself when no write was recorded since it was saved (so a write behind the version counter,
  ``.data.mul_()``, stays visible to backward, as in eager), else the copy: the value it had when it was saved,
  which is what the out-of-place program computes.
* :class:`_StandIns`, a ``TorchFunctionMode``: a write into a leaf that requires grad (or a view of one) with grad
  enabled first replaces the leaf by a clone, and every later call reads the clone; the gradient reaches the leaf
  through it. This is the out-of-place meaning fxgrad gives such a write.

``torch.func.functionalize`` is no reference for a write through a ``.detach()`` alias: it turns the written values
into a detached computation, so no gradient reaches the base at all, while eager (when nothing saved the base)
leaves the base's gradient as if nothing had been written. This module reproduces eager.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["decoupled"]


def _pack(t: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
    return t, t._version, t.detach().clone()


def _unpack(packed: tuple[torch.Tensor, int, torch.Tensor]) -> torch.Tensor:
    t, version, saved = packed
    return t if t._version == version else saved


def _address(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().data_ptr())
    except RuntimeError:  # a tensor without storage
        return -1


@functools.cache
def _inplace_position(func: Callable[..., Any]) -> int | None:
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("inplace") if "inplace" in names else None


def _writes(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``x.add_()``, ``x += y``, ``x[i] = v``, ``out=``, ``F.relu(x, inplace=True)``."""
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):
        return name == "__setitem__" or name.startswith("__i")
    if name.endswith("_") or "out" in kwargs or kwargs.get("inplace") is True:
        return True
    at = _inplace_position(func)
    return at is not None and at < len(args) and args[at] is True


class _StandIns(TorchFunctionMode):
    """A leaf written in place is replaced, from that write on, by a clone every later call reads."""

    def __init__(self) -> None:
        super().__init__()
        #: id of a leaf (or a view of one) that forward wrote -> (the tensor, kept so the id stays its own; stand-in)
        self.stand_ins: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        #: storage address of a written leaf -> its stand-in (for ``.detach()`` / ``.data`` aliases made before)
        self.storages: dict[int, torch.Tensor] = {}

    def _sub(self, a: Any) -> Any:
        """``a`` with every written leaf, and every view of one made before the write, read from the stand-in."""
        if isinstance(a, torch.Tensor):
            hit = self.stand_ins.get(id(a))
            if hit is not None:
                return hit[1]
            base = self.stand_ins.get(id(a._base)) if a._is_view() else None
            rep = base[1] if base is not None else self.storages.get(_address(a))
            if rep is None:
                return a
            view = rep.as_strided(a.size(), a.stride(), a.storage_offset())
            if base is None and not a.requires_grad:
                view = view.detach()  # a ``.detach()`` / ``.data`` alias of the leaf: the same memory, no history
            self.stand_ins[id(a)] = (a, view)
            return view
        if isinstance(a, (list, tuple)) and not hasattr(a, "_fields"):
            return type(a)(self._sub(x) for x in a)
        if isinstance(a, dict):
            return {k: self._sub(v) for k, v in a.items()}
        return a

    def _stand_in(self, t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or not torch.is_grad_enabled():
            return t
        base = t._base if t._is_view() else t
        if base is None or not (base.is_leaf and base.requires_grad):
            return t
        rep = base.clone()
        self.stand_ins[id(base)] = (base, rep)
        self.storages[_address(base)] = rep
        if base is t:
            return rep
        view = rep.as_strided(t.size(), t.stride(), t.storage_offset())
        self.stand_ins[id(t)] = (t, view)
        return view

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.stand_ins:
            args, kwargs = self._sub(tuple(args)), self._sub(kwargs)
        if args and _writes(func, tuple(args), kwargs):
            args = (self._stand_in(args[0]), *args[1:])
        return func(*args, **kwargs)


def _enter(module: nn.Module, args: Any) -> None:
    stack = ExitStack()
    stack.enter_context(torch.autograd.graph.saved_tensors_hooks(_pack, _unpack))
    mode = stack.enter_context(_StandIns())
    module.__dict__.setdefault("_fxgrad_decoupled", []).append((stack, mode))


def _exit(module: nn.Module, args: Any, output: Any) -> Any:
    """Leave the hooks and the mode; an output that is a written leaf (or a view of one) is its stand-in."""
    runs = module.__dict__.get("_fxgrad_decoupled") or []
    if not runs:
        return None
    stack, mode = runs.pop()
    stack.close()
    return mode._sub(output) if mode.stand_ins else None


def decoupled(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` (same parameters, same names) whose forward runs as the module docstring says.
    The hooks that switch it on are the copy's own; ``module`` is not changed."""
    dup = copy.copy(module)
    for key in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        if key in dup.__dict__:
            dup.__dict__[key] = OrderedDict(dup.__dict__[key])
    dup.__dict__["_fxgrad_decoupled"] = []
    dup.register_forward_pre_hook(_enter, prepend=True)
    dup.register_forward_hook(_exit, always_call=True)
    return dup
