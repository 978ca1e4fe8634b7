"""Static facts about every node of a faithful graph, computed in linear passes.

The rules never look at the graph directly: they read these facts. The passes model what autograd does, not
what ops are called. Each module decides one thing:

* :mod:`~fxgrad.facts.records`: the records (``NodeFacts``, ``ParamFacts``, ``SavedUse``, ``GraphFacts``).
* :mod:`~fxgrad.facts.traits`: what an op's name alone decides (edges, alias kind, what it saves), once per name.
* :mod:`~fxgrad.facts.modules`: the module walk: modules, parameter names, which parameters a call uses.
* :mod:`~fxgrad.facts.forward`: grad mode, roles, requires-grad, edges and writes, in graph order.
* :mod:`fxgrad.aliasing`: the alias model (view group, version counter, storage) and alias reads after a write.
* :mod:`~fxgrad.facts.saved`: saved tensors, and the writes that overwrite them (FXG102) or write them behind the
  version counter (FXG106).
* :mod:`~fxgrad.facts.reach`: reachability from the output, and each parameter's verdict.
* :mod:`~fxgrad.facts.inplace_errors`: in-place forms whose backward raises (FXG108, FXG109).

Algorithm of :func:`compute_facts`:

0. Walk the modules (:class:`~fxgrad.facts.modules.ModuleIndex`), and plan, from the op views alone, in reverse
   order, whether any op writes in place and for each storage the last write that may land in it
   (:meth:`~fxgrad.facts.saved.SavedTensors.plan`).
1. Forward, in graph order (:class:`~fxgrad.facts.forward.ForwardPass`): grad mode, role, op view, effective
   inputs (re-pointed to the latest mutation), differentiability of each input edge, ``live``, alias roots;
   mutations bump version counters and settle the pending saved tensors of that storage; then the node's own saved
   tensors are noted.
2. Backward, in reverse order: ``reach``, ``reach_nz``, ``data_reach`` and ``cause`` from the output.
3. The flagged in-place ops whose backward raises; then each trainable parameter's verdict from the reach of the
   nodes that use it.

Every pass touches each node and each edge a constant number of times: linear in the size of the graph. What
depends only on an op's name, a call target or a module is worked out once (:class:`~fxgrad.facts.traits._OpTraits`,
:class:`fxgrad.ops.OpViewer`); a known leaf module's calls are decided during the module walk, while the module
is at hand. The passes run at about a tenth of what ``torch.fx.symbolic_trace`` costs per node; cyclic GC is paused
while they make their records (:mod:`fxgrad.gcpause`).
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from ..gcpause import gc_paused
from . import reach
from .forward import ForwardPass
from .inplace_errors import inplace_backward_errors
from .modules import ModuleIndex
from .records import GraphFacts, NodeFacts, ParamFacts, Role, Root, SavedUse, Status

__all__ = ["GraphFacts", "NodeFacts", "ParamFacts", "Role", "Root", "SavedUse", "Status", "compute_facts"]


def compute_facts(gm: torch.fx.GraphModule, *, inputs_require_grad: frozenset[str] = frozenset(),
                  model: nn.Module | None = None) -> GraphFacts:
    """Run the passes over ``gm`` (which is only read); ``model`` is the module it was traced from (a GraphModule
    only keeps the submodules its graph uses, the report needs them all)."""
    with gc_paused():  # (see fxgrad.gcpause)
        # Step 0: the module walk (the plan runs at the start of step 1, over the op views it makes).
        index = ModuleIndex(model if model is not None else gm)
        # Step 1: forward.
        fwd = ForwardPass(gm, inputs_require_grad, index)
        fwd.forward()
        # Step 2: backward.
        reach.backward(fwd.nodes)
        # Step 3: in-place backward errors, then the verdicts.
        inplace_backward_errors(gm, fwd.flagged)
        return GraphFacts(gm, fwd.nodes, reach.parameters(fwd.nodes, index.trainable, fwd.frozen),
                          index.param_names, fwd.flagged)
