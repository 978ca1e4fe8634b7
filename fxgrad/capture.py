"""Faithful capture of a model as a ``torch.fx`` graph.

Plain ``torch.fx.symbolic_trace`` is built for graph rewriting, not for judging gradients, and it silently
changes the program in exactly the places where gradients go wrong:

* ``x += y`` becomes ``x + y`` (``Proxy`` has no ``__iadd__``, so Python falls back to ``__add__``);
* ``x[i] = v`` raises ``TypeError`` (``Proxy`` has no ``__setitem__``);
* ``with torch.no_grad():`` and ``torch.set_grad_enabled(False)`` run at trace time only, so the traced module
  computes gradients that eager does not;
* ``torch.tensor(t)`` / ``torch.from_numpy(t.numpy())`` try to read the proxy's values and fail.

:class:`FaithfulTracer` keeps all of these as graph nodes, so the ``GraphModule`` runs like the eager model, and
records for every node the module path and the user's ``file:line``. The same behaviour is mixed into any
``Tracer`` subclass (``transformers``' ``HFTracer``, torchvision's feature-extraction tracer) with
:func:`faithful_tracer_class`.

Algorithm of :meth:`FaithfulTracer.trace`:

1. Install the patches (tensor-rebuilding factories, grad-mode context managers) and push the tracer on the
   active stack, so the patched functions know where to emit nodes.
2. Run ``torch.fx.Tracer.trace``; every node it creates gets ``node.meta["fxgrad"]`` (:class:`NodeOrigin`).
3. Restore every patch in a ``finally``, also when tracing raises.
"""

from __future__ import annotations

import functools
import linecache
import logging
import operator
import os
import re
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.fx
from torch.autograd import grad_mode

from .errors import InputError, TraceError

__all__ = [
    "CAPTURE_ENTRIES",
    "CHECKPOINT_KEY",
    "FaithfulTracer",
    "NodeOrigin",
    "Segment",
    "SourceLocation",
    "checkpoint_segment",
    "current_segment",
    "faithful_tracer_class",
    "node_origin",
    "non_reentrant_checkpoint_patch",
    "trace",
    "user_frame_location",
    "user_traceback_location",
]

log = logging.getLogger(__name__)

META_KEY = "fxgrad"


@dataclass(frozen=True)
class SourceLocation:
    """A line of the user's code."""

    file: str
    line: int
    function: str
    code: str

    def __str__(self) -> str:
        return f"{_display_path(self.file)}:{self.line}"


def _display_path(path: str) -> str:
    if path.startswith("<"):
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith(".." + os.sep + "..") else rel


@dataclass(frozen=True)
class Segment:
    """An activation-checkpoint segment a node was recorded in (``node.meta[CHECKPOINT_KEY]``): backward
    recomputes it instead of reading what its ops saved in forward."""

    number: int
    reentrant: bool


CHECKPOINT_KEY = "fxgrad_checkpoint"


@contextmanager
def checkpoint_segment(*, reentrant: bool) -> Iterator[None]:
    """Nodes created inside are marked as recorded in this activation-checkpoint segment (both captures)."""
    stack: list[Segment] = _active.__dict__.setdefault("segments", [])
    _active.segment_count = getattr(_active, "segment_count", 0) + 1
    stack.append(Segment(_active.segment_count, reentrant))
    try:
        yield
    finally:
        stack.pop()


def current_segment() -> Segment | None:
    stack: list[Segment] = getattr(_active, "segments", [])
    return stack[-1] if stack else None


def non_reentrant_checkpoint_patch() -> tuple[Any, str, Any]:
    """``checkpoint(..., use_reentrant=False)`` runs its function between the two steps of this generator (looked
    up by name each call, so transformers' ``functools.partial(checkpoint, ...)`` goes through it too)."""
    import torch.utils.checkpoint as cp

    # torch 2.14 calls ``…_generator_impl`` (the old name stays as a shim for outside callers); earlier ones the
    # old name.
    name = next(n for n in ("_checkpoint_without_reentrant_generator_impl", "_checkpoint_without_reentrant_generator")
                if hasattr(cp, n))
    orig = getattr(cp, name)

    def generator(*args: Any, **kwargs: Any) -> Iterator[None]:
        with checkpoint_segment(reentrant=False):
            yield from orig(*args, **kwargs)

    return cp, name, generator


@dataclass(frozen=True)
class NodeOrigin:
    """Where a node came from: the module that ran it and the user's line that created it."""

    module: str
    location: SourceLocation | None


# --------------------------------------------------------------------------------------------------------------
# Which frames are "the user's": everything but torch, fxgrad, the tracer's own package and the stdlib.
# --------------------------------------------------------------------------------------------------------------

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_FXGRAD_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep


#: fxgrad's own demo models are user code as far as source lines go
_EXAMPLES_FILE = os.path.join(_FXGRAD_DIR, "examples.py")


@functools.lru_cache(maxsize=4096)
def _is_library_file(filename: str, extra: tuple[str, ...]) -> bool:
    path = os.path.abspath(filename)
    if path == _EXAMPLES_FILE:
        return False
    if filename.startswith("<") and filename != "<string>":
        return True  # generated code (<eval_with_key>), frozen modules
    if path.startswith((_TORCH_DIR, _FXGRAD_DIR)) or path in extra:
        return True
    return path.startswith(_STDLIB_DIR) and "site-packages" not in path


def _location_of(filename: str, lineno: int, function: str) -> SourceLocation:
    code = linecache.getline(filename, lineno).strip()
    return SourceLocation(filename if filename.startswith("<") else os.path.abspath(filename), lineno, function, code)


#: the code of the functions that start a capture: a walk up the stack that reaches one has left the model without
#: meeting a line of the user's (a layer of a bare ``nn.Sequential``), and must not name the line that called fxgrad
CAPTURE_ENTRIES: set[Any] = set()


def user_frame_location(extra: tuple[str, ...]) -> SourceLocation | None:
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code in CAPTURE_ENTRIES:
            return None
        if not _is_library_file(code.co_filename, extra):
            return _location_of(code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return None


def user_traceback_location(tb: TracebackType | None, extra: tuple[str, ...]) -> SourceLocation | None:
    """The innermost user frame of a traceback: the line whose code tracing could not follow."""
    found: SourceLocation | None = None
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        if not _is_library_file(code.co_filename, extra):
            found = _location_of(code.co_filename, lineno, code.co_name)
    return found


# --------------------------------------------------------------------------------------------------------------
# The active tracer: the patched functions emit nodes into the innermost one.
# --------------------------------------------------------------------------------------------------------------

_active = threading.local()


def _current_tracer() -> torch.fx.Tracer | None:
    stack: list[torch.fx.Tracer] = getattr(_active, "stack", [])
    return stack[-1] if stack else None


def _find_proxy(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.fx.Proxy | None:
    found: list[torch.fx.Proxy] = []

    def visit(a: Any) -> Any:
        if isinstance(a, torch.fx.Proxy) and not found:
            found.append(a)
        return a

    torch.fx.node.map_aggregate((tuple(args), kwargs), visit)
    return found[0] if found else None


# --------------------------------------------------------------------------------------------------------------
# Proxies that keep augmented assignment and item assignment.
# --------------------------------------------------------------------------------------------------------------

_AUGMENTED = {
    "__iadd__": operator.iadd,
    "__isub__": operator.isub,
    "__imul__": operator.imul,
    "__itruediv__": operator.itruediv,
    "__ifloordiv__": operator.ifloordiv,
    "__imod__": operator.imod,
    "__ipow__": operator.ipow,
    "__imatmul__": operator.imatmul,
    "__iand__": operator.iand,
    "__ior__": operator.ior,
    "__ixor__": operator.ixor,
    "__ilshift__": operator.ilshift,
    "__irshift__": operator.irshift,
}


def _augmented(op: Callable[[Any, Any], Any]) -> Callable[[torch.fx.Proxy, Any], torch.fx.Proxy]:
    def method(self: torch.fx.Proxy, other: Any) -> torch.fx.Proxy:
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    method.__name__ = f"__{op.__name__}__"
    return method


def _getattr(self: torch.fx.Proxy, k: str) -> Any:
    """fx creates an attribute's node lazily, at its first use: note the line of the access itself (so
    ``h = enc(x).data`` points at that line, not at the line that later uses ``h``)."""
    base: Any = type(self).__bases__[0]
    attr = base.__getattr__(self, k)  # the wrapped proxy class's own (HFProxy has one)
    tracer = self.tracer
    pending = getattr(tracer, "_fxgrad_attr_lines", None)
    if pending is not None:
        pending[(self.node, k)] = user_frame_location(getattr(tracer, "_fxgrad_extra_files", ()))
    if isinstance(attr, torch.fx.Proxy):  # ``h.data *= 2``, ``h.data[i] = v``: fx makes the Attribute itself
        attr.__class__ = _faithful_proxy_class(type(attr))
    return attr


def _setitem(self: torch.fx.Proxy, key: Any, value: Any) -> None:
    self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


_PROXY_METHODS: dict[str, Any] = {name: _augmented(op) for name, op in _AUGMENTED.items()}
_PROXY_METHODS["__setitem__"] = _setitem
_PROXY_METHODS["__getattr__"] = _getattr


_PROXY_CLASSES: dict[type, type[torch.fx.Proxy]] = {}


def _faithful_proxy_class(base: type[torch.fx.Proxy]) -> type[torch.fx.Proxy]:
    if base not in _PROXY_CLASSES:
        _PROXY_CLASSES[base] = type(f"Faithful{base.__name__}", (base,), dict(_PROXY_METHODS))
        _PROXY_CLASSES[_PROXY_CLASSES[base]] = _PROXY_CLASSES[base]
    return _PROXY_CLASSES[base]


# --------------------------------------------------------------------------------------------------------------
# Patches installed while tracing.
# --------------------------------------------------------------------------------------------------------------

_REBUILDERS = ("tensor", "as_tensor", "asarray", "from_numpy")
#: factories called without traced arguments: plain fx runs them once at trace time and bakes the result into
#: the graph as a constant, so ``buf = torch.zeros(4, 8); buf[:, :4] = h`` writes into one tensor shared by every
#: call. As nodes, they allocate afresh on each call, as eager does.
_FACTORIES = ("zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint", "randperm", "eye",
              "linspace", "logspace")


def _rebuilder(orig: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        proxy = _find_proxy(args, kwargs)
        if proxy is None:
            return orig(*args, **kwargs)
        return proxy.tracer.create_proxy("call_function", orig, args, kwargs)

    return wrapper


def _factory(orig: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        proxy = _find_proxy(args, kwargs)
        tracer = proxy.tracer if proxy is not None else _current_tracer()
        if tracer is None or _is_quiet():
            return orig(*args, **kwargs)
        return tracer.create_proxy("call_function", orig, args, kwargs)

    return wrapper


def _emit(target: Callable[..., Any], *args: Any) -> torch.fx.Proxy | None:
    tracer = _current_tracer()
    if tracer is None or _is_quiet():
        return None
    return tracer.create_proxy("call_function", target, args, {})


def _is_quiet() -> bool:
    return bool(getattr(_active, "quiet", 0))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence nested patched calls: ``no_grad.__enter__`` itself calls ``set_grad_enabled``."""
    _active.quiet = getattr(_active, "quiet", 0) + 1
    try:
        yield
    finally:
        _active.quiet -= 1


def _grad_mode_patches() -> list[tuple[type, str, Callable[..., Any]]]:
    """Context-manager methods that also emit ``is_grad_enabled`` / ``_set_grad_enabled`` nodes.

    Exit restores the mode read *at run time* on entry (a ``torch.is_grad_enabled()`` node), as eager does, so a
    traced module called under an outer ``no_grad`` still behaves like the eager one.
    """
    patches: list[tuple[type, str, Callable[..., Any]]] = []

    def mode_manager(cls: Any, mode: bool) -> None:
        orig_enter, orig_exit = cls.__enter__, cls.__exit__

        def enter(self: Any) -> None:
            with _quiet():
                orig_enter(self)
            if _current_tracer() is not None and not _is_quiet():
                self._fxgrad_prev = _emit(torch.is_grad_enabled)
                _emit(torch._C._set_grad_enabled, mode)

        def exit_(self: Any, *exc: Any) -> None:
            with _quiet():
                orig_exit(self, *exc)
            prev = self.__dict__.pop("_fxgrad_prev", None)
            if prev is not None:
                _emit(torch._C._set_grad_enabled, prev)

        patches.extend([(cls, "__enter__", enter), (cls, "__exit__", exit_)])

    mode_manager(grad_mode.no_grad, False)
    mode_manager(grad_mode.enable_grad, True)

    sge = grad_mode.set_grad_enabled
    orig_init, orig_enter, orig_exit = sge.__init__, sge.__enter__, sge.__exit__

    def sge_init(self: Any, mode: bool) -> None:
        with _quiet():
            orig_init(self, mode)
        if _current_tracer() is not None and not _is_quiet():
            self._fxgrad_prev = _emit(torch.is_grad_enabled)
            _emit(torch._C._set_grad_enabled, bool(mode))

    def sge_enter(self: Any) -> None:
        with _quiet():
            orig_enter(self)
        _emit(torch._C._set_grad_enabled, bool(self.mode))

    def sge_exit(self: Any, *exc: Any) -> None:
        with _quiet():
            orig_exit(self, *exc)
        prev = self.__dict__.pop("_fxgrad_prev", None)
        if prev is not None:
            _emit(torch._C._set_grad_enabled, prev)

    patches += [(sge, "__init__", sge_init), (sge, "__enter__", sge_enter), (sge, "__exit__", sge_exit)]

    inf = grad_mode.inference_mode
    inf_enter, inf_exit = inf.__enter__, inf.__exit__

    def inference_enter(self: Any) -> None:
        with _quiet():
            inf_enter(self)
        if _current_tracer() is not None and not _is_quiet():
            self._fxgrad_ctx = _emit(grad_mode._enter_inference_mode, bool(self.mode))

    def inference_exit(self: Any, *exc: Any) -> None:
        with _quiet():
            inf_exit(self, *exc)
        ctx = self.__dict__.pop("_fxgrad_ctx", None)
        if ctx is not None:
            _emit(grad_mode._exit_inference_mode, ctx)

    patches += [(inf, "__enter__", inference_enter), (inf, "__exit__", inference_exit)]
    return patches


_MODULE_FILE = os.path.abspath(torch.nn.modules.module.__file__)


def _called_from_user_code() -> bool:
    """Is the innermost frame outside ``nn.Module``'s own methods a user's? (fx itself also walks parameters.)"""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == _MODULE_FILE:
        frame = frame.f_back
    tracer = _current_tracer()
    extra = getattr(tracer, "_fxgrad_extra_files", ())
    return frame is not None and not _is_library_file(frame.f_code.co_filename, extra)


def _state_iterator(orig: Callable[..., Any]) -> Callable[..., Any]:
    """``named_parameters`` / ``named_buffers`` that hand user code proxies instead of the real tensors.

    Plain fx gives ``for p in self.parameters(): p.data.clamp_(-c, c)`` (WGAN clipping, EMA target updates) the
    real parameters: the loop then runs once, at trace time, on the user's model, and leaves no node.
    """

    @functools.wraps(orig)
    def wrapper(mod: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        items = orig(mod, *args, **kwargs)
        tracer = _current_tracer()
        if tracer is None or _is_quiet() or not _called_from_user_code():
            return items
        try:
            base = tracer.path_of_module(mod)
        except NameError:
            return items
        prefix = f"{base}." if base else ""
        cache: dict[str, torch.fx.Proxy] = tracer.__dict__.setdefault("_fxgrad_state_proxies", {})

        def proxied() -> Iterator[tuple[str, Any]]:
            for name, _ in items:
                qual = prefix + name
                if qual not in cache:
                    cache[qual] = tracer.create_proxy("get_attr", qual, (), {})
                yield name, cache[qual]

        return proxied()

    return wrapper


def function_apply_target(cls: Any) -> Callable[..., Any]:
    """The call target that stands for ``cls.apply`` in a graph: one per ``autograd.Function`` class."""
    target = _APPLIES.get(cls)
    if target is None:
        def target(*a: Any, **k: Any) -> Any:
            return cls.apply(*a, **k)

        target.__name__ = target.__qualname__ = f"{cls.__name__}.apply"
        target.__module__ = getattr(cls, "__module__", "") or ""
        target.__fxgrad_function__ = cls  # type: ignore[attr-defined]
        _APPLIES[cls] = target
    return target


def _function_apply(orig: Any) -> Any:
    """``MyFunction.apply(x)`` as one opaque node: tracing into ``forward`` would lose the custom backward."""

    def apply(cls: Any, *args: Any, **kwargs: Any) -> Any:
        proxy = _find_proxy(args, kwargs)
        if proxy is None or _is_quiet():
            return orig.__get__(None, cls)(*args, **kwargs)
        if cls is torch.utils.checkpoint.CheckpointFunction:
            # checkpoint(fn, *args, use_reentrant=True): traced inline, its nodes marked (fxgrad.checkpointing).
            # Whether its inputs require grad is not known here (the run capture knows it).
            function, _preserve, *fn_args = args
            with checkpoint_segment(reentrant=True):
                return function(*fn_args)
        return proxy.tracer.create_proxy("call_function", function_apply_target(cls), args, kwargs)

    return classmethod(apply)


_APPLIES: dict[type, Callable[..., Any]] = {}


@contextmanager
def _patched(tracer: torch.fx.Tracer) -> Iterator[None]:
    """Install every patch and make ``tracer`` the active one; undo all of it whatever happens."""
    undo: list[tuple[Any, str, Any]] = []
    stack: list[torch.fx.Tracer] = _active.__dict__.setdefault("stack", [])
    prev_grad = torch.is_grad_enabled()
    # transformers' HFTracer patches torch functions and its cache classes itself, and does not undo it when
    # tracing raises: its patched `torch.arange` then stays in the process, and the next trace behaves
    # differently (T5 fails the first time and succeeds the second). Whatever it patched is put back here.
    undo += _foreign_patch_sites(tracer)
    try:
        own = set(getattr(tracer, "_TORCH_METHODS_TO_PATCH", ()))  # a tracer that patches them itself (HFTracer)
        for name in (*_REBUILDERS, *_FACTORIES):
            orig = getattr(torch, name)
            if getattr(orig, "__fxgrad_patched__", False) or (name in _FACTORIES and name in own):
                continue
            wrapper = _rebuilder(orig) if name in _REBUILDERS else _factory(orig)
            wrapper.__fxgrad_patched__ = True  # type: ignore[attr-defined]
            undo.append((torch, name, orig))
            setattr(torch, name, wrapper)
        for cls, name, fn in _grad_mode_patches():
            undo.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, fn)
        if not own:  # tracers with their own patching conventions (HFTracer) read module state themselves
            for name in ("named_parameters", "named_buffers"):
                orig_iter = torch.nn.Module.__dict__[name]
                undo.append((torch.nn.Module, name, orig_iter))
                setattr(torch.nn.Module, name, _state_iterator(orig_iter))
        owner, attr, generator = non_reentrant_checkpoint_patch()
        undo.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, generator)
        function_cls = torch.autograd.function.Function
        undo.append((function_cls, "apply", function_cls.__dict__["apply"]))
        function_cls.apply = _function_apply(function_cls.__dict__["apply"])  # type: ignore[method-assign]
        stack.append(tracer)
        yield
    finally:
        if stack and stack[-1] is tracer:
            stack.pop()
        for owner, name, orig in reversed(undo):
            setattr(owner, name, orig)
        torch.set_grad_enabled(prev_grad)


def _foreign_patch_sites(tracer: torch.fx.Tracer) -> list[tuple[Any, str, Any]]:
    """What a tracer class says it patches (``_TORCH_METHODS_TO_PATCH``, ``_CLASSES_TO_PATCH``), as it is now."""
    sites: list[tuple[Any, str, Any]] = [(torch, name, getattr(torch, name))
                                         for name in getattr(tracer, "_TORCH_METHODS_TO_PATCH", ())
                                         if hasattr(torch, name)]
    classes = {id(c) for c in getattr(tracer, "_CLASSES_TO_PATCH", {})}
    if classes:
        owner = next(k for k in type(tracer).__mro__ if "_CLASSES_TO_PATCH" in vars(k))
        package = owner.__module__.split(".")[0]
        for name, mod in list(sys.modules.items()):
            if mod is not None and name.split(".")[0] == package:
                sites += [(mod, attr, value) for attr, value in list(vars(mod).items()) if id(value) in classes]
    return sites


# --------------------------------------------------------------------------------------------------------------
# The tracer.
# --------------------------------------------------------------------------------------------------------------


class _FaithfulMixin:
    """What fxgrad adds to any ``torch.fx.Tracer``; placed first in the MRO of the combined class."""

    _fxgrad_extra_files: tuple[str, ...] = ()
    module_stack: Any
    #: plain fx hands buffers to forward as real tensors: `self.running.mul_(0.9)` then runs *at trace time*,
    #: changes the user's buffer and leaves no node. Proxies keep the update in the graph and the model intact.
    proxy_buffer_attributes: bool = True

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        p: torch.fx.Proxy = super().proxy(node)  # type: ignore[misc]
        p.__class__ = _faithful_proxy_class(type(p))
        return p

    def create_node(self, *args: Any, **kwargs: Any) -> torch.fx.Node:
        node: torch.fx.Node = super().create_node(*args, **kwargs)  # type: ignore[misc]
        if node.op == "call_module":
            module = str(node.target)
        else:
            stack = getattr(self, "module_stack", None)
            module = next(reversed(stack.values()))[0] if stack else ""
        where = None if node.op in ("placeholder", "output") else user_frame_location(self._fxgrad_extra_files)
        if node.target is getattr and len(node.args) == 2 and isinstance(node.args[1], str):
            where = self._fxgrad_attr_lines.pop((node.args[0], node.args[1]), where)
        node.meta[META_KEY] = NodeOrigin(module, where)
        segment = current_segment()
        if segment is not None:
            node.meta[CHECKPOINT_KEY] = segment
        return node

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None, **kwargs: Any) -> torch.fx.Graph:
        self._fxgrad_attr_lines: dict[tuple[Any, str], SourceLocation | None] = {}
        with _patched(self):  # type: ignore[arg-type]
            graph: torch.fx.Graph = super().trace(root, concrete_args, **kwargs)  # type: ignore[misc]
        return graph


CAPTURE_ENTRIES.add(_FaithfulMixin.trace.__code__)
_TRACER_CLASSES: dict[type, type[torch.fx.Tracer]] = {}


def faithful_tracer_class(base: type[torch.fx.Tracer]) -> type[torch.fx.Tracer]:
    """``base`` with fxgrad's fidelity added; ``FaithfulTracer`` is ``faithful_tracer_class(torch.fx.Tracer)``."""
    if issubclass(base, _FaithfulMixin):
        return base
    if base in _TRACER_CLASSES:
        return _TRACER_CLASSES[base]
    files = tuple(
        os.path.abspath(f)
        for klass in base.__mro__
        if klass.__module__ in sys.modules and (f := getattr(sys.modules[klass.__module__], "__file__", None))
    )
    combined: type[torch.fx.Tracer] = type(f"Faithful{base.__name__}", (_FaithfulMixin, base),
                                           {"_fxgrad_extra_files": files})
    _TRACER_CLASSES[base] = combined
    return combined


FaithfulTracer: type[torch.fx.Tracer] = faithful_tracer_class(torch.fx.Tracer)


def node_origin(node: torch.fx.Node) -> NodeOrigin:
    """The origin fxgrad recorded, or the best that ``stack_trace`` / ``nn_module_stack`` meta give."""
    origin = node.meta.get(META_KEY)
    if isinstance(origin, NodeOrigin):
        return origin
    module = ""
    if node.op == "call_module":
        module = str(node.target)
    elif stack := node.meta.get("nn_module_stack"):
        module = str(next(reversed(stack.values()))[0])
    location = None
    if node.stack_trace:
        frames = [line.strip() for line in node.stack_trace.splitlines() if line.strip().startswith("File ")]
        if frames:
            # 'File "path", line N, in fn'
            parts = frames[-1].split(",")
            try:
                file = parts[0].split('"')[1]
                line = int(parts[1].split()[-1])
                fn = parts[2].split()[-1] if len(parts) > 2 else ""
                location = _location_of(file, line, fn)
            except (IndexError, ValueError):
                location = None
    return NodeOrigin(module, location)


def _module_state(model: torch.nn.Module) -> list[tuple[torch.nn.Module, dict[str, Any], list[dict[str, Any]]]]:
    """Each module's attributes and its parameter, buffer and submodule tables, as they are now."""
    return [(m, dict(vars(m)), [dict(m._parameters), dict(m._buffers), dict(m._modules)]) for m in model.modules()]


def _restore_module_state(saved: list[tuple[torch.nn.Module, dict[str, Any], list[dict[str, Any]]]], *,
                          keep_new: bool = False) -> None:
    """Put every attribute back; ``keep_new`` leaves the ones tracing added (fx's tensor constants) for now."""
    for m, attrs, tables in saved:
        now: tuple[dict[str, Any], ...] = (vars(m), m._parameters, m._buffers, m._modules)
        for table, before in zip(now, (attrs, *tables), strict=True):
            if _same_items(table, before):
                continue
            added = {k: v for k, v in table.items() if k not in before} if keep_new else {}
            table.clear()
            table.update(before)
            table.update(added)


def _same_items(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """By identity: ``==`` on tensors compares elements, and on a Proxy it would record a node."""
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


_HINT = (
    "Hint: pass concrete_args (--concrete-arg NAME=VALUE) for arguments that decide control flow, keep the "
    "offending submodule opaque with leaf_modules=[...] (--leaf-module dotted.Class), or capture the model by "
    "running it on example inputs: capture=\"run\" (--capture run)."
)
#: how a tracer's own failures read: fx's proxies named in the message (``float() argument must be ... not
#: 'Proxy'``), or an ``assert isinstance(x, torch.Tensor)`` that only fails because ``x`` is a proxy
_PROXY_WORDS = re.compile(r"Proxy|'Attribute'|symbolically traced")


def _hint_for(exc: BaseException) -> str:
    text = str(exc)
    if "control flow" in text or "iteration" in text or "iterable" in text or "len(" in text:
        return ("Hint: this line branches, loops or calls len() on a traced tensor; pass concrete_args "
                "(--concrete-arg NAME=VALUE) for the argument that decides it, make the submodule a leaf with "
                "leaf_modules=[...] (--leaf-module dotted.Class), or capture the model by running it: "
                "capture=\"run\" (--capture run).")
    if isinstance(exc, TypeError) and ("float" in text or "int" in text or "bool" in text):
        return ("Hint: float()/int()/bool() of a tensor cannot be traced symbolically; use tensor ops, make the "
                "submodule a leaf with leaf_modules=[...] (--leaf-module dotted.Class), or capture the model by "
                "running it: capture=\"run\" (--capture run).")
    return _HINT


def _raised_by_user(exc: BaseException, extra: tuple[str, ...]) -> bool:
    """The model's own code raised ``exc``, not the tracer: the innermost frame is the user's, and either it is a
    ``raise`` statement (a message that formats a traced value names a proxy, but the statement is the user's) or
    nothing in the error is about proxies (a missing key). An ``assert`` is left to the tracer: ``assert
    isinstance(x, torch.Tensor)`` fails only because ``x`` is a proxy."""
    frames = list(traceback.walk_tb(exc.__traceback__))
    if not frames:
        return False
    frame, lineno = frames[-1]
    filename = frame.f_code.co_filename
    if _is_library_file(filename, extra):
        return False
    if linecache.getline(filename, lineno).lstrip().startswith("raise"):
        return True
    return not isinstance(exc, AssertionError) and not _PROXY_WORDS.search(f"{type(exc).__name__} {exc}")


def trace(
    model: torch.nn.Module | Callable[..., Any],
    concrete_args: dict[str, Any] | None = None,
    *,
    tracer: type[torch.fx.Tracer] | torch.fx.Tracer | None = None,
    leaf_modules: Sequence[type[torch.nn.Module] | str] = (),
) -> torch.fx.GraphModule:
    """Capture ``model`` as a ``GraphModule`` that runs like the eager model, with source lines on every node.

    ``tracer`` may be a ``torch.fx.Tracer`` subclass (or instance), e.g. ``transformers.utils.fx.HFTracer``: fxgrad
    combines it with its own fidelity. A model that already is a ``GraphModule`` is returned unchanged, so graphs
    made by other tools can be analysed as they are. ``leaf_modules`` (classes or qualified names) are kept as
    opaque ``call_module`` nodes instead of being traced through.
    """
    if isinstance(model, torch.fx.GraphModule):
        return model
    if not isinstance(model, torch.nn.Module) and not callable(model):
        raise InputError(f"fxgrad can only trace an nn.Module or a function, not {type(model).__name__}.")

    if tracer is None:
        tracer_obj: torch.fx.Tracer = FaithfulTracer()
    elif isinstance(tracer, type):
        if not issubclass(tracer, torch.fx.Tracer):
            raise InputError(f"tracer must be a torch.fx.Tracer subclass, not {tracer.__name__}.")
        tracer_obj = faithful_tracer_class(tracer)()
    elif isinstance(tracer, torch.fx.Tracer):
        tracer_obj = tracer
        tracer_obj.__class__ = faithful_tracer_class(type(tracer))
    else:
        raise InputError(f"tracer must be a torch.fx.Tracer subclass or instance, not {type(tracer).__name__}.")

    if leaf_modules:
        leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
        leaf_names = {t for t in leaf_modules if isinstance(t, str)}
        base_is_leaf = tracer_obj.is_leaf_module

        def is_leaf(m: torch.nn.Module, qualname: str) -> bool:
            return isinstance(m, leaf_types) or qualname in leaf_names or base_is_leaf(m, qualname)

        tracer_obj.is_leaf_module = is_leaf  # type: ignore[method-assign,assignment]

    # Tracing runs forward on the user's module: `self.step = self.step + 1` would leave a Proxy in it, and fx
    # registers tensor constants on the root. The attributes the model had are put back before the GraphModule
    # copies what its graph reads; the ones tracing added are removed once it has.
    saved = _module_state(model) if isinstance(model, torch.nn.Module) else []
    try:
        try:
            graph = tracer_obj.trace(model, concrete_args)
        except Exception as e:
            extra = getattr(type(tracer_obj), "_fxgrad_extra_files", ())
            where = user_traceback_location(e.__traceback__, extra)
            name = type(model).__name__ if isinstance(model, torch.nn.Module) else getattr(model, "__name__",
                                                                                          "function")
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            at = f" at {where}: `{where.code}`" if where else ""
            if _raised_by_user(e, extra):
                hint = "Hint: this is an error in the model's own code, not a tracing problem: fix that line."
                error = TraceError(f"{name}.forward raised {type(e).__name__}{at} ({reason}). {hint}")
                error.user_error = True  # type: ignore[attr-defined]
            else:
                hint = _hint_for(e)
                error = TraceError(f"fxgrad could not trace {name}{at} ({type(e).__name__}: {reason}). {hint}")
            error.location, error.hint = where, hint  # type: ignore[attr-defined]
            raise error from e
        _restore_module_state(saved, keep_new=True)
        root = tracer_obj.root if isinstance(model, torch.nn.Module) else torch.nn.Module()
        class_name = type(model).__name__ if isinstance(model, torch.nn.Module) else getattr(model, "__name__", "fn")
        gm = torch.fx.GraphModule(root, graph, class_name)
    finally:
        _restore_module_state(saved)
    log.debug("traced %s: %d nodes", class_name, len(graph.nodes))
    return gm
