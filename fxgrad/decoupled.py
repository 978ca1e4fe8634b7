"""Eager PyTorch with private saved tensors: the reference for a fix of a write through a ``.detach()`` alias.

``s.detach().clamp_(0, 1)`` after ``s = sigmoid(x)`` makes backward raise (``sigmoid`` saved ``s``, and a detached
alias shares the version counter). What the program means is what eager computes when nothing saved ``s``: the new
values are read later, and the gradient flows into ``s``'s history as if nothing had been written (the write is
invisible to autograd). ``torch.func.functionalize`` gives another answer (it makes the written values a detached
computation, so no gradient reaches ``s`` at all), so it cannot be the reference for such a rewrite.

:func:`decoupled` returns a shallow copy of a module whose forward runs under :class:`_Decouple`, a
``TorchFunctionMode`` that hands every op that neither writes in place nor returns a view private clones of its
tensor arguments and returns a clone of its result. Whatever an op saves for backward is then a tensor the program
never sees, so no in-place write can reach it; views, aliases and in-place ops run unchanged, so every value and
every gradient is eager's.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import ops

__all__ = ["decoupled"]

#: ops that may return their input itself (``x.to(x.dtype)`` is ``x``): a clone would cut the alias
_MAY_RETURN_SELF = frozenset({"to", "type", "type_as", "contiguous", "float", "double", "half", "bfloat16", "cpu",
                              "cuda", "requires_grad_", "retain_grad", "clone"})


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", "") or ""


def _passes_through(name: str, kwargs: dict[str, Any]) -> bool:
    """In-place ops, views, aliases, attribute reads and ``out=`` calls run untouched."""
    if name.startswith("__") and name.endswith("__"):
        return name in ("__get__", "__set__", "__getitem__", "__setitem__") or name.startswith("__i")
    return (name.endswith("_") or "out" in kwargs or name in _MAY_RETURN_SELF or name in ops.DETACH
            or ops.is_view_op(name))


def _clone(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a.clone()
    if isinstance(a, (list, tuple)):
        return type(a)(_clone(x) for x in a) if not hasattr(a, "_fields") else type(a)(*(_clone(x) for x in a))
    if isinstance(a, dict):
        return {k: _clone(v) for k, v in a.items()}
    return a


class _Decouple(TorchFunctionMode):
    """Every op that saves tensors saves private copies (see the module docstring)."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if _passes_through(_name(func), kwargs):
            return func(*args, **kwargs)
        return _clone(func(*_clone(tuple(args)), **_clone(kwargs)))


def _enter(module: nn.Module, args: Any) -> None:
    mode = _Decouple()
    mode.__enter__()
    module.__dict__.setdefault("_fxgrad_decouple", []).append(mode)


def _exit(module: nn.Module, args: Any, output: Any) -> None:
    stack = module.__dict__.get("_fxgrad_decouple") or []
    if stack:
        stack.pop().__exit__(None, None, None)


def decoupled(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` (same parameters, same names) whose forward saves only private tensors."""
    dup = copy.copy(module)
    for key in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        if key in dup.__dict__:
            dup.__dict__[key] = OrderedDict(dup.__dict__[key])
    dup.__dict__["_fxgrad_decouple"] = []
    dup.register_forward_pre_hook(_enter, prepend=True)
    dup.register_forward_hook(_exit, always_call=True)
    return dup
