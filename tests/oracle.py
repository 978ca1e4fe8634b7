"""Eager ground truth: what PyTorch itself does with a model, measured by running it.

Every claim the test-suite makes about gradients is checked against :func:`eager_truth`: a real forward and a
real ``backward()`` on a deep copy of the model, the real ``RuntimeError`` caught, ``.grad`` read parameter by
parameter. Nothing here knows about fxgrad.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "INPLACE_ERROR",
    "LEAF_ERROR",
    "Mutation",
    "Truth",
    "eager_truth",
    "grads_differ",
    "tensor_leaves",
]

#: what autograd says when a tensor saved for backward was modified in place.
INPLACE_ERROR = "modified by an inplace operation"
#: what autograd says when a leaf that requires grad is modified in place with grad enabled.
LEAF_ERROR = "a leaf Variable that requires grad is being used in an in-place operation"

_AUGMENTED = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
                        "__ipow__", "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
                        "__setitem__"})
_NOT_WRITES = frozenset({"requires_grad_", "detach_", "share_memory_", "retain_grad", "register_hook"})


@dataclass(frozen=True)
class Mutation:
    """One in-place call seen in eager forward, described by the state of the tensor it wrote to."""

    op: str
    requires_grad: bool
    is_leaf: bool
    grad_enabled: bool
    #: the written tensor shares storage with a graph input
    on_input: bool


@dataclass(frozen=True)
class Truth:
    backward_error: str | None
    forward_error: str | None
    no_grad_params: frozenset[str]
    zero_grad_params: frozenset[str]
    #: trainable parameters that no torch function touched in forward (a subset of ``no_grad_params``)
    unused_params: frozenset[str] = frozenset()
    #: ``.grad`` of every trainable parameter after backward (``None`` when it stayed unset)
    grads: dict[str, torch.Tensor | None] = field(default_factory=dict, compare=False)
    #: floating outputs, flattened, detached
    outputs: tuple[torch.Tensor, ...] = field(default=(), compare=False)
    #: a graph input's version counter moved: forward wrote into the caller's tensor
    inputs_mutated: bool = False
    mutations: tuple[Mutation, ...] = ()

    @property
    def inplace_error(self) -> bool:
        return self.backward_error is not None and INPLACE_ERROR in self.backward_error

    @property
    def leaf_error(self) -> bool:
        return self.forward_error is not None and LEAF_ERROR in self.forward_error

    @property
    def clean_run(self) -> bool:
        return self.forward_error is None and self.backward_error is None

    @property
    def activation_mutated(self) -> bool:
        """An in-place op wrote a non-leaf tensor that requires grad (legal unless something saved it)."""
        return any(m.requires_grad and not m.is_leaf and not m.on_input for m in self.mutations)


def tensor_leaves(obj: Any) -> list[torch.Tensor]:
    """Tensors in a (nested) tuple / list / dict / dataclass-like output, in a stable order."""
    out: list[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for key in obj:
            out.extend(tensor_leaves(obj[key]))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            out.extend(tensor_leaves(item))
    elif hasattr(obj, "to_tuple"):  # transformers' ModelOutput
        out.extend(tensor_leaves(obj.to_tuple()))
    return out


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:  # inference tensors and other storage-less tensors
        return -1


class _Recorder(TorchFunctionMode):
    """Record in-place calls and which parameters forward touches; passes every call through unchanged."""

    def __init__(self, inputs: Sequence[torch.Tensor], params: dict[int, str]) -> None:
        super().__init__()
        self.input_storages = {_storage(t) for t in inputs} - {-1}
        self.params = params
        self.used: set[str] = set()
        self.mutations: list[Mutation] = []

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        for t in tensor_leaves((args, kwargs)):
            name = self.params.get(id(t))
            if name is not None:
                self.used.add(name)
        name = getattr(func, "__name__", "")
        inplace = name in _AUGMENTED or (name.endswith("_") and not name.endswith("__") and name not in _NOT_WRITES)
        if kwargs.get("inplace") is True or isinstance(kwargs.get("out"), torch.Tensor):
            inplace = True
        if not (inplace and args and isinstance(args[0], torch.Tensor)):
            return func(*args, **kwargs)
        t = kwargs["out"] if isinstance(kwargs.get("out"), torch.Tensor) else args[0]
        before = (t.requires_grad, t.is_leaf, torch.is_grad_enabled(), _storage(t) in self.input_storages)
        version = t._version
        result = func(*args, **kwargs)
        # A call spelled in-place that wrote nothing (``F.dropout(training=False, inplace=True)``) is no mutation:
        # the version counter says whether data was written.
        if t._version != version or name in ("detach_", "requires_grad_"):
            self.mutations.append(Mutation(name, *before))
        return result


def _clone_inputs(inputs: Sequence[Any]) -> tuple[Any, ...]:
    """Copies the model cannot change, with the same leafness and ``requires_grad`` as the originals."""
    return tuple(a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor)
                 else copy.deepcopy(a) for a in inputs)


def grads_differ(a: dict[str, torch.Tensor | None], b: dict[str, torch.Tensor | None], *,
                 rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """True when any parameter's gradient differs (``None`` against a tensor counts as different)."""
    if a.keys() != b.keys():
        return True
    for name, ga in a.items():
        gb = b[name]
        if (ga is None) != (gb is None):
            return True
        if ga is not None and gb is not None and not torch.allclose(ga, gb, rtol=rtol, atol=atol):
            return True
    return False


def eager_truth(model: nn.Module, inputs: Sequence[Any], *, seed: int = 0) -> Truth:
    """Run ``model`` (a deep copy) forward and backward in eager mode and report what really happened.

    The backward uses fixed random cotangents over every floating output that requires grad, so a parameter
    gets ``grad is None`` only when no path reaches it, and an all-zero gradient only when every path through
    it has a zero derivative. Global RNG state and grad mode are restored afterwards.
    """
    model = copy.deepcopy(model)
    inputs = _clone_inputs(inputs)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    ids = {id(p): name for name, p in params.items()}
    tensors_in = [a for a in tensor_leaves(inputs)]
    versions = [t._version for t in tensors_in]
    recorder = _Recorder(tensors_in, ids)
    grad_mode = torch.is_grad_enabled()
    forward_error: str | None = None
    backward_error: str | None = None
    outputs: tuple[torch.Tensor, ...] = ()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            try:
                with recorder:
                    out = model(*inputs)
            except RuntimeError as e:
                forward_error = str(e)
                out = None
            floats = [t for t in tensor_leaves(out) if t.is_floating_point() or t.is_complex()]
            outputs = tuple(t.detach().clone() for t in floats)
            live = [t for t in floats if t.requires_grad]
            if forward_error is None and live:
                torch.manual_seed(seed + 1)
                cotangents = [torch.randn(t.shape, dtype=t.dtype) for t in live]
                try:
                    torch.autograd.backward(live, cotangents)
                except RuntimeError as e:
                    backward_error = str(e)
        finally:
            torch.set_grad_enabled(grad_mode)
    grads = {name: (None if p.grad is None else p.grad.detach().clone()) for name, p in params.items()}
    no_grad: frozenset[str] = frozenset()
    zero_grad: frozenset[str] = frozenset()
    if forward_error is None:  # when forward raised, no gradient was ever computed: nothing to report
        no_grad = frozenset(n for n, g in grads.items() if g is None)
        zero_grad = frozenset(n for n, g in grads.items() if g is not None and not bool(g.ne(0).any()))
    return Truth(
        backward_error=backward_error,
        forward_error=forward_error,
        no_grad_params=no_grad,
        zero_grad_params=zero_grad,
        unused_params=frozenset(params) - frozenset(recorder.used) if forward_error is None else frozenset(),
        grads=grads,
        outputs=outputs,
        inputs_mutated=any(t._version != v for t, v in zip(tensors_in, versions, strict=True)),
        mutations=tuple(recorder.mutations),
    )
