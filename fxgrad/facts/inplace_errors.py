"""In-place ops whose backward raises where the out-of-place form's would not: an in-place form without a
derivative (FXG109), and an in-place activation whose backward reads its output with a negative slope (FXG108).

Reads the flagged writes' op views and their call arguments or module attributes; writes ``inplace_no_derivative``
and ``result_slope``. One look per flagged write, after the forward pass.
"""

from __future__ import annotations

import torch
import torch.fx

from .. import ops
from .records import NodeFacts

__all__ = ["inplace_backward_errors"]



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


def inplace_backward_errors(gm: torch.fx.GraphModule, flagged: list[NodeFacts]) -> None:
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

