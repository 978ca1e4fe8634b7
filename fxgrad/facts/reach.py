"""Reachability and parameter verdicts, from the forward pass's facts.

1. Backward (:func:`backward`), in reverse graph order from the output: whether a gradient reaches each node
   (``reach``), reaches it non-zero (``reach_nz``), whether its value reaches the output at all (``data_reach``),
   and for a node whose gradient is lost the cut that loses it (``cause``). Every user of a node came later in the
   graph, so when its turn comes its facts are final, and what they give its inputs is settled per edge by
   (differentiable, zero-gradient) alone.
2. Verdicts (:func:`parameters`): each trainable parameter's status from the reach of the nodes that use it.

Reads ``deps``/``edge``/``edges``/``cut`` and the uses the forward pass noted; writes the reach facts and the
:class:`ParamFacts`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx

from .modules import ParamUses
from .records import _PLAIN_EDGE, NodeFacts, ParamFacts

__all__ = ["backward", "parameters"]

Nodes = dict[torch.fx.Node, NodeFacts]



def backward(nodes: Nodes) -> None:
    """Reachability from the output, one node at a time in reverse: every user of a node came later in the
    graph, so when its turn comes its facts are final, and what they give its inputs is settled per edge by
    (differentiable, zero-gradient) alone."""
    for nf in reversed(nodes.values()):
        if nf.role == "output":
            nf.reach = nf.reach_nz = nf.data_reach = True
        deps = nf.deps
        if not deps:
            continue
        edges = nf.edges
        if edges is None:  # (most nodes: one edge for all their inputs)
            _reach_inputs(nodes, nf, deps, nf.edge)
        else:
            for dep, edge in zip(deps, edges, strict=True):
                _reach_inputs(nodes, nf, (dep,), edge)


def _reach_inputs(nodes: Nodes, nf: NodeFacts, deps: Sequence[torch.fx.Node], edge: tuple[bool, bool]) -> None:
    """Give ``deps``, inputs of ``nf`` over edges ``edge`` = (differentiable, zero-gradient), what the edge
    carries: a gradient, a nonzero one, and the cause to blame if the input ends up unreached."""
    if edge is _PLAIN_EDGE:  # (:func:`_edge_effect` for it, inline)
        reach = nf.reach
        nz = reach and nf.reach_nz
        cause = None if reach else nf.cause if nf.cause is not None else nf.node if nf.cut else None
    else:
        reach, nz, cause = _edge_effect(nf, *edge)
    data_reach = nf.data_reach
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


def parameters(nodes: Nodes, trainable: list[ParamUses], frozen: dict[str, torch.fx.Node]
               ) -> dict[str, ParamFacts]:
    """Each trainable parameter's verdict, from the uses the forward pass noted."""
    written: set[torch.fx.Node] | None = None  # (only a parameter not decided by its first use asks)
    out: dict[str, ParamFacts] = {}
    for name, used in trainable:
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
        _verdict(nodes, frozen, pf, [nodes[n] for n in used], written)
    return out


def _verdict(nodes: Nodes, frozen: dict[str, torch.fx.Node], pf: ParamFacts, facts: list[NodeFacts],
             written: set[torch.fx.Node]) -> None:
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
        pf.cause = _zero_cause(nodes, first_reached)
        return
    pf.status = "no-grad"
    pf.cause = frozen.get(pf.name) or next(
        (f.node for f in facts if f.role != "param" and f.cut == "no_grad"), None)
    if pf.cause is None:
        pf.cause = next((f.cause for f in facts if f.cause is not None and (
            f.role != "param" or f.node.users or f.node in written)), None)


def _zero_cause(nodes: Nodes, start: NodeFacts) -> torch.fx.Node | None:
    """The first zero-gradient op downstream of ``start`` on the way to the output (walks users)."""
    seen: set[torch.fx.Node] = set()
    frontier = [start.node]
    while frontier:
        n = frontier.pop()
        for u in n.users:
            if u in seen:
                continue
            seen.add(u)
            uf = nodes[u]
            if uf.reach and any(z for d, _, z in uf.dep_edges() if d is n):
                return u
            if uf.reach:
                frontier.append(u)
    return None
