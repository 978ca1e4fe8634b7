"""What each op does to autograd: aliasing, mutation, differentiability, and what its backward saves.

Facts come from torch itself where it provides them (the op schemas' alias annotations, the generated table of
saved tensors in :mod:`fxgrad._saved_table`, built from ``derivatives.yaml``), plus small explicit tables for
source-level spellings (``operator.iadd``, ``inplace=True``, in-place modules) that no schema describes.

Everything here is keyed by an :class:`OpView`, the normalised form of one fx node: an aten-like base name
(``"relu"`` for ``torch.relu``, ``F.relu``, ``x.relu()``, ``nn.ReLU``), its arguments by schema name, and which
argument, if any, it writes to.
"""

from __future__ import annotations

import ast
import functools
import inspect
import operator
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from . import _saved_table
from ._saved_table import SAVED

__all__ = ["INPLACE_MODULE_TYPES", "OpView", "OpViewer"]

# --------------------------------------------------------------------------------------------------------------
# Source-level spellings.
# --------------------------------------------------------------------------------------------------------------

#: augmented assignment -> the out-of-place operator and the aten base name.
AUGMENTED: dict[Callable[..., Any], tuple[Callable[..., Any], str]] = {
    operator.iadd: (operator.add, "add"),
    operator.isub: (operator.sub, "sub"),
    operator.imul: (operator.mul, "mul"),
    operator.itruediv: (operator.truediv, "div"),
    operator.ifloordiv: (operator.floordiv, "floor_divide"),
    operator.imod: (operator.mod, "remainder"),
    operator.ipow: (operator.pow, "pow"),
    operator.imatmul: (operator.matmul, "matmul"),
    operator.iand: (operator.and_, "bitwise_and"),
    operator.ior: (operator.or_, "bitwise_or"),
    operator.ixor: (operator.xor, "bitwise_xor"),
    operator.ilshift: (operator.lshift, "bitwise_left_shift"),
    operator.irshift: (operator.rshift, "bitwise_right_shift"),
}

#: Python's infix spelling of the binary operators (``x += y`` is ``INFIX[operator.add] + "="``).
INFIX: dict[Callable[..., Any], str] = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/", operator.floordiv: "//",
    operator.mod: "%", operator.pow: "**", operator.matmul: "@", operator.and_: "&", operator.or_: "|",
    operator.xor: "^", operator.lshift: "<<", operator.rshift: ">>",
}

_OPERATORS: dict[Callable[..., Any], str] = {
    operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div",
    operator.floordiv: "floor_divide", operator.mod: "remainder", operator.pow: "pow",
    operator.matmul: "matmul", operator.neg: "neg", operator.pos: "positive", operator.abs: "abs",
    operator.and_: "bitwise_and", operator.or_: "bitwise_or", operator.xor: "bitwise_xor",
    operator.invert: "bitwise_not", operator.lshift: "bitwise_left_shift", operator.rshift: "bitwise_right_shift",
    operator.eq: "eq", operator.ne: "ne", operator.lt: "lt", operator.le: "le", operator.gt: "gt",
    operator.ge: "ge", operator.getitem: "getitem", operator.setitem: "setitem",
}

#: nn modules -> (aten base name, schema name of the module's first input, {schema name: parameter attribute}).
_MODULES: dict[type[nn.Module], tuple[str, str, dict[str, str]]] = {
    nn.Linear: ("linear", "input", {"weight": "weight", "bias": "bias"}),
    nn.Bilinear: ("bilinear", "input1", {"weight": "weight", "bias": "bias"}),
    nn.Conv1d: ("conv1d", "input", {"weight": "weight", "bias": "bias"}),
    nn.Conv2d: ("conv2d", "input", {"weight": "weight", "bias": "bias"}),
    nn.Conv3d: ("conv3d", "input", {"weight": "weight", "bias": "bias"}),
    nn.ConvTranspose1d: ("conv_transpose1d", "input", {"weight": "weight", "bias": "bias"}),
    nn.ConvTranspose2d: ("conv_transpose2d", "input", {"weight": "weight", "bias": "bias"}),
    nn.BatchNorm1d: ("batch_norm", "input", {"weight": "weight", "bias": "bias"}),
    nn.BatchNorm2d: ("batch_norm", "input", {"weight": "weight", "bias": "bias"}),
    nn.BatchNorm3d: ("batch_norm", "input", {"weight": "weight", "bias": "bias"}),
    nn.LayerNorm: ("layer_norm", "input", {"weight": "weight", "bias": "bias"}),
    nn.GroupNorm: ("group_norm", "input", {"weight": "weight", "bias": "bias"}),
    nn.InstanceNorm1d: ("instance_norm", "input", {"weight": "weight", "bias": "bias"}),
    nn.InstanceNorm2d: ("instance_norm", "input", {"weight": "weight", "bias": "bias"}),
    nn.Embedding: ("embedding", "indices", {"weight": "weight"}),
    nn.ReLU: ("relu", "self", {}),
    nn.ReLU6: ("hardtanh", "self", {}),
    nn.Sigmoid: ("sigmoid", "self", {}),
    nn.Tanh: ("tanh", "self", {}),
    nn.GELU: ("gelu", "self", {}),
    nn.SiLU: ("silu", "self", {}),
    nn.Mish: ("mish", "self", {}),
    nn.ELU: ("elu", "self", {}),
    nn.SELU: ("elu", "self", {}),
    nn.CELU: ("elu", "self", {}),
    nn.LeakyReLU: ("leaky_relu", "self", {}),
    nn.Hardswish: ("hardswish", "self", {}),
    nn.Hardsigmoid: ("hardsigmoid", "self", {}),
    nn.Hardtanh: ("hardtanh", "self", {}),
    nn.Softplus: ("softplus", "self", {}),
    nn.Threshold: ("threshold", "self", {}),
    nn.Softmax: ("softmax", "self", {}),
    nn.LogSoftmax: ("log_softmax", "self", {}),
    nn.Dropout: ("dropout", "input", {}),
    nn.Dropout1d: ("dropout", "input", {}),
    nn.Dropout2d: ("dropout", "input", {}),
    nn.Dropout3d: ("dropout", "input", {}),
    nn.AlphaDropout: ("dropout", "input", {}),
    nn.MaxPool1d: ("max_pool1d", "self", {}),
    nn.MaxPool2d: ("max_pool2d", "self", {}),
    nn.AvgPool2d: ("avg_pool2d", "self", {}),
    nn.AdaptiveAvgPool2d: ("adaptive_avg_pool2d", "self", {}),
    nn.Flatten: ("flatten", "self", {}),
    nn.Identity: ("alias", "self", {}),
    nn.MSELoss: ("mse_loss", "self", {}),
    nn.CrossEntropyLoss: ("cross_entropy", "self", {}),
}

#: modules whose ``inplace=True`` makes them write to their input.
INPLACE_MODULE_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in vars(nn).values()
    if isinstance(t, type) and issubclass(t, nn.Module) and "inplace" in inspect.signature(t.__init__).parameters
)

#: ops whose result is an integer or bool tensor: nothing flows back through them.
INTEGER_RESULT = frozenset({
    "argmax", "argmin", "argsort", "argwhere", "nonzero", "bucketize", "searchsorted", "eq", "ne", "lt", "le",
    "gt", "ge", "greater", "less", "greater_equal", "less_equal", "not_equal", "logical_and", "logical_or",
    "logical_not", "logical_xor", "isnan", "isinf", "isfinite", "isclose", "isin", "bitwise_and", "bitwise_or",
    "bitwise_xor", "bitwise_not", "long", "int", "short", "bool", "byte", "char", "one_hot", "randint_like",
    "multinomial", "count_nonzero", "signbit", "isneginf", "isposinf",
})
#: dtype casts whose target decides differentiability.
CASTS = frozenset({"to", "type"})
#: differentiable almost nowhere: autograd gives a gradient, and it is zero.
ZERO_GRADIENT = frozenset({"round", "floor", "ceil", "trunc", "fix", "sign", "sgn"})
#: values that leave autograd as Python numbers or NumPy arrays.
LEAVES_AUTOGRAD = frozenset({"item", "tolist", "numpy"})
#: tensors rebuilt from values: a new leaf with no history.
REBUILDS = frozenset({"tensor", "from_numpy", "new_tensor"})
#: return the argument itself when it already is a tensor (dtype/device unchanged).
PASS_THROUGH = frozenset({"as_tensor", "asarray", "alias", "contiguous", "type_as", "float", "double", "half",
                          "bfloat16", "cpu", "cuda"})
#: metadata reads: results are Python values, never tensors.
METADATA = frozenset({"size", "dim", "ndimension", "numel", "shape", "dtype", "device", "ndim", "is_cuda",
                      "requires_grad", "is_leaf", "stride", "storage_offset", "is_contiguous", "element_size",
                      "nelement", "layout", "names", "is_floating_point", "is_complex", "data_ptr",
                      "get_device", "is_grad_enabled", "__len__"})
#: factories that ignore their tensor argument's values: ``zeros_like(x)`` has no gradient path to ``x``.
FRESH = frozenset({"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                   "new_zeros", "new_ones", "new_empty", "new_full", "zeros", "ones", "empty", "full", "arange",
                   "randn", "rand", "randint", "linspace", "eye", "randperm", "tensor_split_sizes"})
#: tensor-valued aliases that change the autograd identity (same storage).
DETACH = frozenset({"detach", "detach_"})
#: methods that end in ``_`` but do not write tensor data.
NOT_DATA_WRITES = frozenset({"requires_grad_", "detach_", "share_memory_", "retain_grad_", "record_stream_",
                             "register_hook_", "pin_memory_", "is_set_to_"})
#: writes of autograd metadata, not data: later reads see the change, the version counter does not move.
META_WRITES = frozenset({"detach_", "requires_grad_"})
#: ops that return (values, indices): the second output is an integer tensor.
VALUES_INDICES = frozenset({"topk", "sort", "max", "min", "kthvalue", "mode", "median", "nanmedian", "cummax",
                            "cummin"})
#: ops whose derivative autograd does not implement: backward raises if it reaches them.
NO_DERIVATIVE = frozenset({"floor_divide", "rfloor_divide"})
#: ops whose derivative autograd implements for some arguments only (derivatives.yaml: ``self:
#: not_implemented("igamma: input")``): op -> the argument without one. Backward raises when a gradient must flow
#: into that argument, and only then (``torch.igamma(a, x)`` is differentiable in ``x``).
NO_DERIVATIVE_FOR: dict[str, str] = {"igamma": "self", "igammac": "self", "special_gammainc": "self",
                                     "special_gammaincc": "self", "special_zeta": "self"}
#: ...the autograd nodes of those ops, by class name -> the position of that argument in ``next_functions``
#: (what the dry-run asks: a ``None`` there means no gradient flows into it)
NO_DERIVATIVE_GRAD_FNS: dict[str, int] = {"IgammaBackward0": 0, "IgammacBackward0": 0, "SpecialZetaBackward0": 0,
                                          "SpecialZetaBackward2": 0}
#: in-place forms without a derivative whose out-of-place form has one (derivatives.yaml: ``acosh_: self:
#: not_implemented("inplace version of acosh")``), by the op view's name (an in-place op is named as its base)
INPLACE_NO_DERIVATIVE = frozenset({"acosh", "asinh", "atanh"})
#: ...their autograd nodes, by class name (what the dry-run asks)
INPLACE_NO_DERIVATIVE_GRAD_FNS = frozenset({"AcoshBackward1", "AsinhBackward1", "AtanhBackward1"})
#: autograd nodes of in-place activations that compute their backward from the output, by class name -> the kind
#: of backward (``leaky_relu_backward`` or ``elu_backward``, which refuse a negative slope) and the saved
#: attributes that hold the slope (``rrelu_`` in eval mode: the mean of its bounds; in training it raises nothing)
RESULT_SLOPE_GRAD_FNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "LeakyReluBackward1": ("leaky_relu", ("_saved_negative_slope",)),
    "EluBackward1": ("elu", ("_saved_alpha",)),
    "CeluBackward1": ("elu", ("_saved_alpha",)),
    "RreluWithNoiseBackward1": ("leaky_relu", ("_saved_lower", "_saved_upper")),
}
#: dropout variants: ``inplace=True`` writes only while training.
DROPOUTS = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"})
#: reflected operators (``2.0 ** h``, ``1.0 / h``): what they save, in the generated table's format. ``1.0 / h``
#: is ``reciprocal(h) * 1.0``: only an intermediate is saved; ``2.0 ** h`` is ``pow.Scalar``: exponent and result.
REFLECTED_SAVED: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "radd": (("other", "self"), {"self": ()}),
    "rsub": (("other", "self"), {"self": ()}),
    "rmul": (("other", "self"), {"self": ()}),
    "rdiv": (("other", "self"), {"self": ()}),
    "rpow": (("other", "self"), {"self": ("self", "result")}),
}
#: ``torch.nn.functional`` functions written in Python over other ops, which the tracer keeps as one call: what
#: their last ops save, read from torch/nn/functional.py (derivatives.yaml has no entry for them). The rest are
#: unknown savers: a write after one is not proved statically (the report says so) and the dry-run decides.
COMPOSITE_SAVED: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "softmin": (("self", "dim", "_stacklevel", "dtype"), {"self": ("result",)}),  # (-input).softmax(dim)
    "relu6": (("self", "inplace"), {"self": ("self",)}),  # hardtanh(input, 0, 6)
    "selu": (("self", "inplace"), {"self": ("self",)}),  # elu(input, alpha, scale)
    "softsign": (("self",), {"self": ("self",)}),  # input / (input.abs() + 1): div saves its numerator
    "tanhshrink": (("self",), {"self": ()}),  # input - input.tanh(): tanh saves only its own result
}
#: ``torch.nn`` modules fxgrad keeps opaque whose result no op saves for backward, read from torch/nn/modules/
#: transformer.py: a layer returns a LayerNorm's output (``norm_first=False``) or a residual sum, a stack its last
#: layer's or its final norm's (the fused fast path runs only without grad). What they save of their inputs is not
#: tabled: a write into an input after one stays an unknown saver's.
RESULT_UNSAVED_MODULES: tuple[type[nn.Module], ...] = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                                                       nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer)
#: overloads whose saved set is smaller than the merged table says, chosen when the named argument is a Python
#: number: ``h ** 2`` is ``pow.Tensor_Scalar`` and saves only ``self`` (``pow.Tensor_Tensor`` also saves the result).
SCALAR_OVERLOADS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "pow": ("exponent", {"self": ("self",)}),
}
#: named-tuple fields of multi-output ops: ``h.max(1).values`` carries gradient, ``.indices`` does not.
DIFFERENTIABLE_FIELDS = frozenset({"values", "Q", "R", "U", "S", "V", "Vh", "L", "LU", "eigenvalues", "eigenvectors",
                                   "solution", "mantissa", "logabsdet", "output", "mean", "var", "std"})
#: views that make several elements share one memory location: writing into them raises in forward
EXPANDING_VIEWS = frozenset({"expand", "expand_as", "broadcast_to"})
#: in-place ops that autograd refuses on a tensor that requires grad, whatever saved what
RESIZES = frozenset({"resize", "resize_as", "set"})
#: in-place ops that overwrite the target completely (its old value gets a zero gradient).
OVERWRITES = frozenset({"zero", "fill", "copy", "normal", "uniform", "bernoulli", "random", "exponential",
                        "geometric", "log_normal", "cauchy", "set"})
#: view-returning names that schemas cannot answer (Python-level or multi-output).
_EXTRA_VIEWS = frozenset({"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "T", "mT", "H",
                          "mH", "split", "chunk", "unbind", "tensor_split", "split_with_sizes", "hsplit", "vsplit",
                          "dsplit", "movedim", "moveaxis", "swapaxes", "swapdims", "real", "imag", "narrow",
                          "expand", "expand_as", "squeeze", "unsqueeze", "transpose", "t", "permute", "select",
                          "diagonal", "as_strided", "unfold", "view_as_real", "view_as_complex", "alias"})
_MULTI_OUTPUT_VIEWS = frozenset({"split", "chunk", "unbind", "tensor_split", "split_with_sizes", "hsplit", "vsplit",
                                 "dsplit"})
_INT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@functools.cache
def _schemas(name: str) -> tuple[torch._C.FunctionSchema, ...]:
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return ()
    try:
        return tuple(getattr(packet, ov)._schema for ov in packet.overloads())
    except Exception:
        return ()


@functools.cache
def is_view_op(name: str) -> bool:
    """True when the op's result may share storage (and version counter) with its first argument."""
    if name in _EXTRA_VIEWS:
        return True
    for schema in _schemas(name):
        if schema.returns and schema.arguments:
            ret, arg = schema.returns[0].alias_info, schema.arguments[0].alias_info
            if ret is not None and not ret.is_write and arg is not None and not arg.is_write:
                return True
    return False


@functools.cache
def _signature_names(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


class _Lazy(Protocol):
    """Works out, when first asked, what an :class:`OpView` does not need at once."""

    def bind(self, node: torch.fx.Node) -> dict[str, Any]: ...

    def params(self, node: torch.fx.Node) -> dict[str, str]: ...


class OpView:
    """One fx node as an op: what fxgrad's tables are keyed by. Read-only: nodes of the same kind share one view
    (every call of ``torch.relu``, every ``nn.Conv2d`` not in place), so most nodes cost no view of their own.

    What differs from node to node, the arguments by schema name and a module's parameters, is worked out when
    asked (:meth:`args_of`, :meth:`params_of`): only nodes whose saved tensors matter ask (an in-place op somewhere
    after them), and binding every node's arguments cost more than the rest of its view."""

    # slots: up to one per node (4,291 in the 10,000-node benchmark ResNet), and read on every node
    __slots__ = ("_args", "_params", "_source", "known", "name", "param_writes", "spelling", "writes")

    def __init__(self, name: str, args: dict[str, Any] | None = None, writes: Any = None, spelling: str = "",
                 params: dict[str, str] | None = None, known: bool = True, param_writes: tuple[str, ...] = (),
                 source: _Lazy | None = None) -> None:
        self.name = name
        #: the argument the op writes to, when it is in-place.
        self.writes = writes
        #: how the source spelled it (``"x.add_()"``, ``"+="``, ``"nn.ReLU(inplace=True)"`` ...).
        self.spelling = spelling
        #: True for ``torch.nn`` modules fxgrad knows; unknown leaf modules are opaque.
        self.known = known
        #: qualified names of parameters the op writes in place (``nn.Embedding(max_norm=...)`` renormalises its
        #: weight)
        self.param_writes = param_writes
        self._args = args
        self._params = params
        self._source = source

    def args_of(self, node: torch.fx.Node) -> dict[str, Any]:
        """The node's arguments by schema name (positional arguments by position)."""
        if self._args is not None:
            return self._args
        return self._source.bind(node) if self._source is not None else {}

    def params_of(self, node: torch.fx.Node) -> dict[str, str]:
        """Parameters a ``call_module`` brings: schema name -> qualified parameter name."""
        if self._params is not None:
            return self._params
        return self._source.params(node) if self._source is not None else {}

    @property
    def inplace(self) -> bool:
        return self.writes is not None

    def __repr__(self) -> str:
        return f"OpView({self.name!r}, writes={self.writes!r}, spelling={self.spelling!r})"


def _bind(names: tuple[str, ...] | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    names = names or ()
    known = len(names)
    bound: dict[str, Any] = {}
    for i, a in enumerate(args):
        bound[names[i] if i < known else str(i)] = a
    if kwargs:
        bound.update(kwargs)
    return bound


def saved_table_note() -> str | None:
    """A ``report.notes`` line when the installed torch's major.minor differs from the one the saved-tensor table
    was generated for: what a backward formula saves can change between releases, so static verdicts about saved
    tensors may be out of date (the dry-run reads autograd's own saved tensors and does not depend on it)."""
    def major_minor(version: str) -> str:
        return ".".join(version.split("+")[0].split(".")[:2])

    generated, installed = _saved_table.TORCH_VERSION, str(torch.__version__)
    if major_minor(generated) == major_minor(installed):
        return None
    return (f"fxgrad's table of what each op saves for backward was generated for torch {major_minor(generated)}; "
            f"torch {installed} is installed, so static verdicts about saved tensors may be out of date. Hint: pass "
            "example inputs (the dry-run asks autograd itself), or regenerate it with tools/gen_saved_table.py.")


@functools.cache
def _schema_arg_names(name: str) -> tuple[str, ...] | None:
    entry = SAVED.get(name) or COMPOSITE_SAVED.get(name)
    if entry is not None:
        return entry[0]
    for schema in _schemas(name):
        return tuple(a.name for a in schema.arguments)
    return None


def _schema_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Python spells the first argument ``input`` where aten says ``self``."""
    names = _schema_arg_names(name)
    if "input" in kwargs and names and names[0] == "self":
        kwargs = dict(kwargs)
        kwargs["self"] = kwargs.pop("input")
    return kwargs


#: Python argument names that aten spells differently, per op (``F.embedding(input, weight)`` is aten
#: ``embedding(weight, indices)``).
_PY_TO_ATEN: dict[str, dict[str, str]] = {"embedding": {"input": "indices"}}


def _bind_call(target: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments by aten schema name; Python-level functions (``torch.nn.functional``) bind by their own
    signature first, because their positional order can differ from aten's (``F.batch_norm``, ``F.embedding``)."""
    schema = _schema_arg_names(name)
    py_names = _signature_names(target) if getattr(target, "__code__", None) is not None else None
    if not py_names or schema is None:
        return _bind(schema, args, _schema_kwargs(name, kwargs))
    rename = _PY_TO_ATEN.get(name, {})
    bound: dict[str, Any] = {}
    for key, value in _bind(py_names, args, kwargs).items():
        key = rename.get(key, key)
        if key == "input" and "input" not in schema and "self" in schema:
            key = "self"
        bound[key] = value
    return bound


@dataclass(frozen=True)
class _Template:
    """What an fx target means, independent of the node's arguments (cached per target)."""

    name: str
    arg_names: tuple[str, ...] | None
    writes_first: bool
    spelling: str
    #: Python-level function: bind by its own signature (``F.batch_norm``), look for ``inplace=True``
    python: bool = False
    #: a Python operator (``2.0 ** h`` calls the reflected op, with another saved set)
    operator: bool = False
    #: the custom ``autograd.Function`` the tracer kept opaque behind this target
    function: type | None = None
    #: a Python-level function with an ``inplace`` argument: its arguments decide whether it writes
    inplace_arg: bool = False
    #: its calls share one view unless they write through ``out=``: nothing else in their arguments matters
    plain: bool = False

    def bind(self, node: torch.fx.Node) -> dict[str, Any]:
        """The node's arguments by schema name (see :class:`OpView`)."""
        args, kwargs = node.args, node.kwargs
        if not self.python:
            return _bind(self.arg_names, args, _schema_kwargs(self.name, kwargs) if kwargs else {})
        return self.bind_python(node)[0]

    def bind_python(self, node: torch.fx.Node) -> tuple[dict[str, Any], bool]:
        """A Python-level function's arguments, and whether ``inplace=True`` makes the call write (the flag is then
        left out of the arguments, as the op it names is the in-place one)."""
        bound = _bind_call(node.target, self.name, tuple(node.args), dict(node.kwargs))  # type: ignore[arg-type]
        if self.name in DROPOUTS and bound.get("training", True) is False:
            bound.pop("inplace", None)  # a no-op outside training: nothing is written
        if bound.get("inplace") is True:
            bound.pop("inplace")
            return bound, True
        return bound, False

    def params(self, node: torch.fx.Node) -> dict[str, str]:
        return {}


_TEMPLATES: dict[tuple[str, Any], _Template] = {}


def _template(op: str, target: Any) -> _Template:
    key = (op, target)
    cached = _TEMPLATES.get(key)
    if cached is not None:
        return cached
    if op == "call_method":
        method = str(target)
        if method == "__setitem__":  # a real tensor written with a traced value: ``buf[i] = proxy``
            t = _Template("setitem", ("self", "index", "value"), True, "x[i] = v")
        elif method in META_WRITES:
            t = _Template(method, _schema_arg_names(method[:-1]), True, f"x.{method}()")
        else:
            writes = method.endswith("_") and not method.endswith("__") and method not in NOT_DATA_WRITES
            base = method[:-1] if writes else method
            t = _Template(base, _schema_arg_names(base), writes, f"x.{method}()")
    elif target in AUGMENTED:
        plain, base = AUGMENTED[target]
        t = _Template(base, ("self", "other"), True, INFIX[plain] + "=")
    elif target is operator.setitem:
        t = _Template("setitem", ("self", "index", "value"), True, "x[i] = v")
    elif target in _OPERATORS:
        name = _OPERATORS[target]
        names = _schema_arg_names(name) or ("self", "other")
        t = _Template(name, names[:2] if len(names) >= 2 else ("self", "other"), False, name)
    else:
        fname = getattr(target, "__name__", str(target))
        module = getattr(target, "__module__", "") or ""
        writes = (fname.endswith("_") and not fname.endswith("__") and module.startswith("torch")
                  and fname not in NOT_DATA_WRITES)
        name = fname[:-1] if writes else fname
        python = getattr(target, "__code__", None) is not None and _signature_names(target) is not None
        spelling = f"torch.{fname}()" if writes else fname
        t = _Template(name, _schema_arg_names(name), writes, spelling, python)
    is_operator = target in _OPERATORS
    function = getattr(target, "__fxgrad_function__", None)
    inplace_arg = t.python and "inplace" in (_signature_names(target) or ())
    t = replace(t, operator=is_operator, function=function, inplace_arg=inplace_arg,
                plain=not (is_operator or function is not None or t.name == "einsum" or inplace_arg or t.writes_first))
    _TEMPLATES[key] = t
    return t


@dataclass(frozen=True)
class _ModuleKind:
    """What a module class means to fxgrad (cached per class: models repeat a few classes many times)."""

    entry: tuple[str, str, dict[str, str]] | None
    inplace_capable: bool
    dropout: bool
    batch_norm: bool
    embedding: bool
    spelling: str
    spelling_inplace: str


_MODULE_KINDS: dict[type, _ModuleKind] = {}


def _module_kind(cls: type) -> _ModuleKind:
    kind = _MODULE_KINDS.get(cls)
    if kind is None:
        kind = _ModuleKind(_MODULES.get(cls), issubclass(cls, INPLACE_MODULE_TYPES),
                           issubclass(cls, nn.modules.dropout._DropoutNd),
                           issubclass(cls, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)),
                           issubclass(cls, nn.Embedding), f"nn.{cls.__name__}", f"nn.{cls.__name__}(inplace=True)")
        _MODULE_KINDS[cls] = kind
    return kind


def _instance(kind: _ModuleKind, mod: nn.Module) -> tuple[bool, bool]:
    """What a module instance decides, from its plain attributes (no ``nn.Module.__getattr__`` round trip): whether
    a call writes its input (``inplace=True``; a dropout only while training: ``F.dropout(training=False)`` returns
    its input untouched), and whether it is a batch norm that uses its running statistics (eval mode)."""
    attrs = mod.__dict__
    inplace = kind.inplace_capable and attrs.get("inplace") is True and not (kind.dropout and not mod.training)
    eval_norm = kind.batch_norm and not (mod.training or mod._buffers.get("running_mean") is None)
    return inplace, eval_norm


class OpViewer:
    """Normalises nodes to :class:`OpView` s. What depends only on a target or a module class is cached, shared
    views included; what a module instance decides (``inplace``, training mode) is read per call, from its plain
    attributes."""

    def __init__(self, modules: dict[str, nn.Module], root: nn.Module | None = None) -> None:
        #: modules by qualified name; a known leaf module need not be there (see :meth:`module_kind`)
        self.modules = modules
        self.root = root
        #: target -> its template and the view its calls share when they write nothing; one key per target is
        #: enough: a method is named by a string, a function is not
        self._templates: dict[Any, tuple[_Template, OpView]] = {}
        #: (module class, a batch norm in eval mode) -> the view its calls share when they write nothing
        self._module_views: dict[tuple[type, bool], OpView] = {}
        #: module target -> what its calls are (see :meth:`module_kind`; the facts' module walk fills it)
        self.decided: dict[str, tuple[OpView, str | None]] = {}
        #: module class -> what its calls are, for classes where the instance does not matter (the walk reads it
        #: before it asks :meth:`module_kind`)
        self.by_class: dict[type, tuple[OpView, str | None]] = {}

    def params(self, node: torch.fx.Node) -> dict[str, str]:
        """The parameters a call of a known module brings (asked by :meth:`OpView.params_of`)."""
        target = str(node.target)
        mod = self._module_at(target)
        entry = _module_kind(type(mod)).entry
        own = mod._parameters
        return {schema: f"{target}.{attr}" for schema, attr in (entry[2] if entry else {}).items()
                if own.get(attr) is not None}

    def bind(self, node: torch.fx.Node) -> dict[str, Any]:
        """A known module's input, by the schema name of the op it stands for (asked by :meth:`OpView.args_of`)."""
        args = node.args
        entry = _module_kind(type(self._module_at(str(node.target)))).entry
        first = entry[1] if entry else None
        return {first: args[0]} if args and first else {}

    def _module_at(self, target: str) -> nn.Module:
        """The module at ``target``, from the index or, for a known leaf module the index left out, from the root."""
        mod = self.modules.get(target)
        if mod is None:
            mod = self.root
            for part in target.split("."):
                mod = mod._modules[part]  # type: ignore[union-attr,assignment]
        return mod  # type: ignore[return-value]

    def module_kind(self, target: str, mod: nn.Module) -> tuple[OpView, str | None] | None:
        """What a call of the known module ``mod`` at ``target`` is: the view its calls share, and the spelling of
        its in-place form if the module writes its input. ``None`` for a module fxgrad does not know or one that
        writes a parameter (their views depend on the call). The facts' module walk asks this of each leaf module
        while it holds it (see :meth:`_module`), and the answer is kept."""
        cls = type(mod)
        decided = self.by_class.get(cls)
        if decided is not None:  # a class whose calls never depend on the instance (``nn.Linear``, ``nn.Conv2d``)
            self.decided[target] = decided
            return decided
        kind = _MODULE_KINDS.get(cls) or _module_kind(cls)
        if kind.entry is None or (kind.embedding and mod.__dict__.get("max_norm") is not None):
            return None
        inplace, eval_norm = _instance(kind, mod)
        shared = self._module_views.get((cls, eval_norm))
        if shared is None:
            name = "batch_norm_eval" if eval_norm else kind.entry[0]
            shared = self._module_views[(cls, eval_norm)] = OpView(name, None, None, kind.spelling, None, True, (),
                                                                   self)
        decided = self.decided[target] = (shared, kind.spelling_inplace if inplace else None)
        if not (kind.inplace_capable or kind.batch_norm or kind.embedding or kind.dropout):
            self.by_class[cls] = decided
        return decided

    def _module(self, node: torch.fx.Node) -> OpView:
        target = str(node.target)
        decided = self.decided.get(target)
        if decided is None:
            mod = self.modules.get(target)
            if mod is None:
                return OpView("module", known=False)
            decided = self.module_kind(target, mod)
            if decided is None:
                return self._other_module(node, target, mod)
        shared, inplace_spelling = decided
        if inplace_spelling is not None and node.args:
            return OpView(shared.name, None, node.args[0], inplace_spelling, None, True, (), self)
        return shared

    def _other_module(self, node: torch.fx.Node, target: str, mod: nn.Module) -> OpView:
        """A module fxgrad does not know (opaque: every argument and parameter counts), or one that writes its own
        parameter (``nn.Embedding(max_norm=...)``)."""
        kind = _MODULE_KINDS.get(type(mod)) or _module_kind(type(mod))
        inplace, eval_norm = _instance(kind, mod)
        writes, spelling = None, kind.spelling
        if inplace and node.args:
            writes, spelling = node.args[0], kind.spelling_inplace
        param_writes: tuple[str, ...] = ()
        if kind.embedding and mod.__dict__.get("max_norm") is not None:
            param_writes = (f"{target}.weight",)
        if kind.entry is None:
            params = {n: f"{target}.{n}" for n, _ in mod.named_parameters()}
            return OpView(type(mod).__name__, _bind(None, tuple(node.args), dict(node.kwargs)), writes, spelling,
                          params, False, param_writes)
        return OpView("batch_norm_eval" if eval_norm else kind.entry[0], None, writes, spelling, None, True,
                      param_writes, self)

    def __call__(self, node: torch.fx.Node) -> OpView:
        op = node.op
        if op == "call_module":
            decided = self.decided.get(node.target)  # type: ignore[arg-type]
            if decided is not None and decided[1] is None:  # (most calls: a known module that writes nothing)
                return decided[0]
            return self._module(node)
        if op != "call_method" and op != "call_function":
            return OpView(op)
        target = node.target
        cached = self._templates.get(target)
        if cached is None:
            if target is getattr:
                args = node.args
                return OpView(f"getattr.{args[1]}", {"self": args[0]}, None, f"x.{args[1]}")
            t = _template(op, target)
            cached = self._templates[target] = (t, OpView(t.name, None, None, t.spelling, None, True, (), t))
        t, shared = cached
        if t.plain:
            kwargs = node.kwargs
            if not kwargs or not isinstance(kwargs.get("out"), torch.fx.Node):
                return shared
        return self._call(node, t, shared)

    def _call(self, node: torch.fx.Node, t: _Template, shared: OpView) -> OpView:
        """A call whose arguments decide its view (see :attr:`_Template.plain`)."""
        args, kwargs, target = node.args, node.kwargs, node.target
        if t.operator and len(args) == 2 and not isinstance(args[0], torch.fx.Node) and isinstance(
                args[1], torch.fx.Node):
            # ``2.0 ** h``: Python calls ``h.__rpow__(2.0)``, a different op with a different saved set
            return OpView(f"r{t.name}", {"other": args[0], "self": args[1]}, None, t.spelling)
        if t.function is not None:  # a custom autograd.Function, kept opaque by the tracer
            names = (function_saves(t.function) or ((), {}))[0]
            return OpView(t.name, _bind(names or None, tuple(args), dict(kwargs)), None, t.name)
        if t.name == "einsum" and args and isinstance(args[0], str):
            # torch.einsum(equation, *operands) or torch.einsum(equation, [operands])
            ops_ = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            return OpView("einsum", {"equation": args[0], "tensors": list(ops_)}, None, "einsum")
        bound = None  # bound when asked (see OpView), unless the arguments decide whether the call writes
        if t.inplace_arg:  # ``F.relu(x, inplace=True)``
            bound, writes = t.bind_python(node)
            if writes:
                py_names = _signature_names(target)  # type: ignore[arg-type]
                written = args[0] if args else (kwargs.get(py_names[0]) if py_names else None)
                return OpView(t.name, bound, written, f"F.{t.name}(inplace=True)")
        if t.writes_first:
            return OpView(t.name, bound, args[0] if args else None, t.spelling, None, True, (), t)
        out = kwargs.get("out") if kwargs else None
        if isinstance(out, torch.fx.Node):
            return OpView(t.name, bound, out, f"torch.{t.name}(out=...)", None, True, (), t)
        return shared if bound is None else OpView(t.name, bound, None, t.spelling, None, True, (), t)


_FUNCTION_SAVES: dict[type, tuple[tuple[str, ...], dict[str, tuple[str, ...]]] | None] = {}


def function_saves(cls: type) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]] | None:
    """What a custom ``autograd.Function`` saves, read from its source: the names passed to
    ``ctx.save_for_backward(...)`` that are ``forward``'s own parameters are saved inputs; the name it returns is
    the saved result. ``None`` when the source is not available (fxgrad then says it cannot prove it)."""
    if cls in _FUNCTION_SAVES:
        return _FUNCTION_SAVES[cls]
    entry: tuple[tuple[str, ...], dict[str, tuple[str, ...]]] | None = None
    try:
        source = textwrap.dedent(inspect.getsource(cls.forward))  # type: ignore[attr-defined]
        tree = ast.parse(source)
        fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
        params = tuple(a.arg for a in fn.args.args[1:])  # after ctx
        saved: set[str] = set()
        returned = {r.value.id for r in ast.walk(fn) if isinstance(r, ast.Return) and isinstance(r.value, ast.Name)}
        for call in ast.walk(fn):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "save_for_backward"):
                for arg in call.args:
                    if isinstance(arg, ast.Name):
                        saved.add("result" if arg.id in returned and arg.id not in params else arg.id)
        names = tuple(n for n in saved if n in params or n == "result")
        entry = (params, {p: names for p in params})
    except (OSError, TypeError, SyntaxError, StopIteration):
        entry = None
    _FUNCTION_SAVES[cls] = entry
    return entry


_FUNCTIONAL: frozenset[Callable[..., Any]] = frozenset(
    f for f in vars(F).values() if callable(f) and "inplace" in (_signature_names(f) or ())
)


def is_integer_cast(node: torch.fx.Node, view: OpView) -> bool:
    """``x.long()``, ``x.to(torch.int64)``, ``x.type(torch.bool)``: results that carry no gradient."""
    if view.name in CASTS:
        values = list(node.args[1:]) + list(node.kwargs.values())
        return any(isinstance(v, torch.dtype) and v in _INT_DTYPES for v in values)
    return False


def multi_output_view(name: str) -> bool:
    return name in _MULTI_OUTPUT_VIEWS
