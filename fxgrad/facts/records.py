"""The records the facts are made of: one :class:`NodeFacts` per node, one :class:`ParamFacts` per trainable
parameter, a :class:`SavedUse` per saved tensor a later write reaches, and :class:`GraphFacts` holding them all.

Reads nothing; every other module of :mod:`fxgrad.facts` writes into these records, and the rules read them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

import torch
import torch.fx

from .. import backends
from ..ops import OpView

__all__ = ["Cut", "GraphFacts", "NodeFacts", "ParamFacts", "Role", "Root", "SavedUse", "Status"]

#: what identifies a tensor, its version counter or its storage (see :mod:`fxgrad.aliasing`): the node that made it,
#: or ``("param", name)`` for a parameter
Root = Hashable
#: what a node's value is; "value": computed from constants only, "control": grad-mode switches and the like
Role = Literal["param", "buffer", "input", "constant", "activation", "value", "control", "output"]
#: a parameter's verdict
Status = Literal["ok", "no-grad", "zero-grad", "unused"]
#: why a node stops gradients
Cut = Literal["detach", "data", "no_grad", "leaves", "requires_grad", "integer", "rebuild"]

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
    #: why this node stops gradients
    cut: Cut | None = None
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
    #: invert: (the kind of backward, ``leaky_relu`` or ``elu``; the slope). See :mod:`fxgrad.facts.inplace_errors`.
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
    status: Status
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

