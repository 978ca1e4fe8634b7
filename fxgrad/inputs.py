"""Example inputs: real tensors, meta tensors, or shape specs that cost no memory at all.

A dry-run never needs values, only shapes, dtypes and devices, so users can describe a batch of 4,096 images
with ``fxgrad.spec((4096, 3, 224, 224))`` instead of allocating it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .errors import InputError

__all__ = ["Spec", "as_args", "bind_keywords", "has_real_tensors", "has_specs", "map_inputs", "random_values", "spec",
           "spec_bytes"]


@dataclass(frozen=True)
class Spec:
    """The shape, dtype and device of one input tensor, without its values."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    device: str | None = None
    requires_grad: bool = False

    def empty(self, device: torch.device | str | None = None) -> torch.Tensor:
        t = torch.empty(self.shape, dtype=self.dtype, device=self.device or device or "cpu")
        return t.requires_grad_(self.requires_grad) if self.requires_grad else t


def spec(shape: tuple[int, ...] | list[int] | torch.Size, dtype: torch.dtype = torch.float32, *,
         device: str | None = None, requires_grad: bool = False) -> Spec:
    """Describe an input by shape: ``fxgrad.spec((8, 3, 224, 224), dtype=torch.float32)``."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as e:
        raise InputError(f"fxgrad.spec needs a shape like (8, 3, 32, 32), got {shape!r}.") from e
    if any(d < 0 for d in dims):
        raise InputError(f"fxgrad.spec got a negative dimension in {dims}.")
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"fxgrad.spec needs a torch.dtype such as torch.float32, got {dtype!r}.")
    return Spec(dims, dtype, device, requires_grad)


def as_args(example_inputs: Any) -> tuple[Any, ...]:
    """One tensor, a spec, or a tuple/list of them: the positional arguments of ``forward``."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list) and all(isinstance(a, (torch.Tensor, Spec)) for a in example_inputs):
        return tuple(example_inputs)
    return (example_inputs,)


def bind_keywords(model: Any, example_inputs: Any) -> Any:
    """``{"input_ids": ids, "attention_mask": mask}`` for a ``forward`` that has parameters of those names: the
    positional arguments that call means (Hugging Face models are called with keywords), parameters in between
    taking their defaults. Anything else is returned as it is: a dict whose keys are not ``forward``'s parameter
    names is the one argument."""
    if not isinstance(example_inputs, dict) or not example_inputs or not all(isinstance(k, str)
                                                                            for k in example_inputs):
        return example_inputs
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError, AttributeError):
        return example_inputs
    names = [p.name for p in params]
    if not set(example_inputs) <= set(names):
        return example_inputs
    last = max(names.index(k) for k in example_inputs)
    args: list[Any] = []
    for p in params[: last + 1]:
        if p.name in example_inputs:
            args.append(example_inputs[p.name])
        elif p.default is p.empty:
            return example_inputs
        else:
            args.append(p.default)
    return tuple(args)


def _leaves(args: Any) -> list[Any]:
    return pytree.tree_leaves(args, is_leaf=lambda x: isinstance(x, Spec))


def has_real_tensors(args: Any) -> bool:
    """True when every tensor input has values (no specs, no meta tensors)."""
    leaves = [a for a in _leaves(args) if isinstance(a, (torch.Tensor, Spec))]
    return bool(leaves) and all(isinstance(a, torch.Tensor) and a.device.type != "meta" for a in leaves)


def map_inputs(args: Any, fn: Callable[[torch.Tensor | Spec], Any]) -> Any:
    return pytree.tree_map(lambda a: fn(a) if isinstance(a, (torch.Tensor, Spec)) else a, args,
                           is_leaf=lambda x: isinstance(x, Spec))


def has_specs(args: Any) -> bool:
    """True when some input is a :class:`Spec` (a shape without values)."""
    return any(isinstance(a, Spec) for a in _leaves(args))


def spec_bytes(args: Any) -> int:
    """The memory that real values for the specs in ``args`` would take."""
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in _leaves(args) if isinstance(a, Spec))


def random_values(args: Any, *, seed: int = 0) -> Any:
    """``args`` with every :class:`Spec` replaced by a real tensor of its shape, dtype and device: normal floats,
    and 0/1 integers (valid token ids and indices for any table). A private generator: reproducible, and the global
    RNG is left alone."""
    generator = torch.Generator().manual_seed(seed)
    return map_inputs(args, lambda a: _random(a, generator) if isinstance(a, Spec) else a)


def _random(s: Spec, generator: torch.Generator) -> torch.Tensor:
    if s.dtype.is_floating_point or s.dtype.is_complex:
        t = torch.randn(s.shape, dtype=s.dtype, generator=generator)
    elif s.dtype == torch.bool:
        t = torch.randint(0, 2, s.shape, generator=generator).bool()
    else:
        t = torch.randint(0, 2, s.shape, dtype=s.dtype, generator=generator)
    if s.device is not None:
        t = t.to(s.device)
    return t.requires_grad_(True) if s.requires_grad else t
