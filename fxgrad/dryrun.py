"""The autograd dry-run: prove, without computing anything, whether backward will fail and who gets a gradient.

The static pass guesses from op tables; this pass asks autograd itself. It runs the faithful graph once, node by
node, on fake tensors (``FakeTensorMode``: shapes, dtypes, storages and version counters, but no data and no
FLOPs), with fake copies of the parameters and buffers so nothing of the user's model is read for values or
written (a fake forward with the *real* buffers would still update BatchNorm's statistics for real).

Algorithm of :func:`prove`:

1. Make fake copies of every parameter and buffer (one ``deepcopy`` of the module tree whose memo maps each
   tensor to its fake twin) and fake inputs (real tensors, meta tensors and :class:`~fxgrad.inputs.Spec`).
2. Run the graph with an ``Interpreter`` under grad mode. After each node, walk the autograd nodes it created
   (``grad_fn`` → ``next_functions`` up to nodes already seen) and note which fx node created each one, and the
   tensors each one saved for backward (its ``_saved_*`` attributes) with their version and storage.
3. After each node, compare the versions of the saved tensors that share a storage with the node's inputs and
   outputs: the first node after which a version moved is the op that overwrote it. A write by an in-place node
   into a saved tensor's storage that did *not* move its version went behind the counter (``.data``).
4. From the outputs that require grad, walk the autograd graph: the ``AccumulateGrad`` nodes reached are the
   parameters that get a gradient. For every reached node, read its saved tensors the way backward will: if
   autograd raises "modified by an inplace operation", backward will raise that exact error.
5. Replace the static in-place and parameter verdicts in the report with these.

Why not ``saved_tensors_hooks``: with hooks installed autograd hands saved tensors to the hooks and skips its own
version check, so a dry-run with hooks would have to re-implement that check; reading ``grad_fn._saved_*``
performs the very check (and produces the very message) that ``backward()`` will.

If the fake run cannot execute an op (no meta kernel, data-dependent shapes such as ``.item()`` or
``nonzero``), the run is repeated for real when the example inputs are real tensors (on copies of the parameters
and buffers, so the model still is not changed); otherwise the report keeps the static verdicts and says why.
Ops whose saved tensors depend on the backend (recurrent layers, fused attention) are run for real when real
inputs are given, so the verdict is the one for the inputs' device, and the findings are marked.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree

from ._saved_table import SAVED
from .capture import node_origin
from .errors import InputError
from .facts import GraphFacts, ParamFacts
from .inputs import Spec, as_args, has_real_tensors, map_inputs
from .report import Finding, ParamStatus, Related, Report
from .rules import OVERLAP_ERROR, RULES_BY_CODE, inplace_warning, without_counterfactuals

__all__ = ["DryRun", "prove", "run_dryrun"]

log = logging.getLogger(__name__)

_INPLACE_ERROR = "modified by an inplace operation"
_LEAF_ERRORS = ("leaf Variable that requires grad", "view of a leaf Variable that requires grad")
#: forward errors autograd raises by design (FXG010): the dry-run reports them and goes on past the node
_AUTOGRAD_ERRORS = ("you can only change requires_grad flags of leaf variables", "is a view and is being modified "
                    "inplace", "don't support automatic differentiation", "cannot resize variables that require grad",
                    "A view was created in no_grad mode")
_BACKEND_MODULES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                                                 nn.TransformerDecoderLayer, nn.Transformer)


@dataclass
class _Saved:
    grad_fn: Any
    attr: str
    tensor: torch.Tensor
    version: int
    saver: torch.fx.Node
    changed_at: torch.fx.Node | None = None
    silent_at: torch.fx.Node | None = None


@dataclass
class DryRun:
    """What the dry-run proved."""

    mode: str  # "fake" | "real"
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


def _saved_attrs(kind: type) -> tuple[str, ...]:
    """What a grad_fn saved: ``_saved_*`` for built-in ops, ``saved_tensors`` for custom ``autograd.Function`` s."""
    if kind not in _SAVED_ATTRS:
        names = tuple(a for a in dir(kind) if a.startswith("_saved_"))
        _SAVED_ATTRS[kind] = names + (("saved_tensors",) if hasattr(kind, "saved_tensors") else ())
    return _SAVED_ATTRS[kind]


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a value: nested tuples/lists/dicts, dataclasses and ``ModelOutput``-like objects."""
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


def _key(t: torch.Tensor) -> Any:
    try:
        return StorageWeakRef(t.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return id(t)


class _Runner(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, twins: _Twins, facts: GraphFacts) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.twins = twins
        self.facts = facts
        self.node_of: dict[Any, torch.fx.Node] = {}
        self.saved: dict[tuple[int, str], _Saved] = {}
        self.pending: dict[Any, list[_Saved]] = {}
        self.forward_errors: dict[torch.fx.Node, tuple[str, str]] = {}
        #: storages of the tensors that static FXG104 findings say alias each other
        self.watch: set[torch.fx.Node] = set()
        for nf in facts:
            if nf.alias_seen is not None and nf.target is not None:
                self.watch.update((nf.alias_seen, nf.target))
        self.storages: dict[torch.fx.Node, set[Any]] = {}

    def fetch_attr(self, target: str) -> Any:
        return self.twins.attr(target)

    def run_node(self, n: torch.fx.Node) -> Any:
        writes = self.facts[n].view.writes if n in self.facts.nodes else None
        target = list(_tensors(self.env[writes])) if isinstance(writes, torch.fx.Node) and writes in self.env else []
        before = [t._version for t in target]
        if self.forward_errors:
            # Eager stopped at the first forward error; go on without autograd only to prove nothing more breaks
            # the run itself (the findings after it would be counterfactual).
            with torch.no_grad():
                result = super().run_node(n)
            self._after(n, result)
            return result
        if any(torch._debug_has_internal_overlap(t) == 1 for t in target):
            # Fake tensors skip the overlap check eager makes before writing an expanded view: make it here.
            self.forward_errors[n] = ("FXG107", OVERLAP_ERROR)
            result = self.env[writes] if isinstance(writes, torch.fx.Node) else None
        else:
            try:
                result = super().run_node(n)
            except Exception as e:
                code = ("FXG103" if any(msg in str(e) for msg in _LEAF_ERRORS)
                        else "FXG010" if any(msg in str(e) for msg in _AUTOGRAD_ERRORS) else None)
                if code is None:
                    e.fxgrad_node = n  # type: ignore[attr-defined]
                    raise
                # Forward raises here in eager; record it and go on (as if under no_grad, or skipping the call)
                # to prove the rest.
                self.forward_errors[n] = (code, str(e).splitlines()[0])
                try:
                    with torch.no_grad():
                        result = super().run_node(n)
                except Exception:
                    first = n.all_input_nodes[0] if n.all_input_nodes else None
                    result = self.env.get(first) if first is not None else None
        self._after(n, result)
        # A write that moved the target's own version counter but not a saved tensor's, on the same storage,
        # went behind that tensor's counter (``.data``): backward will not notice.
        moved = [t for t, v in zip(target, before, strict=True) if t._version != v]
        for t in moved:
            for rec in self.pending.get(_key(t), ()):
                if rec.changed_at is None and rec.silent_at is None and rec.saver is not n:
                    rec.silent_at = n
        return result

    def _inputs(self, n: torch.fx.Node) -> list[torch.Tensor]:
        values = [self.env[a] for a in n.all_input_nodes if a in self.env]
        return list(_tensors(values))

    def _after(self, n: torch.fx.Node, result: Any) -> None:
        outputs = [result] if isinstance(result, torch.Tensor) else list(_tensors(result))
        if n in self.watch:
            self.storages[n] = {_key(t) for t in outputs}
        # Step 2: the autograd nodes this fx node created, and what they saved.
        frontier = [g for g in map(_grad_fn, outputs) if g is not None]
        while frontier:
            g = frontier.pop()
            if g in self.node_of:
                continue
            self.node_of[g] = n
            for attr in _saved_attrs(type(g)):
                try:
                    value = getattr(g, attr)
                except RuntimeError:
                    continue
                for t in _tensors(value):
                    rec = _Saved(g, attr, t, t._version, n)
                    self.saved[(id(g), attr)] = rec
                    self.pending.setdefault(_key(t), []).append(rec)
            frontier.extend(nxt for nxt, _ in g.next_functions if nxt is not None and nxt not in self.node_of)
        # Step 3: which saved tensors moved version after this node. Only writes, modules (which may write
        # their buffers or run in-place ops inside) and ops fxgrad has no table entry for can move one.
        nf = self.facts.nodes.get(n)
        if nf is not None and nf.target is None and not nf.view.param_writes and n.op != "call_module" and (
                nf.view.name in SAVED or nf.role in ("control", "value", "param", "buffer", "input")):
            return
        touched = self._inputs(n) + outputs
        if n.op == "call_module":
            mod = self.twins.attr(str(n.target))
            touched += list(mod.parameters()) + list(mod.buffers())
        for t in touched:
            for rec in self.pending.get(_key(t), ()):
                if rec.changed_at is None and rec.tensor._version != rec.version:
                    rec.changed_at = n


class _Twins:
    """Fake (or, in real mode, cloned) twins of the model's tensors and shallow twins of its modules, made on
    first use: the user's parameters and buffers are never read for values nor written, and nothing is copied
    deeply (a deep copy of a large model costs more than the whole fake run)."""

    def __init__(self, gm: torch.fx.GraphModule, facts: GraphFacts, mode: FakeTensorMode | None) -> None:
        self.gm, self.facts, self.mode = gm, facts, mode
        self.tensors: dict[int, torch.Tensor] = {}
        self.modules: dict[int, nn.Module] = {}
        #: twin parameter id -> the parameter's name in the report
        self.names: dict[int, str] = {}

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        twin = self.tensors.get(id(t))
        if twin is None:
            if self.mode is not None:
                twin = self.mode.from_tensor(t)
            elif isinstance(t, nn.Parameter):
                twin = nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
            else:
                twin = t.detach().clone()
            self.tensors[id(t)] = twin
            if isinstance(t, nn.Parameter) and id(t) in self.facts.param_names:
                self.names[id(twin)] = self.facts.param_names[id(t)]
        return twin

    def module(self, mod: nn.Module) -> nn.Module:
        twin = self.modules.get(id(mod))
        if twin is None:
            # A new object whose __dict__ holds the same values (copy.copy would refuse parametrized modules):
            # its state dicts are replaced, never mutated.
            twin = object.__new__(type(mod))
            twin.__dict__.update(mod.__dict__)
            twin._parameters = {k: None if v is None else self.tensor(v)  # type: ignore[misc]
                                for k, v in mod._parameters.items()}
            twin._buffers = {k: None if v is None else self.tensor(v) for k, v in mod._buffers.items()}
            twin._modules = {k: None if v is None else self.module(v) for k, v in mod._modules.items()}
            self.modules[id(mod)] = twin
        return twin

    def attr(self, target: str) -> Any:
        obj: Any = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, nn.Module):
            return self.module(obj)
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj)
        return obj


def _backend_nodes(gm: torch.fx.GraphModule, facts: GraphFacts) -> set[torch.fx.Node]:
    from ._saved_table import BACKEND_DEPENDENT

    out: set[torch.fx.Node] = set()
    for nf in facts:
        n = nf.node
        is_module = n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), _BACKEND_MODULES)
        if is_module or nf.view.name in BACKEND_DEPENDENT or nf.view.name == "scaled_dot_product_attention":
            out.add(n)
    return out


def run_dryrun(gm: torch.fx.GraphModule, facts: GraphFacts, example_inputs: Any, *, real: bool) -> DryRun:
    """Steps 1–4. Raises whatever the run raises; :func:`prove` decides what that means."""
    args = as_args(example_inputs)
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    mode = None if real else FakeTensorMode(allow_non_fake_inputs=True)
    # Step 1: twins of parameters, buffers and inputs.
    twins = _Twins(gm, facts, mode)
    if mode is not None:
        def fake(a: torch.Tensor | Spec) -> Any:
            if isinstance(a, Spec):
                with mode:
                    return a.empty(device)
            if a.device.type == "meta":
                with mode:
                    t = torch.empty(a.shape, dtype=a.dtype, device=device)
                return t.requires_grad_(a.requires_grad) if a.requires_grad else t
            return mode.from_tensor(a)

        run_args = map_inputs(args, fake)
    else:
        run_args = map_inputs(args, lambda a: a.empty(device) if isinstance(a, Spec) else a)

    runner = _Runner(gm, twins, facts)
    result = DryRun(mode="real" if real else "fake")
    grad_was = torch.is_grad_enabled()
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    try:
        fake_log.setLevel(logging.CRITICAL)  # a failing meta kernel is our fallback's business, not the user's
        torch._C._set_grad_enabled(True)
        if mode is not None:
            with mode:
                out = runner.run(*run_args)
        else:
            out = runner.run(*run_args)
    finally:
        torch._C._set_grad_enabled(grad_was)
        fake_log.setLevel(level)
    result.forward_errors = runner.forward_errors

    # Step 4: what backward will reach from the outputs, and what it will find when it unpacks.
    roots = [t for t in _tensors(out) if t.requires_grad and (t.is_floating_point() or t.is_complex())]
    result.any_output_requires_grad = bool(roots)
    seen: set[Any] = set()
    frontier = [g for g in map(_grad_fn, roots) if g is not None]
    for t in roots:
        if t.is_leaf and id(t) in twins.names:
            result.reached_params.add(twins.names[id(t)])
    while frontier:
        g = frontier.pop()
        if g in seen:
            continue
        seen.add(g)
        if type(g).__name__ in ("NotImplemented", "Error") and g in runner.node_of:
            result.no_derivative.add(runner.node_of[g])
        variable = getattr(g, "variable", None)
        if variable is not None and id(variable) in twins.names:
            result.reached_params.add(twins.names[id(variable)])
        for attr in _saved_attrs(type(g)):
            try:
                getattr(g, attr)
            except RuntimeError as e:
                if _INPLACE_ERROR in str(e):
                    rec = runner.saved.get((id(g), attr))
                    saver = runner.node_of.get(g)
                    result.conflicts.append((rec.changed_at if rec else None, saver, str(e).split(" Hint:")[0]))
        frontier.extend(nxt for nxt, _ in g.next_functions if nxt is not None and nxt not in seen)
    for rec in runner.saved.values():
        if rec.silent_at is not None and rec.grad_fn in seen and rec.tensor._version == rec.version:
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
          mode: str = "fake") -> None:
    """Step 5: run the dry-run and replace the static verdicts of ``report`` in place."""
    args = as_args(example_inputs)
    real_inputs = has_real_tensors(args)
    want_real = mode == "real"
    if want_real and not real_inputs:
        raise InputError("dryrun='real' needs real tensors as example inputs, not shapes or meta tensors. "
                         "Hint: pass torch.randn(...) inputs, or use the default fake dry-run.")
    on_accelerator = any(isinstance(a, torch.Tensor) and a.device.type not in ("cpu", "meta")
                         for a in pytree.tree_leaves(args))
    if not want_real and real_inputs and on_accelerator and _backend_nodes(gm, facts):
        want_real = True
        report.notes.append("ran the dry-run on the real inputs: recurrent/attention layers save different "
                            "tensors on different backends, so the verdict is for the inputs' device")
    try:
        result = run_dryrun(gm, facts, args, real=want_real)
    except Exception as e:  # the fake run could not execute an op: try for real, else say why
        where = _failing_node_text(e)
        if isinstance(e, InputError):
            raise
        if not want_real and real_inputs:
            log.debug("fake dry-run failed (%s); running for real", e)
            try:
                result = run_dryrun(gm, facts, args, real=True)
                report.notes.append(f"the fake-tensor dry-run could not run an op{where} ({type(e).__name__}); "
                                    "ran it on the real example inputs instead")
            except Exception as e2:
                raise _input_error(e2) from e2
        elif any(k in f"{type(e).__name__} {e}" for k in _FAKE_LIMITS):
            report.notes.append(f"no dry-run: the fake-tensor run could not execute an op{where} "
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
    kept += [replace(f, verdict="dry-run") for f in report.findings
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
            new.append(replace(warning, verdict="dry-run", backend_dependent=nf.node.name in backend_names))

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
        new.append(replace(f, verdict="dry-run"))
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
