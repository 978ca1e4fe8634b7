"""Saved tensors: what each op saved for backward, and which later write overwrites it (its version counter moved:
backward raises, FXG102) or writes its storage behind the counter (through ``.data``: silently wrong gradients,
FXG106).

Most saved tensors are never written, so the work is done lazily, in three steps:

1. Plan (:meth:`SavedTensors.plan`), from the op views alone, in reverse order: whether any op writes in place, and
   for each storage the last write that may land in it (by name, so an over-approximation).
2. Defer (:meth:`SavedTensors.defer`): an op that may have saved a tensor some later write reaches is noted under
   that storage; nothing is worked out yet.
3. Settle (:meth:`SavedTensors.on_write`): when a write lands in a storage, the deferred savers of that storage
   record what they saved (:meth:`SavedTensors.record_saved`, at the states their inputs had when they ran), and
   each record is overwritten (same version counter) or silently written (another counter).

Reads the op traits (:mod:`fxgrad.facts.traits`), the alias roots and reads (:class:`fxgrad.aliasing.AliasModel`)
and ``live`` of the inputs; writes ``overwritten``, ``silently_written`` and ``unknown_savers`` on the writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.fx
from torch.fx import Node

from .. import backends, ops
from .._saved_table import BACKEND_DEPENDENT
from ..aliasing import AliasModel
from ..ops import OpView
from .modules import ModuleIndex
from .records import NodeFacts, Root, SavedUse
from .traits import _ANY_TIME, _TRAITS, SavedEntry, _attr, _OpTraits, _possible_saves, _table_entry, _traits

__all__ = ["SavedTensors"]


class SavedTensors:
    """The saved-tensor bookkeeping of one forward pass (see the module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule, nodes: dict[torch.fx.Node, NodeFacts], aliases: AliasModel,
                 index: ModuleIndex) -> None:
        self.gm, self.nodes, self.aliases, self.param_names = gm, nodes, aliases, index.param_names
        self.modules = index.modules
        #: storage root -> nodes that may have saved a tensor of it
        self.deferred: dict[Root, list[NodeFacts]] = {}
        self.materialized: set[torch.fx.Node] = set()
        #: storage root -> the saved tensors on it that no write has reached yet
        self.pending: dict[Root, list[SavedUse]] = {}
        #: storage root -> ops without a table that may have saved a tensor of it
        self.pending_unknown: dict[Root, list[torch.fx.Node]] = {}
        self.any_writes = True
        #: some write may hit a parameter's storage (a ``get_attr`` of it, or an op that writes its own weight)
        self.params_writable = True
        #: storage root -> the index of the last write that may land in it (see :meth:`plan`); parameters, when
        #: writable at all, get :data:`_ANY_TIME` as their roots come up
        self.last_write: dict[Root, int] = {}
        #: qualified name -> the root of the parameter there (on demand: only writes into parameters ask)
        self.param_roots: dict[str, Root] = {}
        #: call target -> the custom ``autograd.Function`` behind it, if any
        self.functions: dict[Any, type | None] = {}

    def param_root_of(self, qualname: str) -> Root:
        """The root of the parameter at ``qualname`` (asked only where parameters are writable)."""
        root = self.param_roots.get(qualname)
        if root is None:
            root = ("param", self.param_names.get(id(_attr(self.gm, qualname)), qualname))
            self.param_roots[qualname] = root
            self.last_write[root] = _ANY_TIME
        return root

    # -- step 1 -------------------------------------------------------------------------------------------------

    def plan(self, nodes: list[torch.fx.Node], views: list[OpView]) -> None:
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

    def written_from(self, root: Root, index: int) -> bool:
        """May an in-place op at ``index`` or later write into the storage ``root``?"""
        return self.last_write.get(root, -1) >= index

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
                    self.record_saved(saver, "all", at, nf.index)
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

    def on_write(self, nf: NodeFacts, sroot: Root, croot: Root) -> None:
        """A data write by ``nf`` into the storage ``sroot`` through the version counter ``croot``: what was saved
        on that storage is settled, and the ops without a table that may have saved it are noted on the write."""
        if sroot in self.deferred or sroot in self.pending:
            self._settle(nf, sroot, croot)
        if self.pending_unknown:
            unknown = self.pending_unknown.pop(sroot, None)
            if unknown is not None:
                nf.unknown_savers = unknown

    def write_root(self, nf: NodeFacts, root: Root) -> None:
        """An op that writes a parameter it owns (``nn.Embedding(max_norm=...)`` renormalises its weight)."""
        self._settle(nf, root, root)

    def _requires(self, a: Any, nf: NodeFacts, at: dict[torch.fx.Node, torch.fx.Node] | None = None) -> bool:
        if isinstance(a, Node):
            s = at.get(a, a) if at is not None else (self.aliases.state(a, nf) if self.aliases.last_mut else a)
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

    def defer(self, nf: NodeFacts, args: Sequence[torch.fx.Node], traits: _OpTraits) -> None:
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
            self.record_saved(nf)  # unknown op: noted at once, cheaply
            return
        if nf.view.writes is not None:  # writes something that is no node (rare): recorded as the in-place form
            entry = self._saved_entry(nf, nf.view.name, True) or entry
        may_save = traits.may_save if entry is traits.entry else _possible_saves(nf.view.name, entry)
        if not may_save:
            return  # saves nothing (``add``): nobody would ask
        if not (input_written or ("result" in may_save and result_written)
                or (self.params_writable and nf.view.params_of(nf.node))):
            return
        keys = [sroot] if self.written_from(sroot, after) else []
        for a in args:
            af = nodes.get(a)
            if af is not None and af.sroot is not sroot and self.written_from(af.sroot, after):
                keys.append(af.sroot)
        if self.params_writable:
            keys += [self.param_root_of(qualname) for qualname in nf.view.params_of(nf.node).values()]
        for key in keys:
            self.deferred.setdefault(key, []).append(nf)

    def record_saved(self, nf: NodeFacts, phase: Literal["all", "inputs"] = "all",
                      at: dict[torch.fx.Node, torch.fx.Node] | None = None, since: int = 0) -> None:
        """Record what ``nf`` saves for backward. In-place ops save their other inputs *before* they write
        (``phase="inputs"``: ``h *= h`` saves the very tensor it then overwrites) and their result after (see
        :meth:`record_result`). ``at``: the state each argument had when ``nf`` ran (for deferred records).
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
                if self.written_from(root, since):
                    self.pending.setdefault(root, []).append(
                        SavedUse(node, out, arg, nf.croot if own else out, root, True, choice))
        entry = self._saved_entry(nf, name, inplace)
        if entry is None:
            if phase != "inputs":
                module = self.modules.get(str(node.target)) if node.op == "call_module" else None
                self._note_unknown_saver(nf, (kernel and backends.kernel_of(name, module) is not None)
                                         or isinstance(module, ops.RESULT_UNSAVED_MODULES))
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
                if arg == "result" and not kernel and self.written_from(nf.sroot, since):
                    pending.setdefault(nf.sroot, []).append(SavedUse(node, node, arg, nf.croot, nf.sroot, backend))
                continue
            if arg in params:
                if self.params_writable:
                    proot = self.param_root_of(params[arg])
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
                current = at.get(arg_node, arg_node) if at is not None else self.aliases.state(arg_node, nf)
                if nodes.get(current, orig).role == "value" or not self.written_from(orig.sroot, since):
                    continue
                pending.setdefault(orig.sroot, []).append(SavedUse(node, arg_node, arg, orig.croot, orig.sroot,
                                                                   backend))

    def record_result(self, nf: NodeFacts, traits: _OpTraits) -> None:
        """After an in-place op wrote: whether it saved its result (``relu_`` does). Of the results only output 0
        is tracked, so no other name matters here."""
        view = nf.view
        entry = self._saved_entry(nf, view.name, True, traits)
        if entry is None:
            self._note_unknown_saver(nf)
            return
        kept = self.written_from(nf.sroot, nf.index + 1)
        # (an op with a single input reads only its target)
        if not kept and (len(nf.deps) == 1 or not self.aliases.reads_alias_of_target(nf)):
            return  # nobody would read the record, and the reads below would note nothing new
        params, args = view.params_of(nf.node), view.args_of(nf.node)
        saves_result = False
        for inp, saved in self._per_input(nf, entry, args).items():
            # every input that needs grad is asked, as a full record would: reading it may note an alias (FXG104)
            if saved and (inp in params or self._requires(args.get(inp), nf)):
                saves_result = saves_result or "result" in saved
        if saves_result and kept:
            self._save(SavedUse(nf.node, nf.node, "result", nf.croot, nf.sroot, view.name in BACKEND_DEPENDENT))

    @staticmethod
    def _per_input(nf: NodeFacts, entry: SavedEntry, args: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        """For each input, what the op saves when that input needs grad (``h ** 2`` saves less than ``h ** e``)."""
        override = ops.SCALAR_OVERLOADS.get(nf.view.name)
        if override is not None and not isinstance(args.get(override[0]), Node):
            return override[1]
        return entry[1]

    def _note_unknown_saver(self, nf: NodeFacts, result_known: bool = False) -> None:
        """An op fxgrad has no table for may have saved any input, and its own result (``F.softmin`` ends in a
        softmax, which saves it): a later write into one cannot be proved safe. An op that autograd does not record
        (nothing it reads requires grad: ``torch.zeros``, an index computation) saves nothing. ``result_known``: what
        saves the call's results is known (an RNN module, which the backend table answers for; a transformer layer,
        ``ops.RESULT_UNSAVED_MODULES``)."""
        name = nf.view.name
        if name in ops.PASS_THROUGH or ops.is_view_op(name) or not nf.live:
            return
        pending = self.pending_unknown
        node = nf.node
        # Indexing saves its index tensors (``x[idx]``), never the tensor it indexes nor its result.
        indexing = name == "getitem"
        for a in node.all_input_nodes:
            af = self.nodes.get(a)
            if af is not None and af.role != "value" and not (indexing and node.args and a is node.args[0]):
                pending.setdefault(af.sroot, []).append(node)
        if nf.role != "value" and nf.view.writes is None and not indexing and not result_known:
            pending.setdefault(nf.sroot, []).append(node)

    def _save(self, use: SavedUse) -> None:
        self.pending.setdefault(use.sroot, []).append(use)

