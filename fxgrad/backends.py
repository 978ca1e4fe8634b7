"""Which backend kernel torch picks for a call, and which of the call's outputs that kernel saves for backward.

Some ops dispatch, at run time, to a kernel that depends on the device, the dtype, global flags and the shapes
of the inputs; the kernels save different tensors. The static table (:mod:`fxgrad._saved_table`) and the meta
kernels of the dry-run show one of them (on meta tensors torch picks the portable one), so an in-place write on
an output that only the real kernel saves looked safe: ``nn.LSTM`` on CPU float32 runs oneDNN's
``mkldnn_rnn_layer``, whose backward reads the layer's output, and ``Dropout(inplace=True)`` on that output makes
``backward()`` raise, while the meta run saves nothing of it.

This module is the declarative table of those choices: :data:`KERNELS` maps an op (the fx view name of a call:
``lstm``, ``scaled_dot_product_attention`` ...) or a module kind (``nn.LSTM`` ...) to a function that takes the
call's context (:class:`Call`: device type, dtype, grad mode, the arguments and, in the dry-run, the inputs'
shapes) and returns the kernel torch picks (:class:`Choice`: its name, which outputs it saves, and whether fxgrad
can know the choice at all). Each entry cites the torch source its conditions are read from (torch 2.13); the
table is asked once per call node that may have a write after it: a dict lookup.

Used by the static pass (``facts.saved.SavedTensors.record_saved``: what a call saves, from the parameters' device and
dtype) and by the dry-run (``dryrun._Runner``: from the example inputs' device, dtype and shapes).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from .aliasing import is_packed

__all__ = ["KERNELS", "Call", "Choice", "choose", "for_call", "kernel_of", "module_context", "probe",
           "rnn_options", "saved_outputs"]


@dataclass(frozen=True, slots=True)
class Choice:
    """The kernel torch picks for one call, and which of the call's outputs it saves for backward."""

    #: the kernel, as a reader knows it: "oneDNN (mkldnn) LSTM"
    backend: str
    #: indices of the call's outputs the kernel saves (0: the output; for RNNs 1: ``h_n``, 2: ``c_n``)
    saves: tuple[int, ...]
    #: what the choice was made for: "CPU float32"
    where: str
    #: False where torch decides among kernels that save different tensors on something fxgrad cannot see (the
    #: CUDA attention kernel): then :attr:`note` says so rather than claiming what happens
    certain: bool = True
    #: for an uncertain choice, the sentence that says what depends on what
    alternatives: str = ""

    @property
    def note(self) -> str:
        """The sentence a finding carries about this kernel."""
        if not self.certain:
            return f"{self.alternatives} ({self.where})"
        what = " and ".join(_OUTPUT_NAMES.get(i, f"output {i}") for i in self.saves) or "none of its outputs"
        return f"{self.backend}, which torch picks for {self.where}, saves {what}"


_OUTPUT_NAMES = {0: "its output", 1: "its output 1", 2: "its output 2"}


@dataclass(frozen=True, slots=True)
class Call:
    """What torch's choice of kernel depends on, for one call."""

    device: str  # "cpu", "cuda", ...
    dtype: torch.dtype | None
    #: the call's own options: for RNNs ``mode``, ``bidirectional``, ``proj_size``; for attention ``dropout_p``,
    #: and with example inputs on CPU ``fused``, torch's own choice for them (:func:`probe`)
    options: Mapping[str, Any] = field(default_factory=dict)


def _where(call: Call) -> str:
    dtype = str(call.dtype).removeprefix("torch.") if call.dtype is not None else "an unknown dtype"
    return f"{call.device.upper()} {dtype}"


# -- recurrent layers -------------------------------------------------------------------------------------------


def _rnn(call: Call) -> Choice | None:
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` and ``torch._VF.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``.

    Source: aten/src/ATen/native/RNN.cpp (torch 2.13), ``lstm(...)`` and the ``ONE_HIDDEN_RNN`` macro (gru,
    rnn_tanh, rnn_relu): cuDNN first (``use_cudnn``: ``at::cudnn_is_acceptable`` and a float / double / half
    (bfloat16 where supported) input), then MIOpen (ROCm), then for LSTM only oneDNN (``use_mkldnn``: oneDNN
    enabled, input, weights and hidden state on CPU, float32 input, or bfloat16 where
    ``mkldnn_bf16_device_check``, or float16 without grad; no projections), else the native cells.

    What each saves (derivatives.yaml and the implementations):

    * oneDNN, aten/src/ATen/native/mkldnn/RNN.cpp ``mkldnn_impl``: one ``mkldnn_rnn_layer`` per layer and
      direction; its backward (``MkldnnRnnLayerBackward0``) reads the layer's ``output``, ``hy``, ``cy`` and
      workspace. A unidirectional LSTM returns the last layer's output as is (saved); a bidirectional one
      concatenates the two directions (a fresh tensor); ``h_n`` / ``c_n`` are stacked (fresh).
    * cuDNN, aten/src/ATen/native/cudnn/RNN.cpp ``_cudnn_rnn``: ``CudnnRnnBackward0`` reads ``output`` (result0),
      the hidden states given and the reserve; the output is returned as is (``batch_first`` transposes it in
      place), in every direction and layer count. ``hy`` / ``cy`` are not read. MIOpen's ``miopen_rnn`` likewise
      (``MiopenRnnBackward0`` reads result0).
    * native cells: the outputs are stacked from the steps (fresh); nothing reads them.

    A ``PackedSequence`` (the ``lstm(data, batch_sizes, ...)`` overload) on CPU runs oneDNN only when its batch
    sizes are all equal, that is when every sequence in the batch has the same length (a batch of one sequence
    always does): the packed data is then a view of oneDNN's output, saved as above; otherwise the native cells
    run, and nothing saves it (measured on torch 2.13 and 2.14: ``ViewBackward0`` of ``MkldnnRnnLayer`` against
    ``CatBackward0``). ``options["uniform"]``, where the dry-run sees the batch sizes, says which.
    """
    mode = call.options.get("mode", "LSTM")
    if call.device == "cpu":
        if mode != "LSTM" or call.options.get("proj_size", 0):
            return None
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return None
        dtype = call.dtype
        if not (dtype is torch.float32 or (dtype is torch.bfloat16 and _bf16_supported())):
            return None  # (float16 goes to oneDNN only without grad: nothing is saved then)
        saves = () if call.options.get("bidirectional") else (0,)
        if not call.options.get("packed") or not saves:
            return Choice("oneDNN (mkldnn) LSTM", saves, _where(call))
        if call.options.get("uniform"):
            return Choice("oneDNN (mkldnn) LSTM", saves,
                          f"{_where(call)} and a packed batch whose sequences all have the same length")
        return Choice("oneDNN (mkldnn) LSTM", saves, _where(call), certain=False,
                      alternatives="on CPU torch runs a packed batch through oneDNN, which saves the output, when "
                                   "all its sequences have the same length (a batch of one sequence always does), "
                                   "and through the native cells, which save nothing, otherwise: backward raises on "
                                   "such batches")
    if call.device == "cuda":
        if torch.version.hip:  # ``use_miopen``: float32 / float16; ``miopen_rnn`` saves its output (result0)
            miopen = call.dtype in (torch.float32, torch.float16) and torch.backends.cudnn.enabled
            return Choice(f"MIOpen {_mode_name(mode)}", (0,), _where(call)) if miopen else None
        cudnn_dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        if not (torch.backends.cudnn.enabled and call.dtype in cudnn_dtypes):
            return None
        if not torch.backends.cudnn.is_available() and torch.cuda.is_available():
            return None  # a CUDA build without cuDNN runs the native cells
        return Choice(f"cuDNN {_mode_name(mode)}", (0,), _where(call))
    if call.device == "meta":
        return None
    return Choice(f"{_mode_name(mode)}", (0,), _where(call), certain=False,
                  alternatives=f"on {call.device} torch may run a backend RNN kernel that fxgrad has no table "
                                   "for: what it saves is not known")


def _mode_name(mode: str) -> str:
    return mode.split("_")[0]


def _bf16_supported() -> bool:
    """``mkldnn_bf16_device_check``: whether this CPU runs oneDNN in bfloat16 (a public probe of the same)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def rnn_options(mod: nn.Module) -> dict[str, Any]:
    """The options of an ``nn.RNNBase`` that the choice reads."""
    return {"mode": getattr(mod, "mode", "LSTM"), "bidirectional": bool(getattr(mod, "bidirectional", False)),
            "proj_size": int(getattr(mod, "proj_size", 0) or 0)}


def _vf_rnn_options(mode: str) -> Callable[[tuple[Any, ...], Mapping[str, Any]], dict[str, Any]]:
    """``torch._VF.<rnn>(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)``,
    or the packed form ``(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional)``:
    told apart by where the list comes (LSTM's ``hx`` is a list, the others' ``params``)."""
    listed = 1 if mode == "LSTM" else 2

    def options(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        packed = len(args) > listed and not isinstance(args[listed], (list, tuple))
        at = 8 if packed else 7
        bidirectional = args[at] if len(args) > at else kwargs.get("bidirectional", False)
        return {"mode": mode, "packed": packed,
                "bidirectional": bool(bidirectional) if isinstance(bidirectional, bool) else False}
    return options


# -- attention --------------------------------------------------------------------------------------------------

_FLASH_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _sdpa(call: Call) -> Choice | None:
    """``F.scaled_dot_product_attention``.

    Source: aten/src/ATen/native/transformers/attention.cpp (``scaled_dot_product_attention``: on CPU
    ``_fused_sdp_choice_cpp``) and sdp_utils_cpp.cpp (``select_sdp_backend_cpp`` / ``use_flash_attention_cpp``):
    on CPU the flash kernel runs when the flash flag is on (``torch.backends.cuda.flash_sdp_enabled``, shared with
    CUDA), there is no dropout, the shapes pass its checks (4-D q, k, v in torch 2.13; 3-D as well in 2.14) with
    the same head dim and a last dim of stride 1, and the dtype is float32 / float64 / bfloat16 / float16; else the
    math decomposition. ``_scaled_dot_product_flash_attention_for_cpu`` saves ``out`` and the logsumexp
    (derivatives.yaml), and the call returns that ``out``; the math path returns a ``matmul``'s result, which
    nothing saves. The shape checks change between torch versions, so with example inputs fxgrad asks the
    installed torch (:func:`probe`) instead of repeating them. On CUDA ``select_sdp_backend`` picks flash /
    memory-efficient / cuDNN attention (all save ``out``) or math from the GPU's architecture, the shapes and the
    flags: fxgrad cannot see that choice.
    """
    options = call.options
    dropout = options.get("dropout_p", 0.0)
    if call.device == "cpu":
        fused = options.get("fused")
        if fused is not None:  # the installed torch's own choice for these inputs
            return Choice("flash attention (CPU)", (0,), _where(call)) if fused == _FLASH else None
        if not torch.backends.cuda.flash_sdp_enabled() or call.dtype not in _FLASH_CPU_DTYPES:
            return None
        if not isinstance(dropout, (int, float)):
            return Choice("flash attention (CPU)", (0,), _where(call), certain=False,
                          alternatives="on CPU the flash kernel (no dropout) saves the output, the math kernel (with "
                                       "dropout) does not, and the dropout is not a constant here")
        if dropout > 0:
            return None
        return Choice("flash attention (CPU)", (0,), _where(call), certain=False,
                      alternatives="on CPU torch's flash kernel saves the output and the math kernel does not; the "
                                   "shapes of q, k and v decide, and a dry-run with example inputs sees them")
    if call.device == "cuda":
        if call.dtype is torch.float64 or not (torch.backends.cuda.flash_sdp_enabled()
                                               or torch.backends.cuda.mem_efficient_sdp_enabled()
                                               or torch.backends.cuda.cudnn_sdp_enabled()):
            return None  # only the math kernel takes float64, or runs with the fused ones off
        return Choice("fused attention (CUDA)", (0,), _where(call), certain=False,
                      alternatives="on CUDA torch picks the attention kernel at run time: flash, memory-efficient "
                                   "and cuDNN attention save the output (then backward raises), the math kernel "
                                   "does not; fxgrad cannot see which one runs")
    return None


#: ``torch._fused_sdp_choice``'s answer for the flash kernel (``SDPBackend.FLASH_ATTENTION``)
_FLASH = 1


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with ``t``'s shape, dtype, requires_grad and last-dim stride, expanded from one row: what the
    kernel choice reads of a tensor, in a few bytes whatever the shape."""
    row = t.shape[-1] if t.dim() else 1
    step = t.stride(-1) if t.dim() and t.stride(-1) > 0 else 1
    base = torch.empty(row * step, dtype=t.dtype, requires_grad=t.requires_grad and t.is_floating_point())
    return base[::step].expand(t.shape) if t.dim() else base.view(())


def probe(name: str, device: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Options the dry-run adds from the call's input values (meta tensors of ``device``): for attention on CPU,
    the kernel the installed torch picks, asked of torch itself (``torch._fused_sdp_choice``, the function
    ``scaled_dot_product_attention`` calls) on stand-ins of the inputs, outside fxgrad's meta mode; {} where
    there is nothing to ask or torch cannot answer (then :func:`_sdpa` says what decides)."""
    if name != "scaled_dot_product_attention" or device != "cpu":
        return {}
    from torch.utils._python_dispatch import _disable_current_modes  # (no public way out of a dispatch mode)

    def real(a: Any) -> Any:
        return _stand_in(a) if isinstance(a, torch.Tensor) else a

    try:
        with _disable_current_modes():
            fused = torch._fused_sdp_choice(*[real(a) for a in args[:6]], **{k: real(v) for k, v in kwargs.items()})
    except (RuntimeError, TypeError, ValueError):
        return {}
    return {"fused": int(fused)}


def _sdpa_options(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, ...)``."""
    dropout = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
    return {"dropout_p": dropout if isinstance(dropout, (int, float)) else None}


# -- batch norm -------------------------------------------------------------------------------------------------


def _batch_norm(call: Call) -> Choice | None:
    """``batch_norm`` and its modules: no backend saves the output.

    Source: aten/src/ATen/native/Normalization.cpp ``_batch_norm_impl_index`` picks cuDNN
    (``cudnn_batch_norm``), MIOpen (``miopen_batch_norm``) or ``native_batch_norm``; derivatives.yaml: all
    three save the input, the weight, the running statistics and their own save_mean / save_invstd (and cuDNN its
    reserve), none the output. What they save of the inputs is the same on every backend, so the static table
    holds for all of them.
    """
    return None


#: op view name (call_function / call_method) or RNN mode (modules) -> the choice for one call
KERNELS: dict[str, Callable[[Call], Choice | None]] = {
    "lstm": _rnn, "gru": _rnn, "rnn_tanh": _rnn, "rnn_relu": _rnn,
    "scaled_dot_product_attention": _sdpa,
    "batch_norm": _batch_norm, "batch_norm_eval": _batch_norm,
}
#: op view name -> its options from the call's arguments (nodes or values)
OPTIONS: dict[str, Callable[[tuple[Any, ...], Mapping[str, Any]], dict[str, Any]]] = {
    "lstm": _vf_rnn_options("LSTM"), "gru": _vf_rnn_options("GRU"),
    "rnn_tanh": _vf_rnn_options("RNN_TANH"), "rnn_relu": _vf_rnn_options("RNN_RELU"),
    "scaled_dot_product_attention": _sdpa_options,
}


def kernel_of(name: str, module: nn.Module | None) -> Callable[[Call], Choice | None] | None:
    """The table entry of a call: by the op's name, or for a module call by its kind (one dict lookup; an
    ``isinstance`` for module calls)."""
    if module is not None:
        return _rnn if isinstance(module, nn.RNNBase) else None
    return KERNELS.get(name)


def module_context(module: nn.Module) -> tuple[str, torch.dtype | None]:
    """Device type and dtype a module's calls run in, from its first parameter (without example inputs an RNN's
    weights decide: torch requires the input to match them)."""
    p = next(module.parameters(), None)
    return (p.device.type, p.dtype) if p is not None else ("cpu", torch.get_default_dtype())


def choose(name: str, module: nn.Module | None, device: str, dtype: torch.dtype | None,
           args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None,
           extra: Mapping[str, Any] | None = None) -> Choice | None:
    """The kernel torch picks for a call of ``name`` (or of ``module``) on ``device`` in ``dtype``; None where the
    table has no entry or the portable kernel runs (then the static table and the meta kernels are right)."""
    entry = kernel_of(name, module)
    if entry is None:
        return None
    options: dict[str, Any] = rnn_options(module) if module is not None else (
        OPTIONS[name](args, kwargs or {}) if name in OPTIONS else {})
    if module is not None and args and is_packed(args[0]):
        options["packed"] = True
    if extra:
        options.update(extra)
    return entry(Call(device, dtype, options))


def for_call(node: torch.fx.Node, name: str, root: nn.Module) -> Choice | None:
    """:func:`choose` for a node of a graph without example inputs: the device and dtype are the parameters' (the
    module's own for a module call, else the model's first)."""
    module: nn.Module | None = None
    if node.op == "call_module":
        try:
            module = root.get_submodule(str(node.target))
        except AttributeError:
            return None
        if not isinstance(module, nn.RNNBase):
            return None
        device, dtype = module_context(module)
    elif name in KERNELS:
        device, dtype = module_context(root)
    else:
        return None
    return choose(name, module, device, dtype, node.args, node.kwargs)


def saved_outputs(node: torch.fx.Node, choice: Choice | None) -> list[tuple[torch.fx.Node, str]]:
    """The nodes holding the outputs of ``node`` that ``choice`` saves, with the saved argument's name
    (``result``, ``result1`` ...): a call returning one tensor is its own output 0; a call returning a tuple hands
    its outputs out through ``out[i]`` nodes."""
    if choice is None or not choice.saves:
        return []
    if not _returns_tuple(node):
        return [(node, "result")] if 0 in choice.saves else []
    packed = node.op == "call_module" and bool(node.args) and is_packed(node.args[0])
    found: list[tuple[torch.fx.Node, str]] = []
    for index, user in _picks(node):
        if index in choice.saves:
            arg = "result" if index == 0 else f"result{index}"
            if packed and index == 0:  # a PackedSequence: its data, ``out[0].data`` (or ``out[0][0]``)
                found.extend((data, arg) for i, data in _picks(user, data=True) if i == 0)
            else:
                found.append((user, arg))
    return found


def _picks(node: torch.fx.Node, data: bool = False) -> list[tuple[int, torch.fx.Node]]:
    """``(i, node[i])`` for the ``getitem`` users of ``node`` (with ``data``, ``node.data`` as element 0 too)."""
    out = []
    for user in node.users:
        if user.op == "call_function" and len(user.args) > 1:
            if user.target is operator.getitem and isinstance(user.args[1], int):
                out.append((user.args[1], user))
            elif data and user.target is getattr and user.args[1] == "data":
                out.append((0, user))
    return out


def _returns_tuple(node: torch.fx.Node) -> bool:
    """RNN calls return ``(output, h_n)`` or ``(output, (h_n, c_n))``; the other ops of the table one tensor."""
    if node.op == "call_module":
        return True
    target = getattr(node.target, "__name__", str(node.target))
    return target in ("lstm", "gru", "rnn_tanh", "rnn_relu")
