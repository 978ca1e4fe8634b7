#!/usr/bin/env python
"""Generate ``fxgrad/_saved_table.py``: which tensors each op saves for backward.

Dev-time tool (needs ``torch`` and ``pyyaml``; ``torchgen`` ships inside the torch wheel).

Two sources feed the table:

1. ``torchgen/packaged/autograd/derivatives.yaml``.  Every backward formula is run through
   torchgen's own ``saved_variables`` (the same replacement rules the autograd codegen uses, so
   ``self.sym_sizes()``, ``self.scalar_type()``, ``zeros_like(self)``... do not count as saving
   ``self``), and the codegen's save guards (``guard_for`` in ``gen_variable_type.py``,
   including ``wrap_opt_if``) are mirrored to decide *when* each tensor is saved.
2. Empirical probes for composite ops that have no (effective) derivatives.yaml entry: the op is
   run on small CPU tensors under ``torch.autograd.graph.saved_tensors_hooks`` and every packed
   tensor is matched, by storage, against the inputs and the outputs.

Semantics of an entry ``SAVED[op] = (arg_names, {x: names})``: ``names`` is the set of inputs /
outputs whose storage is saved by the autograd graph when ``x`` is the only input requiring grad.
When several inputs require grad the saved set is the union of their entries (exact for the
codegen'd guards, which are ORs of ``should_compute_output``; checked for every probe).
Outputs are named ``result`` (output 0) and ``resultN`` (output N).  Intermediates (dropout's mask,
batch_norm's save_mean, ...) are not listed: user code cannot mutate them.

Usage::

    .venv/bin/python tools/gen_saved_table.py           # (re)write fxgrad/_saved_table.py
    .venv/bin/python tools/gen_saved_table.py --check   # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "fxgrad" / "_saved_table.py"
LINE_LENGTH = 110

Entry = tuple[tuple[str, ...], dict[str, tuple[str, ...]]]
Table = dict[str, Entry]

# Ops whose saved set depends on the device / backend kernel that ends up running.
BACKEND_DEPENDENT_REASONS: dict[str, str] = {
    "scaled_dot_product_attention": "flash / efficient / cuDNN / math kernels save different tensors",
    "lstm_cell": "CUDA uses _thnn_fused_lstm_cell; CPU decomposes into linear + pointwise ops",
    "gru_cell": "CUDA uses _thnn_fused_gru_cell; CPU decomposes into linear + pointwise ops",
    "rnn_tanh_cell": "composite; CUDA/cuDNN paths differ from the CPU decomposition",
    "rnn_relu_cell": "composite; CUDA/cuDNN paths differ from the CPU decomposition",
    "batch_norm": "cuDNN / MIOpen / native kernels are chosen at runtime",
    "batch_norm_eval": "cuDNN / MIOpen / native kernels are chosen at runtime",
    "instance_norm": "routes through batch_norm (cuDNN / native)",
    "rms_norm": "CUDA may use the fused _fused_rms_norm kernel",
}

# Hand-written remarks rendered as comments above the entries (facts found by the probes).
NOTES: dict[str, str] = {
    "batch_norm": "training=True and training=False save the same inputs on CPU (running stats included); "
    "the running stats are updated inside the kernel without a version bump, so calling the same "
    "BatchNorm twice is fine, but a user in-place op on running_mean/var breaks backward",
    "batch_norm_eval": "not an aten op: the training=False call of aten::batch_norm (fxgrad's name for "
    "an eval-mode BatchNorm); argument names are aten's (F.batch_norm orders them differently)",
    "linear": "via addmm/matmul: a non-contiguous N-D input is copied by the reshape and then not saved",
    "matmul": "folds N-D @ 2-D into mm on a reshaped view; saves copies instead for non-contiguous inputs",
    "cross_entropy": "not an aten op (F.cross_entropy); arguments named like aten::cross_entropy_loss",
}


# --------------------------------------------------------------------------------------------
# derivatives.yaml
# --------------------------------------------------------------------------------------------


def derivatives_yaml_path() -> Path:
    import torchgen

    return Path(torchgen.__file__).parent / "packaged" / "autograd" / "derivatives.yaml"


def _result_name(i: int) -> str:
    return "result" if i == 0 else f"result{i}"


def _autograd_kernel_active(qualname: str) -> bool:
    """True when dense CPU tensors dispatch to the derivatives.yaml (VariableType) kernel.

    Ops such as ``linear``/``matmul``/``max_pool2d`` have a yaml entry that only serves
    NestedTensor / MPS; dense tensors go through their CompositeImplicitAutograd decomposition.
    """
    try:
        dump = torch._C._dispatch_dump_table(qualname)
    except RuntimeError:
        return False
    for line in dump.splitlines():
        if line.startswith("AutogradCPU:"):
            return "[autograd kernel]" in line
    return False


@dataclass
class _Derivative:
    var_names: tuple[str, ...]
    formula: str
    saved_inputs: tuple[str, ...]  # whole tensor arguments that the formula keeps
    saved_outputs: tuple[str, ...]  # torchgen return names that the formula keeps


def _analyse_yaml_entry(spec: str, body: dict[str, Any]) -> tuple[str, str, Entry, tuple[int, int]]:
    """Return (base, overload, entry, (#tensor args, #positional args)) for one yaml definition."""
    from torchgen.api import cpp
    from torchgen.api.types import BaseCType, NamedCType, tensorT
    from torchgen.model import FunctionSchema
    from torchgen.packaged.autograd.load_derivatives import saved_variables

    schema = FunctionSchema.parse(spec)
    base = str(schema.name.name)
    overload = schema.name.overload_name
    inplace = schema.name.name.inplace
    args = [a for a in schema.schema_order_arguments() if a not in schema.arguments.out]
    arg_names = tuple(a.name for a in args)
    arg_by_name = {a.name: a for a in args}
    tensor_args = {a.name for a in args if a.type.is_tensor_like()}
    arg_nctypes = [cpp.argument_type(a, binds=a.name, symint=True).remove_const_ref() for a in args]
    arg_types = {str(n.name): n.type for n in arg_nctypes}

    # Return names exactly as torchgen's cpp.return_names() + create_derivative() spell them.
    ret_nctypes: list[NamedCType] = []
    ret_rename: dict[str, str] = {}
    for i, r in enumerate(schema.returns):
        if inplace:
            cname = "result"  # the in-place return is "self", renamed to "result"
        elif r.name:
            cname = f"{r.name}_return" if r.name in arg_names else r.name
        else:
            cname = "result" if len(schema.returns) == 1 else f"result{i}"
        ret_nctypes.append(NamedCType(cname, cpp.return_type(r, symint=True).remove_const_ref()))
        if r.type.is_tensor_like():
            ret_rename[cname] = _result_name(i)

    derivatives: list[_Derivative] = []
    for raw_names in sorted(body):
        names = tuple(x.strip() for x in raw_names.split(","))
        if names[0] not in arg_names:
            continue  # forward-mode (jvp) definition such as ``result: auto_element_wise``
        formula = str(body[raw_names])
        if formula.strip().lower() == "non_differentiable":
            continue
        formula, s_in = saved_variables(formula, arg_nctypes, names)
        formula, s_out = saved_variables(formula, ret_nctypes, names)
        derivatives.append(
            _Derivative(
                var_names=names,
                formula=formula,
                saved_inputs=tuple(str(s.nctype.name) for s in s_in if str(s.nctype.name) in tensor_args),
                saved_outputs=tuple(str(s.nctype.name) for s in s_out if str(s.nctype.name) in ret_rename),
            )
        )

    with_derivs = {n for d in derivatives for n in d.var_names}
    args_with_derivatives = [a.name for a in args if a.name in with_derivs]
    has_tensorlist = any(
        arg_by_name[n].type.is_tensor_like() and arg_by_name[n].type.is_list_like() is not None
        for n in args_with_derivatives
    )
    is_inplace_foreach = inplace and base.startswith("_foreach_")
    all_saved_inputs = list(dict.fromkeys(n for d in derivatives for n in d.saved_inputs))
    all_saved_outputs = list(dict.fromkeys(n for d in derivatives for n in d.saved_outputs))

    def guard_for(name: str) -> frozenset[int] | None:
        """Mirror of gen_variable_type.guard_for: edges whose grad triggers the save (None: always)."""
        if has_tensorlist and not is_inplace_foreach:
            return None
        if len(args_with_derivatives) <= 1:
            return None
        if arg_types[name] != BaseCType(tensorT):
            return None
        used_in = [d for d in derivatives if name in d.saved_inputs]
        if len(used_in) != 1:
            return None
        derivative = used_in[0]
        if len(derivative.var_names) != 1:
            m = re.search(rf"wrap_opt_if\({re.escape(name)},(.*?)\)", derivative.formula)
            if m is None:
                return None
            cond = m.group(1)
            if re.sub(r"grad_input_mask\[\d+\]|\|\||\s", "", cond):
                return None  # not a plain OR of masks: be conservative
            return frozenset(int(i) for i in re.findall(r"grad_input_mask\[(\d+)\]", cond))
        return frozenset({args_with_derivatives.index(derivative.var_names[0])})

    guards = {n: guard_for(n) for n in all_saved_inputs}
    saved: dict[str, tuple[str, ...]] = {}
    for edge, name in enumerate(args_with_derivatives):
        if name not in tensor_args:
            continue
        inputs = [n for n in all_saved_inputs if guards[n] is None or edge in guards[n]]  # type: ignore[operator]
        if inplace:
            # torchgen saves ``original_self = self.clone()`` for in-place ops: no alias to self.
            inputs = [n for n in inputs if n != "self"]
        outputs = [ret_rename[n] for n in all_saved_outputs]
        saved[name] = _order(arg_names, set(inputs) | set(outputs))
    return base, overload, (arg_names, saved), (len(tensor_args), len(schema.arguments.flat_positional))


def _order(arg_names: tuple[str, ...], names: Iterable[str]) -> tuple[str, ...]:
    def key(n: str) -> tuple[int, int, str]:
        if n in arg_names:
            return (0, arg_names.index(n), n)
        if n == "result":
            return (2, 0, n)
        if re.fullmatch(r"result\d+", n):
            return (2, int(n[6:]), n)
        return (1, 0, n)

    return tuple(sorted(set(names), key=key))


def _merge(entries: list[tuple[str, Entry]], shapes: list[tuple[int, int]]) -> Entry:
    """Merge the overloads of one base name.

    Argument names come from the ``Tensor`` overload if there is one, else from the overload with
    the most tensor arguments, then the most positional arguments, then the fewest arguments
    (``max.dim`` over ``max``, ``sum.dim_IntList`` over ``sum``, ``sort`` over ``sort.stable``) so
    that positional indices of typical Python calls line up.  Saved sets are unioned.
    ``shapes[i]`` is (#tensor args, #positional args) of ``entries[i]``.
    """
    best = min(
        range(len(entries)),
        key=lambda i: (entries[i][0] != "Tensor", -shapes[i][0], -shapes[i][1], len(entries[i][1][0]), i),
    )
    arg_names = entries[best][1][0]
    merged: dict[str, set[str]] = {}
    for _, (_, saved) in entries:
        for x, names in saved.items():
            merged.setdefault(x, set()).update(names)
    all_names = list(arg_names) + [n for _, (a, _) in entries for n in a if n not in arg_names]
    keys = sorted(merged, key=all_names.index)
    return arg_names, {x: _order(arg_names, merged[x]) for x in keys}


def yaml_table(path: Path | None = None) -> tuple[Table, set[str]]:
    """Table derived from derivatives.yaml, plus base names whose yaml entry is inactive on CPU."""
    import yaml
    from torchgen.local import parametrize

    with open(path or derivatives_yaml_path()) as f:
        definitions = yaml.safe_load(f)
    by_base: dict[str, list[tuple[str, Entry]]] = {}
    shapes: dict[str, list[tuple[int, int]]] = {}
    inactive: dict[str, bool] = {}
    for defn in definitions:
        spec = defn["name"]
        if "dispatch" in defn:
            body = defn["dispatch"].get("Default")
            if body is None:
                continue
        else:
            body = {k: v for k, v in defn.items() if k not in ("name", "output_differentiability")}
        qualname = "aten::" + spec.split("(")[0]
        # same defaults as torchgen's with_native_function for a plain NativeFunction
        with parametrize(use_const_ref_for_mutable_tensors=False, use_ilistref_for_tensor_lists=False):
            base, overload, entry, shape = _analyse_yaml_entry(spec, dict(body))
        if "backward" in base:
            continue  # only forward ops are needed
        active = _autograd_kernel_active(qualname)
        inactive[base] = inactive.get(base, True) and not active
        if active:
            by_base.setdefault(base, []).append((overload, entry))
            shapes.setdefault(base, []).append(shape)
    table = {base: _merge(entries, shapes[base]) for base, entries in by_base.items()}
    return table, {b for b, v in inactive.items() if v and b not in table}


# --------------------------------------------------------------------------------------------
# empirical probes
# --------------------------------------------------------------------------------------------


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


@dataclass(frozen=True)
class Probe:
    key: str
    make: Callable[[], dict[str, Any]]  # schema arg name -> value (tensor, list of tensors, other)
    call: Callable[[dict[str, Any]], Any]
    grad_args: tuple[str, ...]  # args that may require grad
    overload: str = "default"  # aten overload giving the argument names ...
    pyfunc: Callable[..., Any] | None = None  # ... or a Python function's signature
    variant: str = ""
    names_from: str = ""  # aten op whose schema names the arguments (default: ``key``)


def probe_arg_names(p: Probe) -> tuple[str, ...]:
    if p.pyfunc is not None:
        return tuple(inspect.signature(p.pyfunc).parameters)
    schema = getattr(getattr(torch.ops.aten, p.names_from or p.key), p.overload)._schema
    return tuple(a.name for a in schema.arguments)


def _tensors(v: Any) -> Iterator[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)


def _ptr(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def observe(p: Probe, requires_grad: Iterable[str]) -> frozenset[str]:
    """Run the probe with ``requires_grad`` inputs and name the inputs/outputs it saved."""
    torch.manual_seed(0)
    inputs = p.make()
    for name in requires_grad:
        for t in _tensors(inputs[name]):
            t.requires_grad_(True)
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = p.call(inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    named: list[tuple[str, torch.Tensor]] = [(n, t) for n, v in inputs.items() for t in _tensors(v)]
    named += [(_result_name(i), t) for i, o in enumerate(outs) for t in _tensors(o)]
    found: set[str] = set()
    for t in packed:
        ptr = _ptr(t)
        if ptr == 0:
            continue
        found.update(n for n, ref in named if _ptr(ref) == ptr)
    return frozenset(found)


def _probes() -> list[Probe]:
    ri = torch.randint
    P = Probe
    cell_args = ("input", "hx", "w_ih", "w_hh", "b_ih", "b_hh")

    def cell(k: str, gates: int) -> Probe:
        fn = getattr(torch, k)

        def make() -> dict[str, Any]:
            return {
                "input": _r(3, 4),
                "hx": _r(3, 5),
                "w_ih": _r(gates * 5, 4),
                "w_hh": _r(gates * 5, 5),
                "b_ih": _r(gates * 5),
                "b_hh": _r(gates * 5),
            }

        return P(k, make, lambda i: fn(*(i[n] for n in cell_args)), cell_args)

    def unary(k: str, fn: Callable[[torch.Tensor], Any], overload: str = "default") -> Probe:
        return P(k, lambda: {"self": _r(3, 4)}, lambda i: fn(i["self"]), ("self",), overload)

    lin = ("input", "weight", "bias")

    def bn(training: bool, key: str = "batch_norm") -> Probe:
        return P(
            key,
            lambda: {
                "input": _r(4, 3, 5),
                "weight": _r(3),
                "bias": _r(3),
                "running_mean": torch.zeros(3),
                "running_var": torch.ones(3),
                "training": training,
            },
            lambda i: torch.batch_norm(
                i["input"], i["weight"], i["bias"], i["running_mean"], i["running_var"],
                i["training"], 0.1, 1e-5, True,
            ),
            lin,
            variant=f"training={training}",
            names_from="batch_norm",
        )

    def inorm(use_input_stats: bool) -> Probe:
        return P(
            "instance_norm",
            lambda: {
                "input": _r(2, 3, 5),
                "weight": _r(3),
                "bias": _r(3),
                "running_mean": torch.zeros(3),
                "running_var": torch.ones(3),
            },
            lambda i: torch.instance_norm(
                i["input"], i["weight"], i["bias"], i["running_mean"], i["running_var"],
                use_input_stats, 0.1, 1e-5, False,
            ),
            lin,
            variant=f"use_input_stats={use_input_stats}",
        )

    def conv(k: str, x: tuple[int, ...], w: tuple[int, ...], b: int, overload: str = "default") -> Probe:
        fn = getattr(torch, k)
        return P(
            k,
            lambda: {"input": _r(*x), "weight": _r(*w), "bias": _r(b)},
            lambda i: fn(i["input"], i["weight"], i["bias"]),
            lin,
            overload,
        )

    def mm(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> Probe:
        return P(
            "matmul",
            lambda: {"self": _r(*shape_a), "other": _r(*shape_b)},
            lambda i: torch.matmul(i["self"], i["other"]),
            ("self", "other"),
            variant=f"{shape_a} @ {shape_b}",
        )

    def pad(mode: str) -> Probe:
        return P(
            "pad",
            lambda: {"self": _r(1, 2, 4, 4), "pad": [1, 1, 1, 1]},
            lambda i: torch._C._nn.pad(i["self"], i["pad"], mode),
            ("self",),
            variant=f"mode={mode}",
        )

    def interp(mode: str) -> Probe:
        return P(
            "interpolate",
            lambda: {"input": _r(1, 2, 4, 4)},
            lambda i: F.interpolate(i["input"], scale_factor=2.0, mode=mode),
            ("input",),
            pyfunc=F.interpolate,
            variant=f"mode={mode}",
        )

    def aap(size: int) -> Probe:
        return P(
            "adaptive_avg_pool2d",
            lambda: {"self": _r(1, 2, 4, 4), "output_size": [size, size]},
            lambda i: torch._C._nn.adaptive_avg_pool2d(i["self"], i["output_size"]),
            ("self",),
            variant=f"output_size=({size}, {size})",
        )

    def sdpa(causal: bool) -> Probe:
        return P(
            "scaled_dot_product_attention",
            lambda: {"query": _r(1, 2, 4, 8), "key": _r(1, 2, 4, 8), "value": _r(1, 2, 4, 8)},
            lambda i: F.scaled_dot_product_attention(i["query"], i["key"], i["value"], is_causal=causal),
            ("query", "key", "value"),
            variant=f"is_causal={causal} (CPU)",
        )

    def ce(key: str, fn: Callable[..., torch.Tensor], first: str, weighted: bool) -> Probe:
        def make() -> dict[str, Any]:
            d: dict[str, Any] = {first: _r(4, 5), "target": ri(0, 5, (4,))}
            if weighted:
                d["weight"] = torch.rand(5)
            return d

        return P(
            key,
            make,
            lambda i: fn(i[first], i["target"], i.get("weight")),
            (first,),
            variant=f"weight={'tensor' if weighted else 'None'}",
            # F.cross_entropy has no aten op of its own: name its arguments like cross_entropy_loss
            names_from="cross_entropy_loss" if key == "cross_entropy" else "",
        )

    return [
        P("linear", lambda: {"input": _r(3, 4), "weight": _r(5, 4), "bias": _r(5)},
          lambda i: F.linear(i["input"], i["weight"], i["bias"]), lin, variant="2-D input"),
        P("linear", lambda: {"input": _r(2, 3, 4), "weight": _r(5, 4), "bias": _r(5)},
          lambda i: F.linear(i["input"], i["weight"], i["bias"]), lin, variant="3-D input"),
        P("linear", lambda: {"input": _r(3, 4), "weight": _r(5, 4)},
          lambda i: F.linear(i["input"], i["weight"]), ("input", "weight"), variant="no bias"),
        P("bilinear",
          lambda: {"input1": _r(3, 4), "input2": _r(3, 5), "weight": _r(6, 4, 5), "bias": _r(6)},
          lambda i: F.bilinear(i["input1"], i["input2"], i["weight"], i["bias"]),
          ("input1", "input2", "weight", "bias")),
        conv("conv1d", (2, 3, 8), (4, 3, 3), 4),
        conv("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), 4),
        conv("conv3d", (1, 2, 5, 5, 5), (3, 2, 3, 3, 3), 3),
        conv("conv_transpose1d", (2, 3, 8), (3, 4, 3), 4),
        conv("conv_transpose2d", (2, 3, 6, 6), (3, 4, 3, 3), 4, overload="input"),
        mm((3, 4), (4, 5)),
        mm((2, 3, 4), (4, 5)),
        mm((2, 3, 4), (2, 4, 5)),
        mm((4,), (4, 5)),
        mm((4,), (4,)),
        P("einsum", lambda: {"equation": "ij,jk->ik", "tensors": [_r(3, 4), _r(4, 5)]},
          lambda i: torch.einsum(i["equation"], *i["tensors"]), ("tensors",)),
        bn(True),
        bn(False),
        bn(False, "batch_norm_eval"),
        P("layer_norm",
          lambda: {"input": _r(2, 3, 4), "normalized_shape": [4], "weight": _r(4), "bias": _r(4)},
          lambda i: torch.layer_norm(i["input"], i["normalized_shape"], i["weight"], i["bias"]), lin),
        P("group_norm", lambda: {"input": _r(2, 4, 5), "num_groups": 2, "weight": _r(4), "bias": _r(4)},
          lambda i: torch.group_norm(i["input"], i["num_groups"], i["weight"], i["bias"]), lin),
        inorm(True),
        P("rms_norm", lambda: {"input": _r(2, 3, 4), "normalized_shape": [4], "weight": _r(4)},
          lambda i: torch.rms_norm(i["input"], i["normalized_shape"], i["weight"]), ("input", "weight")),
        unary("softmax", lambda x: torch.softmax(x, 1), "int"),
        unary("log_softmax", lambda x: torch.log_softmax(x, 1), "int"),
        P("dropout", lambda: {"input": _r(4, 5), "p": 0.5, "train": True},
          lambda i: torch.dropout(i["input"], i["p"], i["train"]), ("input",), variant="train=True"),
        P("dropout", lambda: {"input": _r(4, 5), "p": 0.5, "train": False},
          lambda i: torch.dropout(i["input"], i["p"], i["train"]), ("input",), variant="train=False"),
        ce("cross_entropy", F.cross_entropy, "self", False),
        ce("cross_entropy", F.cross_entropy, "self", True),
        ce("cross_entropy_loss", torch.ops.aten.cross_entropy_loss, "self", False),
        ce("cross_entropy_loss", torch.ops.aten.cross_entropy_loss, "self", True),
        ce("nll_loss", torch.ops.aten.nll_loss, "self", False),
        ce("nll_loss", torch.ops.aten.nll_loss, "self", True),
        P("l1_loss", lambda: {"self": _r(3, 4), "target": _r(3, 4)},
          lambda i: torch.ops.aten.l1_loss(i["self"], i["target"]), ("self", "target")),
        P("normalize", lambda: {"input": _r(3, 4)}, lambda i: F.normalize(i["input"]), ("input",),
          pyfunc=F.normalize),
        sdpa(False),
        sdpa(True),
        pad("constant"),
        pad("reflect"),
        pad("replicate"),
        pad("circular"),
        interp("nearest"),
        interp("bilinear"),
        P("max_pool1d", lambda: {"self": _r(1, 2, 6), "kernel_size": [2]},
          lambda i: torch.max_pool1d(i["self"], i["kernel_size"]), ("self",)),
        P("max_pool2d", lambda: {"self": _r(1, 2, 4, 4), "kernel_size": [2, 2]},
          lambda i: torch.max_pool2d(i["self"], i["kernel_size"]), ("self",)),
        aap(2),
        aap(1),
        P("flatten", lambda: {"self": _r(2, 3, 4)}, lambda i: torch.flatten(i["self"], 1), ("self",),
          "using_ints"),
        P("chunk", lambda: {"self": _r(4, 3)}, lambda i: torch.chunk(i["self"], 2), ("self",)),
        P("lstm_cell",
          lambda: {"input": _r(3, 4), "hx": [_r(3, 5), _r(3, 5)], "w_ih": _r(20, 4), "w_hh": _r(20, 5),
                   "b_ih": _r(20), "b_hh": _r(20)},
          lambda i: torch.lstm_cell(*(i[n] for n in cell_args)), cell_args),
        cell("gru_cell", 3),
        cell("rnn_tanh_cell", 1),
        cell("rnn_relu_cell", 1),
    ]


def _check_probes() -> list[Probe]:
    """Probes for ops that do have a derivatives.yaml entry: only cross-checked, never stored."""
    P = Probe

    def unary(k: str, fn: Callable[[torch.Tensor], Any]) -> Probe:
        return P(k, lambda: {"self": _r(3, 4)}, lambda i: fn(i["self"]), ("self",))

    def binary(k: str, fn: Callable[[torch.Tensor, torch.Tensor], Any], names: tuple[str, str]) -> Probe:
        return P(k, lambda: {names[0]: _r(3, 4), names[1]: _r(3, 4)},
                 lambda i: fn(i[names[0]], i[names[1]]), names)

    return [
        binary("mul", torch.mul, ("self", "other")),
        binary("div", torch.div, ("self", "other")),
        binary("pow", torch.pow, ("self", "exponent")),
        binary("add", torch.add, ("self", "other")),
        binary("mse_loss", F.mse_loss, ("self", "target")),
        unary("sigmoid", torch.sigmoid),
        unary("tanh", torch.tanh),
        unary("exp", torch.exp),
        unary("relu", torch.relu),
        unary("gelu", F.gelu),
        unary("silu", F.silu),
        unary("mish", F.mish),
        unary("hardswish", F.hardswish),
        unary("leaky_relu", F.leaky_relu),
        unary("elu", F.elu),
        unary("softplus", F.softplus),
        unary("abs", torch.abs),
        unary("sum", torch.sum),
        unary("mean", torch.mean),
        unary("var", torch.var),
        unary("std", torch.std),
        unary("norm", torch.norm),
        unary("cumsum", lambda x: torch.cumsum(x, 1)),
        unary("sort", lambda x: torch.sort(x, 1)),
        unary("topk", lambda x: torch.topk(x, 2)),
        unary("max", lambda x: torch.max(x, 1)),
        unary("clamp", lambda x: torch.clamp(x, -0.5, 0.5)),
        unary("avg_pool2d", lambda x: F.avg_pool2d(x[None], 2)),
        P("embedding", lambda: {"weight": _r(10, 3), "indices": torch.tensor([[1, 2], [3, 4]])},
          lambda i: torch.embedding(i["weight"], i["indices"]), ("weight",)),
        P("binary_cross_entropy_with_logits",
          lambda: {"self": _r(3, 4), "target": torch.rand(3, 4), "weight": torch.rand(4),
                   "pos_weight": torch.rand(4)},
          lambda i: torch.binary_cross_entropy_with_logits(
              i["self"], i["target"], i["weight"], i["pos_weight"]
          ),
          ("self", "target")),
        P("cat", lambda: {"tensors": [_r(2, 3), _r(2, 3)]}, lambda i: torch.cat(i["tensors"]), ("tensors",)),
        P("stack", lambda: {"tensors": [_r(2, 3), _r(2, 3)]}, lambda i: torch.stack(i["tensors"]),
          ("tensors",)),
        P("where", lambda: {"condition": torch.rand(3, 4) > 0.5, "self": _r(3, 4), "other": _r(3, 4)},
          lambda i: torch.where(i["condition"], i["self"], i["other"]), ("self", "other")),
    ]


@dataclass
class _ProbeResult:
    entry: Entry
    notes: list[str]


def _run_probes(
    probes: list[Probe], names_of: Callable[[Probe], tuple[str, ...]] = probe_arg_names
) -> dict[str, _ProbeResult]:
    by_key: dict[str, list[Probe]] = {}
    for p in probes:
        by_key.setdefault(p.key, []).append(p)
    results: dict[str, _ProbeResult] = {}
    for key, variants in by_key.items():
        arg_names = names_of(variants[0])
        notes: list[str] = []
        merged: dict[str, set[str]] = {}
        per_variant: list[tuple[str, dict[str, frozenset[str]]]] = []
        for p in variants:
            if names_of(p) != arg_names:
                raise AssertionError(f"{key}: variants disagree on argument names")
            unknown = set(p.make()) - set(arg_names)
            if unknown:
                raise AssertionError(f"{key}: probe inputs {unknown} are not arguments {arg_names}")
            singles = {x: observe(p, [x]) for x in p.grad_args}
            per_variant.append((p.variant, singles))
            for x, names in singles.items():
                merged.setdefault(x, set()).update(names)
            # saved(S) must equal the union of the single-input sets for the table to be exact
            for k in range(2, len(p.grad_args) + 1):
                for combo in itertools.combinations(p.grad_args, k):
                    got = observe(p, combo)
                    union = frozenset().union(*(singles[x] for x in combo))
                    if got != union:
                        notes.append(
                            f"{p.variant or 'default'}: requires_grad={list(combo)} saves "
                            f"{sorted(got)}, not the union {sorted(union)}"
                        )
        if len({tuple(sorted((x, tuple(sorted(v))) for x, v in s.items())) for _, s in per_variant}) > 1:
            for variant, singles in per_variant:
                shown = {x: list(_order(arg_names, v)) for x, v in singles.items()}
                notes.append(f"{variant}: {shown}")
        keys = sorted(merged, key=arg_names.index)
        results[key] = _ProbeResult((arg_names, {x: _order(arg_names, merged[x]) for x in keys}), notes)
    return results


# --------------------------------------------------------------------------------------------
# assembly and rendering
# --------------------------------------------------------------------------------------------


def _build() -> tuple[Table, dict[str, list[str]], list[str]]:
    """Return (table, per-op comments, generator warnings)."""
    table, inactive = yaml_table()
    comments: dict[str, list[str]] = {}
    warnings: list[str] = []
    n_yaml = len(table)
    for key, res in _run_probes(_probes()).items():
        if key in table:
            warnings.append(f"probe {key!r} ignored: derivatives.yaml has an active entry")
            continue
        table[key] = res.entry
        lines = ["empirical (CPU probe)"]
        if key in inactive:
            lines[0] += "; the derivatives.yaml entry only serves NestedTensor/MPS"
        comments[key] = lines + res.notes
    checks = [p for p in _check_probes() if p.key in table]
    warnings += [f"check probe {p.key!r}: no yaml entry" for p in _check_probes() if p.key not in table]
    for key, res in _run_probes(checks, lambda p: table[p.key][0]).items():
        saved = table[key][1]
        for x, names in res.entry[1].items():
            if not set(names) <= set(saved.get(x, ())):
                warnings.append(f"yaml/eager mismatch {key}[{x}]: yaml {saved.get(x)} eager {names}")
        for note in res.notes:
            warnings.append(f"{key}: {note}")
    for key, note in NOTES.items():
        comments.setdefault(key, []).append(note)
    for key, reason in BACKEND_DEPENDENT_REASONS.items():
        comments.setdefault(key, []).append(f"backend-dependent: {reason}")
    warnings.append(f"{n_yaml} ops from derivatives.yaml, {len(table) - n_yaml} empirical")
    return dict(sorted(table.items())), comments, warnings


def build_table() -> Table:
    """The SAVED table for the installed torch (derivatives.yaml + CPU probes)."""
    return _build()[0]


def backend_dependent() -> frozenset[str]:
    return frozenset(BACKEND_DEPENDENT_REASONS)


def _flat(o: Any) -> str:
    if isinstance(o, str):
        return json.dumps(o)
    if isinstance(o, tuple):
        inner = ", ".join(_flat(x) for x in o)
        return f"({inner},)" if len(o) == 1 else f"({inner})"
    if isinstance(o, dict):
        return "{" + ", ".join(f"{_flat(k)}: {_flat(v)}" for k, v in o.items()) + "}"
    raise TypeError(type(o))


def _fmt(obj: Any, indent: int, prefix: str = "", width: int = LINE_LENGTH) -> list[str]:
    """Black-style lines for ``prefix + obj + ","`` at ``indent`` (nested tuples / dicts of strings)."""
    pad = " " * indent
    one = _flat(obj)
    if indent + len(prefix) + len(one) + 1 <= width or isinstance(obj, str) or not obj:
        return [f"{pad}{prefix}{one},"]
    lines = [f"{pad}{prefix}{'(' if isinstance(obj, tuple) else '{'}"]
    if isinstance(obj, tuple):
        for x in obj:
            lines += _fmt(x, indent + 4, "", width)
    else:
        for k, v in obj.items():
            lines += _fmt(v, indent + 4, f"{_flat(k)}: ", width)
    lines.append(f"{pad}{')' if isinstance(obj, tuple) else '}'},")
    return lines


def _comment(text: str, indent: int) -> list[str]:
    pad = " " * indent + "# "
    return textwrap.wrap(text, LINE_LENGTH - len(pad), initial_indent=pad, subsequent_indent=pad + "  ")


def render(table: Table, comments: dict[str, list[str]]) -> str:
    out = [
        "# This file is GENERATED by tools/gen_saved_table.py -- do not edit by hand.",
        f"# Source: torch {torch.__version__}: torchgen/packaged/autograd/derivatives.yaml (backward",
        "# formulas, torchgen's saved_variables() rules and save guards) plus empirical",
        "# saved_tensors_hooks probes on CPU for composite ops without an effective derivatives.yaml entry.",
        "# Regenerate: .venv/bin/python tools/gen_saved_table.py",
        "#",
        "# SAVED[op][1][x] = inputs/outputs whose storage autograd saves when x is the only input that",
        "# requires grad; for several inputs take the union.  Outputs are 'result' (output 0) and",
        "# 'resultN'.  Intermediates (masks, save_mean, ...) are omitted.",
        "from __future__ import annotations",
        "",
        f"TORCH_VERSION: str = {json.dumps(torch.__version__)}",
        "# op base name -> (argument names in schema order,",
        "#                  {input that requires grad: names of the tensors saved for its gradient})",
        "SAVED: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {",
    ]
    for key, value in table.items():
        for line in comments.get(key, []):
            out += _comment(f"{key}: {line}", 4)
        out += _fmt(value, 4, f"{json.dumps(key)}: ")
    out.append("}")
    out.append("# ops whose saved set depends on the device/backend (cuDNN vs CPU, fused attention ...)")
    names = tuple(sorted(backend_dependent()))
    line = f"BACKEND_DEPENDENT: frozenset[str] = frozenset({{{', '.join(json.dumps(n) for n in names)}}})"
    if len(line) > LINE_LENGTH:
        body = "\n".join(f"        {json.dumps(n)}," for n in names)
        line = "BACKEND_DEPENDENT: frozenset[str] = frozenset(\n    {\n" + body + "\n    }\n)"
    out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the generated file is out of date")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    ns = parser.parse_args(argv)
    table, comments, warnings = _build()
    for w in warnings:
        print(w, file=sys.stderr)
    text = render(table, comments)
    if ns.check:
        current = ns.output.read_text() if ns.output.exists() else ""
        if current != text:
            print(f"{ns.output} is stale; rerun tools/gen_saved_table.py", file=sys.stderr)
            return 1
        return 0
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(text)
    print(f"wrote {ns.output} ({len(table)} ops)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
