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

1. Forward, in graph order: grad mode, role, op view, effective inputs (re-pointed to the latest mutation),
   differentiability of each input edge, ``live``, alias roots; mutations bump version counters and settle
   the pending saved tensors of that storage; then the node's own saved tensors are recorded.
2. Backward, in reverse order: ``reach``, ``reach_nz``, ``data_reach`` and ``cause`` from the output.
3. Parameters: each trainable parameter's verdict from the reach of the nodes that use it.

Both passes touch each node and each edge a constant number of times: linear in the size of the graph.
"""

from __future__ import annotations

import gc
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.autograd import grad_mode

from . import ops
from ._saved_table import BACKEND_DEPENDENT, SAVED
from .ops import OpView

__all__ = ["GraphFacts", "NodeFacts", "ParamFacts", "SavedUse", "compute_facts"]

Root = Hashable


@dataclass(slots=True)
class SavedUse:
    """A tensor that ``saver`` saved for backward, and the in-place op that later overwrote it, if any."""

    saver: torch.fx.Node
    tensor: Any  # the node whose value was saved, or a parameter name
    arg: str  # schema name ("self", "other", "result" ...)
    croot: Root
    sroot: Root
    backend_dependent: bool = False


_NONE: tuple[()] = ()


@dataclass(slots=True)
class NodeFacts:
    node: torch.fx.Node
    index: int
    view: OpView
    role: str = "activation"  # param | buffer | input | constant | activation | value | control | output
    grad_on: bool = True
    live: bool = False
    #: effective inputs: (producer, differentiable, zero-gradient)
    deps: list[tuple[torch.fx.Node, bool, bool]] = _NONE  # type: ignore[assignment]
    #: why this node stops gradients: detach | data | no_grad | leaves | requires_grad | integer | rebuild
    cut: str | None = None
    #: the live input whose gradient this node drops
    cut_input: torch.fx.Node | None = None
    zero: bool = False
    vroot: Root = None
    croot: Root = None
    sroot: Root = None
    #: for in-place ops: the node written to, and what its write does
    target: torch.fx.Node | None = None
    target_role: str = ""
    target_live: bool = False
    leaf_write: bool = False
    #: a write of autograd metadata (``detach_``, ``requires_grad_``) rather than data
    meta_write: bool = False
    #: eager forward raises here: autograd rejects the call (the error's text)
    forward_error: str | None = None
    #: the write goes into an expanded view (several elements, one memory location): forward raises
    overlap_write: bool = False
    #: autograd has no derivative for this op: backward raises when it reaches it
    no_derivative: bool = False
    #: a view returned by ``split``/``chunk``/``unbind`` (or a view of one): in-place writes are forbidden
    multi_view: bool = False
    #: made by a view op (or ``x[...]``): shares its base's memory under another shape
    is_view: bool = False
    #: a view made by ``expand``: several elements share one memory location
    expanded: bool = False
    #: the tensor object this node's value is: an in-place op returns its target, ``nn.Identity`` its input
    ident: Any = None
    #: for ``.detach()`` / ``.data``: the tensor it is an alias of (writing through it means writing that tensor)
    alias_of: Any = None
    alias_read_after: bool = False
    #: the first alias of the written tensor read after the write (what makes FXG104 true)
    alias_seen: torch.fx.Node | None = None
    is_view_target: bool = False
    # The lists below are a shared empty tuple until a node needs its own (most never do: no per-node allocation).
    overwritten: list[SavedUse] = _NONE  # type: ignore[assignment]  # version bumped: backward raises
    silently_written: list[SavedUse] = _NONE  # type: ignore[assignment]  # storage written behind the counter
    unknown_savers: list[torch.fx.Node] = _NONE  # type: ignore[assignment]
    module_params: list[str] = _NONE  # type: ignore[assignment]  # trainable params a call_module uses
    # backward pass
    reach: bool = False
    reach_nz: bool = False
    data_reach: bool = False
    cause: torch.fx.Node | None = None


@dataclass
class ParamFacts:
    name: str
    status: str  # ok | no-grad | zero-grad | unused
    cause: torch.fx.Node | None = None
    uses: list[torch.fx.Node] = field(default_factory=list)


@dataclass
class GraphFacts:
    gm: torch.fx.GraphModule
    nodes: dict[torch.fx.Node, NodeFacts]
    params: dict[str, ParamFacts]
    #: parameter object id -> the name ``named_parameters()`` gives (tied weights share one name)
    param_names: dict[int, str]

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


class _Pass:
    def __init__(self, gm: torch.fx.GraphModule, inputs_require_grad: frozenset[str],
                 model: nn.Module | None) -> None:
        self.gm = gm
        #: the user's model: a GraphModule only keeps the submodules its graph uses, the report needs them all
        self.model = model if model is not None else gm
        # One walk over the module tree gives modules, parameters and buffers (``named_parameters()`` and
        # friends would each walk it again). A GraphModule traced from ``model`` shares its submodules.
        self.modules: dict[str, nn.Module] = {}
        self.named_params: list[tuple[str, nn.Parameter]] = []
        self.buffer_ids: set[int] = set()
        seen: set[int] = set()
        stack: list[tuple[str, nn.Module]] = [("", self.model)]
        visited: set[int] = set()
        while stack:  # depth-first, children in order: the order and names named_parameters() gives
            path, mod = stack.pop()
            if id(mod) in visited:
                continue
            visited.add(id(mod))
            self.modules[path] = mod
            prefix = f"{path}." if path else ""
            for pname, param in mod._parameters.items():
                if param is not None and id(param) not in seen:
                    seen.add(id(param))
                    self.named_params.append((prefix + pname, param))
            for buf in mod._buffers.values():
                if buf is not None:
                    self.buffer_ids.add(id(buf))
            stack.extend((prefix + name, child) for name, child in reversed(mod._modules.items())
                         if child is not None)
        self.viewer = ops.OpViewer(self.modules)
        self.inputs_require_grad = inputs_require_grad
        self.nodes: dict[torch.fx.Node, NodeFacts] = {}
        self.module_param_cache: dict[str, list[str]] = {}
        self.entry_cache: dict[tuple[str, bool], Any] = {}
        #: storage root -> nodes that may have saved a tensor of it, with their arguments' states then
        self.deferred: dict[Root, list[tuple[NodeFacts, dict[torch.fx.Node, torch.fx.Node]]]] = {}
        self.materialized: set[torch.fx.Node] = set()
        self.param_root_cache: dict[str, Root] = {}
        self.any_writes = True
        #: roots of leaves that require grad: an in-place write on them (or a view) with grad enabled raises
        self.leaf_roots: set[Root] = set()
        #: parameters frozen by ``requires_grad_(False)`` in forward, and the node that froze them
        self.frozen: dict[str, torch.fx.Node] = {}
        self.param_names: dict[int, str] = {}
        for name, p in self.named_params:
            self.param_names.setdefault(id(p), name)
            if p.requires_grad:
                self.leaf_roots.add(("param", self.param_names[id(p)]))
        self.grad_values: dict[torch.fx.Node, bool] = {}  # is_grad_enabled nodes -> their value
        self.mode_stack: list[bool] = []
        self.grad_on = True
        self.last_mut: dict[Root, NodeFacts] = {}
        self.last_data_write: dict[Root, NodeFacts] = {}
        self.pending: dict[Root, list[SavedUse]] = {}
        self.pending_unknown: dict[Root, list[torch.fx.Node]] = {}

    # -- helpers ------------------------------------------------------------------------------------------------

    def state(self, a: torch.fx.Node, reader: NodeFacts) -> torch.fx.Node:
        """The node whose value a read of ``a`` sees: the latest in-place op on its view group after ``a``.

        Also notes, on the latest data write into ``a``'s storage, that a *different* tensor sharing that memory
        (a view, the base, a ``.detach()`` or ``.data`` alias) is read after it: FXG104.
        """
        fa = self.nodes.get(a)
        if fa is None:
            return a
        if self.last_data_write:
            w = self.last_data_write.get(fa.sroot)
            wt = self.nodes[w.target] if w is not None and w.target is not None else None
            if wt is not None and w is not None and w.index > fa.index and fa.ident is not None and (
                    (fa.ident != wt.ident and fa.ident != wt.alias_of)
                    # ``res = h; h = relu_(h); ... res``: the old name, read although the result has its own
                    or (a is w.target and len(w.node.users) > 0 and reader is not w)):
                w.alias_read_after = True
                if w.alias_seen is None:
                    w.alias_seen = a
        m = self.last_mut.get(fa.vroot)
        if m is None or m.index <= fa.index:
            return a
        return m.node

    def _module_params(self, target: str) -> list[str]:
        """Trainable parameters a leaf module uses, by their canonical names (cached: modules repeat)."""
        cached = self.module_param_cache.get(target)
        if cached is None:
            mod = self.modules.get(target)
            cached = []
            if mod is not None:
                named = mod._parameters.items() if not mod._modules else mod.named_parameters()
                for n, p in named:
                    if p is not None and p.requires_grad:
                        cached.append(self.param_names.get(id(p)) or f"{target}.{n}")
            self.module_param_cache[target] = cached
        return cached

    def param_root(self, node: torch.fx.Node) -> Root:
        p = _attr(self.gm, str(node.target))
        return ("param", self.param_names.get(id(p), str(node.target)))

    # -- step 1 -------------------------------------------------------------------------------------------------

    def forward(self) -> None:
        nodes = list(self.gm.graph.nodes)
        views = [self.viewer(node) for node in nodes]
        # What an op saves for backward only matters if some op writes in place: without one, skip the bookkeeping.
        self.any_writes = any(v.writes is not None or v.param_writes for v in views)
        for index, (node, view) in enumerate(zip(nodes, views, strict=True)):
            nf = NodeFacts(node, index, view, grad_on=self.grad_on)
            self.nodes[node] = nf
            nf.vroot = nf.croot = nf.sroot = nf.ident = node
            if self._grad_mode_node(nf):
                continue
            if node.op == "placeholder":
                nf.role = "input"
                nf.live = str(node.target) in self.inputs_require_grad
                if nf.live:
                    self.leaf_roots.add(node)
            elif node.op == "get_attr":
                self._get_attr(nf)
            elif node.op == "output":
                nf.role = "output"
                nf.deps = [(self.state(a, nf), True, False) for a in _flat_nodes(node.args)]
            else:
                self._op(nf)

    def _grad_mode_node(self, nf: NodeFacts) -> bool:
        node = nf.node
        if node.op != "call_function":
            return False
        target = node.target
        if target is torch.is_grad_enabled:
            self.grad_values[node] = self.grad_on
        elif target is torch._C._set_grad_enabled:
            arg = node.args[0] if node.args else True
            self.grad_on = self.grad_values.get(arg, True) if isinstance(arg, torch.fx.Node) else bool(arg)
        elif target is grad_mode._enter_inference_mode:
            self.mode_stack.append(self.grad_on)
            self.grad_on = self.grad_on and not bool(node.args[0] if node.args else True)
        elif target is grad_mode._exit_inference_mode:
            self.grad_on = self.mode_stack.pop() if self.mode_stack else True
        else:
            return False
        nf.role = "control"
        return True

    def _get_attr(self, nf: NodeFacts) -> None:
        value = _attr(self.gm, str(nf.node.target))
        if isinstance(value, nn.Parameter):
            nf.role = "param"
            nf.live = value.requires_grad
            nf.vroot = nf.croot = nf.sroot = self.param_root(nf.node)
        elif isinstance(value, torch.Tensor):
            nf.role = "buffer" if id(value) in self.buffer_ids else "constant"
        else:
            nf.role = "value"

    def _edge(self, nf: NodeFacts) -> tuple[bool, str | None, bool, bool]:
        """(differentiable, cut kind, result is a plain value, zero gradient) of the node's input edges."""
        name = nf.view.name
        fixed = _EDGES.get(name)
        if fixed is not None:
            return fixed
        if name == "getitem":
            return self._getitem_edge(nf)
        if name.startswith("getattr."):
            attr = name[8:]
            if attr == "indices":
                return (False, "integer", False, False)
            if attr in ops.DIFFERENTIABLE_FIELDS:
                return (True, None, False, False)
            return (True, None, False, False) if attr in _VIEW_ATTRS else (False, None, attr in _METADATA_ATTRS,
                                                                             False)
        if name == "requires_grad_":
            node = nf.node
            flag = node.args[1] if len(node.args) > 1 else node.kwargs.get("requires_grad", True)
            return (True, None, False, False) if flag is not False else (False, "requires_grad", False, False)
        if name in ops.CASTS and ops.is_integer_cast(nf.node, nf.view):
            return (False, "integer", False, False)
        return (True, None, False, False)

    def _getitem_edge(self, nf: NodeFacts) -> tuple[bool, str | None, bool, bool]:
        """``h.topk(2)[1]``, ``h.max(dim=1)[1]``, ``torch.sort(h)[1]``: the indices half is an integer tensor."""
        node = nf.node
        base = node.args[0] if node.args else None
        index = node.args[1] if len(node.args) > 1 else None
        if isinstance(base, torch.fx.Node) and index == 1 and base in self.nodes:
            bname = self.nodes[base].view.name
            if bname in ops.VALUES_INDICES and (
                    bname not in ("max", "min", "median", "nanmedian") or len(base.args) > 1 or "dim" in base.kwargs):
                return (False, "integer", False, False)
        return (True, None, False, False)

    def _op(self, nf: NodeFacts) -> None:
        node, view = nf.node, nf.view
        name = view.name
        nodes = self.nodes
        args = node.all_input_nodes
        states = [self.state(a, nf) for a in args] if self.last_mut else args
        first = args[0] if args else None
        first_f = nodes.get(first) if first is not None else None

        diff, cut, value_result, zero = self._edge(nf)
        if not value_result and args and node.op != "call_module" and all(
                s in nodes and nodes[s].role == "value" for s in states):
            value_result = True
        if value_result:
            nf.role = "value"

        writes = view.writes
        write_target = writes if isinstance(writes, torch.fx.Node) else None
        grad_on = nf.grad_on
        live_in: torch.fx.Node | None = None  # a live input whose gradient would flow through this node
        any_live: torch.fx.Node | None = None
        if write_target is None and grad_on:
            deps = [(s, diff, zero) for s in states]
            for s in states:
                sf = nodes.get(s)
                if sf is not None and sf.live:
                    any_live = any_live or s
                    if diff:
                        live_in = s
                        break
        else:
            overwrites = write_target is not None and name in ops.OVERWRITES
            deps = []
            for a, s in zip(args, states, strict=True):
                is_self = a is write_target
                if not grad_on:
                    # In-place under no_grad keeps the target's history; nothing else is recorded.
                    d, z = is_self and name not in ops.DETACH, False
                elif is_self and overwrites:
                    d, z = True, True  # zero_/fill_/copy_: the old value gets a zero gradient
                else:
                    d, z = diff, zero
                deps.append((s, d, z))
                sf = nodes.get(s)
                if sf is not None and sf.live:
                    any_live = any_live or s
                    if d and live_in is None:
                        live_in = s
        nf.deps = deps
        nf.zero = zero

        if not grad_on and cut is None and any_live is not None:
            cut = "no_grad"
        if cut is not None and (any_live is not None or cut == "no_grad"):
            nf.cut, nf.cut_input = cut, any_live

        if grad_on and live_in is not None and view.spelling.endswith("(out=...)"):
            nf.forward_error = (f"{name}(): functions with out=... arguments don't support automatic "
                                "differentiation, but one of the arguments requires grad.")
        if grad_on and live_in is not None and name in ops.NO_DERIVATIVE:
            nf.no_derivative = True
        if node.op == "call_module":
            nf.module_params = [p for p in self._module_params(str(node.target)) if p not in self.frozen]
            nf.live = grad_on and (live_in is not None or bool(nf.module_params))
            if not grad_on and nf.module_params and nf.cut is None:
                nf.cut = "no_grad"
        else:
            nf.live = grad_on and live_in is not None and not value_result
        if write_target is not None and not nf.live and grad_on is False and live_in is not None:
            nf.live = True  # in-place under no_grad: the target keeps requiring grad
        if first_f is not None and not value_result:
            self._aliases(nf, first, first_f, states)
        for pname in view.param_writes:
            self._write_root(nf, ("param", self.param_names.get(id(_attr(self.gm, pname)), pname)))
        records = self.any_writes and (nf.live or (write_target is not None and grad_on)) and (
            name not in ops.META_WRITES)
        if write_target is not None and name in ops.META_WRITES:
            self._meta_write(nf, write_target, diff)
        elif write_target is not None:
            if records:
                self._record_saved(nf, "inputs")
            self._write(nf, write_target)
        if records and write_target is not None:
            self._record_saved(nf, "result")
        elif records:
            self._defer(nf, args, states)

    def _aliases(self, nf: NodeFacts, first: torch.fx.Node | None, first_f: NodeFacts | None,
                 states: list[torch.fx.Node]) -> None:
        node, view, name = nf.node, nf.view, nf.view.name
        if first_f is None or nf.role == "value":
            return
        if view.writes is not None or name in ops.PASS_THROUGH or (name == "getattr.data"):
            base = self.nodes.get(view.writes) if isinstance(view.writes, torch.fx.Node) else first_f
            base = base or first_f
            if name == "getattr.data":
                nf.sroot = base.sroot  # same storage, own version counter, no history
                nf.alias_of = base.ident
                return
            nf.vroot, nf.croot, nf.sroot = base.vroot, base.croot, base.sroot
            nf.is_view, nf.multi_view, nf.ident = base.is_view, base.multi_view, base.ident  # the same tensor
            nf.expanded = base.expanded
            return
        if name in ops.DETACH:
            nf.croot, nf.sroot = first_f.croot, first_f.sroot  # shares the version counter
            nf.alias_of = first_f.ident
            return
        if name == "getitem":
            base_node = first
            base_f = first_f
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
            if not advanced and base_node is not None:
                nf.vroot, nf.croot, nf.sroot = base_f.vroot, base_f.croot, base_f.sroot
                nf.multi_view, nf.is_view = base_f.multi_view, True
            return
        if ops.is_view_op(name) or (name.startswith("getattr.") and name[8:] in _VIEW_ATTRS):
            nf.vroot, nf.croot, nf.sroot = first_f.vroot, first_f.croot, first_f.sroot
            nf.multi_view, nf.is_view = first_f.multi_view, True
            nf.expanded = first_f.expanded or name in ops.EXPANDING_VIEWS

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

    def _write(self, nf: NodeFacts, target: torch.fx.Node) -> None:
        tf = self.nodes.get(target)
        if tf is None:
            return
        nf.target = target
        nf.target_role = tf.role
        before = self.state(target, nf)
        nf.target_live = before in self.nodes and self.nodes[before].live
        root_f = self.nodes.get(tf.vroot) if isinstance(tf.vroot, torch.fx.Node) else None
        if isinstance(tf.vroot, tuple):
            nf.target_role = "param"
        elif root_f is not None and root_f.role in ("input", "buffer", "constant", "param"):
            nf.target_role = root_f.role
        nf.is_view_target = tf.is_view
        if tf.expanded:
            nf.overlap_write = True
        elif nf.view.name in ops.RESIZES and nf.target_live:
            nf.forward_error = "cannot resize variables that require grad"
        elif nf.grad_on and tf.vroot in self.leaf_roots and nf.target_live:
            nf.leaf_write = True
        elif nf.grad_on and tf.multi_view and nf.target_live:
            nf.forward_error = ("Output 0 of SplitBackward0 is a view and is being modified inplace. This view is the "
                                "output of a function that returns multiple views. Such functions do not allow the "
                                "output views to be modified inplace.")
        self._settle(nf, tf.sroot, tf.croot)
        nf.unknown_savers = self.pending_unknown.pop(tf.sroot, [])
        self.last_mut[tf.vroot] = nf
        self.last_data_write[tf.sroot] = nf

    def _settle(self, nf: NodeFacts, sroot: Root, croot: Root) -> None:
        """A data write: tensors saved on this storage before now are overwritten (same version counter) or
        silently written (another counter, i.e. through ``.data``)."""
        for saver, at in self.deferred.pop(sroot, ()):
            if saver.node not in self.materialized:
                self.materialized.add(saver.node)
                self._record_saved(saver, "all", at)
        for use in self.pending.pop(sroot, []):
            if use.croot == croot:
                nf.overwritten = [*nf.overwritten, use]
            else:
                nf.silently_written = [*nf.silently_written, use]

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
            is_leaf = root in self.leaf_roots or not was_live
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

    def _requires(self, a: Any, nf: NodeFacts, at: dict[torch.fx.Node, torch.fx.Node] | None = None) -> bool:
        if isinstance(a, (list, tuple)):
            return any(self._requires(x, nf, at) for x in a)
        if not isinstance(a, torch.fx.Node):
            return False
        s = at.get(a, a) if at is not None else (self.state(a, nf) if self.last_mut else a)
        sf = self.nodes.get(s)
        return sf is not None and sf.live

    def _saved_entry(self, nf: NodeFacts, name: str, inplace: bool) -> Any:
        if nf.node.op == "call_function":
            function = getattr(nf.node.target, "__fxgrad_function__", None)
            if function is not None:
                return ops.function_saves(function)
        key = (name, inplace)
        if key not in self.entry_cache:
            entry = (SAVED.get(name + "_") if inplace else None) or SAVED.get(name) or ops.REFLECTED_SAVED.get(name)
            if entry is None and name.endswith("_"):
                entry = SAVED.get(name[:-1])
            self.entry_cache[key] = entry
        return self.entry_cache[key]

    def _defer(self, nf: NodeFacts, args: list[torch.fx.Node], states: list[torch.fx.Node]) -> None:
        """Note that ``nf`` may have saved tensors, under the storages it touches; what exactly it saved is only
        worked out if one of those storages is ever written (most never are)."""
        if self._saved_entry(nf, nf.view.name, False) is None:
            self._record_saved(nf)  # unknown op: noted at once, cheaply
            return
        at = dict(zip(args, states, strict=True))
        keys = {nf.sroot}
        for a in args:
            af = self.nodes.get(a)
            if af is not None:
                keys.add(af.sroot)
        for pname in nf.view.params.values():
            keys.add(self._param_root_of(pname))
        for key in keys:
            self.deferred.setdefault(key, []).append((nf, at))

    def _param_root_of(self, qualname: str) -> Root:
        root = self.param_root_cache.get(qualname)
        if root is None:
            root = ("param", self.param_names.get(id(_attr(self.gm, qualname)), qualname))
            self.param_root_cache[qualname] = root
        return root

    def _record_saved(self, nf: NodeFacts, phase: str = "all",
                      at: dict[torch.fx.Node, torch.fx.Node] | None = None) -> None:
        """Record what ``nf`` saves for backward. In-place ops save their other inputs *before* they write
        (``phase="inputs"``: ``h *= h`` saves the very tensor it then overwrites) and their result after. ``at``:
        the state each argument had when ``nf`` ran (for deferred records)."""
        view = nf.view
        name = view.name
        inplace = view.writes is not None
        entry = self._saved_entry(nf, name, inplace)
        if entry is None:
            if phase == "inputs":
                return
            if name not in ops.PASS_THROUGH and not ops.is_view_op(name):
                for a in nf.node.all_input_nodes:
                    af = self.nodes.get(a)
                    if af is not None and af.role != "value":
                        self.pending_unknown.setdefault(af.sroot, []).append(nf.node)
            return
        per_input = entry[1]
        override = ops.SCALAR_OVERLOADS.get(name)
        if override is not None and not isinstance(view.args.get(override[0]), torch.fx.Node):
            per_input = override[1]
        params, args = view.params, view.args
        names: set[str] = set()
        for inp, saved in per_input.items():
            if saved and (inp in params or self._requires(args.get(inp), nf, at)):
                names.update(saved)
        if inplace:
            # autograd keeps a clone of the original ``self`` when an in-place op's formula needs it
            names.discard("self")
            if phase == "inputs":
                names = {n for n in names if not n.startswith("result")}
            elif phase == "result":
                names = {n for n in names if n.startswith("result")}
        if not names:
            return
        backend = name in BACKEND_DEPENDENT
        for arg in names:
            if arg.startswith("result"):
                if arg == "result":
                    self._save(SavedUse(nf.node, nf.node, arg, nf.croot, nf.sroot, backend))
                continue
            if arg in params:
                proot = self._param_root_of(params[arg])
                self._save(SavedUse(nf.node, params[arg], arg, proot, proot, backend))
                continue
            value = args.get(arg)
            for arg_node in value if isinstance(value, (list, tuple)) else (value,):
                if not isinstance(arg_node, torch.fx.Node) or arg_node not in self.nodes:
                    continue
                current = at.get(arg_node, arg_node) if at is not None else self.state(arg_node, nf)
                if self.nodes.get(current, self.nodes[arg_node]).role == "value":
                    continue
                orig = self.nodes[arg_node]
                self._save(SavedUse(nf.node, arg_node, arg, orig.croot, orig.sroot, backend))

    def _save(self, use: SavedUse) -> None:
        self.pending.setdefault(use.sroot, []).append(use)

    # -- step 2 -------------------------------------------------------------------------------------------------

    def backward(self) -> None:
        for nf in reversed(self.nodes.values()):
            if nf.role == "output":
                nf.reach = nf.reach_nz = nf.data_reach = True
            for dep, diff, zero in nf.deps:
                df = self.nodes.get(dep)
                if df is None:
                    continue
                if nf.data_reach:
                    df.data_reach = True
                if nf.reach and diff:
                    df.reach = True
                    if nf.reach_nz and not zero:
                        df.reach_nz = True
            # causes are settled once every user was seen: propagate them to inputs that stay unreached.
            if nf.data_reach:
                for dep, diff, _ in nf.deps:
                    df = self.nodes.get(dep)
                    if df is None or df.cause is not None:
                        continue
                    if not diff:
                        df.cause = nf.node
                    elif not nf.reach:
                        df.cause = nf.cause if nf.cause is not None else (nf.node if nf.cut else None)

    # -- step 3 -------------------------------------------------------------------------------------------------

    def parameters(self) -> dict[str, ParamFacts]:
        uses: dict[str, list[NodeFacts]] = {}
        for nf in self.nodes.values():
            if nf.role == "param" and isinstance(nf.vroot, tuple):
                uses.setdefault(nf.vroot[1], []).append(nf)
            for pname in nf.module_params:
                uses.setdefault(pname, []).append(nf)
        out: dict[str, ParamFacts] = {}
        written = {nf.target for nf in self.nodes.values() if nf.target is not None}
        for name, p in self.named_params:
            if not p.requires_grad:
                continue
            name = self.param_names.get(id(p), name)
            pf = ParamFacts(name, "unused")
            out[name] = pf
            facts = uses.get(name, [])
            pf.uses = [f.node for f in facts]
            used = [f for f in facts if f.role != "param" or f.node.users or f.node in written]
            if not used:
                continue
            reach = [f for f in used if f.reach and (f.role == "param" or f.grad_on)]
            if any(f.reach_nz for f in reach):
                pf.status = "ok"
            elif reach:
                pf.status = "zero-grad"
                pf.cause = self._zero_cause(reach[0])
            else:
                pf.status = "no-grad"
                pf.cause = self.frozen.get(name) or next(
                    (f.node for f in used if f.role != "param" and f.cut == "no_grad"), None)
                if pf.cause is None:
                    pf.cause = next((f.cause for f in used if f.cause is not None), None)
        return out

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
                if any(z for d, _, z in uf.deps if d is n) and uf.reach:
                    return u
                if uf.reach:
                    frontier.append(u)
        return None


def compute_facts(gm: torch.fx.GraphModule, *, inputs_require_grad: frozenset[str] = frozenset(),
                  model: nn.Module | None = None) -> GraphFacts:
    """Run the passes over ``gm`` (which is only read); ``model`` is the module it was traced from."""
    p = _Pass(gm, inputs_require_grad, model)
    # The passes allocate a few small objects per node and free none of them: cyclic GC runs would only rescan
    # them (a third of the time on large graphs). Reference counting still frees everything.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        p.forward()
        p.backward()
        params = p.parameters()
    finally:
        if was_enabled:
            gc.enable()
    return GraphFacts(gm, p.nodes, params, p.param_names)

