"""The autograd dry-run: prove, without computing anything, whether backward will fail and who gets a gradient.

The static pass guesses from op tables; this pass asks autograd itself. It runs the faithful graph once, node by
node, on meta tensors (:mod:`fxgrad.metarun`: shapes, dtypes, storages and version counters, but no data and no
FLOPs), with meta twins of the parameters and buffers so nothing of the user's model is read for values or
written (a forward with the *real* buffers would update BatchNorm's statistics for real). Autograd runs above
the meta kernels exactly as in eager: the grad_fns, saved tensors and version counters it builds are eager's.

Algorithm of :func:`run_dryrun`:

1. Make meta twins of the parameters and buffers (on first use; shallow twins of the modules that hold them)
   and of the inputs (real tensors, meta tensors and :class:`~fxgrad.inputs.Spec`).
2. Run the graph with an ``Interpreter`` under grad mode. After each node, walk the autograd nodes it created
   (``grad_fn`` → ``next_functions`` up to nodes already seen) and note which fx node created each one.
3. The meta mode notes every in-place write with the written tensor's version. After a node that wrote, read
   what the not yet examined autograd nodes saved (``_saved_*``): if reading raises "modified by an inplace
   operation", this node overwrote it (no other write ran since they were made); else note each saved tensor
   with its version under its storage. Then every saved tensor on a written storage whose version moved was
   overwritten by this node; one whose version did not move although the write moved the writer's counter was
   written behind its counter (``.data``). Saved tensors are only read when something writes after them.
4. From the outputs that require grad, walk the autograd graph: the ``AccumulateGrad`` nodes reached are the
   parameters that get a gradient. If anything wrote during the run, read every reached node's saved tensors the
   way backward will: if autograd raises "modified by an inplace operation", backward will raise that exact error.
5. Replace the static in-place and parameter verdicts in the report with these (:func:`prove`).

Why not ``saved_tensors_hooks``: with hooks installed autograd hands saved tensors to the hooks and skips its own
version check, so a dry-run with hooks would have to re-implement that check; reading ``grad_fn._saved_*``
performs the very check (and produces the very message) that ``backward()`` will.

If the meta run cannot execute an op (data-dependent shapes such as ``.item()`` or ``nonzero``), the run is
repeated for real when the example inputs are real tensors (on copies of the parameters and buffers, so the
model still is not changed); otherwise the report keeps the static verdicts and says why. Ops whose saved
tensors depend on the backend (recurrent layers, fused attention) are run for real when real inputs on an
accelerator are given, so the verdict is the one for the inputs' device, and the findings are marked.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.utils import _pytree as pytree

from .capture import node_origin
from .errors import InputError
from .facts import GraphFacts, ParamFacts
from .gcpause import gc_paused
from .inputs import Spec, as_args, has_real_tensors, map_inputs
from .metarun import MetaMode, meta_twin
from .report import Finding, ParamStatus, Related, Report
from .rules import AUTOGRAD_ERRORS, LEAF_ERRORS, OVERLAP_ERROR, RULES_BY_CODE, inplace_warning, without_counterfactuals

__all__ = ["DryRun", "prove", "run_dryrun"]

log = logging.getLogger(__name__)

_INPLACE_ERROR = "modified by an inplace operation"
_BACKEND_MODULES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                                                 nn.TransformerDecoderLayer, nn.Transformer)


@dataclass(slots=True)
class _Saved:
    grad_fn: Any
    attr: str
    tensor: torch.Tensor | None  # None: already overwritten when first read
    version: int
    saver: torch.fx.Node | None
    changed_at: torch.fx.Node | None = None
    silent_at: torch.fx.Node | None = None


@dataclass
class DryRun:
    """What the dry-run proved."""

    mode: str  # "meta" | "real"
    #: (mutating node or None, saving node, the error backward raises)
    conflicts: list[tuple[torch.fx.Node | None, torch.fx.Node | None, str]] = field(default_factory=list)
    #: (writing node, saving node): storage written behind the version counter, saver's backward will run
    silent: list[tuple[torch.fx.Node, torch.fx.Node]] = field(default_factory=list)
    #: node -> (code, the error eager forward raises there)
    forward_errors: dict[torch.fx.Node, tuple[str, str]] = field(default_factory=dict)
    reached_params: set[str] = field(default_factory=set)
    any_output_requires_grad: bool = False
    backend_nodes: set[torch.fx.Node] = field(default_factory=set)
    #: nodes whose grad_fn has no derivative and is reached from the outputs: backward raises (FXG009)
    no_derivative: set[torch.fx.Node] = field(default_factory=set)
    #: in-place nodes whose write another tensor read later really shares memory with (FXG104 proved)
    aliased_writes: set[torch.fx.Node] = field(default_factory=set)


_SAVED_ATTRS: dict[type, tuple[str, ...]] = {}
#: (grad_fn class, attribute) pairs that hold a non-tensor (``_saved_stride``, ``_saved_dim`` …): the C++ field
#: behind an attribute has one type, so one look settles it for the class
_NOT_TENSOR: set[tuple[type, str]] = set()
_PLAIN = (int, float, bool, str, torch.dtype, torch.device, torch.Size)


def _saved_attrs(kind: type) -> tuple[str, ...]:
    """What a grad_fn saved: ``_saved_*`` for built-in ops, ``saved_tensors`` for custom ``autograd.Function`` s."""
    names = _SAVED_ATTRS.get(kind)
    if names is None:
        names = tuple(a for a in dir(kind) if a.startswith("_saved_"))
        names += ("saved_tensors",) if hasattr(kind, "saved_tensors") else ()
        _SAVED_ATTRS[kind] = names
    return names


def _tensor_attrs(kind: type) -> list[str]:
    """The saved attributes of ``kind`` that may hold tensors."""
    return [a for a in _saved_attrs(kind) if (kind, a) not in _NOT_TENSOR]


def _learn(kind: type, attr: str, value: Any) -> None:
    if isinstance(value, _PLAIN) or (isinstance(value, tuple) and value and all(isinstance(v, _PLAIN)
                                                                                  for v in value)):
        _NOT_TENSOR.add((kind, attr))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a value: nested tuples/lists/dicts, dataclasses and ``ModelOutput``-like objects."""
    if isinstance(value, torch.Tensor):
        yield value
        return
    if value is None or isinstance(value, (int, float, bool, str)):
        return
    if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
        yield from value
        return
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            yield leaf
        elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            yield from _tensors([getattr(leaf, f.name) for f in dataclasses.fields(leaf)])
        elif callable(getattr(leaf, "to_tuple", None)):
            yield from _tensors(leaf.to_tuple())


def _grad_fn(t: torch.Tensor) -> Any:
    """``t.grad_fn``, or None where autograd refuses to build it (a multi-output view written in place)."""
    try:
        return t.grad_fn
    except RuntimeError:
        return None


def _is_leaf(t: torch.Tensor) -> bool:
    """``t.is_leaf``, or False where autograd refuses to answer (a view made under no_grad whose base was then
    written with grad enabled: what the run leaves behind after an op that raised in forward)."""
    try:
        return bool(t.is_leaf)
    except RuntimeError:
        return False


def _key(t: torch.Tensor) -> Any:
    """The identity of ``t``'s storage (``StorageWeakRef`` compares the same address; the tensors compared are
    alive, so the address is not reused)."""
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return id(t)


class _Runner:
    """Runs the graph node by node, like ``torch.fx.Interpreter`` without what a dry-run does not need
    (progress bars, tracebacks per node, current-node metadata): its per-node overhead is a third of a meta op.
    Values are freed after their last use, so a real run holds no more than eager does."""

    def __init__(self, gm: torch.fx.GraphModule, twins: _Twins, facts: GraphFacts, mode: MetaMode) -> None:
        self.graph = gm.graph
        self.env: dict[torch.fx.Node, Any] = {}
        self.last_uses: dict[torch.fx.Node, list[torch.fx.Node]] = {}
        used: set[torch.fx.Node] = set()
        for node in reversed(gm.graph.nodes):
            for a in node.all_input_nodes:
                if a not in used:
                    used.add(a)
                    self.last_uses.setdefault(node, []).append(a)
        self.twins = twins
        self.facts = facts
        self.mode = mode
        self.node_of: dict[Any, torch.fx.Node] = {}
        #: autograd nodes made since the last write, whose saved tensors nobody has read yet
        self.unexamined: list[Any] = []
        self.saved: dict[tuple[int, str], _Saved] = {}
        self.pending: dict[Any, list[_Saved]] = {}
        self.any_write = False
        self.forward_errors: dict[torch.fx.Node, tuple[str, str]] = {}
        #: storages of the tensors that static FXG104 findings say alias each other
        self.watch: set[torch.fx.Node] = set()
        for nf in facts:
            if nf.alias_seen is not None and nf.target is not None:
                self.watch.update((nf.alias_seen, nf.target))
        self.storages: dict[torch.fx.Node, set[Any]] = {}
        self.alive: list[torch.Tensor] = []

    def run(self, *args: Any) -> Any:
        env, last_uses = self.env, self.last_uses
        inputs = iter(self.graph.process_inputs(*args))
        for node in self.graph.nodes:
            op = node.op
            if op == "placeholder":
                target = str(node.target)
                if target.startswith("*"):
                    env[node] = list(inputs)
                else:
                    try:
                        env[node] = next(inputs)
                    except StopIteration as e:
                        if not node.args:
                            raise RuntimeError(f"Expected positional argument for parameter {target}, but one "
                                               "was not passed in!") from e
                        env[node] = node.args[0]
            elif op == "output":
                return self.graph.process_outputs(torch.fx.node.map_arg(node.args[0], env.__getitem__))
            else:
                env[node] = self.run_node(node)
            for dead in last_uses.get(node, ()):
                del env[dead]
        return None

    def _exec(self, n: torch.fx.Node) -> Any:
        env = self.env
        args = torch.fx.node.map_arg(n.args, env.__getitem__)
        kwargs = torch.fx.node.map_arg(n.kwargs, env.__getitem__)
        op, target = n.op, n.target
        if op == "call_function":
            return target(*args, **kwargs)  # type: ignore[operator]
        if op == "call_method":
            return getattr(args[0], str(target))(*args[1:], **kwargs)
        if op == "call_module" or op == "get_attr":
            obj = self.twins.attr(str(target))
            return obj(*args, **kwargs) if op == "call_module" else obj
        raise RuntimeError(f"fxgrad cannot run node {n.format_node()}")

    def run_node(self, n: torch.fx.Node) -> Any:
        if self.forward_errors:
            # Eager stopped at the first forward error; go on without autograd only to prove nothing more breaks
            # the run itself (the findings after it would be counterfactual).
            with torch.no_grad():
                result = self._exec(n)
            self.mode.written.clear()
            return result
        nf = self.facts.nodes.get(n)
        writes = nf.view.writes if nf is not None else None
        if isinstance(writes, torch.fx.Node) and writes in self.env and any(
                torch._debug_has_internal_overlap(t) == 1 for t in _tensors(self.env[writes])):
            # Meta (and fake) tensors skip the overlap check eager makes before writing an expanded view.
            self.forward_errors[n] = ("FXG107", OVERLAP_ERROR)
            self.mode.written.clear()
            return self.env[writes]
        try:
            result = self._exec(n)
        except Exception as e:
            code = ("FXG103" if any(msg in str(e) for msg in LEAF_ERRORS)
                    else "FXG010" if any(msg in str(e) for msg in AUTOGRAD_ERRORS) else None)
            if code is None:
                e.fxgrad_node = n  # type: ignore[attr-defined]
                raise
            # Forward raises here in eager; record it and go on (as if under no_grad, or skipping the call) to
            # prove the rest.
            self.forward_errors[n] = (code, str(e).splitlines()[0])
            self.mode.written.clear()
            try:
                with torch.no_grad():
                    result = self._exec(n)
            except Exception:
                first = n.all_input_nodes[0] if n.all_input_nodes else None
                result = self.env.get(first) if first is not None else None
            self.mode.written.clear()
            return result
        self._after(n, result)
        return result

    def _after(self, n: torch.fx.Node, result: Any) -> None:
        outputs = list(_tensors(result))
        if n in self.watch:
            self.storages[n] = {_key(t) for t in outputs}
            self.alive.extend(outputs)  # storage keys are addresses: keep them from being reused
        # Step 2: the autograd nodes this fx node created.
        node_of = self.node_of
        frontier = [g for g in map(_grad_fn, outputs) if g is not None and g not in node_of]
        while frontier:
            g = frontier.pop()
            if g in node_of:
                continue
            node_of[g] = n
            self.unexamined.append(g)
            frontier.extend(nxt for nxt, _ in g.next_functions if nxt is not None and nxt not in node_of)
        if self.mode.written:
            self._writes(n)

    def _writes(self, n: torch.fx.Node) -> None:
        """Step 3: this node wrote in place. Which saved tensors did it overwrite, or write behind their back?"""
        written, self.mode.written = self.mode.written, []
        self.any_write = True
        keys: set[Any] = set()
        moved: set[Any] = set()  # storages written through a counter that moved
        for t, version, data in written:
            k = _key(t)
            if data:
                keys.add(k)
            if t._version != version:
                moved.add(k)
        saved, pending = self.saved, self.pending
        for g in self.unexamined:
            saver = self.node_of.get(g)
            kind = type(g)
            for attr in _tensor_attrs(kind):
                try:
                    value = getattr(g, attr)
                except RuntimeError as e:
                    if _INPLACE_ERROR in str(e):
                        saved[(id(g), attr)] = _Saved(g, attr, None, -1, saver, changed_at=n)
                    continue
                if isinstance(value, torch.Tensor):
                    rec = _Saved(g, attr, value, value._version, saver)
                    saved[(id(g), attr)] = rec
                    pending.setdefault(_key(value), []).append(rec)
                    continue
                if value is None:
                    continue
                _learn(kind, attr, value)
                for t in _tensors(value):
                    rec = _Saved(g, attr, t, t._version, saver)
                    saved[(id(g), attr)] = rec
                    pending.setdefault(_key(t), []).append(rec)
        self.unexamined = []
        for k in keys | moved:
            for rec in self.pending.get(k, ()):
                if rec.changed_at is not None or rec.silent_at is not None or rec.tensor is None:
                    continue
                if rec.tensor._version != rec.version:
                    rec.changed_at = n
                elif k in keys and k in moved and rec.saver is not n:
                    rec.silent_at = n


class _Twins:
    """Meta (or, in real mode, cloned) twins of the model's tensors and shallow twins of its modules, made on
    first use: the user's parameters and buffers are never read for values nor written, and nothing is copied
    deeply (a deep copy of a large model costs more than the whole dry-run)."""

    def __init__(self, gm: torch.fx.GraphModule, facts: GraphFacts, meta: bool) -> None:
        self.gm, self.facts, self.meta = gm, facts, meta
        self.tensors: dict[int, torch.Tensor] = {}
        self.modules: dict[int, nn.Module] = {}
        #: twin parameter id -> the parameter's name in the report
        self.names: dict[int, str] = {}
        self.by_target: dict[str, Any] = {}

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        twin = self.tensors.get(id(t))
        if twin is None:
            if t.__class__ is nn.Parameter or isinstance(t, nn.Parameter):
                data = meta_twin(t) if self.meta else t.detach().clone()
                twin = nn.Parameter(data.detach(), requires_grad=t.requires_grad)
                name = self.facts.param_names.get(id(t))
                if name is not None:
                    self.names[id(twin)] = name
            else:
                twin = meta_twin(t) if self.meta else t.detach().clone()
            self.tensors[id(t)] = twin
        return twin

    def name(self, t: torch.Tensor) -> str | None:
        """The report name of a (twin) parameter. The user's own parameter is named too: a module that keeps a
        reference to it somewhere :meth:`module` does not replace (lists are replaced) hands autograd that one."""
        return self.names.get(id(t)) or self.facts.param_names.get(id(t))

    def module(self, mod: nn.Module) -> nn.Module:
        twin = self.modules.get(id(mod))
        if twin is None:
            # A new object whose __dict__ holds the same values (copy.copy would refuse parametrized modules):
            # its state dicts are replaced, never mutated.
            twin = object.__new__(type(mod))
            state = twin.__dict__  # written directly: nn.Module.__setattr__ is slow and would re-register
            state.update(mod.__dict__)
            tensor = self.tensor
            state["_parameters"] = {k: None if v is None else tensor(v) for k, v in mod._parameters.items()}
            state["_buffers"] = {k: None if v is None else tensor(v) for k, v in mod._buffers.items()}
            state["_modules"] = {k: None if v is None else self.module(v) for k, v in mod._modules.items()}
            for key, value in mod.__dict__.items():
                # A module that keeps its own list of its parameters (``nn.RNNBase._flat_weights``) must run on
                # the twins too, or autograd would be handed the user's tensors.
                if isinstance(value, list) and value and any(isinstance(v, torch.Tensor) for v in value):
                    state[key] = [self.tensors.get(id(v), v) if isinstance(v, torch.Tensor) else v for v in value]
            self.modules[id(mod)] = twin
        return twin

    def attr(self, target: str) -> Any:
        """The twin of ``gm.<target>``, made on first use (cached by target: a module may be called often)."""
        twin = self.by_target.get(target)
        if twin is not None:
            return twin
        obj: Any = self.gm
        for part in target.split("."):
            state = obj.__dict__ if isinstance(obj, nn.Module) else None
            if state is not None and part in state["_modules"]:  # the common case, without Module.__getattr__
                obj = state["_modules"][part]
            elif state is not None and part in state["_parameters"]:
                obj = state["_parameters"][part]
            else:
                obj = getattr(obj, part)
        # Twins are made mid-run: with Python dispatch off they do not pass through the mode as program ops.
        with torch._C._DisableTorchDispatch():
            if isinstance(obj, nn.Module):
                twin = self.module(obj)
            elif isinstance(obj, torch.Tensor):
                twin = self.tensor(obj)
            else:
                return obj
        self.by_target[target] = twin
        return twin


def _backend_nodes(gm: torch.fx.GraphModule, facts: GraphFacts) -> set[torch.fx.Node]:
    from ._saved_table import BACKEND_DEPENDENT

    out: set[torch.fx.Node] = set()
    for nf in facts:
        n = nf.node
        is_module = n.op == "call_module" and not nf.view.known and isinstance(
            gm.get_submodule(str(n.target)), _BACKEND_MODULES)
        if is_module or nf.view.name in BACKEND_DEPENDENT or nf.view.name == "scaled_dot_product_attention":
            out.add(n)
    return out


def _eager_text(text: str, device: torch.device) -> str:
    """Autograd names a meta tensor's type ``MetaFloatType``; eager on ``device`` says ``torch.FloatTensor``."""
    prefix = "torch." if device.type in ("cpu", "meta") else f"torch.{device.type}."
    return re.sub(r"\bMeta(\w+?)Type\b", lambda m: f"{prefix}{m.group(1)}Tensor", text)


def run_dryrun(gm: torch.fx.GraphModule, facts: GraphFacts, example_inputs: Any, *, real: bool) -> DryRun:
    """Steps 1–4. Raises whatever the run raises; :func:`prove` decides what that means."""
    args = as_args(example_inputs)
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    # Step 1: twins of parameters, buffers and inputs.
    twins = _Twins(gm, facts, meta=not real)
    if real:
        run_args = map_inputs(args, lambda a: a.empty(device) if isinstance(a, Spec) else a)
    else:
        def twin(a: torch.Tensor | Spec) -> torch.Tensor:
            if isinstance(a, Spec):
                t = torch.empty(a.shape, dtype=a.dtype, device="meta")
                return t.requires_grad_(True) if a.requires_grad else t
            return meta_twin(a)

        run_args = map_inputs(args, twin)
    input_device = next((a.device for a in pytree.tree_leaves(args)
                         if isinstance(a, torch.Tensor) and a.device.type != "meta"), device)

    mode = MetaMode(meta=not real)
    runner = _Runner(gm, twins, facts, mode)
    result = DryRun(mode="real" if real else "meta")
    grad_was = torch.is_grad_enabled()
    # The run makes many small acyclic objects (records, autograd wrappers) and keeps most alive until it ends:
    # cyclic GC passes would only rescan them, which made the per-node cost grow with the size of the graph.
    try:
        torch._C._set_grad_enabled(True)
        with gc_paused(), mode:
            out = runner.run(*run_args)
    finally:
        torch._C._set_grad_enabled(grad_was)
    result.forward_errors = runner.forward_errors

    # Step 4: what backward will reach from the outputs, and what it will find when it unpacks.
    roots = [t for t in _tensors(out) if t.requires_grad and (t.is_floating_point() or t.is_complex())]
    result.any_output_requires_grad = bool(roots)
    seen: set[Any] = set()
    frontier = [g for g in map(_grad_fn, roots) if g is not None]
    for t in roots:
        name = twins.name(t) if _is_leaf(t) else None
        if name is not None:
            result.reached_params.add(name)
    while frontier:
        g = frontier.pop()
        if g in seen:
            continue
        seen.add(g)
        if type(g).__name__ in ("NotImplemented", "Error") and g in runner.node_of:
            result.no_derivative.add(runner.node_of[g])
        variable = getattr(g, "variable", None)
        name = twins.name(variable) if variable is not None else None
        if name is not None:
            result.reached_params.add(name)
        if runner.any_write:  # without a write no saved tensor can be stale: nothing to read
            for attr in _tensor_attrs(type(g)):
                try:
                    getattr(g, attr)
                except RuntimeError as e:
                    if _INPLACE_ERROR in str(e):
                        rec = runner.saved.get((id(g), attr))
                        saver = runner.node_of.get(g)
                        result.conflicts.append((rec.changed_at if rec else None, saver,
                                                 _eager_text(str(e).split(" Hint:")[0], input_device)))
        frontier.extend(nxt for nxt, _ in g.next_functions if nxt is not None and nxt not in seen)
    for rec in runner.saved.values():
        if (rec.silent_at is not None and rec.saver is not None and rec.grad_fn in seen
                and rec.tensor is not None and rec.tensor._version == rec.version):
            result.silent.append((rec.silent_at, rec.saver))
    result.backend_nodes = _backend_nodes(gm, facts)
    for nf in facts:
        if nf.alias_seen is not None and nf.target is not None and (
                runner.storages.get(nf.alias_seen, set()) & runner.storages.get(nf.target, set())):
            result.aliased_writes.add(nf.node)
    return result


_FAKE_LIMITS = ("DataDependentOutput", "DynamicOutputShape", "UnsupportedOperator", "UnsupportedFakeTensor",
                "data-dependent", "meta", "Cannot access data pointer", "numpy", "_local_scalar_dense")


def prove(report: Report, gm: torch.fx.GraphModule, facts: GraphFacts, example_inputs: Any, *,
          mode: str = "meta") -> None:
    """Step 5: run the dry-run and replace the static verdicts of ``report`` in place."""
    args = as_args(example_inputs)
    real_inputs = has_real_tensors(args)
    want_real = mode == "real"
    if want_real and not real_inputs:
        raise InputError("dryrun='real' needs real tensors as example inputs, not shapes or meta tensors. "
                         "Hint: pass torch.randn(...) inputs, or use the default meta-tensor dry-run.")
    on_accelerator = any(isinstance(a, torch.Tensor) and a.device.type not in ("cpu", "meta")
                         for a in pytree.tree_leaves(args))
    if not want_real and real_inputs and on_accelerator and _backend_nodes(gm, facts):
        want_real = True
        report.notes.append("ran the dry-run on the real inputs: recurrent/attention layers save different "
                            "tensors on different backends, so the verdict is for the inputs' device")
    try:
        result = run_dryrun(gm, facts, args, real=want_real)
    except Exception as e:  # the meta run could not execute an op: try for real, else say why
        where = _failing_node_text(e)
        if isinstance(e, InputError):
            raise
        if not want_real and real_inputs:
            log.debug("meta dry-run failed (%s); running for real", e)
            try:
                result = run_dryrun(gm, facts, args, real=True)
                report.notes.append(f"the meta-tensor dry-run could not run an op{where} ({type(e).__name__}); "
                                    "ran it on the real example inputs instead")
            except Exception as e2:
                raise _input_error(e2) from e2
        elif any(k in f"{type(e).__name__} {e}" for k in _FAKE_LIMITS):
            report.notes.append(f"no dry-run: the meta-tensor run could not execute an op{where} "
                                f"({type(e).__name__}); verdicts are static. Hint: pass real example tensors.")
            return
        else:
            raise _input_error(e) from e
    _apply(report, facts, result)


def _failing_node_text(e: BaseException) -> str:
    node = getattr(e, "fxgrad_node", None)
    if node is None:
        return ""
    where = node_origin(node).location
    return f" at {where}: `{where.code}`" if where else f" (node `{node.name}`)"


def _input_error(e: BaseException) -> InputError:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = text.rstrip(".") + "."
    return InputError(f"Running the model on the example inputs raised {type(e).__name__}{_failing_node_text(e)}: "
                      f"{text} Hint: check the shapes and dtypes of the example inputs (fxgrad.spec(...) or "
                      "tensors); if they are right, this line fails in eager PyTorch too.")


def _related(node: torch.fx.Node | None, role: str) -> tuple[Related, ...]:
    if node is None:
        return ()
    return (Related(role, node.name, node_origin(node).location),)


def _apply(report: Report, facts: GraphFacts, result: DryRun) -> None:
    backend_names = {n.name for n in result.backend_nodes}
    by_node: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_node.setdefault(f.node, []).append(f)
    kept = [f for f in report.findings if f.code not in ("FXG009", "FXG010", "FXG101", "FXG102", "FXG103", "FXG104",
                                                         "FXG106", "FXG107", "FXG201", "FXG202", "FXG203")]
    # FXG104: the static alias is proved when the two tensors really share a storage (reshape may copy).
    kept += [f._replace(verdict="dry-run") for f in report.findings
             if f.code == "FXG104" and any(n.name == f.node for n in result.aliased_writes)]
    new: list[Finding] = []
    conflicted: set[torch.fx.Node] = set()

    # FXG102: proved conflicts, one finding per mutating node.
    groups: dict[torch.fx.Node | None, list[tuple[torch.fx.Node | None, str]]] = {}
    for mutator, saver, text in result.conflicts:
        if mutator in result.forward_errors:
            continue  # forward already raised there; the write only happened because we went on
        groups.setdefault(mutator, []).append((saver, text))
    for mutator, items in groups.items():
        anchor = mutator or items[0][0]
        if anchor is None:
            continue
        conflicted.add(anchor)
        nf = facts[anchor]
        savers = [s for s, _ in items if s is not None]
        saver_txt = "; ".join(
            f"`{s.name}`{f' at {node_origin(s).location}' if node_origin(s).location else ''} saved it for backward"
            for s in dict.fromkeys(savers))
        origin = node_origin(anchor)
        backend = anchor.name in backend_names or any(s.name in backend_names for s in savers)
        rule = RULES_BY_CODE["FXG102"]
        spelling = nf.view.spelling or nf.view.name
        new.append(Finding(
            code="FXG102", severity=rule.severity, node=anchor.name, target=spelling,
            message=(f"In-place `{spelling}` overwrites a tensor that an earlier op saved for backward: {saver_txt}. "
                     f"backward() will raise: \"RuntimeError: {items[0][1]}\" Use the out-of-place form."),
            module=origin.module, location=origin.location, fixable=rule.fixable, verdict="dry-run",
            backend_dependent=backend,
            related=tuple(r for s in dict.fromkeys(savers) for r in _related(s, "saved by"))))

    # FXG106: storage writes behind the version counter into saved tensors.
    silent: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for writer, saver in result.silent:
        silent.setdefault(writer, []).append(saver)
    rule106 = RULES_BY_CODE["FXG106"]
    for writer, savers in silent.items():
        if writer in conflicted:
            continue
        nf = facts[writer]
        origin = node_origin(writer)
        spelling = nf.view.spelling or nf.view.name
        saver_txt = "; ".join(f"`{s.name}`" for s in dict.fromkeys(savers))
        new.append(Finding(
            code="FXG106", severity=rule106.severity, node=writer.name, target=spelling,
            message=(f"In-place `{spelling}` writes, behind autograd's version counter (through `.data`), into a "
                     f"tensor that {saver_txt} saved for backward: backward() will not raise but computes gradients "
                     "from the overwritten values."),
            module=origin.module, location=origin.location, verdict="dry-run",
            related=tuple(r for s in dict.fromkeys(savers) for r in _related(s, "saved by"))))
        conflicted.add(writer)

    # FXG009: an op without a derivative on the gradient path.
    rule009 = RULES_BY_CODE["FXG009"]
    for node in result.no_derivative:
        origin = node_origin(node)
        spelling = facts[node].view.spelling or facts[node].view.name
        new.append(Finding(code="FXG009", severity=rule009.severity, node=node.name, target=spelling,
                           message=f"`{spelling}` has no derivative and the gradient reaches it: backward() will "
                           "raise \"RuntimeError: the derivative for this op is not implemented\". Detach its input "
                           "if no gradient is meant to flow, or use a differentiable op.",
                           module=origin.module, location=origin.location, verdict="dry-run"))

    # FXG103 / FXG010 / FXG107: forward raised here in the run.
    texts = {"FXG103": "on a leaf that requires grad: forward raises", "FXG010": "is rejected by autograd: forward "
             "raises", "FXG107": "writes into an expanded view whose elements share memory: forward raises"}
    for node, (code, text) in result.forward_errors.items():
        origin = node_origin(node)
        spelling = facts[node].view.spelling or facts[node].view.name
        rule = RULES_BY_CODE[code]
        hint = (" Wrap a deliberate update in torch.no_grad(), else use the out-of-place form." if code == "FXG103"
                else "")
        new.append(Finding(code=code, severity=rule.severity, node=node.name, target=spelling,
                           message=f"`{spelling}` {texts[code]} \"RuntimeError: {text}\"{hint}",
                           module=origin.module, location=origin.location, fixable=rule.fixable, verdict="dry-run"))
        conflicted.add(node)

    # FXG101: every in-place write on an activation that requires grad and that the dry-run found harmless.
    for nf in facts:
        if (nf.target is None or nf.meta_write or nf.forward_error or nf.target_role != "activation"
                or not nf.target_live or nf.node in conflicted):
            continue
        warning = inplace_warning(nf, proved=True) if nf.grad_on else next(
            (f for f in report.findings if f.code == "FXG101" and f.node == nf.node.name), None)
        if warning is not None:
            new.append(warning._replace(verdict="dry-run", backend_dependent=nf.node.name in backend_names))

    if result.forward_errors:
        kept = [f for f in kept if not (f.code == "FXG104" and any(n.name == f.node for n in result.forward_errors))]
        report.findings = without_counterfactuals(
            kept + new + [f for f in report.findings if f.code in ("FXG201", "FXG202", "FXG203")])
        report.mode = "dry-run"
        first = next(iter(result.forward_errors))
        report.notes.append(f"forward raises at `{first.name}`: parameter verdicts are static (eager never reaches "
                            "backward)")
        return

    # Parameters: reached AccumulateGrad nodes get a gradient.
    params: dict[str, ParamFacts] = {}
    for name, pf in facts.params.items():
        status, cause = pf.status, pf.cause
        if pf.status == "unused":
            pass
        elif name in result.reached_params:
            status = "zero-grad" if pf.status == "zero-grad" else "ok"
            cause = cause if status == "zero-grad" else None
        else:
            status = "no-grad"
        params[name] = ParamFacts(name, status, cause, pf.uses)
    proved = GraphFacts(facts.gm, facts.nodes, params, facts.param_names)
    from .rules import param_findings

    for f in param_findings(proved):
        new.append(f._replace(verdict="dry-run"))
    statuses: dict[str, ParamStatus] = {}
    for name, ps in report.params.items():
        proved_pf = params.get(name)
        if proved_pf is None:
            statuses[name] = ps
            continue
        text = ps.cause if proved_pf.status == ps.status else (
            "the autograd graph from the outputs never reaches it" if proved_pf.status == "no-grad" else "")
        if proved_pf.status == "no-grad" and not result.any_output_requires_grad:
            text = "no output of the model requires grad"
        statuses[name] = ParamStatus(name, proved_pf.status, text,
                                     ps.location if proved_pf.status == ps.status else None, verdict="dry-run")
    report.params = statuses
    report.findings = kept + new
    report.mode = "dry-run"
    if result.mode == "real" and "real inputs" not in " ".join(report.notes):
        report.notes.append("dry-run executed on the real example inputs")
