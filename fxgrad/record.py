"""The run capture: record a model as it runs on the example inputs, as a ``torch.fx`` graph.

The faithful tracer (:mod:`fxgrad.capture`) runs ``forward`` on proxies, so it cannot follow Python that reads
tensor values (``if x.sum() > 0:``, ``for t in targets:``, ``if t.dtype == torch.float16:``, ``vmap`` in
transformers' masks). The run capture runs ``forward`` for real, on a private copy of the model, and records every
torch call it makes with a ``TorchFunctionMode``: one graph in the conventions of the faithful tracer (``call_method``
for tensor methods, ``operator.setitem`` for ``x[i] = v``, ``call_module`` for ``torch.nn`` leaf modules, ``get_attr``
with the real parameter names, ``_set_grad_enabled`` nodes for grad-mode regions, the user's line and module path
on every node), so the facts, the rules, the dry-run and ``fix`` run on it unchanged. Python control flow is
followed on these inputs: the graph holds the branches they took, and the report says so.

Why not Dynamo or ``make_fx``: Dynamo splits a model into several graphs at every graph break and lifts parameters
to graph inputs, and ``make_fx`` records aten ops below the level the user wrote; both lose the link between a
graph break and the values that cross it. Recording at the torch-function level gives one graph per run, at the
user's own level, with the values that leave autograd (``.item()``, ``.tolist()``, ``.numpy()``) linked to the
tensors rebuilt from them.

Algorithm of :func:`record`:

1. Copy the model with twins of its parameters and buffers (real clones for real inputs, meta tensors for
   shapes only), so the run updates no statistic, counter or attribute of the user's model; clone the inputs.
2. Name every tensor the copy holds (parameters, buffers, plain tensor attributes) by its qualified name, and
   every input tensor by its path in the arguments.
3. Run the copy under the recording mode, with grad enabled as in training. ``nn.Module.__call__`` is patched
   to keep the module path; ``torch.nn`` leaf modules become one ``call_module`` node and run unrecorded inside.
   ``autograd.Function.apply`` becomes one opaque node, except activation checkpointing, whose function runs
   inline: checkpointing recomputes, it does not change a gradient.
4. A call autograd refuses in forward (an in-place write into a leaf that requires grad, saving an inference
   tensor) is recorded and then run under ``no_grad`` to go on: the analysis reports it at its line.
5. Build the output node from the tensors the model returned and a ``GraphModule`` whose attributes are the
   user's own parameters and modules (by name) plus the constants the run met.
6. Restore ``nn.Module.__call__``, ``Function.apply``, grad mode and the RNG in a ``finally``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.autograd import grad_mode
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from .capture import (
    CAPTURE_ENTRIES,
    CHECKPOINT_KEY,
    META_KEY,
    NodeOrigin,
    checkpoint_segment,
    current_segment,
    function_apply_target,
    non_reentrant_checkpoint_patch,
    user_frame_location,
    user_traceback_location,
)
from .errors import InputError, TraceError
from .escaped import OPERATORS, REFLECTED, escape, escaped_node
from .inputs import Spec, as_args, has_real_tensors, map_inputs
from .rules import AUTOGRAD_ERRORS, LEAF_ERRORS

__all__ = ["RECORDED_KEY", "record"]

log = logging.getLogger(__name__)

#: ``gm.meta[RECORDED_KEY]``: how the graph was captured and for which inputs
RECORDED_KEY = "fxgrad_capture"

#: calls whose Python result leaves autograd; the result is linked to the tensors later rebuilt from it
_LEAVES_AUTOGRAD = frozenset({"item", "tolist", "numpy", "__float__", "__int__", "__index__", "__complex__"})
#: calls whose result is a plain value that only decides control flow or shapes: specialised, not recorded
_NOT_RECORDED = frozenset({"__bool__", "__len__", "__repr__", "__format__", "__hash__", "__contains__", "__iter__",
                           "size", "dim", "numel", "stride", "storage_offset", "is_contiguous", "data_ptr",
                           "element_size", "nelement", "ndimension", "get_device", "is_floating_point",
                           "is_complex", "__array__", "untyped_storage", "_is_view", "is_set_to"})
#: ``torch.from_numpy`` reads no tensor, so the mode never sees it: patched while recording
_UNSEEN_REBUILDERS = ("from_numpy", "frombuffer")


#: ``torch.Tensor``'s Python-level methods by identity: ``Tensor.__pow__`` is a wrapper *named* ``pow``
#: (``__ipow__``, ``__rtruediv__``, ``__neg__``, ``__abs__`` likewise), so the name alone would be wrong
_PYTHON_METHODS = {id(v): k for k, v in vars(torch.Tensor).items() if callable(v)}


def _is_tensor_method(func: Any) -> str | None:
    """The method name when ``func`` is a ``torch.Tensor`` method (C or Python), else None."""
    attribute = _PYTHON_METHODS.get(id(func))
    if attribute is not None:
        return attribute
    name = getattr(func, "__name__", None)
    if name is None:
        return None
    if getattr(func, "__objclass__", None) is torch._C.TensorBase:
        return str(name)
    return str(name) if getattr(torch.Tensor, name, None) is func else None


def _property_name(func: Any) -> str | None:
    """``x.data`` / ``x.T`` arrive as the getset descriptor's ``__get__``; the property's name."""
    owner = getattr(func, "__self__", None)
    if getattr(func, "__name__", None) == "__get__" and owner is not None:
        return getattr(owner, "__name__", None)
    return None


class _Recording(TorchFunctionMode):
    """Records each torch call of the run as an fx node; see the module docstring."""

    def __init__(self, graph: torch.fx.Graph, names: dict[int, str], model: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        #: id of a tensor the copy holds -> its qualified name (parameters, buffers, tensor attributes)
        self.names = names
        self.model = model
        #: tensor made by the run -> (node, path inside the node's result)
        self.values: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.getitems: dict[tuple[torch.fx.Node, tuple[Any, ...]], torch.fx.Node] = {}
        self.attrs: dict[str, torch.fx.Node] = {}
        self.constants: dict[str, torch.Tensor] = {}
        #: Python values that left autograd (``.item()`` floats, ``.tolist()`` lists, ``.numpy()`` arrays), by id;
        #: the objects are kept alive so an id is never reused for another object while recording
        self.escaped: dict[int, tuple[torch.fx.Node, Any]] = {}
        self.kept: list[torch.Tensor] = []
        self.module_stack: list[str] = [""]
        #: id of a module of the copy -> its qualified name (set by :func:`record` once the copy exists)
        self.module_paths: dict[int, str] = {}
        self.quiet = 0
        #: what the report should know about this run (reentrant checkpoints whose parameters lose their gradient)
        self.notes: list[str] = []

    # -- nodes ---------------------------------------------------------------------------------------------------
    def node(self, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.fx.Node:
        n = self.graph.create_node(op, target, args, kwargs)
        module = str(target) if op == "call_module" else self.module_stack[-1]
        where = user_frame_location(()) if op not in ("placeholder", "output") else None
        n.meta[META_KEY] = NodeOrigin(module, where)
        segment = current_segment()
        if segment is not None:
            n.meta[CHECKPOINT_KEY] = segment
        return n

    def attr(self, name: str) -> torch.fx.Node:
        if name not in self.attrs:
            self.attrs[name] = self.node("get_attr", name, (), {})
        return self.attrs[name]

    def leaf(self, node: torch.fx.Node, path: tuple[Any, ...]) -> torch.fx.Node:
        """The node of element ``path`` of ``node``'s result: a chain of ``getitem`` s, made once."""
        for i in range(len(path)):
            key = (node, path[: i + 1])
            if key not in self.getitems:
                parent = self.getitems[(node, path[:i])] if i else node
                self.getitems[key] = self.node("call_function", operator.getitem, (parent, path[i]), {})
        return self.getitems[(node, path)] if path else node

    def to_graph(self, value: Any) -> Any:
        """An argument as fx will see it: tensors and escaped Python values become nodes."""
        if isinstance(value, torch.Tensor):
            found = self.values.get(value)
            if found is not None:
                return self.leaf(*found)
            name = self.names.get(id(value))
            if name is None:  # a tensor the run did not make and the model does not hold: a constant
                name = f"_fxgrad_constant{len(self.constants)}"
                self.constants[name] = value.detach()
                self.names[id(value)] = name
                self.kept.append(value)  # named by its id: it must outlive the run, or the id is reused
                if value.grad_fn is not None:  # autograd saw it being made, fxgrad did not: say so
                    where = user_frame_location(())
                    self.notes.append(
                        f"a tensor with a gradient history{f' at {where}' if where else ''} was made by code fxgrad "
                        "could not see (a C++ extension or an op outside torch's Python API): the graph takes it "
                        "as a constant, so the parameters that feed it may be reported without a gradient.")
            return self.attr(name)
        linked = self.link(value)
        if linked is not None:
            return linked
        if isinstance(value, (tuple, list)):
            mapped = [self.to_graph(v) for v in value]
            if type(value) in (tuple, list):
                return type(value)(mapped)
            if hasattr(value, "_fields"):  # a named tuple (a PackedSequence ...): rebuilt, as the call got it
                return self.node("call_function", type(value), tuple(mapped), {})
            return tuple(mapped)
        if isinstance(value, dict):
            return {k: self.to_graph(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(self.to_graph(value.start), self.to_graph(value.stop), self.to_graph(value.step))
        return value

    def note_result(self, node: torch.fx.Node, result: Any, path: tuple[Any, ...] = ()) -> None:
        """Remember which node (and element) made each tensor of ``result``; the latest maker wins, as for
        ``out = relu_(out)`` whose later readers read the in-place op's result."""
        if isinstance(result, torch.Tensor):
            self.values[result] = (node, path)
        elif isinstance(result, (tuple, list)):
            for i, r in enumerate(result):
                self.note_result(node, r, (*path, i))

    # -- values that leave autograd ------------------------------------------------------------------------------
    def escape(self, node: torch.fx.Node, value: Any) -> Any:
        """``value`` (made by ``node``) as the user's code will get it (:func:`fxgrad.escaped.escape`); a list is
        linked while the object itself is passed on."""
        carried = escape(self, node, value)
        if carried is value:
            self.escaped[id(value)] = (node, value)
        return carried

    def link(self, value: Any) -> torch.fx.Node | None:
        node = escaped_node(value)
        if node is None and isinstance(value, list):
            found = self.escaped.get(id(value))
            if found is not None and found[1] is value:
                return found[0]
        return node

    # -- the mode ------------------------------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.quiet or _functorch_active():
            # inside vmap/grad the values are functorch's wrappers, not the program's tensors: what the transform
            # returns is a constant of this run (transformers builds its masks with vmap)
            return func(*args, **kwargs)
        method = _is_tensor_method(func)
        prop = _property_name(func) if method is None else None
        name = method or prop or getattr(func, "__name__", "")
        if name in _NOT_RECORDED or (prop is not None and prop not in ("data", "T", "mT", "H", "mH", "real", "imag",
                                                                         "grad")):
            return func(*args, **kwargs)
        target: Any
        if prop is not None:
            op, target, fx_args = "call_function", getattr, (args[0], prop)
        elif method is not None and method in OPERATORS:
            op, target, fx_args = "call_function", OPERATORS[method], tuple(args)
        elif method is not None and method in REFLECTED:
            op, target, fx_args = "call_function", REFLECTED[method], (args[1], args[0])
        elif method is not None:
            op, target, fx_args = "call_method", method, tuple(args)
        else:
            op, target, fx_args = "call_function", func, tuple(args)
        node = self.node(op, target, self.to_graph(fx_args), self.to_graph(kwargs))
        written = _written(args, kwargs)
        result = _past_refusals(node, func, args, kwargs)
        if name in _LEAVES_AUTOGRAD:
            result = self.escape(node, result) if name in ("item", "tolist", "numpy") else result
        elif not _has_tensor(result) and not _moved(written) and func is not torch._C._set_grad_enabled:
            self.graph.erase_node(node)  # a plain value (a dtype, a flag): specialised like any Python value
            return result
        self.note_result(node, result)
        return result

    # -- modules and autograd Functions ------------------------------------------------------------------------
    def call_module(self, orig: Callable[..., Any], module: nn.Module, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        path = self.module_paths.get(id(module))
        if self.quiet or path is None or _functorch_active():
            return orig(module, *args, **kwargs)
        if path and _is_leaf(module):
            return self.opaque("call_module", path, partial(orig, module), args, kwargs)
        self.module_stack.append(path)
        try:
            return orig(module, *args, **kwargs)
        finally:
            self.module_stack.pop()

    def apply(self, orig: Any, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.quiet or _functorch_active():  # (see __torch_function__)
            return orig.__get__(None, cls)(*args, **kwargs)
        if str(getattr(cls, "__module__", "")).startswith("torch._functorch"):
            # a Function functorch generates to run a custom Function under vmap, called with the transform
            # lowered: still inside the vmap, whose result is a constant of this run
            self.quiet += 1
            try:
                return orig.__get__(None, cls)(*args, **kwargs)
            finally:
                self.quiet -= 1
        if cls is torch.utils.checkpoint.CheckpointFunction:
            # checkpoint(fn, *args) with use_reentrant=True: apply(fn, preserve_rng_state, *args). Recomputing in
            # backward gives the gradients of running fn once, so fn is recorded inline -- but apply runs fn under
            # no_grad, and its outputs require grad only if a tensor input does: without one, the segment's
            # parameters get no gradient, and the graph says so with the no_grad region eager has.
            function, _preserve, *fn_args = args
            if any(isinstance(a, torch.Tensor) and a.requires_grad for a in fn_args):
                with checkpoint_segment(reentrant=True):
                    return function(*fn_args)
            where = user_frame_location(())
            self.notes.append(f"torch.utils.checkpoint(use_reentrant=True){f' at {where}' if where else ''}: no "
                              "input of the segment requires grad, so it runs without autograd and its parameters "
                              "get no gradient. Hint: pass use_reentrant=False (or make an input require grad, as "
                              "transformers' enable_input_require_grads() does).")
            with checkpoint_segment(reentrant=True), torch.no_grad():
                return function(*fn_args)
        return self.opaque("call_function", function_apply_target(cls), orig.__get__(None, cls), args, kwargs)

    def call_op(self, orig: Callable[..., Any], op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``torch.ops.ns.name(...)`` (torchvision's ``roi_align``, ``nms``): the dispatcher runs it without asking
        the function mode, so it is recorded here, as one node."""
        if self.quiet or _functorch_active():
            return orig(op, *args, **kwargs)
        return self.opaque("call_function", op, partial(orig, op), args, kwargs)

    def opaque(self, op: str, target: Any, run: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> Any:
        """One node for a call whose inside is not recorded (a ``torch.nn`` module, an ``autograd.Function``, a
        ``torch.ops`` op): it runs with the recording quiet."""
        node = self.node(op, target, self.to_graph(args), self.to_graph(kwargs))
        self.quiet += 1
        try:
            result = _past_refusals(node, run, args, kwargs)
        finally:
            self.quiet -= 1
        self.note_result(node, result)
        return result



def _past_refusals(node: torch.fx.Node, func: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> Any:
    """Step 4: run the call; if autograd refuses it in forward, run it under no_grad to go on (the node stays, and
    the analysis reports the refusal at its line)."""
    try:
        return func(*args, **kwargs)
    except RuntimeError as e:
        if not any(r in str(e) for r in (*LEAF_ERRORS, *AUTOGRAD_ERRORS)):
            raise
        log.debug("autograd refuses %s in forward (%s); recorded, run again under no_grad", node, e)
        with torch.no_grad():
            return func(*args, **kwargs)


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _written(args: Any, kwargs: dict[str, Any]) -> list[tuple[torch.Tensor, int]]:
    """The tensors a call may write (its first argument, ``out=``) with their versions before it."""
    found = [a for a in (args[0] if args else None, kwargs.get("out")) if isinstance(a, torch.Tensor)]
    out: list[tuple[torch.Tensor, int]] = []
    for t in found:
        try:
            out.append((t, t._version))
        except RuntimeError:  # inference tensors have no version counter
            continue
    return out


def _moved(written: list[tuple[torch.Tensor, int]]) -> bool:
    return any(t._version != v for t, v in written)


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    return False


def _is_leaf(module: nn.Module) -> bool:
    """fx's default (modules of ``torch.nn`` itself, but not its containers), and TorchScript modules, whose
    compiled ``forward`` the function mode cannot see into."""
    if isinstance(module, torch.jit.ScriptModule):
        return True
    return (module.__module__.startswith(("torch.nn", "torch.ao.nn"))
            and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)))


# ----------------------------------------------------------------------------------------------------------------
# Step 1: a private copy with twins of the state.
# ----------------------------------------------------------------------------------------------------------------


def _twin(t: torch.Tensor, meta: bool) -> torch.Tensor:
    data = torch.empty_like(t, device="meta") if meta else t.detach().clone()
    if isinstance(t, nn.Parameter):
        return nn.Parameter(data, requires_grad=t.requires_grad)
    return data.requires_grad_(t.requires_grad) if t.requires_grad and t.is_leaf else data


def _private_copy(model: nn.Module, meta: bool) -> nn.Module:
    """A deep copy whose tensors are twins: the copy's tensors are made once, not copied and then converted."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and id(t) not in memo:
                memo[id(t)] = _twin(t, meta)
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and id(v) not in memo:
                memo[id(v)] = _twin(v, meta)
    try:
        return copy.deepcopy(model, memo)
    except Exception as e:
        raise InputError(f"fxgrad could not copy {type(model).__name__} to run it without touching it "
                         f"({type(e).__name__}: {e}). Hint: use capture=\"trace\".") from e


def _tensor_names(model: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for key, t in (*m._parameters.items(), *m._buffers.items()):
            if t is not None:
                names.setdefault(id(t), dot + key)
        for key, v in vars(m).items():
            if isinstance(v, torch.Tensor) and not key.startswith("_"):
                names.setdefault(id(v), dot + key)
    return names


# ----------------------------------------------------------------------------------------------------------------
# Steps 3 and 6: the patches, undone whatever happens.
# ----------------------------------------------------------------------------------------------------------------


@contextmanager
def _installed(rec: _Recording) -> Iterator[None]:
    module_call = nn.Module.__dict__["__call__"]
    function_apply = torch.autograd.function.Function.__dict__["apply"]
    rebuilders = {name: getattr(torch, name) for name in _UNSEEN_REBUILDERS if hasattr(torch, name)}
    checkpoint_owner, checkpoint_attr, non_reentrant = non_reentrant_checkpoint_patch()
    checkpoint_generator = getattr(checkpoint_owner, checkpoint_attr)
    op_calls = {cls: cls.__dict__["__call__"] for cls in (torch._ops.OpOverloadPacket, torch._ops.OpOverload)}

    def op_call(orig: Callable[..., Any]) -> Callable[..., Any]:
        def call(op: Any, /, *args: Any, **kwargs: Any) -> Any:
            return rec.call_op(orig, op, args, kwargs)

        return call

    def call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return rec.call_module(module_call, module, args, kwargs)

    def apply(cls: Any, *args: Any, **kwargs: Any) -> Any:
        return rec.apply(function_apply, cls, args, kwargs)

    def rebuilder(orig: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = orig(*args, **kwargs)
            if rec.quiet or not any(rec.link(a) is not None for a in args):
                return result
            node = rec.node("call_function", orig, rec.to_graph(args), rec.to_graph(kwargs))
            rec.note_result(node, result)
            return result

        return wrapper

    inference = grad_mode.inference_mode
    inference_enter, inference_exit = inference.__enter__, inference.__exit__

    def enter(self: Any) -> None:
        if not rec.quiet:
            self._fxgrad_node = rec.node("call_function", grad_mode._enter_inference_mode, (bool(self.mode),), {})
        inference_enter(self)

    def exit_(self: Any, *exc: Any) -> None:
        inference_exit(self, *exc)
        node = self.__dict__.pop("_fxgrad_node", None)
        if node is not None:
            rec.node("call_function", grad_mode._exit_inference_mode, (node,), {})

    grad = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        inference.__enter__, inference.__exit__ = enter, exit_  # type: ignore[method-assign,assignment]
        nn.Module.__call__ = call  # type: ignore[method-assign]
        setattr(checkpoint_owner, checkpoint_attr, non_reentrant)
        for cls, orig_call in op_calls.items():
            cls.__call__ = op_call(orig_call)  # type: ignore[method-assign]
        torch.autograd.function.Function.apply = classmethod(apply)  # type: ignore[method-assign,assignment]
        for name, orig in rebuilders.items():
            setattr(torch, name, rebuilder(orig))
        with rec:
            yield
    finally:
        inference.__enter__, inference.__exit__ = inference_enter, inference_exit  # type: ignore[method-assign]
        nn.Module.__call__ = module_call  # type: ignore[method-assign]
        setattr(checkpoint_owner, checkpoint_attr, checkpoint_generator)
        for cls, orig_call in op_calls.items():
            cls.__call__ = orig_call  # type: ignore[method-assign]
        torch.autograd.function.Function.apply = function_apply  # type: ignore[method-assign]
        for name, orig in rebuilders.items():
            setattr(torch, name, orig)
        torch.set_grad_enabled(grad)


# ----------------------------------------------------------------------------------------------------------------
# Step 5: outputs.
# ----------------------------------------------------------------------------------------------------------------


def _output(rec: _Recording, value: Any) -> Any:
    """The model's result with tensors as nodes; ``ModelOutput`` s and dataclasses as plain dicts."""
    if isinstance(value, torch.Tensor):
        return rec.to_graph(value)
    if isinstance(value, dict):
        return {k: _output(rec, v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        items = [_output(rec, v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _output(rec, getattr(value, f.name)) for f in dataclasses.fields(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # caches and other objects: nothing a gradient flows through


def _placeholder_names(model: nn.Module, n: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"arg{i}" for i in range(len(names), n)]


def _note_inputs(rec: _Recording, node: torch.fx.Node, value: Any, path: tuple[Any, ...] = ()) -> None:
    if isinstance(value, torch.Tensor):
        rec.values[value] = (node, path)
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _note_inputs(rec, node, v, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            _note_inputs(rec, node, v, (*path, k))


def _clone_input(a: torch.Tensor | Spec, meta: bool) -> torch.Tensor:
    if isinstance(a, Spec):
        return a.empty("meta")
    t = torch.empty_like(a, device="meta") if meta else a.detach().clone()
    return t.requires_grad_(a.requires_grad) if a.requires_grad else t


def record(model: nn.Module, example_inputs: Any) -> torch.fx.GraphModule:
    """Capture ``model`` by running it once on ``example_inputs`` (see the module docstring).

    Real inputs run the model for real (one forward, no backward) on copies of its state; shapes only
    (:func:`fxgrad.spec`, meta tensors) run it on meta tensors, which is enough unless forward reads values.
    """
    if isinstance(model, torch.fx.GraphModule):
        return model
    if not isinstance(model, nn.Module):
        raise InputError(f"fxgrad can only run-capture an nn.Module, not {type(model).__name__}.")
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: capture the user's own module
    args = as_args(example_inputs)
    meta = not has_real_tensors(args)
    # -- step 1 --
    run_model = _private_copy(model, meta)
    run_args = map_inputs(args, lambda a: _clone_input(a, meta))
    # -- step 2 --
    graph = torch.fx.Graph()
    rec = _Recording(graph, _tensor_names(run_model), model)
    rec.module_paths = {id(m): name for name, m in run_model.named_modules(remove_duplicate=False)}
    for name, value in zip(_placeholder_names(model, len(run_args)), run_args, strict=True):
        ph = rec.node("placeholder", name, (), {})
        _note_inputs(rec, ph, value)
    # -- steps 3 and 4 --
    try:
        with _installed(rec):
            out = run_model(*run_args)
    except Exception as e:
        raise _run_error(model, e, meta) from e
    # -- step 5 --
    rec.node("output", "output", (_output(rec, out),), {})
    root: dict[str, Any] = dict(rec.constants)
    for n in graph.nodes:
        if n.op in ("get_attr", "call_module") and n.target not in root:
            root[n.target] = _resolve(model, str(n.target))
    gm = torch.fx.GraphModule(root, graph, type(model).__name__)
    gm.meta[RECORDED_KEY] = {"capture": "run", "inputs": "meta" if meta else "real"}
    if rec.notes:
        gm.meta[RECORDED_KEY]["notes"] = list(dict.fromkeys(rec.notes))
    gm.graph.lint()
    log.debug("recorded %s: %d nodes", type(model).__name__, len(graph.nodes))
    return gm


CAPTURE_ENTRIES.add(record.__code__)


def _resolve(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _run_error(model: nn.Module, e: BaseException, meta: bool) -> Exception:
    """Forward itself raised while recording: the user's line, in one sentence."""
    where = user_traceback_location(e.__traceback__, ())
    at = f" at {where}: `{where.code}`" if where else ""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    name = type(model).__name__
    error: InputError | TraceError
    if meta and ("meta" in reason or "data-dependent" in reason or "item()" in reason):
        error = InputError(f"{name} reads tensor values{at}, which shape-only inputs do not have ({reason}). "
                           "Hint: pass real example tensors so fxgrad can run the model to capture it.")
    elif meta:
        error = TraceError(f"{name}.forward raised {type(e).__name__}{at} ({reason}) when fxgrad ran it on "
                           "shape-only inputs. Hint: if it runs on real tensors, pass real example tensors.")
    else:
        error = TraceError(f"{name}.forward raised {type(e).__name__}{at} ({reason}) when fxgrad ran it on the "
                           "example inputs. Hint: this is an error in the model's own code (calling the model on "
                           "these inputs raises it too), not a tracing problem: fix that line, or check the example "
                           "inputs.")
    error.shapes_only = meta  # type: ignore[union-attr]  # real values may run where shapes could not
    return error

