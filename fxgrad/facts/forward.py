"""The forward pass, in graph order: grad mode, value roles, requires-grad (``live``), the input edges and the
effective inputs of every node, and what each write does (a leaf written with grad enabled, an overlapping or
resizing write, a write of autograd state).

Step by step, per node:

1. Grad mode: the ``_set_grad_enabled`` / inference-mode nodes the tracer kept switch it (:meth:`_grad_mode_node`).
2. Role: parameter, buffer, graph input, constant, activation, or a plain Python value.
3. Effective inputs: each read is re-pointed to the latest write into its view group
   (:meth:`fxgrad.aliasing.AliasModel.states`, which also notes an alias read after a write: FXG104), so gradient
   flow follows the values the program really uses.
4. Edges and ``live``: whether each input edge is differentiable or zero-gradient, the cut a node makes, and
   whether its result requires grad.
5. Aliases: the result's roots (:meth:`fxgrad.aliasing.AliasModel.assign`).
6. Writes: the target, its role, and what autograd does about the write (:meth:`_write`, :meth:`_meta_write`); the
   saved tensors of its storage are settled (:class:`fxgrad.facts.saved.SavedTensors`).
7. Saved tensors: what the node itself may have saved is noted for later writes (``defer``).

Cost. Most nodes are *plain* (a differentiable op with grad enabled that writes nothing and makes no view):
:meth:`ForwardPass._op` handles them itself, common writes go to :meth:`ForwardPass._inplace`, the rest to
:meth:`ForwardPass._general`. The three share their checks of the call (:meth:`ForwardPass._call_errors`) and the
edges of all-differentiable ops (:meth:`ForwardPass._differentiable`).

Reads the module index (:class:`fxgrad.facts.modules.ModuleIndex`) and the op traits; writes every node's roles,
edges, ``live``, ``cut``, write facts, and the list of nodes the rules need to see (``flagged``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import nn
from torch.autograd import grad_mode
from torch.fx import Node

from .. import ops
from ..aliasing import AliasModel, flat_nodes, same_tensor
from ..ops import OpView
from .modules import ModuleIndex, ParamUses
from .records import _PLAIN_EDGE, NodeFacts, Root
from .saved import SavedTensors
from .traits import (
    _ANY_TIME,
    _DATA_ROLES,
    _DIFFERENTIABLE,
    _GRAD_MODE_TARGETS,
    _INTEGER,
    _TRAITS,
    Edge,
    _attr,
    _OpTraits,
    _traits,
)

__all__ = ["ForwardPass"]


def _all_values(states: Sequence[torch.fx.Node], nodes: dict[torch.fx.Node, NodeFacts]) -> bool:
    """Every input is a plain Python value (``x.size(0) * 2``): so is the result."""
    for s in states:
        sf = nodes.get(s)
        if sf is None or sf.role != "value":
            return False
    return True


class ForwardPass:
    """Step 1 of :func:`fxgrad.facts.compute_facts` (see the module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule, inputs_require_grad: frozenset[str],
                 index: ModuleIndex) -> None:
        self.gm, self.index, self.inputs_require_grad = gm, index, inputs_require_grad
        self.nodes: dict[torch.fx.Node, NodeFacts] = {}
        self.aliases = AliasModel(self.nodes, index.modules)
        self.saved = SavedTensors(gm, self.nodes, self.aliases, index)
        #: (the alias model's dict, read on every node: one attribute lookup less)
        self.last_mut = self.aliases.last_mut
        #: (the plan's answer, set by :meth:`forward`, read on every live node: one attribute lookup less)
        self.any_writes = True
        #: call_module target -> the trainable parameters a call uses (the index's, read on every module call)
        self.module_param_cache = index.module_param_cache
        #: roots of leaves that require grad: an in-place write on them (or a view) with grad enabled raises.
        #: Those of parameters are added when a write first reaches a parameter (most graphs never write one).
        self.leaf_roots: set[Root] = set()
        self._param_leaves_added = False
        #: parameters frozen by ``requires_grad_(False)`` in forward, and the node that froze them
        self.frozen: dict[str, torch.fx.Node] = {}
        self.grad_values: dict[torch.fx.Node, bool] = {}  # is_grad_enabled nodes -> their value
        self.mode_stack: list[bool] = []
        self.grad_on = True
        #: the ops that are not plain (see :meth:`_op`), in graph order: the only nodes that can cut, zero, raise or
        #: write, so the only ones the rules need to see (:attr:`GraphFacts.flagged`)
        self.flagged: list[NodeFacts] = []

    def _add_param_leaves(self) -> None:
        """The trainable parameters are leaves that require grad (asked for the first time a write reaches one)."""
        if not self._param_leaves_added:
            self._param_leaves_added = True
            self.leaf_roots.update(("param", name) for name, _ in self.index.trainable)

    def forward(self) -> None:
        """Every node in graph order (steps 1-7 of the module docstring), after the saved-tensor plan."""
        nodes = list(self.gm.graph.nodes)
        viewer = self.index.viewer
        # Made in graph order, in a walk of their own: made inside the plan's walk from the end, the pass was
        # 10 % slower on a 100,000-node graph (the views made per call, and what they read, then lie in memory
        # in the reverse of the order every later step reads them).
        views = [viewer(node) for node in nodes]
        self.saved.plan(nodes, views)
        self.any_writes = self.saved.any_writes
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
                nf.deps = self.aliases.states(flat_nodes(node.args), nf)
            else:
                self._op(nf)

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
            root = ("param", self.index.param_names.get(id(value), target))
            nf.vroot = nf.croot = nf.sroot = root
            self.index.use(root[1], nf.node)
            if self.saved.params_writable:
                self.saved.last_write[root] = _ANY_TIME
        elif isinstance(value, torch.Tensor):
            nf.role = "buffer" if id(value) in self.index.buffer_ids else "constant"
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
            latest = self.aliases.latest_write
            for a in args:
                if nodes[a].index < latest:  # (an input is an earlier node: it has its facts)
                    states = self.aliases.states(args, nf)
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
            self.saved.defer(nf, args, traits)

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

        if grad_on and live_in is not None and (write_target is not None or traits.no_derivative):
            self._call_errors(nf, traits, args, states, write_target is not None)
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
                self.aliases.assign(nf, alias, first_f)
        for qualname in view.param_writes:
            self.saved.write_root(nf, self.saved.param_root_of(qualname))

        saved = self.saved
        records = saved.any_writes and (nf.live or (write_target is not None and grad_on)) and not traits.meta_write
        if write_target is None:
            if records:
                self.saved.defer(nf, args, traits)
        elif traits.meta_write:
            self._meta_write(nf, write_target, diff)
        else:
            if records and traits.saves_before_write:
                self.saved.record_saved(nf, "inputs", since=nf.index)
            self._write(nf, write_target, states[args.index(write_target)])  # the target is an input
            if records and traits.saves_after_write:
                self.saved.record_result(nf, traits)

    def _call_errors(self, nf: NodeFacts, traits: _OpTraits, args: Sequence[torch.fx.Node],
                     states: Sequence[torch.fx.Node], writes: bool) -> None:
        """What autograd rejects about a call with grad enabled and a live input (shared by :meth:`_general` and
        :meth:`_inplace`): ``torch.f(..., out=t)`` raises in forward, and backward raises at an op without the
        derivative it will be asked for."""
        # only ``torch.f(..., out=t)`` is spelled so, and it writes ``t``
        if writes and nf.view.spelling.endswith("(out=...)"):
            nf.forward_error = (f"{nf.view.name}(): functions with out=... arguments don't support automatic "
                                "differentiation, but one of the arguments requires grad.")
        if traits.no_derivative and self._underivable(nf, args, states):
            nf.no_derivative = True

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
            self._call_errors(nf, traits, args, states, True)
        if args and not value_result:  # an in-place op returns its target: the same tensor
            same_tensor(nf, nodes[target])  # (the target is an input: it has its facts)
        if traits.saves_before_write:
            self.saved.record_saved(nf, "inputs", since=nf.index)
        self._write(nf, target, states[args.index(target)])  # the target is an input
        if traits.saves_after_write:
            self.saved.record_result(nf, traits)

    def _module_call(self, nf: NodeFacts, node: torch.fx.Node) -> list[ParamUses]:
        """The trainable parameters a module call uses (frozen ones left out), noted as uses of them."""
        module_params = self.module_param_cache.get(node.target)  # type: ignore[arg-type]
        if module_params is None:
            module_params = self.index.module_params(str(node.target))
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
        self.saved.on_write(nf, sroot, tf.croot)
        self.aliases.note_data_write(nf, vroot, sroot)

    def _meta_write(self, nf: NodeFacts, target: torch.fx.Node, flag: bool) -> None:
        """``detach_()`` / ``requires_grad_(flag)``: later reads see the new autograd state; no data changes."""
        tf = self.nodes.get(target)
        if tf is None:
            return
        nf.target, nf.target_role, nf.meta_write = target, tf.role, True
        before = self.aliases.state(target, nf)
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
        self.aliases.note_meta_write(nf, root)

    def _is_leaf(self, root: Root) -> bool:
        """Is the tensor with this view root a leaf that requires grad?"""
        if isinstance(root, tuple):
            self._add_param_leaves()
        return root in self.leaf_roots

