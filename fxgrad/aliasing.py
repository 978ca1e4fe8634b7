"""The alias model: which tensors of a graph are the same tensor, share a version counter, or share only a storage,
and which reads see a write into memory another tensor shares.

Autograd has three notions of "the same tensor", and each node's facts (:class:`fxgrad.facts.NodeFacts`) carry
one root per notion:

* ``vroot``, the view group: differentiable views (``view``, ``x[i]``, ``.T``, ``out[i]`` of ``split``) share their
  base's; an in-place op through a view rebases the base's history, and later reads of any member see the write.
* ``croot``, the version counter: views *and* ``.detach()`` share it (``.data`` does not); a write bumps it, and
  backward raises on a saved tensor whose counter moved.
* ``sroot``, the storage: all of the above, ``.data`` included; a write through ``.data`` lands in a saved tensor
  without bumping its counter (silently wrong gradients).

An in-place op returns its target (the same tensor: every root, and the identity ``ident``), as does
``torch.f(..., out=t)``. :class:`AliasModel` assigns the roots in one pass in graph order
(:meth:`AliasModel.assign`), keeps the latest write per view group and per storage, and answers the one question
three parts of fxgrad ask: *is an alias of the written tensor read after this write?* The facts ask it for every
read (:meth:`AliasModel.states`, which notes ``alias_read_after``/``alias_seen`` on the write: FXG104), the
rewrite asks which tensor a node hangs off (:func:`alias_parent`) to replay a write into its base, and the dry-run
confirms the static answer on real storages (:func:`storage_key`, :func:`shares_storage`).

Reads each node's op view (:mod:`fxgrad.ops`) and the roots of its inputs; writes the roots, ``ident``,
``alias_of``, ``is_view``/``multi_view``/``expanded`` and the FXG104 facts. Linear: constant work per read and per
node.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.fx
from torch.fx import Node
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.utils.rnn import PackedSequence

from . import ops

if TYPE_CHECKING:
    from .facts.records import GraphFacts, NodeFacts

__all__ = ["VIEW_ATTRS", "AliasKind", "AliasModel", "alias_kind", "alias_parent", "flat_nodes", "is_packed",
           "reads_after_writes", "returns_target", "rnn_results", "same_tensor", "shares_storage", "storage_key"]

#: how the result of an op that does not write relates to its first argument (see :func:`alias_kind`)
AliasKind = Literal["same", "data", "detach", "getitem", "view"]
#: attributes that are differentiable views of the tensor
VIEW_ATTRS = frozenset({"T", "mT", "H", "mH", "real", "imag"})
#: ops returning several tensors that the schemas do not describe as such
_TUPLE_OPS = frozenset({"sort", "topk", "kthvalue", "mode", "std_mean", "var_mean", "aminmax", "frexp", "lstm", "gru",
                        "rnn_tanh", "rnn_relu", "unique", "unique_consecutive", "histogram", "lu", "qr", "svd",
                        "slogdet", "eig", "eigh", "cummax", "cummin"})


def is_packed(a: Any) -> bool:
    """A ``PackedSequence``, or a node that makes one: its class called (the run capture rebuilds one so), or the
    output of a module (an RNN) called on one, ``rnn(packed)[0]``."""
    if isinstance(a, PackedSequence):
        return True
    if not isinstance(a, Node) or a.op != "call_function":
        return False
    if a.target is PackedSequence:
        return True
    if a.target is operator.getitem and len(a.args) > 1 and a.args[1] == 0 and isinstance(a.args[0], Node):
        call = a.args[0]
        return call.op == "call_module" and bool(call.args) and is_packed(call.args[0])
    return False


def flat_nodes(a: Any) -> list[torch.fx.Node]:
    """The nodes in an argument structure, in order."""
    out: list[torch.fx.Node] = []
    torch.fx.node.map_arg(a, out.append)
    return out


def alias_kind(name: str) -> AliasKind | None:
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
    if ops.is_view_op(name) or (name.startswith("getattr.") and name[8:] in VIEW_ATTRS):
        return "view"
    return None



def same_tensor(nf: NodeFacts, base: NodeFacts) -> None:
    """``nf``'s result is ``base``'s tensor itself (an in-place op returns its target): the same roots, identity and
    view flags."""
    nf.vroot, nf.croot, nf.sroot = base.vroot, base.croot, base.sroot
    nf.is_view, nf.ident = base.is_view, base.ident
    if base.multi_view:  # (rare facts are set only when true: see :class:`NodeFacts`)
        nf.multi_view = True
    if base.expanded:
        nf.expanded = True


def alias_parent(nf: NodeFacts) -> torch.fx.Node | None:
    """The tensor whose memory ``nf``'s result shares by a view or a ``.detach()``/``.data`` step (its first
    argument), or ``None`` (a tensor with memory of its own, or an in-place op's result, which *is* its target)."""
    first = nf.node.args[0] if nf.node.args else None
    if isinstance(first, Node) and (nf.is_view or nf.alias_of is not None):
        return first
    return None


def storage_key(t: torch.Tensor) -> Hashable:
    """The identity of ``t``'s storage, as ``torch.fx.passes.reinplace`` keys storages (the tensors compared are
    alive, so the storage is not freed and its address not reused)."""
    try:
        return StorageWeakRef(t.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return id(t)


def shares_storage(a: Collection[Hashable], b: Collection[Hashable]) -> bool:
    """Do two sets of storage keys (:func:`storage_key`) of tensors that ran share one: proof that a static alias
    (``alias_seen`` of a write and its target) is real (``reshape`` may copy)."""
    return not set(a).isdisjoint(b)


class AliasModel:
    """The roots of every node, assigned in graph order, and the latest write into each view group and storage.

    ``nodes`` is the facts dict the forward pass fills (read only here, except for the alias facts of the node at
    hand and of writes an alias is read after)."""

    def __init__(self, nodes: Mapping[torch.fx.Node, NodeFacts],
                 modules: Mapping[str, torch.nn.Module] | None = None) -> None:
        self.nodes = nodes
        #: the modules by qualified name (what a ``call_module`` returns depends on its kind)
        self.modules = modules or {}
        #: view root -> the latest write into the group (data or autograd state): later reads see its result
        self.last_mut: dict[Hashable, NodeFacts] = {}
        #: storage root -> the latest data write into it
        self.last_data_write: dict[Hashable, NodeFacts] = {}
        #: the index of the latest write (of data or autograd state): a node made at or after it reads as itself
        self.latest_write = -1

    def note_data_write(self, nf: NodeFacts, vroot: Hashable, sroot: Hashable) -> None:
        """``nf`` wrote data into the view group ``vroot`` (storage ``sroot``)."""
        self.last_mut[vroot] = nf
        self.last_data_write[sroot] = nf
        self.latest_write = nf.index

    def note_meta_write(self, nf: NodeFacts, vroot: Hashable) -> None:
        """``nf`` changed the autograd state of the view group ``vroot`` (``detach_``, ``requires_grad_``)."""
        self.last_mut[vroot] = nf
        self.latest_write = nf.index

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

    def assign(self, nf: NodeFacts, kind: AliasKind, first_f: NodeFacts) -> None:
        """Alias roots of the result (see :func:`alias_kind` for ``kind``)."""
        view = nf.view
        if kind == "same" or kind == "data":
            writes = view.writes
            base = (self.nodes.get(writes) if isinstance(writes, Node) else None) or first_f
            if kind == "data":
                nf.sroot = base.sroot  # same storage, own version counter, no history
                nf.alias_of = base.ident
                return
            same_tensor(nf, base)
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
                base_f.node.op != "placeholder" and self.returns_tuple(base_f)) or rnn_results(base_f.node,
                                                                                            self.modules.get):
            if ops.multi_output_view(base_view.name):
                src = next(iter(flat_nodes(base_f.node.args)), None)
                src_f = self.nodes.get(src) if src is not None else None
                if src_f is not None:
                    nf.vroot, nf.croot, nf.sroot = src_f.vroot, src_f.croot, src_f.sroot
                    nf.multi_view = nf.is_view = True
            return
        index = node.args[1] if len(node.args) > 1 else None
        advanced = any(self.nodes[i].role != "value" for i in flat_nodes(index) if i in self.nodes)
        if isinstance(index, list) or (isinstance(index, tuple) and any(isinstance(i, list) for i in index)):
            advanced = True  # x[[0, 1]] indexes with a list: a copy, like indexing with a tensor
        if not advanced:
            nf.vroot, nf.croot, nf.sroot = base_f.vroot, base_f.croot, base_f.sroot
            nf.is_view = True
            if base_f.multi_view:
                nf.multi_view = True

    @staticmethod
    def returns_tuple(nf: NodeFacts) -> bool:
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

    def reads_alias_of_target(self, nf: NodeFacts) -> bool:
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


def returns_target(node: torch.fx.Node) -> bool:
    """Every in-place spelling returns the tensor it wrote, except ``x[i] = v`` (``None``)."""
    return not (node.op == "call_function" and node.target is operator.setitem)


def reads_after_writes(graph: torch.fx.Graph, facts: GraphFacts
                       ) -> dict[torch.fx.Node, dict[torch.fx.Node, torch.fx.Node]]:
    """In-place op -> each alias read after it (a view, the base, a detached alias) and its first reader.

    The conservative form of :meth:`AliasModel.states`' question, for a rewrite, which must not miss a read: the
    storage roots are the facts', widened where fxgrad cannot see into an op (an opaque call's result may be its
    input; ``t[0]`` of a tuple shares the tuple's root), and a read counts whatever tensor object it is, except
    the written tensor itself under another name (an in-place op's result)."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    canonical: dict[torch.fx.Node, torch.fx.Node] = {}
    root: dict[torch.fx.Node, Any] = {}
    by_root: dict[Any, list[torch.fx.Node]] = {}
    aliased: dict[torch.fx.Node, dict[torch.fx.Node, torch.fx.Node]] = {}
    module_of = _submodule(facts.gm)
    for node in graph.nodes:
        nf = facts.nodes[node]
        reads = list(dict.fromkeys(flat_nodes((node.args, node.kwargs))))
        root[node] = _widened_root(nf, reads, root, facts, module_of)
        for a in reads:
            muts = by_root.get(root.get(a, a))
            if not muts:
                continue
            for m in reversed(muts):
                if index[m] <= index[a]:
                    break
                t = facts.nodes[m].target
                if t is not None and canonical.get(a, a) is not canonical.get(t, t):
                    aliased.setdefault(m, {}).setdefault(a, node)
        if nf.target is not None and nf.view.writes is not None:
            t = nf.target
            if returns_target(node):
                canonical[node] = canonical.get(t, t)
            by_root.setdefault(root.get(t, t), []).append(node)
    return aliased


def _widened_root(nf: NodeFacts, reads: list[torch.fx.Node], root: dict[torch.fx.Node, Any],
                  facts: GraphFacts, module_of: Callable[[str], Any]) -> Any:
    """The facts' storage root, widened for ops fxgrad cannot see into: their result may be their input (an RNN
    module's results are new tensors, and its tuples' elements are picked, not viewed)."""
    node = nf.node
    opaque = (node.op == "call_module" and not nf.view.known and _rnn_module(node, module_of) is None) or (
        node.op == "call_function" and not _known_function(node.target))
    if opaque and nf.view.writes is None and nf.role != "value":
        first = next((a for a in reads), None)
        if first is not None:
            return root.get(first, first)
    if node.op == "call_function" and node.target is operator.getitem and node.args and \
            isinstance(node.args[0], torch.fx.Node) and not _advanced_index(node.args[1:], facts) and \
            not rnn_results(node.args[0], module_of):
        # ``t[0]`` is a view of ``t`` (or an element of a tuple ``t``: sharing the root is the safe side).
        base = node.args[0]
        return root.get(base, base)
    sroot = nf.sroot
    if isinstance(sroot, torch.fx.Node):
        return root.get(sroot, sroot)
    return sroot


def _rnn_module(node: Node, module_of: Callable[[str], Any]) -> torch.nn.RNNBase | None:
    """The ``nn.LSTM`` / ``GRU`` / ``RNN`` a ``call_module`` node calls: its results are new tensors (a
    ``PackedSequence`` result passes the input's index tensors on, which nothing writes)."""
    if node.op != "call_module":
        return None
    module = module_of(str(node.target))
    return module if isinstance(module, torch.nn.RNNBase) else None


def rnn_results(node: Node, module_of: Callable[[str], Any]) -> bool:
    """Is ``node`` a tuple of an RNN module's results, whose elements ``node[i]`` picks rather than views: the call
    itself, ``nn.LSTM``'s ``(h_n, c_n)``, the output of a call on a ``PackedSequence`` (a named tuple)?
    (``torch.lstm`` returns three tensors, flat: its results are told apart by :meth:`AliasModel.returns_tuple`.)"""
    if _rnn_module(node, module_of) is not None:
        return True
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) < 2:
        return False
    base, index = node.args[0], node.args[1]
    module = _rnn_module(base, module_of) if isinstance(base, Node) else None
    if module is None or not isinstance(base, Node) or not isinstance(index, int):
        return False
    if index == 1:
        return str(module.mode) == "LSTM"
    return index == 0 and bool(base.args) and is_packed(base.args[0])


def _submodule(gm: torch.nn.Module) -> Callable[[str], Any]:
    def module_of(target: str) -> Any:
        try:
            return gm.get_submodule(target)
        except AttributeError:
            return None
    return module_of


def _advanced_index(index: Any, facts: GraphFacts) -> bool:
    """An index with tensors or lists in it copies (``t[mask]``); ints, slices, None and ``...`` make a view."""
    if any(facts.nodes[i].role != "value" for i in flat_nodes(index) if i in facts.nodes):
        return True
    found: list[bool] = []

    def visit(a: Any) -> Any:
        if isinstance(a, (list, torch.Tensor)):
            found.append(True)
        return a

    for item in index if isinstance(index, tuple) else (index,):
        for sub in item if isinstance(item, tuple) else (item,):
            visit(sub)
    return bool(found)


@functools.cache
def _known_function(target: Any) -> bool:
    """Functions whose aliasing the facts know: torch's own and Python's operators."""
    module = getattr(target, "__module__", None) or ""
    if isinstance(target, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
        return True
    return module.startswith(("torch", "_operator", "operator", "builtins", "math")) or target in (
        getattr, operator.getitem)
