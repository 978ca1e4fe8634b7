"""In-place -> out-of-place: the graph pass behind :func:`fxgrad.fix`.

An in-place op is replaced by its out-of-place twin, and every later read of the memory it wrote is pointed at the
new values. Where only the written tensor is read later, that is re-pointing its readers (``t.mul_(2)`` ->
``t.mul(2)``). Where other tensors share that memory and are read later (its base, other views, a ``.detach()``
or ``.data`` alias, another ``get_attr`` of a parameter), the write is *replayed* as functionalization does, for that
one storage only: the new values are scattered into a clone of the base, and the later readers of the base and of
every tensor hanging off it read the same views re-made from that clone. Views are re-made by re-running the view
ops themselves (``h[:, :5]``, ``y.t()[0]``, ``s.view(-1)``, ``diagonal``, ``.detach()`` ...), so a chain of views
needs no inverse, and a ``copy_`` into a ``.detach()`` view stays invisible to autograd, as eager's write was.

What changes for the caller is rewritten only where the original cannot run otherwise, and recorded: a write into a
leaf that requires grad (a parameter, an input: forward raises, FXG103) or into a graph input that an op saved for
backward (backward raises) is rewritten, and the record says the parameter or input is no longer modified. A write
into a graph input that breaks nothing is left (FXG105) unless ``unsafe=True``. What cannot be rewritten is left in
place and recorded with its reason: an alias read through an op fxgrad cannot replay, a write into an ``expand``ed
view whose base is read, a write behind the version counter into a saved tensor (FXG106), a write under
``no_grad`` into a tensor that requires grad (FXG101), model state (buffers, parameters under ``no_grad``).

Algorithm of :class:`OutOfPlace` (run on a ``GraphModule`` that fxgrad owns; the user's modules are shared, never
modified: in-place modules are replaced by copies with ``inplace=False``):

1. Compute the facts (:func:`fxgrad.facts.compute_facts`): roles, grad mode, the target of every in-place op,
   storage roots, tensors saved for backward and overwritten behind the version counter.
2. One forward sweep over the nodes: group each in-place result with the tensor it writes (``x.add_(y)``
   returns ``x``), and record for each in-place op every *other* tensor of the same storage, made before the
   write, that a later node reads (a view, its base, a detached alias): the writes to replay.
3. Decide per in-place op: rewrite it (selected by ``only``, or breaking by the facts, safe, or allowed because the
   original raises), replay it (step 2 found aliases, and all of them hang off one root through view and alias
   steps fxgrad can re-make), or leave it and record why.
4. Rewrite the chosen ops in graph order: build the out-of-place twin (the aten ``foo_`` / ``foo`` schema pair,
   the source-level table for ``+=``, ``inplace=True``, ``out=``, in-place modules, the view op for ``t_()``, or a
   clone followed by the write when no twin exists) and re-point every later reader of the written tensor to it;
   erase the in-place node.
   4b. For a replayed write: ``base_1 = base.clone()``, the chain of views from the base to the written tensor
   re-made on ``base_1``, ``copy_`` of the twin's result into it; then every node after the write that reads the
   base or a tensor hanging off it (made before the write) reads that tensor re-made from ``base_1``.
5. Lint and recompile.

Each step touches every node and edge a constant number of times, except that a read in step 2 also visits the
in-place ops on its own storage that happened after the read tensor was created, and a replay (step 4b) walks the
tensors of one storage and their later readers: a handful in real models.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import operator
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from . import ops
from .aliasing import alias_parent, reads_after_writes, returns_target
from .capture import SourceLocation, node_origin
from .facts import GraphFacts, NodeFacts, compute_facts
from .rules import RULE_FOR_FACT

__all__ = ["Left", "OutOfPlace", "Rewrite", "render_node"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rewrite:
    """One in-place op replaced by its out-of-place twin."""

    #: the in-place node's name in the traced graph (the name ``fxgrad.analyze`` findings use)
    node: str
    #: the node that now holds the value (for in-place modules, the same node with a new module)
    new_node: str
    #: method | function | augmented | inplace-kwarg | out | module | clone-write
    kind: str
    #: the op as the traced code spelled it, e.g. ``mul_ = sigmoid.mul_(2.0)``
    before: str
    #: what replaces it, e.g. ``mul = sigmoid.mul(2.0)``
    after: str
    location: SourceLocation | None = None
    #: the findings ``fxgrad.analyze`` reported on this op (``FXG102`` ...)
    codes: tuple[str, ...] = ()
    #: what the caller sees change (an input or parameter no longer modified in place); empty when nothing does
    unsafe_change: str = ""
    #: for a write through a view or alias: the tensors sharing its memory whose later reads now see the new values
    replayed: tuple[str, ...] = ()
    #: the write went through a ``.detach()`` / ``.data`` alias: it stays invisible to autograd (the base's gradient
    #: flows as if nothing were written), as in eager
    detached: bool = False

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.before}  ->  {self.after}"


@dataclass(frozen=True)
class Left:
    """An in-place op the pass did not rewrite, and why."""

    node: str
    spelling: str
    #: the finding code the reason corresponds to (``FXG104`` alias, ``FXG105`` input ...), or ``""``
    code: str
    reason: str
    location: SourceLocation | None = None

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        code = f"{self.code} " if self.code else ""
        return f"{where}{code}`{self.spelling}` left: {self.reason}"


# --------------------------------------------------------------------------------------------------------------
# The out-of-place twin of an op: from the aten schemas, plus a table for source-level spellings.
# --------------------------------------------------------------------------------------------------------------


def _arguments(schema: torch._C.FunctionSchema) -> tuple[tuple[str, str, str, bool], ...]:
    """A schema's arguments after ``self``, without alias annotations: what a twin must accept identically."""
    out = []
    for a in schema.arguments[1:]:
        default = repr(a.default_value) if a.has_default_value() else "<required>"
        out.append((a.name, str(a.type), default, a.kwarg_only))
    return tuple(out)


@functools.cache
def _inplace_kind(base: str) -> str:
    """``"inplace"`` when aten has ``base_`` as a plain in-place op, ``"view"`` for metadata ops (``t_``)."""
    packet = getattr(torch.ops.aten, base + "_", None)
    if packet is None:
        return ""
    tags: set[Any] = set()
    for overload in packet.overloads():
        tags |= set(getattr(packet, overload).tags)
    if torch.Tag.inplace_view in tags:
        return "view"
    return "inplace" if torch.Tag.inplace in tags else ""


@functools.cache
def aten_twin(base: str) -> str | None:
    """Name of the aten op that computes what ``base_`` writes, when every overload has an identical twin.

    ``add_`` / ``add``, ``clamp_`` / ``clamp``, ``normal_`` / ``normal_functional``. ``bernoulli_(p=0.5)`` has no
    twin (``bernoulli(self)`` reads ``self`` as probabilities), so it gets ``None`` and the clone fallback.
    """
    packet = getattr(torch.ops.aten, base + "_", None)
    if packet is None or _inplace_kind(base) != "inplace":
        return None
    wanted = [
        _arguments(getattr(packet, ov)._schema)
        for ov in packet.overloads()
        if not getattr(packet, ov)._schema.overload_name.endswith("out")
    ]
    for name in (base, base + "_functional"):
        twin = getattr(torch.ops.aten, name, None)
        if twin is None:
            continue
        have = {_arguments(getattr(twin, ov)._schema) for ov in twin.overloads()}
        if all(w in have for w in wanted):
            return name
    return None


#: in-place modules whose ``inplace`` flag the pass turns off on a copy.
INPLACE_MODULES: tuple[type[nn.Module], ...] = ops.INPLACE_MODULE_TYPES


def _method_twin(method: str) -> tuple[str, Any] | None:
    """``("method", "add")`` or ``("function", torch.ops.aten.fill)`` for ``x.<method>()``; None: no twin."""
    base = method[:-1]
    name = aten_twin(base)
    if name is None:
        return None
    if name == base and callable(getattr(torch.Tensor, base, None)):
        return "method", base
    return "function", getattr(torch.ops.aten, name)


def _function_twin(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    """``torch.relu`` for ``torch.relu_``, ``F.elu`` for ``F.elu_``; None when the pair is not schema-backed."""
    fname = getattr(fn, "__name__", "")
    if not fname.endswith("_") or fname.endswith("__"):
        return None
    base = fname[:-1]
    if aten_twin(base) != base:
        return None
    for owner, twin_owner in ((torch, torch), (torch._C._nn, F), (F, F)):
        if getattr(owner, fname, None) is fn:
            twin = getattr(twin_owner, base, None)
            if callable(twin):
                return twin
    return None


@functools.cache
def _inplace_position(fn: Callable[..., Any]) -> int | None:
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("inplace") if "inplace" in names else None


# --------------------------------------------------------------------------------------------------------------
# Rendering one node as a line of code (for the record).
# --------------------------------------------------------------------------------------------------------------

_INFIX = ops.INFIX
_AUGMENTED_SYMBOL = {aug: _INFIX[plain] + "=" for aug, (plain, _) in ops.AUGMENTED.items() if plain in _INFIX}


def _fmt(a: Any) -> str:
    if isinstance(a, torch.fx.Node):
        return a.name
    if isinstance(a, slice):
        parts = ["" if v is None else _fmt(v) for v in (a.start, a.stop, a.step)]
        return ":".join(parts[:2]) + (f":{parts[2]}" if a.step is not None else "")
    if isinstance(a, tuple):
        inner = ", ".join(_fmt(x) for x in a)
        return f"({inner},)" if len(a) == 1 else f"({inner})"
    if isinstance(a, list):
        return "[" + ", ".join(_fmt(x) for x in a) + "]"
    if isinstance(a, torch.dtype):
        return str(a)
    if a is Ellipsis:
        return "..."
    return repr(a)


def _index(index: Any) -> str:
    return ", ".join(_fmt(i) for i in index) if isinstance(index, tuple) and index else _fmt(index)


def _call_args(args: Iterable[Any], kwargs: dict[str, Any]) -> str:
    return ", ".join([_fmt(a) for a in args] + [f"{k}={_fmt(v)}" for k, v in kwargs.items()])


def _qualified(fn: Any) -> str:
    if isinstance(fn, torch._ops.OpOverloadPacket):
        return f"torch.ops.aten.{fn.__name__}"
    name = getattr(fn, "__name__", str(fn))
    if fn is getattr(torch, name, None):
        return f"torch.{name}"
    if fn is getattr(F, name, None) or fn is getattr(torch._C._nn, name, None):
        return f"F.{name}"
    if fn is getattr(operator, name, None):
        return f"operator.{name}"
    return name


def render_node(node: torch.fx.Node) -> str:
    """One fx node as the line of Python that ``gm.code`` prints for it (without fx's ``= None`` bookkeeping)."""
    args, kwargs = node.args, dict(node.kwargs)
    if node.op == "call_method":
        rhs = f"{_fmt(args[0])}.{node.target}({_call_args(args[1:], kwargs)})"
    elif node.op == "call_module":
        rhs = f"self.{node.target}({_call_args(args, kwargs)})"
    elif node.op == "call_function":
        target = node.target
        if target is operator.setitem:
            return f"{_fmt(args[0])}[{_index(args[1])}] = {_fmt(args[2])}"
        if target is operator.getitem and len(args) == 2 and not kwargs:
            return f"{node.name} = {_fmt(args[0])}[{_index(args[1])}]"
        if target in _AUGMENTED_SYMBOL and len(args) == 2:
            return f"{_fmt(args[0])} {_AUGMENTED_SYMBOL[target]} {_fmt(args[1])}"
        if target in _INFIX and len(args) == 2 and not kwargs:
            rhs = f"{_fmt(args[0])} {_INFIX[target]} {_fmt(args[1])}"
        else:
            rhs = f"{_qualified(target)}({_call_args(args, kwargs)})"
    else:
        return node.format_node() or node.name
    return f"{node.name} = {rhs}"


# --------------------------------------------------------------------------------------------------------------
# The pass.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """How one in-place op is rewritten (step 3's decision, step 4's input)."""

    node: torch.fx.Node
    target: torch.fx.Node
    kind: str
    twin: Any = None
    unsafe_change: str = ""
    #: the write lands in memory that other tensors (its base, other views, aliases) read later: step 4b replays it
    replay: bool = False


#: for one in-place op: each tensor sharing its memory that is read after it -> the first node that reads it
_Aliased = dict[torch.fx.Node, torch.fx.Node]


def _root_key(node: torch.fx.Node) -> Any:
    """Two ``get_attr`` nodes of one attribute are one tensor; any other root is itself."""
    return ("attr", str(node.target)) if node.op == "get_attr" else node


def _is_clone(node: torch.fx.Node) -> bool:
    return (node.op == "call_method" and node.target == "clone") or (
        node.op == "call_function" and node.target is torch.clone)


#: the codes a left op's record names as its reason, asked of the rules that report each fact
_INPUT, _LEAF, _ALIAS, _SILENT, _NO_GRAD, _SAVED = (RULE_FOR_FACT[fact].code for fact in (
    "target", "leaf_write", "alias_read_after", "silently_written", "target_live", "overwritten"))


class OutOfPlace(PassBase):
    """Rewrite in-place ops of a ``GraphModule`` to out-of-place twins where nothing can tell the difference.

    ``select``: names of the nodes to consider (``None``: every in-place op); ``unsafe``: also rewrite writes the
    caller can see (graph inputs, parameters whose in-place write raises). ``codes`` maps node names to the
    finding codes ``fxgrad.analyze`` reported, for the record. ``user_modules``: the user's module objects; the
    pass never writes into them. After the call, :attr:`rewrites` and :attr:`left` say what happened.
    """

    def __init__(self, *, select: Collection[str] | None = None, unsafe: bool = False,
                 codes: dict[str, tuple[str, ...]] | None = None, model: nn.Module | None = None,
                 inputs_require_grad: frozenset[str] = frozenset(), select_reason: str = "") -> None:
        self.select = None if select is None else frozenset(select)
        self.select_reason = select_reason or "not selected"
        self.unsafe = unsafe
        self.codes = codes or {}
        self.model = model
        self.user_modules = {id(m) for m in model.modules()} if model is not None else set()
        self.inputs_require_grad = inputs_require_grad
        self.rewrites: list[Rewrite] = []
        self.left: list[Left] = []
        #: original node name -> the node holding its value now (for the dtype repair in ``fix``)
        self.replaced: dict[str, torch.fx.Node] = {}
        #: the graph writes through a ``.detach()`` / ``.data`` alias or reads ``.data`` (rewritten or not): where
        #: ``torch.func.functionalize`` and eager disagree (:mod:`fxgrad.decoupled` is then the reference)
        self.detached_aliases = False
        #: a rewritten write went into a leaf that requires grad (forward raised: the original cannot run)
        self.leaf_writes = False
        self._silent: dict[Any, int] = {}
        self._facts: GraphFacts | None = None
        #: nodes step 4b made that share memory with another: node -> (parent, same tensor)
        self._made: dict[torch.fx.Node, tuple[torch.fx.Node, bool]] = {}
        #: in-place nodes step 4 turned out of place where they stand (in-place modules): they own their memory now
        self._owned: set[torch.fx.Node] = set()

    # -- pre- and post-conditions --------------------------------------------------------------------------------

    def requires(self, graph_module: torch.fx.GraphModule) -> None:
        graph_module.graph.lint()

    def ensures(self, graph_module: torch.fx.GraphModule) -> None:
        graph_module.graph.lint()

    # -- the pass ------------------------------------------------------------------------------------------------

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        gm = graph_module
        # Step 1: facts.
        facts = compute_facts(gm, inputs_require_grad=self.inputs_require_grad, model=self.model)
        self._facts, self._made, self._owned = facts, {}, set()
        writes = [nf for nf in facts if nf.view.writes is not None]
        if not writes:
            return PassResult(gm, False)
        # Step 2: groups of the same tensor, and aliased writes.
        aliased = reads_after_writes(gm.graph, facts)
        self.detached_aliases = self.detached_aliases or any(
            node.op == "call_function" and node.target is getattr and node.args[1:2] == ("data",)
            for node in gm.graph.nodes)
        # Step 3: decide.
        plans = self._decide(gm, facts, writes, aliased)
        # Step 4: rewrite in graph order.
        before = {p.node: _with_module(render_node(p.node), p.node, gm) for p in plans}
        targets_all = self._module_targets(gm, plans)
        order = {n: float(i) for i, n in enumerate(gm.graph.nodes)}
        group: dict[torch.fx.Node, list[torch.fx.Node]] = {}
        canon: dict[torch.fx.Node, torch.fx.Node] = {}
        planned = {p.node: p for p in plans}
        results: list[tuple[_Plan, str, torch.fx.Node, list[torch.fx.Node], tuple[str, ...], bool]] = []
        attrs: dict[str, list[torch.fx.Node]] = {}
        for n in gm.graph.nodes:
            if n.op == "get_attr":
                attrs.setdefault(str(n.target), []).append(n)
        for node in list(gm.graph.nodes):
            nf = facts.nodes.get(node)
            if nf is None or nf.view.writes is None or nf.target is None:
                continue
            target = self._current_target(node, nf)
            c = canon.get(target, target)
            members = group.setdefault(c, [c])
            plan = planned.get(node)
            if plan is None:
                if returns_target(node):
                    canon[node] = c
                    members.append(node)
                continue
            origin_name = node.name
            new = self._build(gm, plan, target, order, targets_all)
            self._owned.add(new)
            if plan.replay:
                # Step 4b: scatter the new values into the base; later reads of its memory see them.
                value, shown, replayed, detached = self._replay(gm, node, target, new, order, attrs)
                if new is not node:
                    node.replace_all_uses_with(value)
                    gm.graph.erase_node(node)
                canon[value] = value
                group[value] = [value]
                self.replaced[origin_name] = value
                results.append((plan, origin_name, new, shown, replayed, detached))
                continue
            # Re-point: the in-place node's own users, then later readers of every name of the written tensor.
            if new is not node:
                node.replace_all_uses_with(new)
            after_m = order[node]
            for member in list(members):
                if member is node or member.graph is not gm.graph:
                    continue
                member.replace_all_uses_with(new, delete_user_cb=functools.partial(_later, order, after_m))
            if new is not node:
                gm.graph.erase_node(node)
            canon[new] = new
            group[new] = [new]
            self.replaced[origin_name] = new
            results.append((plan, origin_name, new, [], (), False))
        for plan, origin_name, new, shown, replayed, detached in results:
            origin = node_origin(new)
            after = "; ".join([_with_module(self._render_result(new), new, gm), *map(render_node, shown)])
            self.rewrites.append(Rewrite(
                node=origin_name, new_node=new.name, kind=plan.kind, before=before[plan.node], after=after,
                location=origin.location, codes=self.codes.get(origin_name, ()), unsafe_change=plan.unsafe_change,
                replayed=replayed, detached=detached))
        self._facts, self._made = None, {}
        # Step 5: post-conditions and code.
        gm.graph.lint()
        gm.recompile()
        log.debug("out-of-place pass: %d rewritten, %d left", len(self.rewrites), len(self.left))
        return PassResult(gm, bool(self.rewrites))

    # -- step 2 --------------------------------------------------------------------------------------------------

    # -- step 3 --------------------------------------------------------------------------------------------------

    def _decide(self, gm: torch.fx.GraphModule, facts: GraphFacts, writes: list[NodeFacts],
                aliased: dict[torch.fx.Node, _Aliased]) -> list[_Plan]:
        modules = dict(gm.named_modules())
        plans: list[_Plan] = []
        #: version counters a rewritten breaking write bumped: once it is out of place, the next write into the same
        #: counter is the one that bumps a saved tensor's version (the facts name only the first)
        bumped: set[Any] = set()
        #: storage -> the last write into it behind the version counter that a saved tensor sees (FXG106)
        self._silent = {facts[w.target].sroot: w.index for w in writes if w.target is not None
                        and any(facts[u.saver].reach for u in w.silently_written)}
        for nf in writes:
            node = nf.node
            if nf.target is None or nf.target_role in ("value", "control", ""):
                continue  # not a tensor write (``n += 1`` on a Python number)
            if not self.detached_aliases:
                self.detached_aliases = self._through_alias(nf.target)
            kind, twin, no_twin = self._kind(node, nf, modules)
            spelling = nf.view.spelling or nf.view.name
            code, reason, unsafe_change, replay = self._safety(nf, aliased, facts)
            if reason is None and no_twin:
                reason = no_twin
            elif reason is None and self.select is not None and node.name not in self.select and \
                    not _breaks(nf, facts) and facts[nf.target].croot not in bumped:
                code, reason = (self.codes.get(node.name) or ("",))[0], self.select_reason
            elif reason is None and self._private_clone(nf, facts):
                reason = "it writes into its own fresh clone, which nothing else has read: already out-of-place"
            if reason is not None:
                self.left.append(Left(node.name, spelling, code, reason, node_origin(node).location))
                continue
            plans.append(_Plan(node, nf.target, kind, twin, unsafe_change, replay))
            if self.select is None or node.name in self.select or _breaks(nf, facts):
                bumped.add(facts[nf.target].croot)
            self.leaf_writes = self.leaf_writes or nf.leaf_write or _LEAF in self.codes.get(node.name, ())
        return plans

    def _safety(self, nf: NodeFacts, aliased: dict[torch.fx.Node, _Aliased],
                facts: GraphFacts) -> tuple[str, str | None, str, bool]:
        """``(code, reason, change, replay)``: reason ``None`` means the op may be rewritten; ``change`` is what the
        caller then sees differently; ``replay``: the write must be replayed into its base (step 4b)."""
        target = nf.target
        assert target is not None
        name = str(target.target) if target.op == "get_attr" else target.name
        role = nf.target_role
        root = self._root(target)
        if root is not target and root in facts.nodes and facts[root].role in ("input", "param", "buffer", "constant"):
            # a write through a ``.detach()`` / ``.data`` alias lands in the input or parameter all the same
            role = facts[root].role
            name = str(root.target) if root.op == "get_attr" else root.name
        codes = self.codes.get(nf.node.name, ())
        change = ""
        if role == "input":
            vroot = facts[target].vroot
            if isinstance(vroot, torch.fx.Node) and vroot.op == "placeholder":
                name = vroot.name
            if nf.leaf_write or _LEAF in codes:
                change = (f"the caller's input `{name}` is no longer modified in place: the original raised in forward "
                          "(the input requires grad, and a leaf that requires grad cannot be written in place); to "
                          "change it on purpose, do it before the call under `with torch.no_grad():`")
            elif any(facts[u.saver].reach for u in nf.overwritten) or _SAVED in codes:
                change = (f"the caller's input `{name}` is no longer modified in place: the original's backward "
                          "raised (an op had saved the input for backward before the write)")
            elif not self.unsafe:
                return _INPUT, (f"it modifies the graph input `{name}` (or a view of it), which the caller sees; "
                                  "unsafe=True rewrites it and the caller's tensor is then left unchanged"), "", False
            else:
                change = f"the caller's input `{name}` is no longer modified in place"
        elif role == "param":
            if not (nf.leaf_write or _LEAF in codes):
                return "", f"it updates the parameter `{name}`: model state, not an activation", "", False
            change = (f"the parameter `{name}` is no longer modified in place: the original raised in forward (a "
                      "parameter is a leaf that requires grad); to change it on purpose, do it outside forward "
                      "under `with torch.no_grad():`")
        elif role == "buffer":
            return "", f"it updates the buffer `{name}`: model state, not an activation", "", False
        elif role == "constant":
            return "", f"it writes `{name}`, a tensor stored on the module", "", False
        elif role != "activation":
            return "", f"`{name}` is not an activation ({role})", "", False
        forward_raises = nf.leaf_write or _LEAF in codes  # no gradients to keep: the original never gets there
        if [u for u in nf.silently_written if facts[u.saver].reach] and not forward_raises:
            return _SILENT, ("it writes, behind autograd's version counter, into a tensor saved for backward: "
                              "an out-of-place rewrite would change the gradients"), "", False
        if not nf.grad_on and nf.target_live:
            return _NO_GRAD, (f"it runs with grad disabled on `{name}`, which requires grad: the out-of-place "
                              "result would carry no gradient, the in-place one keeps the history"), "", False
        if self._silent.get(facts[target].sroot, -1) > nf.index and not change and not _breaks(nf, facts) and \
                _SAVED not in codes:
            return _SILENT, ("a later write behind the version counter (`.data`) lands in this memory, where the "
                              "tensors this op saves live: eager's (wrong) gradients depend on it, and the rewrite "
                              "would move them"), "", False
        if nf.view.name in ops.NOT_DATA_WRITES:
            return "", "it does not write tensor data", "", False
        if _inplace_kind(nf.view.name) == "view":
            return "", None, change, False  # shape and strides of this tensor only: its aliases do not see it
        if nf.node in aliased:
            why = self._replay_blocker(nf, name, aliased[nf.node], facts)
            if why is not None:
                return _ALIAS, why, "", False
            return "", None, change, True
        return "", None, change, False

    def _replay_blocker(self, nf: NodeFacts, name: str, reads: _Aliased, facts: GraphFacts) -> str | None:
        """Why the write cannot be replayed into its base (step 4b), or None: every tensor of its memory read after
        it must hang off one root through views and aliases fxgrad can re-make from the new base."""
        target = nf.target
        assert target is not None
        if nf.overlap_write or facts[target].expanded:
            return (f"it writes `{name}`, an `expand`ed view: several elements share one memory location, so the "
                    "new values of its base are not defined")
        root = _root_key(self._root(target))
        for alias, reader in reads.items():
            if _root_key(self._root(alias)) != root:
                return (f"`{alias.name}` shares memory with `{name}` and is read after the write (by "
                        f"`{reader.name}`), through an op fxgrad cannot replay on a new base")
        base = self._root(target)
        if base.op == "get_attr":
            param = facts.params.get(self._param_name(base))
            for use in param.uses if param is not None else ():
                if use.op == "call_module" and facts.nodes[use].index > nf.index:
                    return (f"the module `{use.target}` reads `{base.target}` inside itself after the write; "
                            "fxgrad cannot point that read at the new values")
        return None

    def _param_name(self, node: torch.fx.Node) -> str:
        facts = self._facts
        assert facts is not None
        try:
            obj = facts.gm.get_parameter(str(node.target))
        except AttributeError:
            return str(node.target)
        return facts.param_names.get(id(obj), str(node.target))

    # -- alias steps: how a tensor hangs off its base (used by steps 3 and 4b) ------------------------------------

    def _alias_parent(self, node: torch.fx.Node) -> tuple[torch.fx.Node, bool] | None:
        """``(parent, same)`` when ``node`` shares ``parent``'s memory: a view, ``.detach()``/``.data`` or an
        in-place op's result (``same``: it *is* the parent); None for a tensor with memory of its own."""
        made = self._made.get(node)
        if made is not None:
            return made
        if node in self._owned:
            return None
        facts = self._facts
        nf = facts.nodes.get(node) if facts is not None else None
        if nf is None:
            return None
        if nf.view.writes is not None and nf.target is not None:
            return (self._current_target(node, nf), True) if returns_target(node) else None
        parent = alias_parent(nf)
        return (parent, False) if parent is not None else None

    def _through_alias(self, node: torch.fx.Node) -> bool:
        """``node`` hangs off its root through a ``.detach()`` / ``.data`` step."""
        facts = self._facts
        assert facts is not None
        seen = 0
        while (parent := self._alias_parent(node)) is not None and seen < 10_000:
            if node in facts.nodes and facts.nodes[node].alias_of is not None:
                return True
            node, seen = parent[0], seen + 1
        return False

    def _root(self, node: torch.fx.Node) -> torch.fx.Node:
        """The tensor ``node`` hangs off through alias steps (itself when it owns its memory)."""
        seen = 0
        while (parent := self._alias_parent(node)) is not None and seen < 10_000:
            node, seen = parent[0], seen + 1
        return node

    def _kind(self, node: torch.fx.Node, nf: NodeFacts,
              modules: dict[str, nn.Module]) -> tuple[str, Any, str | None]:
        """``(kind, twin, why-not)``: how step 4 rewrites the op, or why it cannot."""
        if node.op == "call_module":
            mod = modules.get(str(node.target))
            if mod is None or not hasattr(mod, "inplace"):
                return "module", None, "fxgrad cannot turn off in-place writes of this module"
            return "module", None, None
        if node.op == "call_method":
            method = str(node.target)
            base = method[:-1]
            if _inplace_kind(base) == "view":
                # ``s.t_()`` changes only ``s`` itself: ``s.t()`` read by every later reader of ``s`` is the same
                if callable(getattr(torch.Tensor, base, None)):
                    return "method", ("method", base), None
                return "", None, f"`{method}` changes the tensor's shape or strides in place, not its values"
            twin = _method_twin(method)
            if twin is not None:
                return ("method" if twin[0] == "method" else "function"), twin, None
            return "clone-write", None, None
        if node.op == "call_function":
            target = node.target
            if target in ops.AUGMENTED:
                return "augmented", ops.AUGMENTED[target][0], None
            if target is operator.setitem:
                return "clone-write", None, None
            if nf.view.spelling.endswith("(inplace=True)"):
                return "inplace-kwarg", target, None
            if "out" in node.kwargs and nf.view.writes is node.kwargs["out"]:
                return "out", target, None
            assert callable(target)
            base = getattr(target, "__name__", "")[:-1]
            if _inplace_kind(base) == "view":
                return "", None, f"`{base}_` changes the tensor's shape or strides in place, not its values"
            twin_fn = _function_twin(target)
            if twin_fn is not None:
                return "function", twin_fn, None
            if node.args and node.args[0] is nf.view.writes:
                return "clone-write", None, None
        return "", None, "fxgrad knows no out-of-place form of this op"

    @staticmethod
    def _private_clone(nf: NodeFacts, facts: GraphFacts) -> bool:
        """``c = x.clone(); c[i] = v``: the write goes into a copy nobody else has seen, nothing to rewrite."""
        target = nf.target
        if target is None or not _is_clone(target):
            return False
        return not any(facts.nodes[u].index < nf.index for u in target.users if u in facts.nodes)

    # -- step 4 --------------------------------------------------------------------------------------------------

    @staticmethod
    def _current_target(node: torch.fx.Node, nf: NodeFacts) -> torch.fx.Node:
        """The written node after earlier rewrites re-pointed the arguments (the facts saw the original)."""
        out = node.kwargs.get("out") if node.op == "call_function" else None
        if isinstance(out, torch.fx.Node) and nf.view.spelling.endswith("(out=...)"):
            return out
        first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        if isinstance(first, torch.fx.Node):
            return first
        assert nf.target is not None
        return nf.target

    @staticmethod
    def _module_targets(gm: torch.fx.GraphModule, plans: list[_Plan]) -> set[str]:
        """Module paths whose every call site is rewritten: their copy can take the original path."""
        chosen = {str(p.node.target) for p in plans if p.kind == "module"}
        planned = {p.node for p in plans}
        for node in gm.graph.nodes:
            if node.op == "call_module" and str(node.target) in chosen and node not in planned:
                chosen.discard(str(node.target))
        return chosen

    def _build(self, gm: torch.fx.GraphModule, plan: _Plan, target: torch.fx.Node, order: dict[torch.fx.Node, float],
               targets_all: set[str]) -> torch.fx.Node:
        node, graph = plan.node, gm.graph
        args, kwargs = tuple(node.args), dict(node.kwargs)
        pos = order[node]

        def make(op: str, tgt: Any, a: tuple[Any, ...], kw: dict[str, Any], at: float) -> torch.fx.Node:
            with graph.inserting_before(node):
                new = graph.create_node(op, tgt, a, kw)
            new.meta = dict(node.meta)
            order[new] = at
            return new

        if plan.kind == "module":
            self._swap_module(gm, node, targets_all)
            return node
        if plan.kind == "method":
            return make("call_method", plan.twin[1], args, kwargs, pos - 0.5)
        if plan.kind == "function" and node.op == "call_method":
            return make("call_function", plan.twin[1], args, kwargs, pos - 0.5)
        if plan.kind in ("function", "augmented"):
            return make("call_function", plan.twin, args, kwargs, pos - 0.5)
        if plan.kind == "inplace-kwarg":
            assert callable(node.target)
            if "inplace" in kwargs:
                kwargs.pop("inplace")
            else:
                at = _inplace_position(node.target)
                if at is not None and at < len(args):
                    args = args[:at] if at == len(args) - 1 else (*args[:at], False, *args[at + 1:])
            return make("call_function", node.target, args, kwargs, pos - 0.5)
        if plan.kind == "out":
            kwargs.pop("out")
            return make("call_function", node.target, args, kwargs, pos - 0.5)
        # clone-write: a fresh copy of the written tensor takes the write; the original stays untouched.
        clone = make("call_method", "clone", (target,), {}, pos - 0.75)
        if node.op == "call_method":
            write = make("call_method", node.target, (clone, *args[1:]), kwargs, pos - 0.5)
        else:
            write = make("call_function", node.target, (clone, *args[1:]), kwargs, pos - 0.5)
        return clone if not returns_target(node) else write

    def _replay(self, gm: torch.fx.GraphModule, node: torch.fx.Node, target: torch.fx.Node, new: torch.fx.Node,
                order: dict[torch.fx.Node, float],
                attrs: dict[str, list[torch.fx.Node]]
                ) -> tuple[torch.fx.Node, list[torch.fx.Node], tuple[str, ...], bool]:
        """Step 4b: ``new`` holds the written tensor's new values; make its base hold them, as functionalization
        does for this one storage: ``base_1 = base.clone()``, the chain of views from the base to the written
        tensor re-made on ``base_1``, ``copy_`` of ``new`` into it; then every read after the write of the base
        or of a tensor hanging off it (views, ``.detach()``/``.data`` aliases, another ``get_attr`` of the same
        parameter) reads the same view re-made from ``base_1``.

        Re-making the views on a fresh clone keeps what eager does: a ``.detach()`` or ``.data`` step in the chain
        makes the ``copy_`` invisible to autograd (the base's gradient flows through the clone as if nothing were
        written, the written values carry none), any other step records it (``CopySlices``: the gradient of the
        written region goes to ``new``). Returns the node that holds the written tensor now, the nodes to show in
        the record, the names whose later reads were re-pointed, and whether a detached alias carried the write.
        """
        graph = gm.graph
        pos = order[node]
        # Insert after the write's replacement: before the in-place node, or after a module called out of place.
        anchor = [new if new is node else node.prev]
        stamp = [pos if new is node else pos - 0.5]
        limit = pos + 0.5  # later readers have a larger position; nodes made here a smaller one
        made_here: list[torch.fx.Node] = []

        def make(op: str, tgt: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 parent: tuple[torch.fx.Node, bool] | None = None) -> torch.fx.Node:
            with graph.inserting_after(anchor[0]):
                made = graph.create_node(op, tgt, args, kwargs)
            made.meta = dict(node.meta)
            stamp[0] += 1e-6
            order[made] = stamp[0]
            anchor[0] = made
            made_here.append(made)
            if parent is not None:
                self._made[made] = parent
            return made

        # The chain from the written tensor up to its root.
        chain: list[tuple[torch.fx.Node, bool]] = []
        root = target
        while (parent := self._alias_parent(root)) is not None:
            chain.append((root, parent[1]))
            root = parent[0]
        shown: list[torch.fx.Node] = []
        remade: dict[torch.fx.Node, torch.fx.Node] = {}  # each step of the chain, re-made on the new base
        if all(same for _, same in chain):
            base = value = new
        else:
            base = make("call_method", "clone", (root,), {})
            view = base
            for step, same in reversed(chain):
                if not same:
                    view = make(step.op, step.target, (view, *step.args[1:]), dict(step.kwargs), (view, False))
                remade[step] = view
            value = make("call_method", "copy_", (view, new), {}, (view, True))
            shown = list(made_here)
        # Every tensor of this memory made before the write, and every later get_attr of the same attribute.
        regen: dict[torch.fx.Node, torch.fx.Node] = {}
        roots = [root]
        if root.op == "get_attr":
            roots = attrs.get(str(root.target), [root])
        family: list[torch.fx.Node] = []
        for r in roots:
            if order.get(r, -1.0) >= pos:
                for user in [u for u in r.users if order.get(u, -1.0) > limit]:
                    user.replace_input_with(r, base)
                continue
            regen[r] = base
            family.append(r)
        for member in family:  # (grows while it is walked: breadth-first over alias steps made before the write)
            for user in member.users:
                if order.get(user, -1.0) < pos and user not in regen and user is not node:
                    parent = self._alias_parent(user)
                    if parent is not None and parent[0] is member:
                        regen[user] = regen[member] if parent[1] else _PENDING
                        family.append(user)
        for step, _ in chain:
            regen[step] = remade.get(step, value)
        regen[target] = value

        def remake(n: torch.fx.Node) -> torch.fx.Node:
            have = regen.get(n, _PENDING)
            if have is not _PENDING:
                assert isinstance(have, torch.fx.Node)
                return have
            parent = self._alias_parent(n)
            assert parent is not None
            up = remake(parent[0])
            made = up if parent[1] else make(n.op, n.target, (up, *n.args[1:]), dict(n.kwargs), (up, False))
            regen[n] = made
            return made

        if new is node and value is not node:  # a module called out of place: its later readers read the base
            node.replace_all_uses_with(value, delete_user_cb=functools.partial(_later, order, limit))
        written = {target, *(step for step, _ in chain)}
        replayed: list[str] = []
        for member in family:
            later = [u for u in member.users if order.get(u, -1.0) > limit]
            if not later:
                continue
            fresh = remake(member)
            for user in later:
                user.replace_input_with(member, fresh)
            if member not in written:
                replayed.append(member.name)
        detached = any(self._facts is not None and step in self._facts.nodes
                       and self._facts.nodes[step].alias_of is not None for step, _ in chain)
        return value, shown, tuple(dict.fromkeys(replayed)), detached

    def _swap_module(self, gm: torch.fx.GraphModule, node: torch.fx.Node, targets_all: set[str]) -> None:
        """Point ``node`` at a copy of its module with ``inplace=False``; the user's module is never touched."""
        path = str(node.target)
        original = gm.get_submodule(path)
        if id(original) not in self.user_modules and getattr(original, "inplace", None) is False:
            return  # an earlier call site of this path already installed the copy
        replacement = _copy_with_inplace_off(original)
        *prefix, field = path.split(".")
        parent: nn.Module = gm
        owned = True
        for item in prefix:
            parent = getattr(parent, item)
            if id(parent) in self.user_modules:
                owned = False
        if path in targets_all and owned and id(gm) not in self.user_modules:
            setattr(parent, field, replacement)
            return
        base = path.replace(".", "_") + "_out_of_place"
        name, i = base, 1
        while hasattr(gm, name):
            name, i = f"{base}_{i}", i + 1
        gm.add_submodule(name, replacement)
        node.target = name

    @staticmethod
    def _render_result(new: torch.fx.Node) -> str:
        lines = []
        prev = new.prev
        if new.op != "call_module" and prev.op == "call_method" and prev.target == "clone" and new.args and \
                new.args[0] is prev:
            lines.append(render_node(prev))
        lines.append(render_node(new))
        if _is_clone(new):
            nxt = new.next
            if nxt.op == "call_function" and nxt.target is operator.setitem:
                lines.append(render_node(nxt))
        return "; ".join(lines)


#: a tensor of the family whose re-made view is not built yet
_PENDING: Any = object()


def _with_module(text: str, node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    """``relu = self.relu(x)`` reads the same before and after; the module's flag is the difference."""
    if node.op != "call_module":
        return text
    mod = gm.get_submodule(str(node.target))
    return f"{text}  # nn.{type(mod).__name__}(inplace={getattr(mod, 'inplace', None)})"


def _breaks(nf: NodeFacts, facts: GraphFacts) -> bool:
    """The facts say eager raises at this write (forward) or because of it (backward): a finding the analysis does
    not report once an earlier op made forward raise, so ``select`` may lack it."""
    return nf.leaf_write or nf.overlap_write or any(facts[u.saver].reach for u in nf.overwritten)


def _later(order: dict[torch.fx.Node, float], than: float, user: torch.fx.Node) -> bool:
    return order.get(user, -1.0) > than


def _copy_with_inplace_off(module: nn.Module) -> nn.Module:
    """A shallow copy with its own attribute dicts: shares parameters and buffers, not the ``inplace`` flag."""
    new = copy.copy(module)
    for key, value in list(vars(new).items()):
        if isinstance(value, dict):
            new.__dict__[key] = copy.copy(value)
    new.__dict__["inplace"] = False
    return new
