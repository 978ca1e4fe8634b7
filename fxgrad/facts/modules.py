"""The module walk: every module of the user's model, the names ``named_parameters()`` gives, the trainable
parameters each leaf module's calls use, and, per parameter, the list of nodes that use it.

Reads the module tree (once, depth first) and the op viewer's module table; writes :attr:`ModuleIndex.trainable`
(name and uses of every trainable parameter, which the verdicts read) and fills the viewer's per-module decisions.
The uses are appended by the forward pass, to lists the walk made and handed to the modules that own them.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from .. import ops
from .records import _NONE

__all__ = ["ModuleIndex", "ParamUses"]

#: a trainable parameter's canonical name and the nodes that use it, in graph order
ParamUses = tuple[str, list[torch.fx.Node]]


class ModuleIndex:
    """The modules and trainable parameters of ``model``, from one walk of its module tree."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules: dict[str, nn.Module] = {}
        #: the parameters that require grad, in ``named_parameters()`` order: canonical name and its uses
        self.trainable: list[ParamUses] = []
        #: parameter object id -> the name ``named_parameters()`` gives (tied weights share one name)
        self.param_names: dict[int, str] = {}
        #: call_module target -> the trainable parameters a call uses, with their uses (leaf modules: filled by the
        #: walk)
        self.module_param_cache: dict[str, list[ParamUses]] = {}
        self.viewer = ops.OpViewer(self.modules, model)
        #: canonical parameter name -> the nodes that use it, in graph order (see :attr:`uses`)
        self._uses: dict[str, list[torch.fx.Node]] | None = None
        self._buffer_ids: set[int] | None = None
        self._walk_modules()

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
            trainable: list[ParamUses] = _NONE  # type: ignore[assignment]
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
                        entry: ParamUses = (name, [])
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

    @property
    def buffer_ids(self) -> set[int]:
        """Ids of every buffer of the model (only ``get_attr`` of a tensor asks: most graphs never do)."""
        if self._buffer_ids is None:
            self._buffer_ids = {id(buf) for mod in self.model.modules() for buf in mod._buffers.values()
                                if buf is not None}
        return self._buffer_ids

    def module_params(self, target: str) -> list[ParamUses]:
        """Trainable parameters a leaf module uses, by their canonical names (cached: modules repeat). Shared by
        the nodes that call the module, and read only."""
        cached = self.module_param_cache.get(target)
        if cached is None:
            cached = self.module_param_cache[target] = self._trainable_params(target)
        return cached

    def _trainable_params(self, target: str) -> list[ParamUses]:
        """For a module the walk did not see as a leaf (it has children, or it is not the model's)."""
        mod = self.modules.get(target)
        if mod is None:
            return _NONE  # type: ignore[return-value]
        found: list[ParamUses] = []
        named = mod._parameters.items() if not mod._modules else mod.named_parameters()
        for n, p in named:
            if p is not None and p.requires_grad:
                name = self.param_names.get(id(p)) or f"{target}.{n}"
                found.append((name, self.uses.setdefault(name, [])))
        return found or _NONE  # type: ignore[return-value]

    def use(self, pname: str, node: torch.fx.Node) -> None:
        self.uses.setdefault(pname, []).append(node)

