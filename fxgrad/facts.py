"""Static facts about every node of a faithful graph, computed in two linear passes.

The rules never look at the graph directly: they read these facts. The pass models what autograd does, not
what ops are called:

* **Value roles**: parameter, buffer, graph input, constant, activation, or a plain Python value.
* **Grad mode** at every node, from the ``_set_grad_enabled`` / inference-mode nodes the tracer kept.
* **Aliasing** with three roots per tensor, because autograd has three notions of "the same tensor":
  ``vroot`` (differentiable views: an in-place op through a view rebases the base's history),
  ``croot`` (one version counter: views *and* ``.detach()`` share it; ``.data`` does not), and
  ``sroot`` (one storage: all of them, ``.data`` included).
* **Mutation order**: after an in-place op ``m`` on a tensor, every later read of that tensor or an alias sees
  ``m``'s result; reads are re-pointed to the latest mutation (the node's *state*), so gradient flow follows
  the values the program really uses.
* **Requires-grad** (``live``) forward, and **reachability** backward: whether a gradient from the output
  reaches each node (``reach``), reaches it non-zero (``reach_nz``), or its value reaches the output at all
  (``data_reach``); for nodes whose gradient is lost, the cut that loses it (``cause``).
* **Saved tensors**: which tensors each op saves for backward (the static table in :mod:`fxgrad.ops`), and
  which later in-place op bumps their version (an error at backward) or writes their storage behind the
  version counter (silently wrong gradients).

Algorithm of :func:`compute_facts`:

0. Plan, from the op views alone, in reverse order: whether any op writes in place, and for each storage the
   last write that may land in it (by name, so an over-approximation). A saved tensor only matters if a later
   write reaches its storage: records nobody could ever read are not made.
1. Forward, in graph order: grad mode, role, op view, effective inputs (re-pointed to the latest mutation),
   differentiability of each input edge, ``live``, alias roots; mutations bump version counters and settle
   the pending saved tensors of that storage; then the node's own saved tensors are recorded.
2. Backward, in reverse order: ``reach``, ``reach_nz``, ``data_reach`` and ``cause`` from the output.
3. Parameters: each trainable parameter's verdict from the reach of the nodes that use it.

Every pass touches each node and each edge a constant number of times: linear in the size of the graph. What
depends only on an op's name, a call target or a module is worked out once (:class:`_OpTraits`,
:class:`fxgrad.ops.OpViewer`); a known leaf module's calls are decided during the module walk, while the module
is at hand.

Cost. The passes run at about a tenth of what ``torch.fx.symbolic_trace`` costs per node, so the code on the
per-node path is written for it: most nodes are *plain* (a differentiable op with grad enabled that writes
nothing and makes no view) and :meth:`_Pass._op` handles them itself, common writes go to :meth:`_Pass._inplace`,
the rest to :meth:`_Pass._general`; nodes of the same kind share one op view; a parameter's uses are appended to
a list the walk hands to its module, with no lookup; and cyclic GC is paused (:mod:`fxgrad.gcpause`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

import torch
import torch.fx
from torch import nn
from torch.autograd import grad_mode
from torch.fx import Node

from . import backends, ops
from ._saved_table import BACKEND_DEPENDENT, SAVED
from .gcpause import gc_paused
from .ops import OpView

__all__ = ["GraphFacts", "NodeFacts", "ParamFacts", "SavedUse", "compute_facts"]

Root = Hashable
#: what a node's value is; "value": computed from constants only, "control": grad-mode switches and the like
Role = Literal["param", "buffer", "input", "constant", "activation", "value", "control", "output"]


# slots: one per saved tensor a later write may reach (up to several per node): no instance dict each
@dataclass(slots=True)
class SavedUse:
    """A tensor that ``saver`` saved for backward, and the in-place op that later overwrote it, if any."""

    saver: torch.fx.Node
    tensor: Any  # the node whose value was saved, or a parameter name
    arg: str  # schema name ("self", "other", "result" ...)
    croot: Root
    sroot: Root
    backend_dependent: bool = False
    #: the backend kernel that saves it, where :mod:`fxgrad.backends` knows the choice (None: the static table)
    backend: backends.Choice | None = None


_NONE: tuple[()] = ()
#: the edge of a differentiable op's inputs: differentiable, and not zero-gradient
_PLAIN_EDGE = (True, False)


class NodeFacts:
    """What the passes found out about one node.

    One is made per node, so its layout is chosen for cost. The facts most nodes set are slots, set by
    ``__init__`` (an op's roots and identity start as the node itself); the facts few nodes set (cuts, writes into
    saved tensors, aliases) are class attributes that hold their defaults, and a node that sets one gets an
    instance dict for it. A plain op then costs 20 stores rather than 39, and 224 bytes rather than 312.
    """

    # (in this order in memory: what every pass reads first)
    __slots__ = ("node", "index", "view", "role", "grad_on", "live", "deps", "edge", "reach",  # noqa: RUF023
                 "reach_nz", "data_reach", "cause", "vroot", "croot", "sroot", "ident", "target", "target_role",
                 "target_live", "is_view", "__dict__")

    node: torch.fx.Node
    index: int
    view: OpView
    role: Role
    grad_on: bool
    live: bool
    #: effective inputs: the producer of each input's value (the input, or the latest write into it). Most ops
    #: share the tuple or list of the states their inputs read: no allocation of their own.
    deps: Sequence[torch.fx.Node]
    #: (differentiable, zero-gradient) of every input edge, unless ``edges`` gives one per input
    edge: tuple[bool, bool]
    # set by the backward pass
    reach: bool
    reach_nz: bool
    data_reach: bool
    cause: torch.fx.Node | None
    # aliasing (see the module docstring)
    vroot: Root
    croot: Root
    sroot: Root
    #: the tensor object this node's value is: an in-place op returns its target, ``nn.Identity`` its input
    ident: Any
    #: for in-place ops: the node written to, and what its write does
    target: torch.fx.Node | None
    target_role: Role | Literal[""]  # "": writes nothing
    target_live: bool
    #: made by a view op (or ``x[...]``): shares its base's memory under another shape
    is_view: bool

    # -- the facts few nodes set (class-level defaults; see the class docstring) --
    #: the edges of an op whose inputs differ (an in-place op's target, an op under no_grad), one per input
    edges: Sequence[tuple[bool, bool]] | None = None
    #: why this node stops gradients: detach | data | no_grad | leaves | requires_grad | integer | rebuild
    cut: str | None = None
    zero: bool = False
    #: autograd has no derivative for this op: backward raises when it reaches it
    no_derivative: bool = False
    #: eager forward raises here: autograd rejects the call (the error's text)
    forward_error: str | None = None
    overwritten: list[SavedUse] = _NONE  # type: ignore[assignment]  # version bumped: backward raises
    silently_written: list[SavedUse] = _NONE  # type: ignore[assignment]  # storage written behind the counter
    #: the live input whose gradient this node drops
    cut_input: torch.fx.Node | None = None
    leaf_write: bool = False
    #: a write of autograd metadata (``detach_``, ``requires_grad_``) rather than data
    meta_write: bool = False
    #: the write goes into an expanded view (several elements, one memory location): forward raises
    overlap_write: bool = False
    #: a view returned by ``split``/``chunk``/``unbind`` (or a view of one): in-place writes are forbidden
    multi_view: bool = False
    #: a view made by ``expand``: several elements share one memory location
    expanded: bool = False
    #: for ``.detach()`` / ``.data``: the tensor it is an alias of (writing through it means writing that tensor)
    alias_of: Any = None
    alias_read_after: bool = False
    #: the first alias of the written tensor read after the write (what makes FXG104 true)
    alias_seen: torch.fx.Node | None = None
    unknown_savers: list[torch.fx.Node] = _NONE  # type: ignore[assignment]
    #: an in-place activation whose backward autograd computes from its output, with a negative slope it cannot
    #: invert: (the kind of backward, ``leaky_relu`` or ``elu``; the slope). See :func:`_result_slopes`.
    result_slope: tuple[str, float] | None = None
    #: an in-place form without a derivative whose out-of-place form has one (``acosh_``)
    inplace_no_derivative: bool = False

    def __init__(self, node: torch.fx.Node, index: int, view: OpView, grad_on: bool = True) -> None:
        self.node, self.index, self.view = node, index, view
        self.role, self.grad_on, self.live = "activation", grad_on, False
        self.deps, self.edge = _NONE, _PLAIN_EDGE
        self.reach = self.reach_nz = self.data_reach = False
        self.cause = None
        self.vroot = self.croot = self.sroot = self.ident = node
        self.target, self.target_role, self.target_live, self.is_view = None, "", False, False

    def __repr__(self) -> str:
        return f"NodeFacts({self.node.name}, role={self.role}, live={self.live}, reach={self.reach})"

    @property
    def zero_edge(self) -> bool:
        """Some input edge has a zero gradient almost everywhere (``round``, ``sign`` ...)."""
        return self.edge[1] if self.edges is None else any(z for _, z in self.edges)

    def dep_edges(self) -> Iterator[tuple[torch.fx.Node, bool, bool]]:
        """Each input edge: (producer, differentiable, zero-gradient)."""
        edges = self.edges if self.edges is not None else repeat(self.edge)
        return ((dep, diff, zero) for dep, (diff, zero) in zip(self.deps, edges, strict=False))


# slots: one per parameter (8,567 in the 10,000-node benchmark ResNet): no instance dict each
@dataclass(slots=True)
class ParamFacts:
    name: str
    status: Literal["ok", "no-grad", "zero-grad", "unused"]
    cause: torch.fx.Node | None = None
    uses: list[torch.fx.Node] = field(default_factory=list)


@dataclass
class GraphFacts:
    gm: torch.fx.GraphModule
    nodes: dict[torch.fx.Node, NodeFacts]
    params: dict[str, ParamFacts]
    #: parameter object id -> the name ``named_parameters()`` gives (tied weights share one name)
    param_names: dict[int, str]
    #: the nodes a rule may have something to say about, in graph order (a superset: the forward pass lists every
    #: op it did not find plain); ``None``: all of them
    flagged: list[NodeFacts] | None = None

    def __post_init__(self) -> None:
        self.lost: dict[torch.fx.Node, list[str]] = {}
        for p in self.params.values():
            if p.status in ("no-grad", "zero-grad") and p.cause is not None:
                self.lost.setdefault(p.cause, []).append(p.name)

    def __iter__(self) -> Iterator[NodeFacts]:
        return iter(self.nodes.values())

    def __getitem__(self, node: torch.fx.Node) -> NodeFacts:
        return self.nodes[node]


def _flat_nodes(a: Any) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []
    torch.fx.node.map_arg(a, out.append)
    return out


_METADATA_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "is_leaf", "layout",
                             "names", "grad_fn"})
#: ops whose input edges are fixed by their name: (differentiable, cut kind, result is a plain value, zero grad)
_EDGES: dict[str, tuple[bool, str | None, bool, bool]] = {
    **{n: (False, "detach", False, False) for n in ops.DETACH},
    "getattr.data": (False, "data", False, False),
    **{n: (False, "leaves", True, False) for n in ops.LEAVES_AUTOGRAD},
    **{n: (False, "rebuild", False, False) for n in ops.REBUILDS},
    **{n: (False, None, True, False) for n in ops.METADATA},
    **{n: (False, "integer", False, False) for n in ops.INTEGER_RESULT},
    **{n: (False, None, False, False) for n in ops.FRESH},
    **{n: (True, None, False, True) for n in ops.ZERO_GRADIENT},
}
#: ops returning several tensors that the schemas do not describe as such
_TUPLE_OPS = frozenset({"sort", "topk", "kthvalue", "mode", "std_mean", "var_mean", "aminmax", "frexp", "lstm", "gru",
                        "rnn_tanh", "rnn_relu", "unique", "unique_consecutive", "histogram", "lu", "qr", "svd",
                        "slogdet", "eig", "eigh", "cummax", "cummin"})
#: attributes that are differentiable views of the tensor
_VIEW_ATTRS = frozenset({"T", "mT", "H", "mH", "real", "imag"})


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


#: (differentiable, cut kind, result is a plain value, zero gradient) of a node's input edges
Edge = tuple[bool, str | None, bool, bool]
_DIFFERENTIABLE: Edge = (True, None, False, False)
_INTEGER: Edge = (False, "integer", False, False)
#: what an op saved, in the generated table's format: (argument names, {input: names saved for its gradient})
SavedEntry = tuple[tuple[str, ...], dict[str, tuple[str, ...]]]
#: roles whose in-place writes the rules tell apart from writes into activations
_DATA_ROLES = frozenset({"input", "buffer", "constant", "param"})
#: the horizon of a storage any later write may reach (a writable parameter's)
_ANY_TIME = sys.maxsize
#: call targets that read or change grad mode (the faithful tracer keeps them as nodes)
_GRAD_MODE_TARGETS = frozenset({torch.is_grad_enabled, torch._C._set_grad_enabled, grad_mode._enter_inference_mode,
                                grad_mode._exit_inference_mode})


def _name_edge(name: str) -> Edge | None:
    """The input edges of an op whose name alone decides them; ``None`` where the arguments do (``getitem``,
    ``requires_grad_``, casts)."""
    fixed = _EDGES.get(name)
    if fixed is not None:
        return fixed
    if name == "getitem" or name == "requires_grad_" or name in ops.CASTS:
        return None
    if name.startswith("getattr."):
        attr = name[8:]
        if attr == "indices":
            return _INTEGER
        if attr in ops.DIFFERENTIABLE_FIELDS or attr in _VIEW_ATTRS:
            return _DIFFERENTIABLE
        return (False, None, attr in _METADATA_ATTRS, False)
    return _DIFFERENTIABLE


def _alias_kind(name: str) -> str | None:
    """How the result of an op that does not write aliases its first argument, by the op's name: it is the
    ``same`` tensor, a ``data`` or ``detach`` alias, a ``getitem`` (a view unless the index copies), a ``view``,
    or ``None``: a new tensor."""
    if name in ops.PASS_THROUGH:
        return "same"
    if name == "getattr.data":
        return "data"
    if name in ops.DETACH:
        return "detach"
    if name == "getitem":
        return "getitem"
    if ops.is_view_op(name) or (name.startswith("getattr.") and name[8:] in _VIEW_ATTRS):
        return "view"
    return None


@functools.cache
def _table_entry(name: str, inplace: bool) -> SavedEntry | None:
    """What the op saves, from the static tables (cached: they never change)."""
    entry = (SAVED.get(name + "_") if inplace else None) or SAVED.get(name) or ops.REFLECTED_SAVED.get(name)
    if entry is None and name.endswith("_"):
        entry = SAVED.get(name[:-1])
    return entry


def _possible_saves(name: str, entry: SavedEntry) -> frozenset[str]:
    """Every name the op may save, whichever inputs need grad."""
    tables = [entry[1]]
    override = ops.SCALAR_OVERLOADS.get(name)
    if override is not None:
        tables.append(override[1])
    return frozenset(n for table in tables for names in table.values() for n in names)


def _inplace_phases(name: str) -> tuple[bool, bool]:
    """Whether recording what the in-place form of ``name`` saves can find anything (before the write, after it).

    Before the write only inputs other than ``self`` count (autograd clones ``self``); an op that saves nothing for
    any input records nothing after it either. An op without a table entry is noted after the write as an unknown
    saver. Skipping a phase that cannot find anything skips no state: its reads repeat reads the node already made.
    """
    entry = _table_entry(name, True)
    if entry is None:
        return False, True
    saved = _possible_saves(name, entry)
    return any(n != "self" and not n.startswith("result") for n in saved), bool(saved)


@dataclass(frozen=True)
class _OpTraits:
    """What an op's name alone decides: one record per name, made on first sight (a graph repeats a few names many
    times, and some answers ask the schemas)."""

    #: the input edges (see :func:`_name_edge`); ``None`` where the arguments decide
    edge: Edge | None
    #: how the result of an op that does not write aliases its first argument (see :func:`_alias_kind`)
    alias: str | None
    #: ``detach_`` / ``requires_grad_``: a write of autograd metadata, not data
    meta_write: bool
    no_derivative: bool
    #: recording what the in-place form saves can find something, before the write and after it
    saves_before_write: bool
    saves_after_write: bool
    #: what the op (not in place) saves, from the tables, and every name it may save
    entry: SavedEntry | None
    may_save: frozenset[str]
    #: what its in-place form saves
    inplace_entry: SavedEntry | None


_TRAITS: dict[str, _OpTraits] = {}


def _traits(name: str) -> _OpTraits:
    """The traits of ``name`` (callers on a hot path try ``_TRAITS.get(name)`` first: a call costs more)."""
    traits = _TRAITS.get(name)
    if traits is None:
        before, after = _inplace_phases(name)
        entry = _table_entry(name, False)
        traits = _TRAITS[name] = _OpTraits(_name_edge(name), _alias_kind(name), name in ops.META_WRITES,
                                           name in ops.NO_DERIVATIVE or name in ops.NO_DERIVATIVE_FOR, before,
                                           after, entry,
                                           _possible_saves(name, entry) if entry is not None else frozenset(),
                                           _table_entry(name, True))
    return traits


def _same_tensor(nf: NodeFacts, base: NodeFacts) -> None:
    """``nf``'s result is ``base``'s tensor itself (an in-place op returns its target): the same roots, identity and
    view flags."""
    nf.vroot, nf.croot, nf.sroot = base.vroot, base.croot, base.sroot
    nf.is_view, nf.ident = base.is_view, base.ident
    if base.multi_view:  # (rare facts are set only when true: see :class:`NodeFacts`)
        nf.multi_view = True
    if base.expanded:
        nf.expanded = True


def _all_values(states: Sequence[torch.fx.Node], nodes: dict[torch.fx.Node, NodeFacts]) -> bool:
    """Every input is a plain Python value (``x.size(0) * 2``): so is the result."""
    for s in states:
        sf = nodes.get(s)
        if sf is None or sf.role != "value":
            return False
    return True


class _Pass:
    def __init__(self, gm: torch.fx.GraphModule, inputs_require_grad: frozenset[str],
                 model: nn.Module | None) -> None:
        self.gm = gm
        #: the user's model: a GraphModule only keeps the submodules its graph uses, the report needs them all
        self.model = model if model is not None else gm
        self.modules: dict[str, nn.Module] = {}
        #: the parameters that require grad, in ``named_parameters()`` order: canonical name and its uses
        self.trainable: list[tuple[str, list[torch.fx.Node]]] = []
        #: parameter object id -> the name ``named_parameters()`` gives (tied weights share one name)
        self.param_names: dict[int, str] = {}
        #: qualified name -> the root of the parameter there (on demand: only writes into parameters ask)
        self.param_roots: dict[str, Root] = {}
        #: roots of leaves that require grad: an in-place write on them (or a view) with grad enabled raises.
        #: Those of parameters are added when a write first reaches a parameter (most graphs never write one).
        self.leaf_roots: set[Root] = set()
        self._param_leaves_added = False
        #: call_module target -> the trainable parameters a call uses, with their uses (leaf modules: filled by the
        #: walk)
        self.module_param_cache: dict[str, list[tuple[str, list[torch.fx.Node]]]] = {}
        self.viewer = ops.OpViewer(self.modules, self.model)
        #: canonical parameter name -> the nodes that use it, in graph order (see :attr:`uses`)
        self._uses: dict[str, list[torch.fx.Node]] | None = None
        self._walk_modules()
        self._buffer_ids: set[int] | None = None
        self.inputs_require_grad = inputs_require_grad
        self.nodes: dict[torch.fx.Node, NodeFacts] = {}
        #: storage root -> nodes that may have saved a tensor of it
        self.deferred: dict[Root, list[NodeFacts]] = {}
        self.materialized: set[torch.fx.Node] = set()
        self.any_writes = True
        #: some write may hit a parameter's storage (a ``get_attr`` of it, or an op that writes its own weight)
        self.params_writable = True
        #: storage root -> the index of the last write that may land in it (see :meth:`_plan`); parameters, when
        #: writable at all, get :data:`_ANY_TIME` as their roots come up
        self.last_write: dict[Root, int] = {}
        #: parameters frozen by ``requires_grad_(False)`` in forward, and the node that froze them
        self.frozen: dict[str, torch.fx.Node] = {}
        self.grad_values: dict[torch.fx.Node, bool] = {}  # is_grad_enabled nodes -> their value
        self.mode_stack: list[bool] = []
        self.grad_on = True
        self.last_mut: dict[Root, NodeFacts] = {}
        #: the index of the latest write (of data or autograd state): a node made at or after it reads as itself
        self.latest_write = -1
        self.last_data_write: dict[Root, NodeFacts] = {}
        self.pending: dict[Root, list[SavedUse]] = {}
        self.pending_unknown: dict[Root, list[torch.fx.Node]] = {}
        #: call target -> the custom ``autograd.Function`` behind it, if any
        self.functions: dict[Any, type | None] = {}
        #: the ops that are not plain (see :meth:`_op`), in graph order: the only nodes that can cut, zero, raise or
        #: write, so the only ones the rules need to see (:attr:`GraphFacts.flagged`)
        self.flagged: list[NodeFacts] = []

    def _walk_modules(self) -> None:
        """One depth-first walk over the module tree, children in order: the modules, and the order and names
        ``named_parameters()`` gives (which, like its friends, would walk the tree again). A GraphModule traced
        from the model shares its submodules, so a qualified name means the same parameter in both. Leaf modules
        get the trainable parameters a call of them uses on the way, and what their calls are (see
        :meth:`ops.OpViewer.module_kind`): the walk is the one time each module is at hand, so it does the
        per-module work inline (at 10,000 nodes it is a fifth of the whole analysis)."""
        stack: list[tuple[str, nn.Module]] = [("", self.model)]
        pop, push = stack.pop, stack.append
        visited: set[int] = set()
        modules, module_params = self.modules, self.module_param_cache
        param_names, all_trainable = self.param_names, self.trainable
        viewer = self.viewer
        module_kind, by_class, decided = viewer.module_kind, viewer.by_class, viewer.decided
        #: name -> uses list, made only when a tied parameter comes up again (see :attr:`uses`)
        by_name: dict[str, list[torch.fx.Node]] | None = None
        while stack:
            path, mod = pop()
            own, children = mod._parameters, mod._modules
            if children:  # a container met again (shared, or a cycle) is walked once; a shared leaf is harmless
                key = id(mod)
                if key in visited:
                    continue
                visited.add(key)
                modules[path] = mod
            trainable: list[tuple[str, list[torch.fx.Node]]] = _NONE  # type: ignore[assignment]
            if own:
                for pname, param in own.items():
                    if param is None:
                        continue
                    key, trains = id(param), param.requires_grad
                    name = param_names.get(key)
                    if name is None:  # first sight: the name named_parameters() gives it
                        name = param_names[key] = f"{path}.{pname}" if path else pname
                        if not trains:
                            continue
                        entry: tuple[str, list[torch.fx.Node]] = (name, [])
                        all_trainable.append(entry)
                        if by_name is not None:
                            by_name[name] = entry[1]
                    elif trains:  # a tied parameter, seen again under another module
                        if by_name is None:
                            by_name = dict(all_trainable)
                        entry = (name, by_name[name])
                    else:
                        continue
                    if not trainable:
                        trainable = []
                    trainable.append(entry)
            if children:
                for name, child in reversed(children.items()):
                    if child is not None:
                        push((f"{path}.{name}" if path else name, child))
            else:
                module_params[path] = trainable
                kind = by_class.get(type(mod))
                if kind is not None:  # (most leaves: a class whose calls never depend on the instance)
                    decided[path] = kind
                elif module_kind(path, mod) is None:  # (a known leaf's calls never ask for it by name)
                    modules[path] = mod

    @property
    def uses(self) -> dict[str, list[torch.fx.Node]]:
        """Canonical parameter name -> the nodes that use it, in graph order (module calls, ``get_attr`` s). The
        walk makes the list of each trainable parameter and hands it to the modules that own it, so noting a use
        is an append; this index by name is made only for the rare uses found by name."""
        if self._uses is None:
            self._uses = dict(self.trainable)
        return self._uses

    def _add_param_leaves(self) -> None:
        """The trainable parameters are leaves that require grad (asked for the first time a write reaches one)."""
        if not self._param_leaves_added:
            self._param_leaves_added = True
            self.leaf_roots.update(("param", name) for name, _ in self.trainable)

    @property
    def buffer_ids(self) -> set[int]:
        """Ids of every buffer of the model (only ``get_attr`` of a tensor asks: most graphs never do)."""
        if self._buffer_ids is None:
            self._buffer_ids = {id(buf) for mod in self.model.modules() for buf in mod._buffers.values()
                                if buf is not None}
        return self._buffer_ids

    # -- helpers ------------------------------------------------------------------------------------------------

    def state(self, a: torch.fx.Node, reader: NodeFacts) -> torch.fx.Node:
        """The node whose value a read of ``a`` sees (see :meth:`states`)."""
        return self.states((a,), reader)[0]

    def states(self, args: Sequence[torch.fx.Node], reader: NodeFacts) -> list[torch.fx.Node]:
        """The nodes whose values ``reader``'s reads of ``args`` see: for each, the latest in-place op on its view
        group after it, if any.

        Also notes, on the latest data write into a read tensor's storage, that a *different* tensor sharing that
        memory (a view, the base, a ``.detach()`` or ``.data`` alias) is read after it: FXG104.
        """
        nodes, last_mut, last_data_write = self.nodes, self.last_mut, self.last_data_write
        latest = self.latest_write
        out: list[torch.fx.Node] = []
        for a in args:
            fa = nodes[a]  # (an input is always an earlier node of the graph: it has its facts)
            if fa.index >= latest:  # nothing was written since ``a`` was made
                out.append(a)
                continue
            if last_data_write:
                w = last_data_write.get(fa.sroot)
                if w is not None and w.index > fa.index and fa.ident is not None:
                    wt = nodes[w.target]  # type: ignore[index]  # a data write always has its target
                    if ((fa.ident != wt.ident and fa.ident != wt.alias_of)
                            # ``res = h; h = relu_(h); ... res``: the old name, read although the result has its own
                            or (a is w.target and len(w.node.users) > 0 and reader is not w)):
                        w.alias_read_after = True
                        if w.alias_seen is None:
                            w.alias_seen = a
            m = last_mut.get(fa.vroot)
            out.append(a if m is None or m.index <= fa.index else m.node)
        return out

    def _module_params(self, target: str) -> list[tuple[str, list[torch.fx.Node]]]:
        """Trainable parameters a leaf module uses, by their canonical names (cached: modules repeat). Shared by
        the nodes that call the module, and read only."""
        cached = self.module_param_cache.get(target)
        if cached is None:
            cached = self.module_param_cache[target] = self._trainable_params(target)
        return cached

    def _trainable_params(self, target: str) -> list[tuple[str, list[torch.fx.Node]]]:
        """For a module the walk did not see as a leaf (it has children, or it is not the model's)."""
        mod = self.modules.get(target)
        if mod is None:
            return _NONE  # type: ignore[return-value]
        found: list[tuple[str, list[torch.fx.Node]]] = []
        named = mod._parameters.items() if not mod._modules else mod.named_parameters()
        for n, p in named:
            if p is not None and p.requires_grad:
                name = self.param_names.get(id(p)) or f"{target}.{n}"
                found.append((name, self.uses.setdefault(name, [])))
        return found or _NONE  # type: ignore[return-value]

    def _use(self, pname: str, node: torch.fx.Node) -> None:
        self.uses.setdefault(pname, []).append(node)

    def _param_root_of(self, qualname: str) -> Root:
        """The root of the parameter at ``qualname`` (asked only where parameters are writable)."""
        root = self.param_roots.get(qualname)
        if root is None:
            root = ("param", self.param_names.get(id(_attr(self.gm, qualname)), qualname))
            self.param_roots[qualname] = root
            self.last_write[root] = _ANY_TIME
        return root

    # -- step 1 -------------------------------------------------------------------------------------------------

    def forward(self) -> None:
        nodes = list(self.gm.graph.nodes)
        viewer = self.viewer
        # Made in graph order, in a walk of their own: made inside :meth:`_plan`'s walk from the end, the pass was
        # 10 % slower on a 100,000-node graph (the views made per call, and what they read, then lie in memory
        # in the reverse of the order every later step reads them).
        views = [viewer(node) for node in nodes]
        self._plan(nodes, views)
        facts = self.nodes
        for index, node in enumerate(nodes):
            nf = facts[node] = NodeFacts(node, index, views[index], self.grad_on)
            op = node.op
            if op == "call_function" and node.target in _GRAD_MODE_TARGETS:
                self._grad_mode_node(nf)
                continue
            if op == "placeholder":
                nf.role = "input"
                nf.live = str(node.target) in self.inputs_require_grad
                if nf.live:
                    self.leaf_roots.add(node)
            elif op == "get_attr":
                self._get_attr(nf)
            elif op == "output":
                nf.role = "output"
                nf.deps = self.states(_flat_nodes(node.args), nf)
            else:
                self._op(nf)

    def _plan(self, nodes: list[torch.fx.Node], views: list[OpView]) -> None:
        """Which bookkeeping the graph needs at all, and how far ahead each storage may still be written.

        What an op saves for backward only matters if some op writes in place; a parameter's storage can only be
        written through a ``get_attr`` of it (or by an op that writes its own weight), so without either nobody
        ever asks who saved a parameter. A saved tensor only matters if a later write lands in its storage: the
        horizon (:attr:`last_write`) lets the pass skip records nobody would ever read. A write lands in its
        target's storage, which the target shares with the tensor it aliases: an in-place op's result with its
        target, a view (``.detach()``, ``x[i]`` ...) with its first input, ``out[i]`` of a multi-output view with
        its input's first input. Told by the op's name, so possibly more than the forward pass finds. One pass
        from the end pushes each node's horizon to what it may alias.
        """
        last: dict[Root, int] = {}
        any_writes = any_param_writes = any_get_attr = False
        for index in range(len(nodes) - 1, -1, -1):
            node, view = nodes[index], views[index]
            writes = view.writes
            if writes is not None:
                any_writes = True
                if isinstance(writes, Node) and last.get(writes, -1) < index:
                    last[writes] = index
            if view.param_writes:
                any_param_writes = True
            if node.op == "get_attr":
                any_get_attr = True
            horizon = last.get(node)
            if horizon is None:
                continue
            if isinstance(writes, Node):
                sources = [writes]
            elif (writes is not None or (_TRAITS.get(view.name) or _traits(view.name)).alias) and (
                    node.all_input_nodes):
                sources = node.all_input_nodes[:1]
                if view.name == "getitem":
                    sources += sources[0].all_input_nodes[:1]
            else:
                continue
            for source in sources:
                if last.get(source, -1) < horizon:
                    last[source] = horizon
        self.any_writes = any_writes or any_param_writes
        self.params_writable = any_param_writes or (any_writes and any_get_attr)
        self.last_write = last

    def _written_from(self, root: Root, index: int) -> bool:
        """May an in-place op at ``index`` or later write into the storage ``root``?"""
        return self.last_write.get(root, -1) >= index

    def _grad_mode_node(self, nf: NodeFacts) -> None:
        """A node the tracer kept for a grad-mode change (see :data:`_GRAD_MODE_TARGETS`)."""
        node = nf.node
        target = node.target
        if target is torch.is_grad_enabled:
            self.grad_values[node] = self.grad_on
        elif target is torch._C._set_grad_enabled:
            arg = node.args[0] if node.args else True
            self.grad_on = self.grad_values.get(arg, True) if isinstance(arg, Node) else bool(arg)
        elif target is grad_mode._enter_inference_mode:
            self.mode_stack.append(self.grad_on)
            self.grad_on = self.grad_on and not bool(node.args[0] if node.args else True)
        else:  # grad_mode._exit_inference_mode
            self.grad_on = self.mode_stack.pop() if self.mode_stack else True
        nf.role = "control"

    def _get_attr(self, nf: NodeFacts) -> None:
        target = str(nf.node.target)
        value = _attr(self.gm, target)
        if isinstance(value, nn.Parameter):
            nf.role = "param"
            nf.live = value.requires_grad
            root = ("param", self.param_names.get(id(value), target))
            nf.vroot = nf.croot = nf.sroot = root
            self._use(root[1], nf.node)
            if self.params_writable:
                self.last_write[root] = _ANY_TIME
        elif isinstance(value, torch.Tensor):
            nf.role = "buffer" if id(value) in self.buffer_ids else "constant"
        else:
            nf.role = "value"

    def _edge(self, nf: NodeFacts) -> Edge:
        """The input edges of the ops whose arguments decide them (see :func:`_name_edge`)."""
        name = nf.view.name
        if name == "getitem":
            return self._getitem_edge(nf)
        if name == "requires_grad_":
            node = nf.node
            flag = node.args[1] if len(node.args) > 1 else node.kwargs.get("requires_grad", True)
            return _DIFFERENTIABLE if flag is not False else (False, "requires_grad", False, False)
        if ops.is_integer_cast(nf.node, nf.view):
            return _INTEGER
        return _DIFFERENTIABLE

    def _getitem_edge(self, nf: NodeFacts) -> Edge:
        """``h.topk(2)[1]``, ``h.max(dim=1)[1]``, ``torch.sort(h)[1]``: the indices half is an integer tensor."""
        node = nf.node
        base = node.args[0] if node.args else None
        index = node.args[1] if len(node.args) > 1 else None
        if isinstance(base, Node) and index == 1 and base in self.nodes:
            bname = self.nodes[base].view.name
            if bname in ops.VALUES_INDICES and (
                    bname not in ("max", "min", "median", "nanmedian") or len(base.args) > 1 or "dim" in base.kwargs):
                return _INTEGER
        return _DIFFERENTIABLE

    def _op(self, nf: NodeFacts) -> None:
        """An op node. Most are plain: a differentiable op, run with grad enabled, that writes nothing and makes no
        view; they are handled here, in-place ops of the same kind by :meth:`_inplace`, the rest by
        :meth:`_general`."""
        node, view = nf.node, nf.view
        name = view.name
        traits = _TRAITS.get(name) or _traits(name)
        # node.all_input_nodes as a tuple: one allocation, none for no input, half the time of the property (see
        # tests/test_capture.py)
        args = (*node._input_nodes,)
        nodes = self.nodes
        states: Sequence[torch.fx.Node] = args
        if self.last_mut:  # some write ran: an input made before the latest one may read as a later state
            latest = self.latest_write
            for a in args:
                if nodes[a].index < latest:  # (an input is an earlier node: it has its facts)
                    states = self.states(args, nf)
                    break
        writes = view.writes
        if traits.edge is not _DIFFERENTIABLE or not nf.grad_on or view.param_writes or (
                writes is None and traits.alias is not None):
            self._general(nf, node, view, traits, args, states)
            return
        if writes is not None:
            if isinstance(writes, Node) and traits.alias != "data" and not traits.meta_write and (
                    name not in ops.OVERWRITES):
                self._inplace(nf, node, traits, args, states, writes)
            else:
                self._general(nf, node, view, traits, args, states)
            return
        live_in, _ = self._differentiable(nf, node, args, states)
        if live_in is not None and traits.no_derivative and self._underivable(nf, args, states):
            nf.no_derivative = True
            self.flagged.append(nf)
        if nf.live and self.any_writes and not traits.meta_write:
            self._defer(nf, args, traits)

    def _general(self, nf: NodeFacts, node: torch.fx.Node, view: OpView, traits: _OpTraits,
                 args: Sequence[torch.fx.Node], states: Sequence[torch.fx.Node]) -> None:
        """:meth:`_op` for the other ops: cuts, views, writes of autograd state, ops under no_grad."""
        self.flagged.append(nf)
        name = view.name
        nodes = self.nodes
        diff, cut, value_result, zero = traits.edge or self._edge(nf)
        is_module = node.op == "call_module"
        if not value_result and args and not is_module and _all_values(states, nodes):
            value_result = True
        if value_result:
            nf.role = "value"

        writes = view.writes
        write_target = writes if isinstance(writes, Node) else None
        grad_on = nf.grad_on
        live_in: torch.fx.Node | None = None  # a live input whose gradient would flow through this node
        any_live: torch.fx.Node | None = None
        if grad_on and (write_target is None or name not in ops.OVERWRITES):  # every edge alike
            nf.deps, nf.edge = states, _PLAIN_EDGE if diff and not zero else (diff, zero)
            for s in states:
                if nodes[s].live:
                    any_live = any_live or s
                    if diff:
                        live_in = s
                        break
        else:
            nf.deps, (nf.edges, live_in, any_live) = states, self._write_deps(nf, args, states, write_target, diff,
                                                                                  zero)
        if zero:
            nf.zero = True

        if not grad_on and cut is None and any_live is not None:
            cut = "no_grad"
        if cut is not None and (any_live is not None or cut == "no_grad"):
            nf.cut, nf.cut_input = cut, any_live

        if grad_on and live_in is not None:
            # only ``torch.f(..., out=t)`` is spelled so, and it writes ``t``
            if write_target is not None and view.spelling.endswith("(out=...)"):
                nf.forward_error = (f"{name}(): functions with out=... arguments don't support automatic "
                                    "differentiation, but one of the arguments requires grad.")
            if traits.no_derivative and self._underivable(nf, args, states):
                nf.no_derivative = True
        if is_module:
            module_params = self._module_call(nf, node)
            nf.live = grad_on and (live_in is not None or bool(module_params))
            if not grad_on and module_params and nf.cut is None:
                nf.cut = "no_grad"
        else:
            nf.live = grad_on and live_in is not None and not value_result
        if write_target is not None and not nf.live and grad_on is False and live_in is not None:
            nf.live = True  # in-place under no_grad: the target keeps requiring grad

        alias = traits.alias
        if writes is not None and alias != "data":
            alias = "same"  # an in-place op returns its target
        if alias is not None and args and not value_result:
            first_f = nodes.get(args[0])
            if first_f is not None:
                self._aliases(nf, alias, args[0], first_f)
        for qualname in view.param_writes:
            self._write_root(nf, self._param_root_of(qualname))

        records = self.any_writes and (nf.live or (write_target is not None and grad_on)) and not traits.meta_write
        if write_target is None:
            if records:
                self._defer(nf, args, traits)
        elif traits.meta_write:
            self._meta_write(nf, write_target, diff)
        else:
            if records and traits.saves_before_write:
                self._record_saved(nf, "inputs", since=nf.index)
            self._write(nf, write_target, states[args.index(write_target)])  # the target is an input
            if records and traits.saves_after_write:
                self._record_result(nf, traits)

    def _underivable(self, nf: NodeFacts, args: Sequence[torch.fx.Node], states: Sequence[torch.fx.Node]) -> bool:
        """Backward will ask this op (which has a live input) for a derivative it lacks: always for an op without
        one; for an op without one for a single argument (``igamma``'s ``self``), when that argument is live."""
        arg = ops.NO_DERIVATIVE_FOR.get(nf.view.name)
        if arg is None:
            return True
        a = nf.view.args_of(nf.node).get(arg)
        if not isinstance(a, Node) or a not in args:
            return False
        return self.nodes[states[args.index(a)]].live

    def _differentiable(self, nf: NodeFacts, node: torch.fx.Node, args: Sequence[torch.fx.Node],
                        states: Sequence[torch.fx.Node]) -> tuple[torch.fx.Node | None, bool]:
        """Edges, role and ``live`` of an op whose every input edge is differentiable, run with grad enabled (the
        plain ops and :meth:`_inplace`). Returns the first live input and whether the result is a plain value."""
        nodes = self.nodes
        live_in: torch.fx.Node | None = None
        for s in states:
            if nodes[s].live:  # (a state is an earlier node: it has its facts)
                live_in = s
                break
        nf.deps = states
        if node.op == "call_module":  # its parameters' uses are noted whether or not an input is live
            module_params = self.module_param_cache.get(node.target)  # type: ignore[arg-type]
            if module_params is None or self.frozen:
                module_params = self._module_call(nf, node)
            else:  # (most calls: :meth:`_module_call`, inline)
                for _, used in module_params:
                    used.append(node)
            nf.live = live_in is not None or bool(module_params)
        elif args and _all_values(states, nodes):
            nf.role = "value"
            return live_in, True
        elif live_in is not None:
            nf.live = True
        return live_in, False

    def _inplace(self, nf: NodeFacts, node: torch.fx.Node, traits: _OpTraits, args: Sequence[torch.fx.Node],
                 states: Sequence[torch.fx.Node], target: torch.fx.Node) -> None:
        """:meth:`_op` for most writes: a differentiable in-place op with grad enabled that does not overwrite its
        target completely (``relu_``, ``+=``, ``x[i] = v``)."""
        self.flagged.append(nf)
        nodes = self.nodes
        live_in, value_result = self._differentiable(nf, node, args, states)
        if live_in is not None:
            # only ``torch.f(..., out=t)`` is spelled so, and it writes ``t``
            if nf.view.spelling.endswith("(out=...)"):
                nf.forward_error = (f"{nf.view.name}(): functions with out=... arguments don't support automatic "
                                    "differentiation, but one of the arguments requires grad.")
            if traits.no_derivative and self._underivable(nf, args, states):
                nf.no_derivative = True
        if args and not value_result:  # an in-place op returns its target: the same tensor
            _same_tensor(nf, nodes[target])  # (the target is an input: it has its facts)
        if traits.saves_before_write:
            self._record_saved(nf, "inputs", since=nf.index)
        self._write(nf, target, states[args.index(target)])  # the target is an input
        if traits.saves_after_write:
            self._record_result(nf, traits)

    def _module_call(self, nf: NodeFacts, node: torch.fx.Node) -> list[tuple[str, list[torch.fx.Node]]]:
        """The trainable parameters a module call uses (frozen ones left out), noted as uses of them."""
        module_params = self.module_param_cache.get(node.target)  # type: ignore[arg-type]
        if module_params is None:
            module_params = self._module_params(str(node.target))
        if module_params:
            if self.frozen:
                module_params = [(p, used) for p, used in module_params if p not in self.frozen]
            for _, used in module_params:
                used.append(node)
        return module_params

    def _write_deps(self, nf: NodeFacts, args: Sequence[torch.fx.Node], states: Sequence[torch.fx.Node],
                    write_target: torch.fx.Node | None, diff: bool, zero: bool
                    ) -> tuple[list[tuple[bool, bool]], torch.fx.Node | None, torch.fx.Node | None]:
        """Input edges of an in-place op or an op under no_grad: the written input's edge depends on the write.
        Returns the edges (differentiable, zero-gradient) in input order, the first live input a gradient flows to,
        and the first live input."""
        name, grad_on = nf.view.name, nf.grad_on
        overwrites = write_target is not None and name in ops.OVERWRITES
        edges: list[tuple[bool, bool]] = []
        live_in: torch.fx.Node | None = None
        any_live: torch.fx.Node | None = None
        for i, a in enumerate(args):
            s = states[i]
            is_self = a is write_target
            if not grad_on:
                # In-place under no_grad keeps the target's history; nothing else is recorded.
                d, z = is_self and name not in ops.DETACH, False
            elif is_self and overwrites:
                d, z = True, True  # zero_/fill_/copy_: the old value gets a zero gradient
            else:
                d, z = diff, zero
            edges.append((d, z))
            if self.nodes[s].live:  # (a state is an earlier node: it has its facts)
                any_live = any_live or s
                if d and live_in is None:
                    live_in = s
        return edges, live_in, any_live

    def _aliases(self, nf: NodeFacts, kind: str, first: torch.fx.Node, first_f: NodeFacts) -> None:
        """Alias roots of the result (see :func:`_alias_kind` for ``kind``)."""
        view = nf.view
        if kind == "same" or kind == "data":
            writes = view.writes
            base = (self.nodes.get(writes) if isinstance(writes, Node) else None) or first_f
            if kind == "data":
                nf.sroot = base.sroot  # same storage, own version counter, no history
                nf.alias_of = base.ident
                return
            _same_tensor(nf, base)
        elif kind == "detach":
            nf.croot, nf.sroot = first_f.croot, first_f.sroot  # shares the version counter
            nf.alias_of = first_f.ident
        elif kind == "getitem":
            self._getitem_alias(nf, first_f)
        else:
            nf.vroot, nf.croot, nf.sroot = first_f.vroot, first_f.croot, first_f.sroot
            nf.is_view = True
            if first_f.multi_view:
                nf.multi_view = True
            if first_f.expanded or view.name in ops.EXPANDING_VIEWS:
                nf.expanded = True

    def _getitem_alias(self, nf: NodeFacts, base_f: NodeFacts) -> None:
        """``out[i]`` picks one of several results, or indexes a tensor: a view, unless the index copies."""
        node = nf.node
        base_view = base_f.view
        if (base_f.node.op == "call_module" and not base_f.view.known) or (
                base_f.node.op not in ("placeholder", "call_module") and self._returns_tuple(base_f)):
            if ops.multi_output_view(base_view.name):
                src = next(iter(_flat_nodes(base_f.node.args)), None)
                src_f = self.nodes.get(src) if src is not None else None
                if src_f is not None:
                    nf.vroot, nf.croot, nf.sroot = src_f.vroot, src_f.croot, src_f.sroot
                    nf.multi_view = nf.is_view = True
            return
        index = node.args[1] if len(node.args) > 1 else None
        advanced = any(self.nodes[i].role != "value" for i in _flat_nodes(index) if i in self.nodes)
        if isinstance(index, list) or (isinstance(index, tuple) and any(isinstance(i, list) for i in index)):
            advanced = True  # x[[0, 1]] indexes with a list: a copy, like indexing with a tensor
        if not advanced:
            nf.vroot, nf.croot, nf.sroot = base_f.vroot, base_f.croot, base_f.sroot
            nf.is_view = True
            if base_f.multi_view:
                nf.multi_view = True

    def _returns_tuple(self, nf: NodeFacts) -> bool:
        """Does the node return several tensors (so ``out[0]`` picks one) rather than one tensor (a view)?"""
        name, node = nf.view.name, nf.node
        if ops.multi_output_view(name):
            return True
        if name in ("max", "min", "median", "nanmedian"):
            return len(node.args) > 1 or "dim" in node.kwargs  # h.max() is a tensor, h.max(1) a pair
        if name in _TUPLE_OPS:
            return True
        for schema in ops._schemas(name):
            if not schema.arguments or str(schema.arguments[0].type) != "Tensor":
                continue  # ``mul.left_t(int[] l, int n) -> int[]`` is about Python lists, not tensors
            rets = [str(r.type) for r in schema.returns]
            if (len(rets) > 1 and all(r == "Tensor" for r in rets)) or rets[:1] == ["List[Tensor]"]:
                return True
        return False

    def _write(self, nf: NodeFacts, target: torch.fx.Node, state: torch.fx.Node) -> None:
        """A data write into ``target``, whose value the op read as ``state``."""
        nodes = self.nodes
        tf = nodes.get(target)
        if tf is None:
            return
        nf.target = target
        nf.target_role = tf.role
        before = nodes.get(state)
        nf.target_live = before is not None and before.live
        vroot = tf.vroot
        if isinstance(vroot, tuple):
            nf.target_role = "param"
        elif isinstance(vroot, Node):
            root_f = nodes.get(vroot)
            if root_f is not None and root_f.role in _DATA_ROLES:
                nf.target_role = root_f.role
        if tf.expanded:
            nf.overlap_write = True
        elif nf.view.name in ops.RESIZES and nf.target_live:
            nf.forward_error = "cannot resize variables that require grad"
        elif nf.grad_on and nf.target_live and self._is_leaf(vroot):
            nf.leaf_write = True
        elif nf.grad_on and tf.multi_view and nf.target_live:
            nf.forward_error = ("Output 0 of SplitBackward0 is a view and is being modified inplace. This view is the "
                                "output of a function that returns multiple views. Such functions do not allow the "
                                "output views to be modified inplace.")
        sroot = tf.sroot
        if sroot in self.deferred or sroot in self.pending:
            self._settle(nf, sroot, tf.croot)
        if self.pending_unknown:
            unknown = self.pending_unknown.pop(sroot, None)
            if unknown is not None:
                nf.unknown_savers = unknown
        self.last_mut[vroot] = nf
        self.last_data_write[sroot] = nf
        self.latest_write = nf.index

    def _settle(self, nf: NodeFacts, sroot: Root, croot: Root) -> None:
        """A data write: tensors saved on this storage before now are overwritten (same version counter) or
        silently written (another counter, i.e. through ``.data``)."""
        deferred = self.deferred.pop(sroot, None)
        if deferred is not None:
            for saver in deferred:
                if saver.node not in self.materialized:
                    self.materialized.add(saver.node)
                    # the state each input had when the saver ran is the producer of its edge
                    at = dict(zip(saver.node.all_input_nodes, saver.deps, strict=True))
                    self._record_saved(saver, "all", at, nf.index)
        uses = self.pending.pop(sroot, None)
        if uses is None:
            return
        overwritten: list[SavedUse] = []
        silently_written: list[SavedUse] = []
        for use in uses:
            (overwritten if use.croot == croot else silently_written).append(use)
        if overwritten:
            nf.overwritten = [*nf.overwritten, *overwritten]
        if silently_written:
            nf.silently_written = [*nf.silently_written, *silently_written]

    def _write_root(self, nf: NodeFacts, root: Root) -> None:
        """An op that writes a parameter it owns (``nn.Embedding(max_norm=...)`` renormalises its weight)."""
        self._settle(nf, root, root)

    def _meta_write(self, nf: NodeFacts, target: torch.fx.Node, flag: bool) -> None:
        """``detach_()`` / ``requires_grad_(flag)``: later reads see the new autograd state; no data changes."""
        tf = self.nodes.get(target)
        if tf is None:
            return
        nf.target, nf.target_role, nf.meta_write = target, tf.role, True
        before = self.state(target, nf)
        was_live = before in self.nodes and self.nodes[before].live
        nf.target_live = was_live
        root = tf.vroot
        if nf.view.name == "requires_grad_":
            is_leaf = self._is_leaf(root) or not was_live
            if not flag and was_live and not is_leaf:
                nf.forward_error = ("you can only change requires_grad flags of leaf variables. If you want to use a "
                                    "computed variable in a subgraph that doesn't require differentiation use "
                                    "var_no_grad = var.detach().")
            nf.live = flag if is_leaf else was_live
            if isinstance(root, tuple):
                if flag:
                    self.frozen.pop(root[1], None)
                    self.leaf_roots.add(root)
                else:
                    self.frozen[root[1]] = nf.node
                    self.leaf_roots.discard(root)
            elif flag and not was_live:
                self.leaf_roots.add(root)
        else:
            nf.live = False
        self.last_mut[root] = nf
        self.latest_write = nf.index

    def _is_leaf(self, root: Root) -> bool:
        """Is the tensor with this view root a leaf that requires grad?"""
        if isinstance(root, tuple):
            self._add_param_leaves()
        return root in self.leaf_roots

    def _requires(self, a: Any, nf: NodeFacts, at: dict[torch.fx.Node, torch.fx.Node] | None = None) -> bool:
        if isinstance(a, Node):
            s = at.get(a, a) if at is not None else (self.state(a, nf) if self.last_mut else a)
            sf = self.nodes.get(s)
            return sf is not None and sf.live
        if isinstance(a, (list, tuple)):
            return any(self._requires(x, nf, at) for x in a)
        return False

    def _saved_entry(self, nf: NodeFacts, name: str, inplace: bool, traits: _OpTraits | None = None
                     ) -> SavedEntry | None:
        """What the op (or its in-place form) saves: the tables' answer (already in ``traits`` when given), unless
        the node is a custom ``autograd.Function``."""
        node = nf.node
        if node.op == "call_function":
            function = self._custom_function(node.target)
            if function is not None:
                return ops.function_saves(function)
        if traits is not None:
            return traits.inplace_entry if inplace else traits.entry
        return _table_entry(name, inplace)

    def _custom_function(self, target: Any) -> type | None:
        """The custom ``autograd.Function`` the tracer kept opaque behind ``target``, if any (cached per target)."""
        functions = self.functions
        if target in functions:
            return functions[target]
        function = functions[target] = getattr(target, "__fxgrad_function__", None)
        return function

    def _defer(self, nf: NodeFacts, args: Sequence[torch.fx.Node], traits: _OpTraits) -> None:
        """Note that ``nf`` may have saved tensors, under the storages it touches; what exactly it saved is only
        worked out if one of those storages is written later (most never are), and not at all if no later write can
        reach a tensor it may save. A storage may be listed twice (a view shares its input's): the second time
        finds the record made."""
        # Could a later write land in a tensor it may have saved: its result, a parameter, an input? If not,
        # nobody would ask (most ops: whatever they saved stays intact).
        after = nf.index + 1
        sroot, nodes, last = nf.sroot, self.nodes, self.last_write
        result_written = last.get(sroot, -1) >= after
        input_written = False
        for a in args:
            if last.get(nodes[a].sroot, -1) >= after:
                input_written = True
                break
        if not (result_written or input_written or self.params_writable):
            return
        entry = self._saved_entry(nf, nf.view.name, False, traits)
        if entry is None:
            self._record_saved(nf)  # unknown op: noted at once, cheaply
            return
        if nf.view.writes is not None:  # writes something that is no node (rare): recorded as the in-place form
            entry = self._saved_entry(nf, nf.view.name, True) or entry
        may_save = traits.may_save if entry is traits.entry else _possible_saves(nf.view.name, entry)
        if not may_save:
            return  # saves nothing (``add``): nobody would ask
        if not (input_written or ("result" in may_save and result_written)
                or (self.params_writable and nf.view.params_of(nf.node))):
            return
        keys = [sroot] if self._written_from(sroot, after) else []
        for a in args:
            af = nodes.get(a)
            if af is not None and af.sroot is not sroot and self._written_from(af.sroot, after):
                keys.append(af.sroot)
        if self.params_writable:
            keys += [self._param_root_of(qualname) for qualname in nf.view.params_of(nf.node).values()]
        for key in keys:
            self.deferred.setdefault(key, []).append(nf)

    def _record_saved(self, nf: NodeFacts, phase: str = "all",
                      at: dict[torch.fx.Node, torch.fx.Node] | None = None, since: int = 0) -> None:
        """Record what ``nf`` saves for backward. In-place ops save their other inputs *before* they write
        (``phase="inputs"``: ``h *= h`` saves the very tensor it then overwrites) and their result after (see
        :meth:`_record_result`). ``at``: the state each argument had when ``nf`` ran (for deferred records).
        ``since``: the index of the node recording it now; a saved tensor no write from there on reaches is left
        out, as nobody would ever read it."""
        view = nf.view
        name = view.name
        inplace = view.writes is not None
        node = nf.node
        # The outputs the backend kernel torch picks saves (:mod:`fxgrad.backends`); the tables' ``result`` of an
        # op listed there is replaced by this answer.
        kernel = not inplace and (name in backends.KERNELS or (node.op == "call_module" and not view.known))
        if kernel:
            choice = backends.for_call(node, name, self.gm)
            for out, arg in backends.saved_outputs(node, choice):
                own = out is node
                root = nf.sroot if own else out  # (``out[i]`` of a call that returns a tuple is its own root)
                if self._written_from(root, since):
                    self.pending.setdefault(root, []).append(
                        SavedUse(node, out, arg, nf.croot if own else out, root, True, choice))
        entry = self._saved_entry(nf, name, inplace)
        if entry is None:
            if phase != "inputs":
                self._note_unknown_saver(nf)
            return
        params, args = view.params_of(nf.node), view.args_of(nf.node)
        names: set[str] = set()
        for inp, saved in self._per_input(nf, entry, args).items():
            if saved and (inp in params or self._requires(args.get(inp), nf, at)):
                names.update(saved)
        if inplace:
            # autograd keeps a clone of the original ``self`` when an in-place op's formula needs it
            names.discard("self")
            if phase == "inputs":
                names = {n for n in names if not n.startswith("result")}
        if not names:
            return
        backend = name in BACKEND_DEPENDENT
        nodes, pending = self.nodes, self.pending
        for arg in names:
            if arg.startswith("result"):
                if arg == "result" and not kernel and self._written_from(nf.sroot, since):
                    pending.setdefault(nf.sroot, []).append(SavedUse(node, node, arg, nf.croot, nf.sroot, backend))
                continue
            if arg in params:
                if self.params_writable:
                    proot = self._param_root_of(params[arg])
                    pending.setdefault(proot, []).append(SavedUse(node, params[arg], arg, proot, proot, backend))
                continue
            value = args.get(arg)
            if value is None:
                continue
            for arg_node in value if isinstance(value, (list, tuple)) else (value,):
                if not isinstance(arg_node, Node):
                    continue
                orig = nodes.get(arg_node)
                if orig is None:
                    continue
                current = at.get(arg_node, arg_node) if at is not None else self.state(arg_node, nf)
                if nodes.get(current, orig).role == "value" or not self._written_from(orig.sroot, since):
                    continue
                pending.setdefault(orig.sroot, []).append(SavedUse(node, arg_node, arg, orig.croot, orig.sroot,
                                                                   backend))

    def _record_result(self, nf: NodeFacts, traits: _OpTraits) -> None:
        """After an in-place op wrote: whether it saved its result (``relu_`` does). Of the results only output 0
        is tracked, so no other name matters here."""
        view = nf.view
        entry = self._saved_entry(nf, view.name, True, traits)
        if entry is None:
            self._note_unknown_saver(nf)
            return
        kept = self._written_from(nf.sroot, nf.index + 1)
        # (an op with a single input reads only its target)
        if not kept and (len(nf.deps) == 1 or not self._reads_alias_of_target(nf)):
            return  # nobody would read the record, and the reads below would note nothing new
        params, args = view.params_of(nf.node), view.args_of(nf.node)
        saves_result = False
        for inp, saved in self._per_input(nf, entry, args).items():
            # every input that needs grad is asked, as a full record would: reading it may note an alias (FXG104)
            if saved and (inp in params or self._requires(args.get(inp), nf)):
                saves_result = saves_result or "result" in saved
        if saves_result and kept:
            self._save(SavedUse(nf.node, nf.node, "result", nf.croot, nf.sroot, view.name in BACKEND_DEPENDENT))

    def _reads_alias_of_target(self, nf: NodeFacts) -> bool:
        """Does the in-place op read, besides its target, a tensor that shares the target's storage? Only such a
        read, after the write, can note a new alias read (:meth:`state`): every other read repeats one the op
        made before it wrote."""
        target = nf.target
        tf = self.nodes.get(target) if target is not None else None
        if tf is None:
            return True
        for a in nf.node.all_input_nodes:
            af = self.nodes.get(a)
            if a is not target and af is not None and af.sroot == tf.sroot:
                return True
        return False

    @staticmethod
    def _per_input(nf: NodeFacts, entry: SavedEntry, args: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        """For each input, what the op saves when that input needs grad (``h ** 2`` saves less than ``h ** e``)."""
        override = ops.SCALAR_OVERLOADS.get(nf.view.name)
        if override is not None and not isinstance(args.get(override[0]), Node):
            return override[1]
        return entry[1]

    def _note_unknown_saver(self, nf: NodeFacts) -> None:
        """An op fxgrad has no table for may have saved any input: a later write into one cannot be proved safe."""
        name = nf.view.name
        if name in ops.PASS_THROUGH or ops.is_view_op(name):
            return
        for a in nf.node.all_input_nodes:
            af = self.nodes.get(a)
            if af is not None and af.role != "value":
                self.pending_unknown.setdefault(af.sroot, []).append(nf.node)

    def _save(self, use: SavedUse) -> None:
        self.pending.setdefault(use.sroot, []).append(use)

    # -- step 2 -------------------------------------------------------------------------------------------------

    def backward(self) -> None:
        """Reachability from the output, one node at a time in reverse: every user of a node came later in the
        graph, so when its turn comes its facts are final, and what they give its inputs is settled per edge by
        (differentiable, zero-gradient) alone."""
        nodes = self.nodes
        for nf in reversed(nodes.values()):
            if nf.role == "output":
                nf.reach = nf.reach_nz = nf.data_reach = True
            deps = nf.deps
            if not deps:
                continue
            edges = nf.edges
            if edges is None:  # (most nodes: one edge for all their inputs)
                self._reach_inputs(nf, deps, nf.edge)
            else:
                for dep, edge in zip(deps, edges, strict=True):
                    self._reach_inputs(nf, (dep,), edge)

    def _reach_inputs(self, nf: NodeFacts, deps: Sequence[torch.fx.Node], edge: tuple[bool, bool]) -> None:
        """Give ``deps``, inputs of ``nf`` over edges ``edge`` = (differentiable, zero-gradient), what the edge
        carries: a gradient, a nonzero one, and the cause to blame if the input ends up unreached."""
        if edge is _PLAIN_EDGE:  # (:meth:`_edge_effect` for it, inline)
            reach = nf.reach
            nz = reach and nf.reach_nz
            cause = None if reach else nf.cause if nf.cause is not None else nf.node if nf.cut else None
        else:
            reach, nz, cause = self._edge_effect(nf, *edge)
        data_reach, nodes = nf.data_reach, self.nodes
        for dep in deps:
            df = nodes[dep]  # (an input is an earlier node: it has its facts)
            if reach:
                df.reach = True
                if nz:
                    df.reach_nz = True
            if data_reach:
                df.data_reach = True
                if df.cause is None:
                    df.cause = cause

    @staticmethod
    def _edge_effect(nf: NodeFacts, diff: bool, zero: bool) -> tuple[bool, bool, torch.fx.Node | None]:
        """What an edge from ``nf`` gives its input: a gradient (``nf`` is reached and the edge differentiable),
        a nonzero one, and the cause to blame if the input ends up unreached (``nf`` itself when the edge cuts,
        else the cause ``nf`` already has)."""
        reach = nf.reach and diff
        if not diff:
            cause: torch.fx.Node | None = nf.node
        elif reach:
            cause = None
        else:
            cause = nf.cause if nf.cause is not None else (nf.node if nf.cut else None)
        return reach, reach and nf.reach_nz and not zero, cause

    # -- step 3 -------------------------------------------------------------------------------------------------

    def parameters(self) -> dict[str, ParamFacts]:
        """Each trainable parameter's verdict, from the uses the forward pass noted."""
        nodes = self.nodes
        written: set[torch.fx.Node] | None = None  # (only a parameter not decided by its first use asks)
        out: dict[str, ParamFacts] = {}
        for name, used in self.trainable:
            if not used:
                out[name] = ParamFacts(name, "unused", None, used)
                continue
            first = nodes[used[0]]
            if first.role != "param" and first.reach and first.grad_on and first.reach_nz:
                # the common case, decided by the first use: a call that gets a non-zero gradient
                out[name] = ParamFacts(name, "ok", None, used)
                continue
            if written is None:
                written = {nf.target for nf in nodes.values() if nf.target is not None}
            pf = out[name] = ParamFacts(name, "unused", None, used)
            self._verdict(pf, [nodes[n] for n in used], written)
        return out

    def _verdict(self, pf: ParamFacts, facts: list[NodeFacts], written: set[torch.fx.Node]) -> None:
        """A parameter's status from the nodes that use it (a ``get_attr`` of it counts once it is read or
        written): ``ok`` as soon as one use gets a non-zero gradient, which is the common case."""
        used = False
        first_reached: NodeFacts | None = None
        for f in facts:
            if f.role != "param" or f.node.users or f.node in written:
                used = True
                if f.reach and (f.role == "param" or f.grad_on):
                    if f.reach_nz:
                        pf.status = "ok"
                        return
                    if first_reached is None:
                        first_reached = f
        if not used:
            return
        if first_reached is not None:
            pf.status = "zero-grad"
            pf.cause = self._zero_cause(first_reached)
            return
        pf.status = "no-grad"
        pf.cause = self.frozen.get(pf.name) or next(
            (f.node for f in facts if f.role != "param" and f.cut == "no_grad"), None)
        if pf.cause is None:
            pf.cause = next((f.cause for f in facts if f.cause is not None and (
                f.role != "param" or f.node.users or f.node in written)), None)

    def _zero_cause(self, start: NodeFacts) -> torch.fx.Node | None:
        """The first zero-gradient op downstream of ``start`` on the way to the output (walks users)."""
        seen: set[torch.fx.Node] = set()
        frontier = [start.node]
        while frontier:
            n = frontier.pop()
            for u in n.users:
                if u in seen:
                    continue
                seen.add(u)
                uf = self.nodes[u]
                if uf.reach and any(z for d, _, z in uf.dep_edges() if d is n):
                    return u
                if uf.reach:
                    frontier.append(u)
        return None


def compute_facts(gm: torch.fx.GraphModule, *, inputs_require_grad: frozenset[str] = frozenset(),
                  model: nn.Module | None = None) -> GraphFacts:
    """Run the passes over ``gm`` (which is only read); ``model`` is the module it was traced from."""
    with gc_paused():  # (see fxgrad.gcpause)
        p = _Pass(gm, inputs_require_grad, model)
        p.forward()
        p.backward()
        _inplace_backward_errors(gm, p.flagged)
        return GraphFacts(gm, p.nodes, p.parameters(), p.param_names, p.flagged)


#: in-place activations whose backward reads their output (``LeakyReluBackward1``, ``EluBackward1``): op view name
#: -> (the kind of backward, the argument or module attribute that holds the slope, its default)
_SLOPES: dict[str, tuple[str, str, float]] = {
    "leaky_relu": ("leaky_relu", "negative_slope", 0.01),
    "elu": ("elu", "alpha", 1.0),  # nn.CELU's view is elu too; nn.SELU has no alpha (its constant is positive)
    "celu": ("elu", "alpha", 1.0),  # celu_(x, alpha) is elu_(x, alpha, 1, 1 / alpha)
}
#: ``rrelu_`` in eval mode is ``leaky_relu_`` with the mean of its bounds as slope; in training it draws a
#: positive-or-not slope per element and keeps it (backward reads the noise, not the sign): no error
_RRELU = ("rrelu", "RReLU")
_INPLACE_ERROR_OPS = frozenset((*_SLOPES, *_RRELU, *ops.INPLACE_NO_DERIVATIVE))


def _inplace_backward_errors(gm: torch.fx.GraphModule, flagged: list[NodeFacts]) -> None:
    """The in-place ops whose backward raises where the out-of-place form's would not (every write is flagged):

    * ``inplace_no_derivative``: the in-place form has no derivative (``acosh_``, :data:`ops.INPLACE_NO_DERIVATIVE`);
    * ``result_slope``: an in-place activation whose backward is computed from its output, with a negative slope
      that makes the output's sign ambiguous (``leaky_relu_backward`` and ``elu_backward`` check
      ``!is_result || slope >= 0``). A slope fxgrad cannot read (a tensor, a computed value) decides nothing.

    One look per flagged write: linear."""
    for nf in flagged:
        name = nf.view.name
        if name not in _INPLACE_ERROR_OPS or nf.target is None or nf.view.writes is None:
            continue
        if name in ops.INPLACE_NO_DERIVATIVE:
            nf.inplace_no_derivative = True
            continue
        if name not in _SLOPES and name not in _RRELU:
            continue
        node = nf.node
        module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        # a module holds its settings as attributes, a call as arguments (by schema name)
        settings = vars(module) if module is not None else nf.view.args_of(node)
        if name in _RRELU:
            kind, training = "leaky_relu", settings.get("training", False)
            lower, upper = settings.get("lower", 1 / 8), settings.get("upper", 1 / 3)
            if training is not False or not all(isinstance(b, (int, float)) for b in (lower, upper)):
                continue
            slope = (lower + upper) / 2
        else:
            kind, key, default = _SLOPES[name]
            slope = settings.get(key, default if module is None else None)
        if isinstance(slope, (int, float)) and not isinstance(slope, bool) and slope < 0:
            nf.result_slope = (kind, float(slope))

