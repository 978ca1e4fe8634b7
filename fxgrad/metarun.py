"""The dry-run's execution substrate: every aten op runs on meta tensors, memoised, and every data write is noted.

Why not ``FakeTensorMode``: measured on the reference 2-core machine, a fake-tensor forward costs 0.4–0.7 ms per
graph node even with its dispatch cache (most of it in building the cache key), and making fake twins of a
model's parameters costs as much again. Meta tensors carry everything autograd needs (shapes, strides, dtypes,
storages, version counters, ``grad_fn`` with its saved tensors), and their kernels are the very ones
``FakeTensorMode`` runs underneath. What is slow about them is the few meta kernels written in Python
(convolution, batch norm …); models repeat the same op on the same shapes many times, so :class:`MetaMode`
memoises the output metadata of every op that returns fresh tensors, keyed by the op and its arguments' metadata.

The mode sits below autograd (``__torch_dispatch__``), so grad_fns, saved tensors, version counters and views are
built by autograd itself exactly as in eager; only the kernels are replaced. Algorithm of
:meth:`MetaMode.__torch_dispatch__`:

1. Tensors that are not meta yet (a constant rebuilt by ``torch.tensor``, a CPU tensor the program creates) get
   meta twins; factory ops are sent to the meta device. Nothing real is read or written.
2. Ops that return an alias of an input (views, in-place and ``out=`` ops) always run their meta kernel, so
   storages and views are real; in-place writes among them are noted with the written tensor's version at the
   time (autograd moves the version counter after the kernel returns).
3. Other ops: the output metadata is looked up by (op, arguments' metadata) and rebuilt with ``empty_strided``;
   on a miss the meta kernel runs and its outputs are recorded, unless they alias each other or an input. The
   key holds everything a kernel's output metadata or its checks can depend on: each tensor's size, strides,
   storage offset, dtype, layout and conjugate/negative bits; every other argument with its type, inside lists,
   tuples and dicts too (``1``, ``1.0``, ``True`` and ``1+0j`` are equal and hash alike, but ``full((4,), 1)``
   is int64, ``full((4,), 1.0)`` float32, and an int tensor's ``add_(1.0)`` raises); and the default dtype.
   Devices are not in it: every tensor is meta by then. ``requires_grad`` is not either: the mode runs below
   autograd, whose kernels never read it.
4. An op without a meta kernel runs on zero-filled CPU tensors of the same metadata, as ``FakeTensorMode``'s
   fallback does; ops whose output shape depends on values (``nonzero``, ``.item()``) are not faked: they raise,
   and the dry-run falls back to the real inputs or to static verdicts.

Bisecting: the memo is a cache, so turning it off must change nothing but the time. ``FXGRAD_DRYRUN_MEMO=0`` in
the environment (read when a :class:`MetaMode` is made) or ``MetaMode(memo=False)`` runs every kernel; if a
dry-run verdict changes with it, the memo key misses something (``tests/test_metarun.py`` checks the corpus).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["MEMO_ENV", "MetaMode", "TracingMetaMode", "meta_twin", "tensor_meta"]

#: environment variable that turns the op memo off when set to ``0`` (for bisecting a dry-run verdict)
MEMO_ENV = "FXGRAD_DRYRUN_MEMO"

_META = torch.device("meta")

#: op -> (kind, indices of written positional args, names of written kwargs, takes a device); kind: write (data),
#: view_write (metadata only: ``unsqueeze_``, ``detach_``), alias (returns a view of an input) or fresh
_KINDS: dict[Any, tuple[str, tuple[int, ...], tuple[str, ...], bool]] = {}
#: memo entries: the op returns its first argument / one tensor (kept without a pytree spec)
_SELF: Any = object()
_LEAF: Any = object()
_DATA_DEPENDENT = {t for t in (getattr(torch.Tag, "dynamic_output_shape", None),
                               getattr(torch.Tag, "data_dependent_output", None)) if t is not None}


def _kind(func: Any) -> tuple[str, tuple[int, ...], tuple[str, ...], bool]:
    cached = _KINDS.get(func)
    if cached is None:
        schema = func._schema
        device = any(a.name == "device" for a in schema.arguments)
        written = [(i, a) for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
        metadata_only = torch.Tag.inplace_view in func.tags  # detach_, unsqueeze_, t_ …: no data written
        if written:
            positional = tuple(i for i, a in written if not a.kwarg_only)
            kwargs = tuple(a.name for _, a in written)
            cached = ("view_write" if metadata_only else "write", positional, kwargs, device)
        elif any(r.alias_info is not None for r in schema.returns) or any(
                a.alias_info is not None for a in schema.arguments):
            cached = ("alias", (), (), device)
        else:
            cached = ("fresh", (), (), device)
        _KINDS[func] = cached
    return cached


def _empty(shape: Any, stride: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(shape, stride, dtype=dtype, device=_META)


def meta_twin(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``t``'s size, strides, dtype and ``requires_grad`` (a leaf, no storage shared).

    Twins made while a :class:`MetaMode` is active (on first use, in the middle of the run) must be made with
    ``torch._C._DisableTorchDispatch()``, so they do not pass through the mode as if the program made them."""
    twin = _empty(t.size(), t.stride(), t.dtype)
    return twin.requires_grad_(True) if t.requires_grad else twin


_Tensor = torch.Tensor
_STRIDED = torch.strided


def _tensor_key(t: torch.Tensor) -> Any:
    if t.layout is not _STRIDED:
        raise TypeError("not memoised")  # sparse and nested layouts: always run the kernel
    # conj/neg bits: most ops see them resolved (their fallback sits above this mode), but views, ``clone``,
    # ``mm``, ``copy_`` … see them and some refuse them (``view_as_real``); a real tensor can carry the neg bit.
    return (t.shape, t.stride(), t.dtype, t.storage_offset(), t.is_conj(), t.is_neg())


def _value_key(a: Any) -> Any:
    """A non-tensor argument with its type, containers item by item (``(1, 2)`` and ``(1.0, 2.0)`` differ)."""
    cls = a.__class__
    if cls is list or cls is tuple:
        return cls, tuple([_tensor_key(x) if isinstance(x, _Tensor) else _value_key(x) for x in a])
    if cls is dict:
        return cls, tuple([(k, _tensor_key(v) if isinstance(v, _Tensor) else _value_key(v)) for k, v in a.items()])
    return cls, a  # unhashable values raise TypeError: the op is not memoised


def _args_key(args: Any) -> tuple[Any, ...]:
    """The memo key of positional arguments (or kwargs' values): tensors by metadata, everything else with its
    type (hot: one call per op, so the flat common case is inlined)."""
    out: list[Any] = []
    for a in args:
        if isinstance(a, _Tensor):
            out.append(_tensor_key(a))
        elif a.__class__ is list or a.__class__ is tuple:
            out.append(tuple([_tensor_key(x) if isinstance(x, _Tensor) else _value_key(x) for x in a]))
        else:
            out.append(_value_key(a))
    return tuple(out)


def tensor_meta(value: Any) -> Any:
    """What the memo must reproduce of a value: per tensor its size, strides, storage offset, dtype, device,
    layout and conj/neg bits, other leaves as they are (used to compare runs with the memo on and off)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride() if value.layout is _STRIDED else None,
                value.storage_offset() if value.layout is _STRIDED else None, value.dtype, value.device.type,
                value.layout, value.is_conj(), value.is_neg())
    if isinstance(value, (list, tuple)):
        return value.__class__.__name__, tuple(tensor_meta(v) for v in value)
    if isinstance(value, dict):
        return "dict", tuple((k, tensor_meta(v)) for k, v in value.items())
    if isinstance(value, (int, float, bool, complex, str, type(None), torch.dtype, torch.device)):
        return value.__class__.__name__, value
    return value.__class__.__name__


class MetaMode(TorchDispatchMode):
    """Runs ops on meta tensors with a memo of their output metadata, and notes the data writes of each node.

    ``written`` collects ``(tensor, version before the write, writes data)`` for every in-place op since it was last
    cleared (``unsqueeze_`` moves the version counter without writing data);
    the dry-run reads and clears it after each graph node. With ``meta=False`` the ops run for real and only the
    writes are noted (``dryrun="real"``). ``memo=False`` runs every kernel (default: on unless the environment
    sets ``FXGRAD_DRYRUN_MEMO=0``).
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps every mode's ``__torch_dispatch__`` in a "disable dynamo" frame; this mode never runs
        # under ``torch.compile``, and the wrapper costs a tenth of the mode's time per op.
        return False

    def __init__(self, *, meta: bool = True, memo: bool | None = None) -> None:
        super().__init__()
        self.meta = meta
        self.memo = os.environ.get(MEMO_ENV, "1").strip() != "0" if memo is None else memo
        self.written: list[tuple[torch.Tensor, int, bool]] = []
        self._memo: dict[Any, tuple[Any, list[Any]] | None] = {}
        self._twins: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        kind, positions, names, device = _kind(func)
        if self.meta:
            if device:
                kwargs = {**kwargs, "device": _META}
            args, kwargs = self._to_meta(args, kwargs)
        if positions or names:
            data = kind == "write"
            for i in positions:
                if i < len(args):
                    self._note(args[i], data)
            for name in names:
                self._note(kwargs.get(name), data)
        if not self.meta:
            return func(*args, **kwargs)
        if kind == "alias" or kind == "view_write" or not self.memo:
            return self._call(func, args, kwargs)
        # Step 3: memoised output metadata (an in-place op's output is its target).
        try:
            key: Any = (func, _args_key(args), (tuple(kwargs), _args_key(kwargs.values())) if kwargs else (),
                        torch.get_default_dtype())  # ``full((2,), 1.0)``, ``int_tensor * 0.5`` follow it
            entry: Any = self._memo.get(key, False)
        except TypeError:  # an argument that cannot be a key: run the kernel
            return self._call(func, args, kwargs)
        if entry is None:
            return self._call(func, args, kwargs)
        if entry is not False:
            spec, leaves = entry
            if spec is _SELF:
                return args[0]
            if spec is _LEAF:
                return _empty(*leaves[0])
            return pytree.tree_unflatten([_empty(*v) if isinstance(v, tuple) else v for v in leaves], spec)
        if kind == "write":
            # An in-place op: when it returns its target with the target's metadata unchanged, the same call on
            # the same metadata will too (its checks only read metadata), so later calls skip the kernel.
            # ``resize_``, ``out=`` ops and the like keep running it.
            target = args[0] if args and isinstance(args[0], torch.Tensor) else None
            before = _tensor_key(target) if target is not None and torch.Tag.inplace in func.tags else None
            out = self._call(func, args, kwargs)
            same = before is not None and out is target and _tensor_key(target) == before
            self._memo[key] = (_SELF, []) if same else None
            return out
        out = self._call(func, args, kwargs)
        self._memo[key] = self._record(out, args, kwargs)
        return out

    def _note(self, t: Any, data: bool) -> None:
        if isinstance(t, torch.Tensor):
            self.written.append((t, t._version, data))
        elif isinstance(t, (list, tuple)):
            for x in t:
                self._note(x, data)

    def _to_meta(self, args: Any, kwargs: Any) -> tuple[Any, Any]:
        """Step 1: meta twins of the tensors that are not meta yet."""
        for a in args:
            if isinstance(a, torch.Tensor):
                if not a.is_meta:
                    break
            elif isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) and not x.is_meta for x in a):
                break
        else:
            if not kwargs or not any(isinstance(v, torch.Tensor) and not v.is_meta for v in kwargs.values()):
                return args, kwargs
        args, kwargs = pytree.tree_map_only(torch.Tensor, self._twin, (args, kwargs))
        return args, kwargs

    def _twin(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_meta:
            return t
        hit = self._twins.get(id(t))
        if hit is None or hit[0] is not t:
            hit = (t, _empty(t.size(), t.stride(), t.dtype))
            self._twins[id(t)] = hit  # keeps ``t`` alive, so its id is not reused during the run
        return hit[1]

    def _call(self, func: Any, args: Any, kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NotImplementedError:
            if _DATA_DEPENDENT & set(func.tags) or not self.meta:
                raise
            return self._fallback(func, args, kwargs)

    def _fallback(self, func: Any, args: Any, kwargs: Any) -> Any:
        """Step 4: no meta kernel. Run it on zeros on the CPU; outputs become meta tensors of the same metadata,
        and an in-place op returns its (meta) target."""
        def real(t: torch.Tensor) -> torch.Tensor:
            return torch.empty_strided(t.size(), t.stride(), dtype=t.dtype).zero_()

        real_args, real_kwargs = pytree.tree_map_only(torch.Tensor, real, (args, kwargs))
        if "device" in real_kwargs:
            real_kwargs["device"] = torch.device("cpu")
        out = func(*real_args, **real_kwargs)
        flat_real, _ = pytree.tree_flatten((real_args, real_kwargs))
        flat_meta, _ = pytree.tree_flatten((args, kwargs))
        by_id = {id(r): m for r, m in zip(flat_real, flat_meta, strict=True) if isinstance(r, torch.Tensor)}
        return pytree.tree_map_only(torch.Tensor, lambda t: by_id.get(id(t)) or meta_twin(t.detach()), out)

    @staticmethod
    def _record(out: Any, args: Any, kwargs: Any) -> tuple[Any, list[Any]] | None:
        """What a memo entry keeps of ``out``: None (never memoise) when outputs share memory with each other or
        with an input, since rebuilt outputs would not, or carry what ``empty_strided`` does not rebuild (a
        layout, a storage offset, conj/neg bits, a device other than meta)."""
        leaves, spec = ([out], _LEAF) if isinstance(out, torch.Tensor) else pytree.tree_flatten(out)
        storages = {StorageWeakRef(t.untyped_storage()) for t in pytree.tree_leaves((args, kwargs))
                    if isinstance(t, torch.Tensor)}
        kept: list[Any] = []
        for v in leaves:
            if isinstance(v, torch.Tensor):
                s = StorageWeakRef(v.untyped_storage())
                if (s in storages or v.layout is not torch.strided or v.storage_offset() != 0 or not v.is_meta
                        or v.is_conj() or v.is_neg()):
                    return None
                storages.add(s)
                kept.append((v.shape, v.stride(), v.dtype))
            elif isinstance(v, (int, float, bool, complex, str, type(None), torch.dtype, torch.device)):
                kept.append(v)
            else:
                return None
        return spec, kept


class TracingMetaMode(MetaMode):
    """A :class:`MetaMode` that appends every op's name and :func:`tensor_meta` of its result (or the error it
    raised) to ``trace``: for tests that compare runs, never for analysis (a second Python frame per op)."""

    def __init__(self, trace: list[Any], *, meta: bool = True, memo: bool | None = None) -> None:
        super().__init__(meta=meta, memo=memo)
        self.trace = trace

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        try:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        except Exception as e:
            self.trace.append((str(func), type(e).__name__, str(e)))
            raise
        self.trace.append((str(func), tensor_meta(out)))
        return out
