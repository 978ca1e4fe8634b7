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
accelerator are given, so the verdict is the one for the inputs' device, and the findings are marked. On meta
tensors torch runs the portable kernel, which may save less than the one it picks for real inputs (oneDNN's LSTM
on CPU saves its output): after such a call the outputs that kernel saves (:mod:`fxgrad.backends`, for the
inputs' device, dtype and shapes) are noted as saved by the call, so a later write into one is found in step 3 and
reported, naming the kernel, instead of being proved harmless.
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
from torch.nn.utils.rnn import PackedSequence
from torch.utils import _pytree as pytree

from . import backends
from .aliasing import shares_storage, storage_key
from .capture import node_origin
from .errors import InputError
from .facts import GraphFacts, ParamFacts
from .gcpause import gc_paused
from .inputs import Spec, as_args, has_real_tensors, map_inputs
from .metarun import MetaMode, TracingMetaMode, meta_twin, tensor_meta
from .ops import INPLACE_NO_DERIVATIVE_GRAD_FNS, NO_DERIVATIVE_GRAD_FNS, RESULT_SLOPE_GRAD_FNS
from .report import REAL_DRYRUN_NOTE, ParamStatus, Report
from .rules import (
    AUTOGRAD_ERRORS,
    LEAF_ERRORS,
    OVERLAP_ERROR,
    PARAM_CODES,
    RULE_FOR_FACT,
    RULES_BY_CODE,
    Proof,
    inplace_warning,
    param_findings,
    proved_finding,
    without_counterfactuals,
    without_refuted,
)

__all__ = ["DryRun", "prove", "run_dryrun"]

log = logging.getLogger(__name__)

_INPLACE_ERROR = "modified by an inplace operation"
_BACKEND_MODULES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                                                 nn.TransformerDecoderLayer, nn.Transformer)


# slots: one per saved tensor read (25,695 in a dry-run of the 10,000-node benchmark ResNet): no instance dict
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
    #: (mutating node or None, saving node, the saved argument, the error backward raises)
    conflicts: list[tuple[torch.fx.Node | None, torch.fx.Node | None, str, str]] = field(default_factory=list)
    #: (writing node, saving node, the saved argument): storage written behind the version counter, saver's
    #: backward will run
    silent: list[tuple[torch.fx.Node, torch.fx.Node, str]] = field(default_factory=list)
    #: node -> (the node fact it proves: leaf_write | forward_error | overlap_write, the error eager forward raises)
    forward_errors: dict[torch.fx.Node, tuple[str, str]] = field(default_factory=dict)
    reached_params: set[str] = field(default_factory=set)
    any_output_requires_grad: bool = False
    backend_nodes: set[torch.fx.Node] = field(default_factory=set)
    #: saving node -> what the backend kernel torch picks for it saves, where the meta kernel did not show it
    #: (:mod:`fxgrad.backends`)
    backend_notes: dict[torch.fx.Node, str] = field(default_factory=dict)
    #: nodes whose grad_fn has no derivative and is reached from the outputs: backward raises (FXG009)
    no_derivative: set[torch.fx.Node] = field(default_factory=set)
    #: in-place nodes whose write another tensor read later really shares memory with (FXG104 proved)
    aliased_writes: set[torch.fx.Node] = field(default_factory=set)
    #: in-place nodes whose autograd node backward reaches and that will raise there: node -> (the node fact it
    #: proves: result_slope | inplace_no_derivative, the kind of backward, the slope)
    inplace_backward_errors: dict[torch.fx.Node, tuple[str, str, float]] = field(default_factory=dict)

    def proofs(self) -> list[Proof]:
        """What the run proved, as facts the rules turn into findings: at most one proof per in-place node (the
        first that applies: backward raises on a saved tensor, a storage write behind the counter, backward raises
        in the op itself, forward raises), plus every op without a derivative that backward reaches."""
        backend_names = {n.name for n in self.backend_nodes}
        proofs: list[Proof] = []
        done: set[torch.fx.Node] = set()
        # Backward raises on a saved tensor: one proof per mutating node.
        groups: dict[torch.fx.Node | None, list[tuple[torch.fx.Node | None, str, str]]] = {}
        for mutator, saver, arg, text in self.conflicts:
            if mutator in self.forward_errors:
                continue  # forward already raised there; the write only happened because we went on
            groups.setdefault(mutator, []).append((saver, arg, text))
        for mutator, items in groups.items():
            anchor = mutator or items[0][0]
            if anchor is None:
                continue
            done.add(anchor)
            savers = tuple((s, arg) for s, arg, _ in items if s is not None)
            backend = anchor.name in backend_names or any(s.name in backend_names for s, _ in savers)
            note = "; ".join(dict.fromkeys(self.backend_notes[s] for s, _ in savers if s in self.backend_notes))
            proofs.append(Proof("overwritten", anchor, savers, items[0][2], backend or bool(note), backend_note=note))
        # Storage writes behind the version counter into saved tensors.
        silent: dict[torch.fx.Node, list[tuple[torch.fx.Node, str]]] = {}
        for writer, saver, arg in self.silent:
            silent.setdefault(writer, []).append((saver, arg))
        for writer, savers_of in silent.items():
            if writer not in done:
                proofs.append(Proof("silently_written", writer, tuple(savers_of)))
                done.add(writer)
        # An op without a derivative on the gradient path.
        proofs += [Proof("no_derivative", node) for node in self.no_derivative]
        # In-place ops whose backward raises where the out-of-place form's would not.
        for node, (fact, kind, slope) in self.inplace_backward_errors.items():
            if node not in done:
                proofs.append(Proof(fact, node, kind=kind, slope=slope))
                done.add(node)
        # Forward raised here in the run.
        proofs += [Proof(fact, node, error=text) for node, (fact, text) in self.forward_errors.items()]
        return proofs


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


class _Runner:
    """Runs the graph node by node, like ``torch.fx.Interpreter`` without what a dry-run does not need
    (progress bars, tracebacks per node, current-node metadata): its per-node overhead is a third of a meta op.
    Values are freed after their last use, so a real run holds no more than eager does."""

    def __init__(self, gm: torch.fx.GraphModule, twins: _Twins, facts: GraphFacts, mode: MetaMode,
                 device: str = "cpu") -> None:
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
        #: (node name, metadata of its value) per node run, for tests that compare runs (see ``run_dryrun``)
        self.trace: list[Any] | None = mode.trace if isinstance(mode, TracingMetaMode) else None
        #: the device the real run would use, and the calls whose kernel there saves what a meta kernel does not
        #: show (:mod:`fxgrad.backends`); a real run shows it itself
        self.device = device
        #: the calls whose backend kernel decides what they save: every one on meta tensors (the meta kernels show
        #: none of it); with real inputs the real kernels run and save, and only the RNN modules are asked: on a
        #: packed batch, other lengths than these inputs' change the kernel (see ``_backend_saves``)
        self.kernels: dict[torch.fx.Node, nn.Module | None] = _kernel_calls(gm, facts, modules_only=not mode.meta)
        #: (the call, the output its backend kernel saved as a saved-tensor record, the kernel torch picks)
        self.backend_saved: list[tuple[torch.fx.Node, _Saved, backends.Choice]] = []

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
                if self.trace is not None:
                    self.trace.append((node.name, tensor_meta(env[node])))
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
            self.forward_errors[n] = ("overlap_write", OVERLAP_ERROR)
            self.mode.written.clear()
            return self.env[writes]
        try:
            result = self._exec(n)
        except Exception as e:
            fact = ("leaf_write" if any(msg in str(e) for msg in LEAF_ERRORS)
                    else "forward_error" if any(msg in str(e) for msg in AUTOGRAD_ERRORS) else None)
            if fact is None:
                e.fxgrad_node = n  # type: ignore[attr-defined]
                raise
            # Forward raises here in eager; record it and go on (as if under no_grad, or skipping the call) to
            # prove the rest.
            self.forward_errors[n] = (fact, str(e).splitlines()[0])
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
        if n in self.kernels:
            self._backend_saves(n, result)
        outputs = list(_tensors(result))
        if n in self.watch:
            self.storages[n] = {storage_key(t) for t in outputs}
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

    def _backend_saves(self, n: torch.fx.Node, result: Any) -> None:
        """The outputs of ``n`` that the backend kernel torch picks for these inputs on :attr:`device` saves, noted
        as saved tensors, so that a later write into one is found like a write into what autograd saved."""
        args = torch.fx.node.map_arg(n.args, self.env.__getitem__)
        first = args[0] if args else None
        module, name = self.kernels[n], self.facts.nodes[n].view.name
        extra = backends.probe(name, self.device, args, torch.fx.node.map_arg(n.kwargs, self.env.__getitem__))
        if isinstance(first, PackedSequence):  # oneDNN runs a packed batch when its sequences all have the same length
            sizes = first.batch_sizes
            extra = {**extra, "packed": True,
                     "uniform": None if sizes.is_meta else bool((sizes == sizes[0]).all())}
            first = first.data
        if not isinstance(first, torch.Tensor):
            return
        choice = backends.choose(name, module, self.device, first.dtype, n.args, n.kwargs, extra)
        if choice is None or not choice.saves or (not self.mode.meta and choice.certain):
            return  # (on real inputs the kernel that saves for certain has run and saved: nothing to add)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for i in choice.saves:
            t = outputs[i] if i < len(outputs) else None
            if isinstance(t, PackedSequence):
                t = t.data
            if isinstance(t, torch.Tensor) and t.requires_grad:
                rec = _Saved(None, "result" if i == 0 else f"result{i}", t, t._version, n)
                self.pending.setdefault(storage_key(t), []).append(rec)
                self.backend_saved.append((n, rec, choice))
                self.alive.append(t)

    def _writes(self, n: torch.fx.Node) -> None:
        """Step 3: this node wrote in place. Which saved tensors did it overwrite, or write behind their back?"""
        written, self.mode.written = self.mode.written, []
        self.any_write = True
        keys: set[Any] = set()
        moved: set[Any] = set()  # storages written through a counter that moved
        for t, version, data in written:
            k = storage_key(t)
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
                    pending.setdefault(storage_key(value), []).append(rec)
                    continue
                if value is None:
                    continue
                _learn(kind, attr, value)
                for t in _tensors(value):
                    rec = _Saved(g, attr, t, t._version, saver)
                    saved[(id(g), attr)] = rec
                    pending.setdefault(storage_key(t), []).append(rec)
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


def _slope(g: Any, kind: str, attrs: tuple[str, ...]) -> float | None:
    """The negative slope an in-place activation's autograd node will refuse at backward, or None."""
    if kind == "RreluWithNoiseBackward1" and getattr(g, "_saved_training", True):
        return None  # in training its backward reads the noise, not the sign of the output
    values: list[float] = []
    for a in attrs:
        v = getattr(g, a, None)
        if not isinstance(v, (int, float)):
            return None
        values.append(float(v))
    slope = sum(values) / len(values)
    return float(slope) if slope < 0 else None


def _arg(attr: str) -> str:
    """The saved argument's schema name: ``_saved_self`` -> ``self``, ``_saved_result`` -> ``result``."""
    return attr.removeprefix("_saved_")


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


def _kernel_calls(gm: torch.fx.GraphModule, facts: GraphFacts,
                  modules_only: bool = False) -> dict[torch.fx.Node, nn.Module | None]:
    """The calls :mod:`fxgrad.backends` has a table entry for (with the module of a module call): one lookup per
    node; with ``modules_only``, the module calls (the RNNs)."""
    out: dict[torch.fx.Node, nn.Module | None] = {}
    kernels = backends.KERNELS
    for nf in facts:
        n = nf.node
        if n.op == "call_module" and not nf.view.known:
            mod = gm.get_submodule(str(n.target))
            if backends.kernel_of(nf.view.name, mod) is not None:
                out[n] = mod
        elif nf.view.name in kernels and n.op in ("call_function", "call_method") and not modules_only:
            out[n] = None
    return out


#: what backward raises on a tensor a backend kernel saved (eager names the tensor and the kernel's autograd node)
_KERNEL_ERROR = "one of the variables needed for gradient computation has been modified by an inplace operation."


def _eager_text(text: str, device: torch.device) -> str:
    """Autograd names a meta tensor's type ``MetaFloatType``; eager on ``device`` says ``torch.FloatTensor``."""
    prefix = "torch." if device.type in ("cpu", "meta") else f"torch.{device.type}."
    return re.sub(r"\bMeta(\w+?)Type\b", lambda m: f"{prefix}{m.group(1)}Tensor", text)


def run_dryrun(gm: torch.fx.GraphModule, facts: GraphFacts, example_inputs: Any, *, real: bool,
               memo: bool | None = None, trace: list[Any] | None = None) -> DryRun:
    """Steps 1–4. Raises whatever the run raises; :func:`prove` decides what that means.

    ``memo``: the meta op memo on or off (default: ``FXGRAD_DRYRUN_MEMO``, see :mod:`fxgrad.metarun`). ``trace``:
    a list that receives every op's and every node's result metadata (for tests that compare runs)."""
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

    mode = MetaMode(meta=not real, memo=memo) if trace is None else TracingMetaMode(trace, meta=not real, memo=memo)
    runner = _Runner(gm, twins, facts, mode, input_device.type)
    result = DryRun(mode="real" if real else "meta")
    grad_was = torch.is_grad_enabled()
    # The run makes many small acyclic objects (records, autograd wrappers) and keeps most alive until it ends:
    # cyclic GC passes would only rescan them, which made the per-node cost grow with the size of the graph.
    try:
        torch.set_grad_enabled(True)
        with gc_paused(), mode:
            out = runner.run(*run_args)
    finally:
        torch.set_grad_enabled(grad_was)
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
        kind = type(g).__name__
        if g in runner.node_of and (kind in ("NotImplemented", "Error") or (
                kind in NO_DERIVATIVE_GRAD_FNS and g.next_functions[NO_DERIVATIVE_GRAD_FNS[kind]][0] is not None)):
            result.no_derivative.add(runner.node_of[g])
        elif kind in INPLACE_NO_DERIVATIVE_GRAD_FNS and g in runner.node_of:
            result.inplace_backward_errors[runner.node_of[g]] = ("inplace_no_derivative", "", 0.0)
        elif kind in RESULT_SLOPE_GRAD_FNS and g in runner.node_of:
            slope = _slope(g, kind, RESULT_SLOPE_GRAD_FNS[kind][1])
            if slope is not None:
                result.inplace_backward_errors[runner.node_of[g]] = ("result_slope", RESULT_SLOPE_GRAD_FNS[kind][0],
                                                                     slope)
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
                        result.conflicts.append((rec.changed_at if rec else None, saver, _arg(attr),
                                                 _eager_text(str(e).split(" Hint:")[0], input_device)))
        frontier.extend(nxt for nxt, _ in g.next_functions if nxt is not None and nxt not in seen)
    for rec in runner.saved.values():
        if (rec.silent_at is not None and rec.saver is not None and rec.grad_fn in seen
                and rec.tensor is not None and rec.tensor._version == rec.version):
            result.silent.append((rec.silent_at, rec.saver, _arg(rec.attr)))
    result.backend_nodes = _backend_nodes(gm, facts)
    # The outputs backend kernels saved that a later write changed: backward raises when it reaches the kernel.
    if runner.backend_saved:
        reached = {runner.node_of[g] for g in seen if g in runner.node_of}
        for saver, rec, choice in runner.backend_saved:
            if rec.changed_at is not None and saver in reached:
                result.conflicts.append((rec.changed_at, saver, rec.attr, _KERNEL_ERROR))
                result.backend_notes[saver] = choice.note
    for nf in facts:
        if nf.alias_seen is not None and nf.target is not None and shares_storage(
                runner.storages.get(nf.alias_seen, ()), runner.storages.get(nf.target, ())):
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
            error = _input_error(e)
            error.meta_kernel = not want_real  # type: ignore[attr-defined]  # eager's own words may differ
            raise error from e
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


def _apply(report: Report, facts: GraphFacts, result: DryRun) -> None:
    """Replace the static findings of every rule the dry-run decides (:attr:`Rule.dryrun`) by the rules' findings
    from the dry-run's proofs."""
    backend_names = {n.name for n in result.backend_nodes}
    kept = [f for f in report.findings if not RULES_BY_CODE[f.code].dryrun]
    # FXG104: the static alias is proved when the two tensors really share a storage (reshape may copy).
    aliased = {n.name for n in result.aliased_writes}
    kept += [f._replace(verdict="dry-run") for f in report.findings
             if f.node in aliased and RULES_BY_CODE[f.code].when == "alias_read_after"]
    proofs = result.proofs()
    new = [proved_finding(p, facts[p.node]) for p in proofs]
    conflicted = {p.node for p in proofs if p.fact != "no_derivative"}
    legal = RULE_FOR_FACT["target_live"].code

    # FXG101: every in-place write on an activation that requires grad and that the dry-run found harmless.
    for nf in facts:
        if (nf.target is None or nf.meta_write or nf.forward_error or nf.target_role != "activation"
                or not nf.target_live or nf.node in conflicted):
            continue
        warning = inplace_warning(nf, proved=True) if nf.grad_on else next(
            (f for f in report.findings if f.code == legal and f.node == nf.node.name), None)
        if warning is not None:
            new.append(warning._replace(verdict="dry-run", backend_dependent=nf.node.name in backend_names))

    static_params = [f for f in report.findings if f.code in PARAM_CODES]
    if result.forward_errors:
        errored = {n.name for n in result.forward_errors}
        kept = [f for f in kept if not (f.node in errored and RULES_BY_CODE[f.code].when == "alias_read_after")]
        report.findings = without_counterfactuals(without_refuted(kept + new + static_params))
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
    report.findings = without_refuted(kept + new)
    report.mode = "dry-run"
    if result.mode == "real" and "real inputs" not in " ".join(report.notes):
        report.notes.append(REAL_DRYRUN_NOTE)
