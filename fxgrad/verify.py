"""Proof that a rewritten module computes what the original computes: outputs, gradients and module state.

Algorithm of :func:`verify`:

1. Deep-copy the original and the fixed module (BatchNorm statistics and the like change on the copies only;
   parameters are new leaves without ``.grad``), in one walk where the fixed module holds the original's
   submodules (:class:`_Arming`), with cyclic GC paused; take one RNG snapshot inside ``torch.random.fork_rng``.
2. Run the original copy on fresh clones of the inputs from the snapshot; draw one random cotangent per output
   that requires grad (own seeded generator) and run backward; keep the error if forward or backward raises.
   Where the copies share submodules, put fresh copies of the user's values back into them (or, where the run
   changed their structure, copy the fixed module on its own).
3. Run the fixed copy the same way, from the same RNG snapshot, with the same cotangents. Its forward and
   backward must succeed.
4. Choose the reference: the original's own results; when its backward (or forward) raised, the original run
   through ``torch.func.functionalize`` under ``torch.func.vjp`` (parameters as inputs via ``functional_call``,
   with the user's values; where the original's backward raised and every slot of its copy is a parameter or a
   buffer, this runs before step 3 on the copy the original ran on, whose structure is checked before and after);
   when that cannot run, the original run by :func:`fxgrad.decoupled.decoupled` (eager, saved tensors read as
   saved, written leaves replaced by clones); when that fails too, float64 central finite differences of the
   original (small models only).
5. Compare every output, every parameter's and every requires-grad input's gradient, every buffer after the run
   and every input after the run: one :class:`TensorCheck` each, with max abs / rel error (gradients and
   buffers: all found equal at once by ``torch.equal`` mapped over the pairs from C; else one at a time).
   Differences that an ``unsafe`` rewrite announced (the caller's input is no longer modified) are listed as
   changes, not errors.
6. ``fork_rng`` restores the RNG; grad mode is restored in a ``finally``. The user's modules are never run. The
   copies form no reference cycle, so they are freed as :func:`verify` returns.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io
import logging
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .decoupled import decoupled
from .errors import VerificationError
from .gcpause import gc_paused
from .rewrite import Left, Rewrite

__all__ = ["TensorCheck", "Verification", "verify"]

log = logging.getLogger(__name__)

#: finite differences: step, default tolerances (gradcheck's), and the most elements fxgrad perturbs.
FD_EPS = 1e-6
FD_RTOL = 1e-3
FD_ATOL = 1e-5
FD_MAX_ELEMENTS = 4096


@dataclass(frozen=True)
class TensorCheck:
    """One compared value: an output, a gradient, a buffer or an input after the run."""

    #: output | gradient | buffer | input
    kind: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""

    def __str__(self) -> str:
        status = "ok" if self.ok else "MISMATCH"
        note = f" ({self.note})" if self.note else ""
        return (f"{self.kind} {self.name} {list(self.shape)} {self.dtype}: max abs {self.max_abs:.3g}, "
                f"max rel {self.max_rel:.3g} {status}{note}")


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` compared, against which reference, and how close everything was."""

    #: eager | functionalize | finite-differences
    reference: str
    outputs: tuple[TensorCheck, ...]
    gradients: tuple[TensorCheck, ...]
    buffers: tuple[TensorCheck, ...]
    inputs: tuple[TensorCheck, ...]
    #: why the eager original could not be its own reference (its backward error), or ""
    original_error: str = ""
    #: caller-visible differences that ``unsafe=True`` rewrites announced
    changes: tuple[str, ...] = ()
    rtol: float | None = None
    atol: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def checks(self) -> tuple[TensorCheck, ...]:
        return self.outputs + self.gradients + self.buffers + self.inputs

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def worst(self) -> TensorCheck | None:
        """The failing check with the largest error, else the check with the largest relative error."""
        pool = [c for c in self.checks if not c.ok] or list(self.checks)
        return max(pool, key=lambda c: (c.max_rel, c.max_abs), default=None)

    def __str__(self) -> str:
        why = f" (the original raises: {self.original_error})" if self.original_error else ""
        lines = [f"verified against {self.reference}{why}: {'ok' if self.ok else 'MISMATCH'}"]
        lines += [f"  {c}" for c in self.checks]
        lines += [f"  change: {c}" for c in self.changes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Structures: outputs and inputs as named leaves.
# --------------------------------------------------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "output") -> list[tuple[str, Any]]:
    """Named leaves of tuples, lists, dicts and dataclass-like outputs (``output[0]``, ``output['logits']``)."""
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, Mapping):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += flatten(v, f"{prefix}[{k!r}]")
        return out
    if isinstance(obj, (tuple, list)):
        out = []
        for i, v in enumerate(obj):
            out += flatten(v, f"{prefix}[{i}]")
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = []
        for f in dataclasses.fields(obj):
            out += flatten(getattr(obj, f.name), f"{prefix}.{f.name}")
        return out
    return [(prefix, obj)]


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with every tensor replaced by ``fn(tensor)``; tuples, lists and dicts are rebuilt."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(fn, v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    if isinstance(obj, Mapping):
        return type(obj)((k, map_tensors(fn, v)) for k, v in obj.items())  # type: ignore[call-arg]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(fn, getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A new leaf with the same values and ``requires_grad``: each run gets its own inputs."""
    c = t.detach().clone()
    return c.requires_grad_(t.requires_grad) if (c.is_floating_point() or c.is_complex()) else c


def input_names(model: nn.Module, args: Sequence[Any]) -> list[str]:
    """``x``, ``mask`` ... from ``forward``'s signature, so gradients are named as the user's code names them."""
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(len(args)):
        names.append(params[i] if i < len(params) and not params[i].startswith("*") else f"input[{i}]")
    return names


# --------------------------------------------------------------------------------------------------------------
# RNG.
# --------------------------------------------------------------------------------------------------------------


class _Rng:
    """One snapshot of the CPU and CUDA generators, restorable before each run."""

    def __init__(self, devices: list[int]) -> None:
        self.devices = devices
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for d, state in zip(self.devices, self.cuda, strict=True):
            torch.cuda.set_rng_state(state, d)


def _cuda_devices(args: tuple[Any, ...]) -> set[int]:
    """The CUDA devices of the inputs; :func:`_copy` adds those of the modules' tensors."""
    return {t.device.index or 0 for _, t in flatten(args) if isinstance(t, torch.Tensor) and t.device.type == "cuda"}


# --------------------------------------------------------------------------------------------------------------
# Runs.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    module: nn.Module
    inputs: tuple[Any, ...]
    outputs: list[tuple[str, Any]]
    raw: Any = None
    forward_error: BaseException | None = None
    backward_error: BaseException | None = None

    _state: tuple[list[tuple[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    def buffers(self) -> dict[str, torch.Tensor]:
        """``dict(module.named_buffers())``."""
        return self._named_state()[1]

    def _named_state(self) -> tuple[list[tuple[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self._state is None:
            self._state = _named_state(self.module)
        return self._state

    def grads(self, input_names_: list[str]) -> dict[str, torch.Tensor | None]:
        out: dict[str, torch.Tensor | None] = {}
        for name, p in self._named_state()[0]:
            if p.requires_grad:
                out[name] = p.grad
        for name, t in _named_leaves(self.inputs, input_names_):
            if _needs_grad(t):
                out[f"input {name}"] = t.grad
        return out


def _named_state(module: nn.Module) -> tuple[list[tuple[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``list(module.named_parameters(remove_duplicate=False))`` and ``dict(module.named_buffers())``, in one walk
    of the module tree instead of one generator chain each (a verification asked for them five times)."""
    params: list[tuple[str, torch.Tensor]] = []
    buffers: dict[str, torch.Tensor] = {}
    _visit(module, "", params, buffers, set(), set())
    return params, buffers


def _visit(mod: nn.Module, prefix: str, params: list[tuple[str, torch.Tensor]], buffers: dict[str, torch.Tensor],
           seen_modules: set[int], seen_buffers: set[int]) -> None:
    """Pre-order, as ``named_modules``: every path for the parameters, the first path of a module (and the first
    name of a tensor) for the buffers. A module-level function, not a closure: a recursive closure is a reference
    cycle (function, cell) that kept both copies' tensors alive until the next collection, which then walked them."""
    first = id(mod) not in seen_modules
    seen_modules.add(id(mod))
    params.extend((prefix + k, p) for k, p in mod._parameters.items() if p is not None)
    if first:
        for k, b in mod._buffers.items():
            if b is not None and id(b) not in seen_buffers:
                seen_buffers.add(id(b))
                buffers[prefix + k] = b
    for k, m in mod._modules.items():
        if m is not None:
            _visit(m, f"{prefix}{k}.", params, buffers, seen_modules, seen_buffers)


def _named_leaves(args: tuple[Any, ...], names: list[str]) -> Iterator[tuple[str, Any]]:
    for name, a in zip(names, args, strict=True):
        yield from flatten(a, name)


@dataclass
class _Arming:
    """What it takes to run a fast copy again, with fresh state, without walking the module tree again.

    The fixed module's copy is made with the original's memo, so the submodules it shares with the original (its
    leaves, which hold every parameter and buffer) are the original copy's: one walk of the tree instead of two.
    After the original's run, :func:`_rearm` puts a fresh copy of every value the copy had replaced (tensors,
    lists, other mutable attributes) back into its slot, from the user's own values. It first checks that the run
    left the copies' structure as it was made (no attribute rebound, no submodule or tensor slot added, no hook
    registered); where it did, the fixed module gets a copy of its own, as before."""

    #: (container, key, the user's value): every slot the copy filled with a copy of its own
    slots: list[tuple[dict[str, Any], str, Any]] = dataclasses.field(default_factory=list)
    #: (copy, its type, its ``__dict__`` as made), for each module copied
    modules: list[tuple[nn.Module, type, dict[str, Any]]] = dataclasses.field(default_factory=list)
    #: (``_parameters``/``_buffers``/``_modules`` dict of a copy, its values as made)
    containers: list[tuple[dict[str, Any], tuple[Any, ...]]] = dataclasses.field(default_factory=list)
    #: the empty containers (hook dicts ...) the copy made
    empties: list[Any] = dataclasses.field(default_factory=list)
    #: the user's module id -> its copy
    copies: dict[int, nn.Module] = dataclasses.field(default_factory=dict)
    #: slots outside ``_parameters``/``_buffers`` (a plain tensor attribute, a list ...): values a run may change
    #: that :func:`torch.func.functional_call` does not replace
    attribute_slots: int = 0
    valid: bool = True


def _copy(module: nn.Module, devices: set[int] | None = None, memo: dict[int, Any] | None = None,
          arming: _Arming | None = None) -> nn.Module:
    """A deep copy to run on: parameters, buffers, submodules and their attributes, as ``copy.deepcopy`` makes it,
    two things aside. A GraphModule's graph and compiled code are shared (``deepcopy`` regenerates and recompiles
    them, the slowest part), and module trees are walked directly instead of through ``__reduce_ex__``: a module's
    ``__dict__`` is copied whole and only its containers are replaced (ten times faster on a 1,000-node ResNet,
    where the copies were a third of the verification). Tensors that share memory with each other keep
    ``deepcopy``, which keeps them sharing. With ``memo`` and ``arming`` (see :class:`_Arming`), modules already
    copied into ``memo`` are reused and every slot is recorded."""
    memo = {} if memo is None else memo
    with torch.no_grad():
        dup = _copy_module(module, memo, fast_tensors=True, arming=arming)
    met: list[torch.Tensor] = memo.get(_SOURCES, [])
    # Memory shared between two distinct tensors (a storage, not a tied parameter, which the memo keeps tied) must
    # stay shared in the copy: redo the copy the slow way then, on its own. Empty storages share nothing. With a
    # shared memo, the tensors an earlier call checked are not checked again: their storages are in ``sharing``.
    sharing: _Sharing = memo.setdefault(_SHARING, _Sharing())
    for t in met[sharing.done:]:
        if id(t) in sharing.seen:
            continue
        sharing.seen.add(id(t))
        storage = t.untyped_storage()
        if devices is not None and storage.device.type == "cuda":  # the CUDA generators to fork: found here, not
            devices.add(storage.device.index or 0)                  # by another walk of the module tree
        if storage.nbytes():
            sharing.distinct += 1
            sharing.pointers.add(storage.data_ptr())
    sharing.done = len(met)
    if len(sharing.pointers) < sharing.distinct:
        if arming is not None:
            arming.valid = False
        memo = {}
        if isinstance(module, torch.fx.GraphModule):
            dup = _copy_module(module, memo, fast_tensors=False, arming=None)
        else:
            dup = copy.deepcopy(module, memo)
        for p in dup.parameters():
            p.grad = None
    return dup  # the fast copy's parameters are new leaves, without .grad


def _rearm(arming: _Arming) -> bool:
    """Fresh values in every slot of the copies (see :class:`_Arming`); ``False`` where the run changed their
    structure, which only a new copy undoes."""
    if not _intact(arming):
        return False
    memo: dict[int, Any] = dict(arming.copies)  # modules that attributes refer to stay the copies themselves
    with torch.no_grad():
        _fill(arming, memo)
    arming.valid = False  # the records describe the copies as made, no longer as they are: one re-arm only
    return True


def _fill(arming: _Arming, memo: dict[int, Any]) -> None:
    """A fresh copy of the user's value in every slot the copies recorded."""
    for container, key, value in arming.slots:
        new = memo.get(id(value))
        if new is None:
            kind = type(value)
            if (kind is nn.Parameter or kind is torch.Tensor) and value.is_leaf and not value.__dict__:
                new = memo[id(value)] = _twin_tensor(value, kind)  # _copy_value's fast path, inlined: 1,000s
            else:
                new = _copy_value(value, memo, True, None)
        container[key] = new


def _intact(arming: _Arming) -> bool:
    """Whether the copies' structure is as it was made (see :class:`_Arming`): no attribute rebound, no submodule
    or tensor slot added or replaced, no hook registered. The values in the slots may have changed."""
    if not arming.valid or any(arming.empties):
        return False
    for dup, kind, made in arming.modules:
        state = dup.__dict__
        if type(dup) is not kind or state.keys() != made.keys() or not all(map(operator.is_, state.values(),
                                                                                made.values())):
            return False
    for container, values in arming.containers:
        if len(container) != len(values) or not all(map(operator.is_, container.values(), values)):
            return False
    return True


#: a memo key no ``id()`` takes: the list of the module's tensors the copy met
_SOURCES = -1
#: another: the :class:`_Sharing` of the tensors met so far
_SHARING = -2


@dataclass
class _Sharing:
    """The storages of the tensors :func:`_copy` has checked, over the calls that share one memo."""

    done: int = 0
    seen: set[int] = dataclasses.field(default_factory=set)
    pointers: set[int] = dataclasses.field(default_factory=set)
    distinct: int = 0

_IMMUTABLE = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.layout,
              torch.memory_format)
#: exact types whose values are shared by the copy (a ``set`` lookup per attribute, no ``isinstance``)
_SHARED = frozenset(_IMMUTABLE)
_EMPTY_FRESH = frozenset((dict, OrderedDict, list, set))
_TENSOR_DICTS = ("_parameters", "_buffers")


def _copy_module(mod: nn.Module, memo: dict[int, Any], *, fast_tensors: bool, arming: _Arming | None) -> nn.Module:
    dup: nn.Module = object.__new__(type(mod))
    memo[id(mod)] = dup
    state = mod.__dict__
    out = state.copy()  # immutable attributes (flags, sizes) stay as they are: most of a module's state
    if isinstance(mod, torch.fx.GraphModule):
        items: Any = [(k, state[k]) for k in ("_parameters", "_buffers", "_modules")]  # graph and code shared
    else:
        items = state.items()
    for key, v in items:
        kind = type(v)
        if kind in _SHARED:
            continue
        if kind in _EMPTY_FRESH and not v:
            # hook dicts, the non-persistent buffer set, a leaf's _modules: empty on almost every module; the
            # re-arm checks all of them in one any()
            out[key] = new = kind()
            if arming is not None:
                arming.empties.append(new)
        elif kind is tuple and all(map(_SHARED.__contains__, map(type, v))):
            continue  # kernel sizes, strides: a tuple of immutables is its own deep copy, and stays in ``out``
        elif key == "_modules" and kind in (dict, OrderedDict):
            sub = kind()
            for k, m in v.items():
                hit = None if m is None else memo.get(id(m))
                sub[k] = hit if hit is not None or m is None else _copy_module(m, memo, fast_tensors=fast_tensors,
                                                                               arming=arming)
            out[key] = sub
            if arming is not None:
                arming.containers.append((sub, tuple(sub.values())))
        elif key in _TENSOR_DICTS and kind in (dict, OrderedDict):
            tensors = kind()
            for k, t in v.items():
                tensors[k] = _copy_value(t, memo, fast_tensors, arming)
                if arming is not None and t is not None:
                    arming.slots.append((tensors, k, t))
            out[key] = tensors
            if arming is not None:
                arming.containers.append((tensors, tuple(tensors.values())))
        else:
            new = out[key] = _copy_value(v, memo, fast_tensors, arming)
            if arming is not None and new is not v:  # a tuple of sizes is its own copy: nothing to re-arm
                arming.slots.append((out, key, v))
                arming.attribute_slots += 1
    object.__setattr__(dup, "__dict__", out)
    if arming is not None:
        arming.modules.append((dup, type(dup), out.copy()))
        arming.copies[id(mod)] = dup
    return dup


def _twin_tensor(v: torch.Tensor, kind: type) -> torch.Tensor:
    """A new leaf with ``v``'s values, strides, type (tensor or parameter) and ``requires_grad``. Called under
    ``torch.no_grad()``, where ``clone`` records nothing: no ``detach`` per tensor (a fifth of the cost)."""
    data = v.clone()  # preserve_format: the strides of a dense tensor
    if kind is nn.Parameter:  # what nn.Parameter(data, ...) does for a plain tensor, without its Python __new__
        return torch.Tensor._make_subclass(nn.Parameter, data, v.requires_grad)
    return data.requires_grad_(True) if v.requires_grad else data


def _copy_value(v: Any, memo: dict[int, Any], fast_tensors: bool, arming: _Arming | None) -> Any:
    """``copy.deepcopy(v, memo)`` with fast paths for what module state is made of."""
    if isinstance(v, _IMMUTABLE):
        return v
    is_tensor = isinstance(v, torch.Tensor)
    if is_tensor:
        memo.setdefault(_SOURCES, []).append(v)
    hit = memo.get(id(v), memo)
    if hit is not memo:
        return hit
    kind = type(v)
    out: Any
    if fast_tensors and (kind is nn.Parameter or kind is torch.Tensor) and v.is_leaf and not v.__dict__:
        out = _twin_tensor(v, kind)
    elif isinstance(v, nn.Module):
        return _copy_module(v, memo, fast_tensors=fast_tensors, arming=arming)
    elif kind is dict or kind is OrderedDict:
        out = kind()
        memo[id(v)] = out
        for k, x in v.items():
            out[k] = _copy_value(x, memo, fast_tensors, arming)
        return out
    elif kind is list:
        out = []
        memo[id(v)] = out
        out.extend(_copy_value(x, memo, fast_tensors, arming) for x in v)
        return out
    elif (kind is set or kind is tuple) and all(isinstance(x, _IMMUTABLE) for x in v):
        out = set(v) if kind is set else v  # a tuple of immutables is its own deep copy
    else:
        if arming is not None and not is_tensor:
            arming.valid = False  # deepcopy may copy modules the arming does not know of
        return copy.deepcopy(v, memo)
    memo[id(v)] = out
    return out


def _forward(module: nn.Module, args: tuple[Any, ...], rng: _Rng) -> _Run:
    inputs = tuple(map_tensors(_fresh, a) for a in args)
    rng.restore()
    try:
        if isinstance(module, torch.fx.GraphModule):
            # fx prints its own traceback of the generated code to stderr before re-raising: the error is ours to
            # report, in one sentence, so keep stderr clean.
            with contextlib.redirect_stderr(io.StringIO()):
                raw = module(*inputs)
        else:
            raw = module(*inputs)
    except Exception as e:
        return _Run(module, inputs, [], forward_error=e)
    return _Run(module, inputs, flatten(raw), raw)


def _needs_grad(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad and (t.is_floating_point() or t.is_complex())


def _cotangents(outputs: list[tuple[str, Any]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    cots: dict[str, torch.Tensor] = {}
    for name, t in outputs:
        if _needs_grad(t):
            cots[name] = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)
    return cots


def _backward(run: _Run, cots: dict[str, torch.Tensor]) -> None:
    pairs = [(t, cots[name]) for name, t in run.outputs if name in cots and _needs_grad(t)]
    if not pairs:
        return
    try:
        torch.autograd.backward([t for t, _ in pairs], [c for _, c in pairs])
    except Exception as e:
        run.backward_error = e


# --------------------------------------------------------------------------------------------------------------
# References for an original whose backward raises.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Reference:
    name: str
    outputs: dict[str, Any]
    grads: dict[str, torch.Tensor | None]
    buffers: dict[str, torch.Tensor]


def _functionalized(original: nn.Module, args: tuple[Any, ...], names: list[str], cots: dict[str, torch.Tensor],
                    rng: _Rng, module: nn.Module | None = None) -> _Reference:
    """Gradients of the original without its in-place ops: ``vjp(functionalize(functional_call(...)))``, on
    ``module`` (a copy of ``original`` whose every slot is a parameter or a buffer, run before) or on a new copy.
    Parameters and buffers are read from ``original``'s own tensors (every one is cloned before use, none is
    written), so a copy that ran before gives the values the user's module holds."""
    from torch.func import functional_call, functionalize, vjp

    ref = module if module is not None else _copy(original)
    # One walk (_named_state) for what named_parameters(), its remove_duplicate=False form and named_buffers() give:
    # the deduplicated parameters are the first name of each tensor, in the same order. ``ref`` has the structure
    # of ``original`` (as made, or checked to be), so the names are its names too.
    every, named_buffers = _named_state(original)
    unique: dict[int, tuple[str, torch.Tensor]] = {}
    for n, p in every:
        unique.setdefault(id(p), (n, p))
    params = {n: p.detach() for n, p in unique.values() if p.requires_grad}
    frozen = {n: p.detach() for n, p in unique.values() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in named_buffers.items()}
    leaves = [(n, t) for n, t in _named_leaves(tuple(map_tensors(_fresh, a) for a in args), names)
              if isinstance(t, torch.Tensor)]
    diff = [(n, t) for n, t in leaves if _needs_grad(t)]
    diff_names = {n for n, _ in diff}
    cot_names = list(cots)

    def inner(p: dict[str, torch.Tensor], diff_values: tuple[torch.Tensor, ...], rest: list[torch.Tensor],
              state: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], Any]:
        # Every tensor is an argument here, so functionalize sees (and removes) every write; cloning them first
        # keeps the writes off the arguments: no copy-back into a vjp primal or into a tensor autograd saved.
        values, others = iter([v.clone() for v in diff_values]), iter([r.clone() for r in rest])
        it = iter(leaves)

        def substitute(_: torch.Tensor) -> torch.Tensor:
            name, _t = next(it)
            return next(values) if name in diff_names else next(others)

        inputs = tuple(map_tensors(substitute, a) for a in args)
        local = {k: v.clone() for k, v in state.items()}
        out = functional_call(ref, {**{k: v.clone() for k, v in p.items()}, **local}, inputs)
        flat = dict(flatten(out))
        missing = [n for n in cot_names if n not in flat]
        if missing:
            raise RuntimeError(f"outputs differ in structure: {missing}")
        tensors = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}  # vjp's aux holds tensors only
        return tuple(flat[n] for n in cot_names), (tensors, local)

    def outer(p: dict[str, torch.Tensor], *diff_values: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        # Tensors created inside the vjp transform may be written; captured ones may not.
        rest = [t.detach().clone() for n, t in leaves if n not in diff_names]
        state = {**{k: v.clone() for k, v in frozen.items()}, **{k: v.clone() for k, v in buffers.items()}}
        result: tuple[tuple[torch.Tensor, ...], Any] = functionalize(inner)(p, diff_values, rest, state)
        return result

    rng.restore()
    if not cot_names:  # no output requires grad: only the outputs are compared, and vjp needs one to differentiate
        _, (flat, state) = outer(params, *[t.detach() for _, t in diff])
        return _Reference("functionalize", dict(flat), {}, {k: v for k, v in state.items() if k in buffers})
    _, vjp_fn, (flat, state) = vjp(outer, params, *[t.detach() for _, t in diff], has_aux=True)  # type: ignore[misc]
    grads_p, *grads_in = vjp_fn(tuple(cots[n] for n in cot_names))
    grads: dict[str, torch.Tensor | None] = {}
    for name, _ in every:
        key = name if name in grads_p else _tied_name(ref, name)
        if key in grads_p:
            grads[name] = grads_p[key]
    for (n, _), g in zip(diff, grads_in, strict=True):
        grads[f"input {n}"] = g
    bufs = {k: v for k, v in state.items() if k in buffers}
    return _Reference("functionalize", {k: v for k, v in flat.items()}, grads, bufs)


def _tied_name(module: nn.Module, name: str) -> str:
    """The name ``named_parameters()`` keeps for a parameter that also lives under ``name``."""
    target = module.get_parameter(name)
    return next((n for n, p in module.named_parameters() if p is target), name)


def _finite_differences(original: nn.Module, args: tuple[Any, ...], names: list[str],
                        cots: dict[str, torch.Tensor], rng: _Rng) -> _Reference:
    """Float64 central differences of ``sum(output * cotangent)``: needs only the original's forward."""
    ref = _copy(original).double()
    inputs64 = tuple(map_tensors(lambda t: _fresh(t.double()) if t.is_floating_point() else _fresh(t), a)
                     for a in args)
    targets: list[tuple[str, torch.Tensor]] = [
        (n, p) for n, p in ref.named_parameters() if p.requires_grad]
    targets += [(f"input {n}", t) for n, t in _named_leaves(inputs64, names) if _needs_grad(t)]
    total = sum(t.numel() for _, t in targets)
    if total > FD_MAX_ELEMENTS:
        raise RuntimeError(f"{total} parameter and input elements, more than the {FD_MAX_ELEMENTS} that finite "
                           "differences perturb")
    cots64 = {k: v.double() for k, v in cots.items()}

    def loss() -> float:
        rng.restore()
        run_inputs = tuple(map_tensors(lambda t: t.detach().clone(), a) for a in inputs64)
        flat = dict(flatten(ref(*run_inputs)))
        return float(sum((flat[n].double() * c).sum() for n, c in cots64.items()))

    grads: dict[str, torch.Tensor | None] = {}
    with torch.no_grad():
        for name, t in targets:
            flat_t = t.view(-1)
            g = torch.empty_like(flat_t)
            for i in range(flat_t.numel()):
                orig = flat_t[i].item()
                flat_t[i] = orig + FD_EPS
                plus = loss()
                flat_t[i] = orig - FD_EPS
                minus = loss()
                flat_t[i] = orig
                g[i] = (plus - minus) / (2 * FD_EPS)
            grads[name] = g.view_as(t)
    for name, _ in ref.named_parameters(remove_duplicate=False):
        if name not in grads:
            key = _tied_name(ref, name)
            if key in grads:
                grads[name] = grads[key]
    return _Reference("finite-differences", {}, grads, {})


# --------------------------------------------------------------------------------------------------------------
# Comparison.
# --------------------------------------------------------------------------------------------------------------


def _errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    if actual.numel() == 0 or actual.shape != expected.shape:
        return (0.0, 0.0) if actual.shape == expected.shape else (float("inf"), float("inf"))
    a, e = actual.detach().to("cpu", torch.complex128 if actual.is_complex() else torch.float64), \
        expected.detach().to("cpu", torch.complex128 if expected.is_complex() else torch.float64)
    diff = (a - e).abs()
    both_nan = a.isnan() & e.isnan() if not a.is_complex() else torch.zeros_like(diff, dtype=torch.bool)
    diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    diff = torch.where(a == e, torch.zeros_like(diff), diff)  # equal infinities
    rel = diff / e.abs()
    rel = torch.where(diff == 0, torch.zeros_like(rel), rel)
    return float(diff.max()), float(rel.max())


def _check(kind: str, name: str, actual: Any, expected: Any, rtol: float | None, atol: float | None,
           none_is_zero: bool = False, eager: bool = True) -> TensorCheck:
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        if actual is None and isinstance(expected, torch.Tensor) and none_is_zero and not expected.any():
            return TensorCheck(kind, name, tuple(expected.shape), str(expected.dtype), 0.0, 0.0, True,
                               "no gradient; the reference gives zeros")
        if expected is None and isinstance(actual, torch.Tensor) and none_is_zero and not actual.any():
            return TensorCheck(kind, name, tuple(actual.shape), str(actual.dtype), 0.0, 0.0, True,
                               "zero gradient; the reference gives none")
        same = type(actual) is type(expected) and (actual is expected or _equal_values(actual, expected))
        t = actual if isinstance(actual, torch.Tensor) else expected
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else ()
        note = "none in both" if actual is None and expected is None else \
            f"fixed: {_kind_of(actual)}, reference: {_kind_of(expected)}"
        err = 0.0 if same else float("inf")
        return TensorCheck(kind, name, shape, str(t.dtype) if isinstance(t, torch.Tensor) else "", err, err,
                           same, "" if same and actual is not None else note)
    note = ""
    ok = True
    if (actual.dtype == expected.dtype and actual.device == expected.device and actual.shape == expected.shape
            and torch.equal(actual.detach(), expected.detach())):
        abs_err = rel_err = 0.0  # bitwise equal, the usual case for a rewrite: no tolerance to apply
    else:
        abs_err, rel_err = _errors(actual, expected)
        try:
            torch.testing.assert_close(actual.detach(), expected.detach().to(actual.device), rtol=rtol, atol=atol,
                                       equal_nan=True)
        except AssertionError as e:
            ok = False
            note = str(e).strip().splitlines()[0]
    if kind == "output" and eager and actual.requires_grad != expected.requires_grad:
        ok = False
        note = f"requires_grad: fixed {actual.requires_grad}, reference {expected.requires_grad}"
    return TensorCheck(kind, name, tuple(expected.shape), str(expected.dtype), abs_err, rel_err, ok, note)


def _checks(kind: str, triples: list[tuple[str, Any, Any]], rtol: float | None, atol: float | None,
            none_is_zero: bool = False) -> list[TensorCheck]:
    """``_check`` of each ``(name, actual, expected)``, with the usual case found in bulk.

    Gradients and buffers come by the thousand, and after a rewrite all are usually equal: :func:`_all_equal` finds
    that in one pass, and each gets the record ``_check``'s bitwise path gives it (errors 0, ok). Otherwise every
    pair goes through ``_check`` itself (its own ``torch.equal`` first), so every figure is the one it computes."""
    if _all_equal([(a, e) for _, a, e in triples]):
        return [_equal_record(kind, key, e) for key, _, e in triples]
    return [_check(kind, key, a, e, rtol, atol, none_is_zero) for key, a, e in triples]


def _equal_record(kind: str, name: str, expected: torch.Tensor) -> TensorCheck:
    """``TensorCheck(kind, name, shape, dtype, 0.0, 0.0, True)``, the record of a bitwise-equal pair, without the
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field): made by the thousand, it took a third of
    the comparison."""
    record: TensorCheck = object.__new__(TensorCheck)
    object.__setattr__(record, "__dict__", {"kind": kind, "name": name, "shape": tuple(expected.shape),
                                            "dtype": str(expected.dtype), "max_abs": 0.0, "max_rel": 0.0,
                                            "ok": True, "note": ""})
    return record


_PLAIN = frozenset((torch.Tensor, nn.Parameter))
_DTYPE = operator.attrgetter("dtype")
_LAYOUT = operator.attrgetter("layout")


def _all_equal(pairs: list[tuple[Any, Any]]) -> bool:
    """Whether ``torch.equal`` holds for every ``(actual, expected)``, both plain strided tensors of one type, dtype
    and shape: each gets ``_check``'s bitwise record then. One ``torch.equal`` per pair, called from C by ``map``:
    a quarter of the time of one ``torch.equal`` of two concatenations per dtype (each concatenation a view per
    tensor and a copy), which itself took a third of the time of a subtraction and a norm per tensor. ``False``
    sends the caller pair by pair to :func:`_check`."""
    if not pairs:
        return True
    actual = [a for a, _ in pairs]
    expected = [e for _, e in pairs]
    types = list(map(type, actual))
    dtypes = list(map(_DTYPE, actual)) if _PLAIN.issuperset(types) else None
    if (dtypes is None or types != list(map(type, expected)) or dtypes != list(map(_DTYPE, expected))
            or list(map(torch.Tensor.size, actual)) != list(map(torch.Tensor.size, expected))
            or {*map(_LAYOUT, actual), *map(_LAYOUT, expected)} != {torch.strided}):
        return False
    try:
        with torch.no_grad():
            return all(map(torch.equal, actual, expected))
    except (RuntimeError, TypeError, NotImplementedError):  # tensors on two devices ...: pair by pair then
        return False


def _equal_values(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _kind_of(v: Any) -> str:
    return "none" if v is None else (f"tensor {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__)


# --------------------------------------------------------------------------------------------------------------
# verify.
# --------------------------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    """The sentence that matters: torch appends anomaly-detection hints and traced-code excerpts."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text.split(" Hint: enable anomaly detection")[0].rstrip(".")


def _involved(rewrites: Sequence[Rewrite]) -> str:
    shown = [f"`{r.node}`" + (f" ({r.location})" if r.location else "") for r in rewrites[:5]]
    more = f" and {len(rewrites) - 5} more" if len(rewrites) > 5 else ""
    return ", ".join(shown) + more if shown else "none"


def _breaking_left(left: Sequence[Left]) -> str:
    shown = [f"`{lf.spelling}` ({lf.location or lf.node}): {lf.reason}" for lf in left][:3]
    return "; ".join(shown)


def verify(original: nn.Module, fixed: nn.Module, example_inputs: Sequence[Any], *, rtol: float | None = None,
           atol: float | None = None, rewrites: Sequence[Rewrite] = (), left: Sequence[Left] = (),
           model_name: str = "") -> Verification:
    """Run ``original`` and ``fixed`` (on deep copies) on ``example_inputs``; raise if they differ.

    ``rtol``/``atol`` default to ``torch.testing.assert_close``'s per-dtype tolerances (gradcheck's for a
    finite-difference reference). Raises :class:`~fxgrad.errors.VerificationError` naming the worst tensor and
    the rewrites involved; returns the structured :class:`Verification` otherwise.
    """
    name = model_name or type(original).__name__
    args = tuple(example_inputs)
    names = input_names(original, args)
    grad_mode = torch.is_grad_enabled()
    # Cyclic GC is paused (see fxgrad.gcpause): the copies and the two autograd graphs are thousands of young
    # objects that form no garbage cycles, and a collection in between would walk them all, more than once.
    with gc_paused():
        found = _cuda_devices(args)
        # One walk for both copies where it can be (see _Arming): the fixed module's copy reuses the submodules
        # of the original's, which get fresh values between the two runs.
        shared = _Arming()
        memo: dict[int, Any] = {}
        originals = _copy(original, found, memo, shared)
        fixeds = _copy(fixed, found, memo, shared) if shared.valid else None
        arming = shared if shared.valid else None
        if fixeds is None or arming is None:
            fixeds = _copy(fixed, found)
        devices = sorted(found)
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                result = _verify_copies(original, fixed, originals, fixeds, arming, args, names, devices, name,
                                        rtol, atol, rewrites, left)
        finally:
            torch.set_grad_enabled(grad_mode)
            del originals, fixeds, arming, shared, memo  # freed with GC paused
    if not result.ok:
        worst = result.worst()
        assert worst is not None
        raise VerificationError(
            f"The fixed {name} does not compute what the original computes: {worst.kind} `{worst.name}` differs "
            f"by max abs {worst.max_abs:.3g}, max rel {worst.max_rel:.3g} (reference: {result.reference}"
            f"{'; ' + worst.note if worst.note else ''}). Rewrites involved: {_involved(rewrites)}. "
            "Hint: call fxgrad.fix(..., only='breaking') to rewrite fewer ops, or pass rtol/atol if the "
            "difference is rounding; please report it as an fxgrad bug.")
    return result


def _verify_copies(original: nn.Module, fixed: nn.Module, originals: nn.Module, fixeds: nn.Module,
                   arming: _Arming | None, args: tuple[Any, ...], names: list[str], devices: list[int], name: str,
                   rtol: float | None, atol: float | None, rewrites: Sequence[Rewrite],
                   left: Sequence[Left]) -> Verification:
    """Steps 2 to 5 of :func:`verify`, on the copies ``originals`` and ``fixeds``, inside ``fork_rng``."""
    rng = _Rng(devices)
    # Step 2: the original, forward and backward; its gradients and buffers are taken before the copies it ran on
    # get fresh values for the fixed module's run.
    orig = _forward(originals, args, rng)
    cots: dict[str, torch.Tensor] = {}
    if orig.forward_error is None:
        cots = _cotangents(orig.outputs)
        _backward(orig, cots)
        orig.buffers()
    early: _Reference | Exception | None = None
    if (orig.forward_error is None and orig.backward_error is not None and arming is not None
            and not arming.attribute_slots and _intact(arming)):
        # The reference is needed, and the copy the original ran on can serve it without a copy of its own (a
        # third of the rest of the verification): its structure is as made, and functional_call replaces every
        # value a run changed (each slot is a parameter or a buffer). The re-arm below checks the structure again.
        try:
            early = _functionalized(original, args, names, cots, rng, module=originals)
        except Exception as e:
            early = e.with_traceback(None)  # its traceback holds this frame, which holds it: no cycle
    if arming is not None and not _rearm(arming):
        fixeds = _copy(fixed)
        early = None  # the functionalized run changed the copy's structure: no reference, it is run again
    # Step 3: the fixed module, from the same RNG snapshot, with the same cotangents.
    fix = _forward(fixeds, args, rng)
    if fix.forward_error is not None:
        error = f"{type(fix.forward_error).__name__}: {_first_line(fix.forward_error)}"
        if left:  # ops whose findings say eager raises were left: the original raises there too
            raise VerificationError(
                f"The fixed {name} still raises in forward, like the original ({error}): fxgrad left "
                f"{_breaking_left(left)}. Hint: pass unsafe=True to rewrite it, or fix that line by hand."
            ) from fix.forward_error
        raise VerificationError(
            f"The fixed {name} raises in forward: {error}. Rewrites involved: {_involved(rewrites)}. "
            "Hint: call fxgrad.fix(..., only='breaking') to rewrite fewer ops, and report this as an "
            "fxgrad bug.") from fix.forward_error
    if orig.forward_error is not None:
        cots = _cotangents(fix.outputs)
    _backward(fix, cots)
    if fix.backward_error is not None:
        still = _breaking_left(left)
        raise VerificationError(
            f"backward() of the fixed {name} still raises: {type(fix.backward_error).__name__}: "
            f"{_first_line(fix.backward_error)}"
            + (f". In-place ops fxgrad left: {still}. Hint: rewrite these ops by hand, or pass unsafe=True "
               "if they write graph inputs." if still else
               ". fxgrad found no in-place op that causes it, so it rewrote none for it. Hint: "
               "torch.autograd.set_detect_anomaly(True) names the forward line whose result backward "
               "needs; rewrite the in-place op after it out of place, and please report the model as an "
               "fxgrad miss.")) from fix.backward_error
    # Step 4: the reference.
    reference, notes, original_error = _reference(original, args, names, orig, cots, rng, early)
    # Step 5: compare.
    rtol_, atol_ = rtol, atol
    if reference.name == "finite-differences" and rtol is None and atol is None:
        rtol_, atol_ = FD_RTOL, FD_ATOL
    changes = tuple(r.unsafe_change for r in rewrites if r.unsafe_change)
    return _compare(orig, fix, reference, names, cots, rng, fixed, args, rtol, atol, rtol_, atol_,
                    changes, original_error, notes)


def _reference(original: nn.Module, args: tuple[Any, ...], names: list[str], orig: _Run,
               cots: dict[str, torch.Tensor], rng: _Rng,
               early: _Reference | Exception | None = None) -> tuple[_Reference, list[str], str]:
    error = orig.forward_error or orig.backward_error
    if error is None:
        grads = orig.grads(names)
        return _Reference("eager", dict(orig.outputs), grads, orig.buffers()), [], ""
    original_error = f"{type(error).__name__}: {_first_line(error)}"
    notes: list[str] = []
    try:
        if isinstance(early, Exception):
            raise early
        reference = early if early is not None else _functionalized(original, args, names, cots, rng)
        if orig.forward_error is None and not _same_outputs(reference.outputs, dict(orig.outputs)):
            raise _Diverged("its forward computes other outputs than eager's (a random op may draw its "
                            "numbers in another memory layout under torch.func, e.g. Dropout on a transposed tensor)")
        return reference, notes, original_error
    except Exception as e:
        log.debug("functionalize reference failed: %s", e)
        notes.append(f"torch.func.functionalize is no reference here: {e}" if isinstance(e, _Diverged) else
                     f"torch.func.functionalize could not run the original ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})")
        # Eager without its two refusals (fxgrad.decoupled): saved tensors read as saved, written leaves replaced.
        run = _forward(_copy(decoupled(original)), args, rng)
        if run.forward_error is None:
            _backward(run, cots)
        if run.forward_error is None and run.backward_error is None:
            notes.append("reference: the original run by fxgrad.decoupled (eager, with every saved tensor read as it "
                         "was saved and every leaf written in place replaced by a clone)")
            return (_Reference("decoupled", dict(run.outputs), run.grads(names), run.buffers()),
                    notes, original_error)
        if orig.forward_error is not None:
            other = run.forward_error or run.backward_error or e
            raise VerificationError(
                f"fxgrad cannot verify the fix: the original raises in forward ({original_error}), and neither "
                f"torch.func.functionalize ({type(e).__name__}: {_first_line(e)}) nor fxgrad.decoupled "
                f"({type(other).__name__}: {_first_line(other)}) can run it as a reference. Hint: pass "
                "verify=False to skip the proof.") from e
    try:
        return _finite_differences(original, args, names, cots, rng), notes, original_error
    except Exception as e:
        raise VerificationError(
            f"fxgrad cannot verify the gradients of the fix: the original's backward raises ({original_error}), "
            f"and neither torch.func.functionalize nor finite differences could run ({type(e).__name__}: {e}). "
            "Hint: pass smaller example inputs, or verify=False to skip the proof.") from e


class _Diverged(RuntimeError):
    """The functionalized original is not the program eager ran: it cannot be the reference for its gradients."""


def _same_outputs(got: Mapping[str, Any], eager: Mapping[str, Any]) -> bool:
    """Do a reference's outputs equal the eager original's (the same program, the same random numbers)? Compared
    as step 5 compares outputs (:func:`_check`, torch.testing's tolerances for the dtype), requires_grad aside: the
    functionalized outputs are detached."""
    return all(_check("output", key, got.get(key, _MISSING), want, None, None, eager=False).ok
               for key, want in eager.items() if isinstance(want, torch.Tensor))


def _compare(orig: _Run, fix: _Run, ref: _Reference, names: list[str], cots: dict[str, torch.Tensor], rng: _Rng,
             fixed: nn.Module, args: tuple[Any, ...], rtol: float | None, atol: float | None,
             grad_rtol: float | None, grad_atol: float | None, changes: tuple[str, ...], original_error: str,
             notes: list[str]) -> Verification:
    # Outputs: against the eager original when its forward ran, else the reference.
    expected_out = dict(orig.outputs) if orig.forward_error is None else ref.outputs
    fixed_out = dict(fix.outputs)
    outputs = []
    for key in dict.fromkeys([*expected_out, *fixed_out]):
        exp = expected_out.get(key, _MISSING)
        act = fixed_out.get(key, _MISSING)
        if exp is _MISSING or act is _MISSING:
            outputs.append(TensorCheck("output", key, (), "", float("inf"), float("inf"), False,
                                       "present in only one of the two outputs"))
            continue
        outputs.append(_check("output", key, act, exp, rtol, atol, eager=orig.forward_error is None))
    # Gradients: same dtype as the reference (float64 for finite differences).
    fix_grads = fix.grads(names)
    if ref.name == "finite-differences":
        fix64 = _forward(_copy(fixed).double(), tuple(
            map_tensors(lambda t: t.double() if t.is_floating_point() else t, a) for a in args), rng)
        _backward(fix64, {k: v.double() for k, v in cots.items()})
        fix_grads = fix64.grads(names)
    none_is_zero = ref.name != "eager"
    gradients = _checks("gradient", [(key, fix_grads[key], exp) for key, exp in ref.grads.items() if key in fix_grads],
                        grad_rtol, grad_atol, none_is_zero)
    # Module state after the run: BatchNorm statistics and other buffers.
    expected_buffers = orig.buffers() if orig.forward_error is None else ref.buffers
    fix_buffers = fix.buffers()
    buffers = _checks("buffer", [(k, fix_buffers[k], v) for k, v in expected_buffers.items() if k in fix_buffers],
                      rtol, atol)
    # Inputs after the run: in-place writes to graph inputs are visible to the caller.
    inputs = []
    change_list = list(changes)
    if orig.forward_error is None:
        for (key, exp), (_, act) in zip(_named_leaves(orig.inputs, names), _named_leaves(fix.inputs, names),
                                        strict=True):
            if not isinstance(exp, torch.Tensor):
                continue
            check = _check("input", key, act, exp, rtol, atol)
            if not check.ok and changes:
                change_list.append(f"input `{key}` after the run differs by max abs {check.max_abs:.3g} "
                                   "(announced by an unsafe rewrite)")
                check = dataclasses.replace(check, ok=True, note="changed by an unsafe rewrite")
            inputs.append(check)
    if not cots:
        notes.append("no output requires grad: gradients were not compared")
    if ref.name == "finite-differences":
        notes.append(f"gradients compared in float64 with rtol={grad_rtol}, atol={grad_atol}")
    return Verification(ref.name, tuple(outputs), tuple(gradients), tuple(buffers), tuple(inputs), original_error,
                        tuple(dict.fromkeys(change_list)), rtol, atol, tuple(notes))


_MISSING = object()
