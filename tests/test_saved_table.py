"""Tests for the generated table of tensors saved for backward (``fxgrad/_saved_table.py``).

The table is checked three ways: a list of hand-written facts, eager PyTorch (run the op under
``saved_tensors_hooks`` with one input requiring grad at a time and match the packed tensors to the
inputs / outputs by storage), and, when pyyaml is installed, regeneration by
``tools/gen_saved_table.py`` (so the committed file cannot drift from its generator).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fxgrad._saved_table import BACKEND_DEPENDENT, SAVED, TORCH_VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT = re.compile(r"result\d*")


def _saved(op: str, x: str) -> tuple[str, ...]:
    return SAVED[op][1][x]


# ------------------------------------------------------------------------------------------------
# (a) hand-written facts
# ------------------------------------------------------------------------------------------------


def test_format() -> None:
    assert isinstance(TORCH_VERSION, str) and TORCH_VERSION
    assert len(SAVED) > 400
    for op, (args, per_input) in SAVED.items():
        assert isinstance(op, str) and "." not in op and "::" not in op
        assert all(isinstance(a, str) for a in args)
        assert len(set(args)) == len(args), op
        for x, names in per_input.items():
            assert x in args, (op, x)
            assert isinstance(names, tuple)
            for n in names:
                assert n in args or RESULT.fullmatch(n), (op, x, n)
    assert isinstance(BACKEND_DEPENDENT, frozenset)
    assert set(SAVED) >= BACKEND_DEPENDENT


@pytest.mark.parametrize("op", ["sigmoid", "tanh", "exp", "relu", "softmax", "log_softmax"])
def test_saves_result(op: str) -> None:
    assert _saved(op, "self") == ("result",)


def test_elu_saves_self_out_of_place_and_result_in_place() -> None:
    # derivatives.yaml: elu -> elu_backward(..., is_result=false, self); elu_ -> (..., is_result=true, result)
    assert _saved("elu", "self") == ("self",)
    assert _saved("elu_", "self") == ("result",)


def test_mul_saves_the_other_operand() -> None:
    assert SAVED["mul"][0][:2] == ("self", "other")
    assert _saved("mul", "self") == ("other",)
    assert _saved("mul", "other") == ("self",)


def test_div() -> None:
    assert _saved("div", "self") == ("other",)
    assert "other" in _saved("div", "other")
    assert "self" in _saved("div", "other") or "result" in _saved("div", "other")


def test_pow_saves_self() -> None:
    assert "self" in _saved("pow", "self")
    assert "exponent" in _saved("pow", "exponent")


@pytest.mark.parametrize(
    ("op", "a", "b"), [("matmul", "self", "other"), ("mm", "self", "mat2"), ("bmm", "self", "mat2")]
)
def test_matmuls_save_the_other_operand(op: str, a: str, b: str) -> None:
    assert _saved(op, a) == (b,)
    assert _saved(op, b) == (a,)


def test_linear() -> None:
    assert SAVED["linear"][0] == ("input", "weight", "bias")
    assert "weight" in _saved("linear", "input")
    assert "input" in _saved("linear", "weight")
    assert not any(RESULT.fullmatch(n) for names in SAVED["linear"][1].values() for n in names)


@pytest.mark.parametrize("op", ["conv1d", "conv2d", "conv3d", "conv_transpose2d", "convolution"])
def test_conv_saves_input_and_weight_not_result(op: str) -> None:
    for x in ("input", "weight"):
        assert {"input", "weight"} <= set(_saved(op, x))
    assert not any(RESULT.fullmatch(n) for names in SAVED[op][1].values() for n in names)


@pytest.mark.parametrize("op", ["batch_norm", "batch_norm_eval"])
def test_batch_norm_saves_input_not_result(op: str) -> None:
    assert "input" in _saved(op, "input")
    assert "input" in _saved(op, "weight")
    assert not any(RESULT.fullmatch(n) for names in SAVED[op][1].values() for n in names)


def test_layer_norm_saves_input() -> None:
    assert "input" in _saved("layer_norm", "input")
    assert "input" in _saved("layer_norm", "weight")


@pytest.mark.parametrize("op", ["add", "sub"])
def test_add_sub_save_nothing(op: str) -> None:
    assert SAVED[op][1] == {"self": (), "other": ()}


@pytest.mark.parametrize("op", ["gelu", "silu"])
def test_gelu_silu_save_self(op: str) -> None:
    assert _saved(op, "self") == ("self",)


def test_metadata_only_formulas_save_nothing() -> None:
    # sum/mean/cat/expand use only sizes / scalar types of their input
    assert _saved("sum", "self") == ()
    assert _saved("mean", "self") == ()
    assert _saved("cat", "tensors") == ()
    assert _saved("expand", "self") == ()


def test_backend_dependent() -> None:
    assert {"scaled_dot_product_attention", "lstm_cell", "gru_cell", "rnn_tanh_cell"} <= BACKEND_DEPENDENT
    assert "mul" not in BACKEND_DEPENDENT


def test_positional_names_line_up_with_python_calls() -> None:
    assert SAVED["clamp"][0][:3] == ("self", "min", "max")  # torch.clamp(x, min, max)
    assert SAVED["max"][0][:2] == ("self", "dim")  # x.max(1)
    assert SAVED["sum"][0][:2] == ("self", "dim")  # x.sum(1)
    assert SAVED["where"][0] == ("condition", "self", "other")


# ------------------------------------------------------------------------------------------------
# (b) against eager PyTorch
# ------------------------------------------------------------------------------------------------


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


@dataclass(frozen=True)
class Case:
    op: str
    make: Callable[[], dict[str, Any]]  # schema name -> tensor / list of tensors / python value
    call: Callable[[dict[str, Any]], Any]
    grads: tuple[str, ...]
    #: False where the table merges overloads (pow.Tensor_Tensor into pow.Tensor_Scalar, max into
    #: max.dim): eager then saves a subset of the prediction.
    exact: bool = True
    label: str = ""


def _unary(op: str, fn: Callable[[torch.Tensor], Any], exact: bool = True) -> Case:
    return Case(op, lambda: {"self": _r(3, 4)}, lambda i: fn(i["self"]), ("self",), exact)


def _binary(op: str, fn: Callable[[Any, Any], Any], a: str, b: str, label: str = "") -> Case:
    return Case(op, lambda: {a: _r(3, 4), b: _r(3, 4)}, lambda i: fn(i[a], i[b]), (a, b), label=label)


def _batch_norm(op: str, training: bool) -> Case:
    def make() -> dict[str, Any]:
        return {"input": _r(4, 3), "weight": _r(3), "bias": _r(3), "running_mean": torch.zeros(3),
                "running_var": torch.ones(3)}

    def call(i: dict[str, Any]) -> torch.Tensor:
        # F.batch_norm orders its arguments differently from aten::batch_norm
        return F.batch_norm(i["input"], i["running_mean"], i["running_var"], i["weight"], i["bias"], training)

    return Case(op, make, call, ("input", "weight", "bias"), label=f"training={training}")


CASES: list[Case] = [
    _binary("mul", torch.mul, "self", "other"),
    Case("mul", lambda: {"self": _r(3, 4), "other": 2.0}, lambda i: torch.mul(i["self"], i["other"]),
         ("self",), label="scalar"),
    _binary("div", torch.div, "self", "other"),
    Case("div", lambda: {"self": _r(3, 4), "other": 3.0}, lambda i: i["self"] / i["other"], ("self",),
         label="scalar"),
    Case("pow", lambda: {"self": torch.rand(3, 4) + 0.5, "exponent": _r(3, 4)},
         lambda i: torch.pow(i["self"], i["exponent"]), ("self", "exponent"), label="tensor"),
    Case("pow", lambda: {"self": _r(3, 4), "exponent": 2.0}, lambda i: torch.pow(i["self"], i["exponent"]),
         ("self",), exact=False, label="scalar"),
    _binary("add", torch.add, "self", "other"),
    _binary("sub", torch.sub, "self", "other"),
    _unary("sigmoid", torch.sigmoid),
    _unary("tanh", torch.tanh),
    _unary("exp", torch.exp),
    _unary("relu", torch.relu),
    _unary("gelu", F.gelu),
    _unary("silu", F.silu),
    _unary("elu", F.elu),
    _unary("leaky_relu", F.leaky_relu),
    _unary("abs", torch.abs),
    _unary("softmax", lambda x: torch.softmax(x, 1)),
    _unary("log_softmax", lambda x: F.log_softmax(x, 1)),
    _unary("sum", torch.sum),
    _unary("mean", lambda x: x.mean(1)),
    _unary("std", lambda x: x.std(1)),
    _unary("var", lambda x: x.var(1)),
    _unary("norm", torch.norm),
    _unary("cumsum", lambda x: x.cumsum(1)),
    _unary("sort", lambda x: torch.sort(x, 1)),
    _unary("topk", lambda x: torch.topk(x, 2)),
    _unary("max", lambda x: torch.max(x, 1), exact=False),
    _unary("clamp", lambda x: torch.clamp(x, -0.5, 0.5)),
    _unary("flatten", lambda x: torch.flatten(x)),
    Case("clamp", lambda: {"self": _r(3, 4), "min": _r(3, 4), "max": _r(3, 4) + 2},
         lambda i: torch.clamp(i["self"], i["min"], i["max"]), ("self", "min", "max"), label="tensor"),
    Case("where", lambda: {"condition": torch.rand(3, 4) > 0.5, "self": _r(3, 4), "other": _r(3, 4)},
         lambda i: torch.where(i["condition"], i["self"], i["other"]), ("self", "other")),
    Case("cat", lambda: {"tensors": [_r(2, 3), _r(2, 3)]}, lambda i: torch.cat(i["tensors"]), ("tensors",)),
    Case("stack", lambda: {"tensors": [_r(2, 3), _r(2, 3)]}, lambda i: torch.stack(i["tensors"], 1),
         ("tensors",)),
    Case("mm", lambda: {"self": _r(3, 4), "mat2": _r(4, 5)}, lambda i: torch.mm(i["self"], i["mat2"]),
         ("self", "mat2")),
    Case("bmm", lambda: {"self": _r(2, 3, 4), "mat2": _r(2, 4, 5)}, lambda i: torch.bmm(i["self"], i["mat2"]),
         ("self", "mat2")),
    Case("matmul", lambda: {"self": _r(3, 4), "other": _r(4, 5)}, lambda i: i["self"] @ i["other"],
         ("self", "other")),
    Case("matmul", lambda: {"self": _r(2, 3, 4), "other": _r(4, 5)}, lambda i: i["self"] @ i["other"],
         ("self", "other"), label="3d"),
    Case("linear", lambda: {"input": _r(3, 4), "weight": _r(5, 4), "bias": _r(5)},
         lambda i: F.linear(i["input"], i["weight"], i["bias"]), ("input", "weight", "bias")),
    Case("conv2d", lambda: {"input": _r(1, 2, 6, 6), "weight": _r(3, 2, 3, 3), "bias": _r(3)},
         lambda i: F.conv2d(i["input"], i["weight"], i["bias"]), ("input", "weight", "bias")),
    Case("conv1d", lambda: {"input": _r(1, 2, 6), "weight": _r(3, 2, 3), "bias": _r(3)},
         lambda i: F.conv1d(i["input"], i["weight"], i["bias"]), ("input", "weight", "bias")),
    _batch_norm("batch_norm", training=True),
    _batch_norm("batch_norm", training=False),
    _batch_norm("batch_norm_eval", training=False),
    Case("layer_norm", lambda: {"input": _r(2, 4), "weight": _r(4), "bias": _r(4)},
         lambda i: F.layer_norm(i["input"], (4,), i["weight"], i["bias"]), ("input", "weight", "bias")),
    Case("group_norm", lambda: {"input": _r(2, 4, 3), "weight": _r(4), "bias": _r(4)},
         lambda i: F.group_norm(i["input"], 2, i["weight"], i["bias"]), ("input", "weight", "bias")),
    Case("embedding", lambda: {"weight": _r(10, 3), "indices": torch.tensor([1, 2, 5])},
         lambda i: F.embedding(i["indices"], i["weight"]), ("weight",)),
    Case("mse_loss", lambda: {"self": _r(3, 4), "target": _r(3, 4)},
         lambda i: F.mse_loss(i["self"], i["target"]), ("self", "target")),
    Case("cross_entropy", lambda: {"self": _r(4, 5), "target": torch.tensor([0, 1, 4, 2])},
         lambda i: F.cross_entropy(i["self"], i["target"]), ("self",)),
    Case("dropout", lambda: {"input": _r(4, 5)}, lambda i: F.dropout(i["input"], 0.5, True), ("input",)),
    Case("max_pool2d", lambda: {"self": _r(1, 2, 4, 4)}, lambda i: F.max_pool2d(i["self"], 2), ("self",)),
    Case("normalize", lambda: {"input": _r(3, 4)}, lambda i: F.normalize(i["input"]), ("input",)),
    Case("einsum", lambda: {"tensors": [_r(3, 4), _r(4, 5)]},
         lambda i: torch.einsum("ij,jk->ik", *i["tensors"]), ("tensors",)),
]


def _tensors(v: Any) -> Iterator[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)


def _ptr(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def _observe(case: Case, requires_grad: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(names whose storage eager autograd saved, names the call actually has as tensors)."""
    torch.manual_seed(0)
    inputs = case.make()
    for x in requires_grad:
        for t in _tensors(inputs[x]):
            t.requires_grad_(True)
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = case.call(inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    named = [(n, t) for n, v in inputs.items() for t in _tensors(v)]
    named += [("result" if k == 0 else f"result{k}", t) for k, o in enumerate(outs) for t in _tensors(o)]
    saved = {n for t in packed if _ptr(t) != 0 for n, ref in named if _ptr(ref) == _ptr(t)}
    return saved, {n for n, _ in named}


def test_eager_sample_is_large_enough() -> None:
    ops = {c.op for c in CASES}
    assert len(ops) >= 25
    required = {"mul", "div", "pow", "sigmoid", "tanh", "exp", "relu", "softmax", "log_softmax", "linear"}
    required |= {"conv2d", "matmul", "batch_norm", "layer_norm", "gelu", "silu", "where", "clamp", "cat"}
    required |= {"sum", "mean"}
    assert required <= ops


@pytest.mark.parametrize(
    ("case", "x"),
    [(c, x) for c in CASES for x in c.grads],
    ids=[f"{c.op}{'[' + c.label + ']' if c.label else ''}-{x}" for c in CASES for x in c.grads],
)
def test_table_matches_eager(case: Case, x: str) -> None:
    args, per_input = SAVED[case.op]
    assert x in args
    got, present = _observe(case, (x,))
    predicted = {n for n in per_input.get(x, ()) if n in present}
    if case.exact:
        assert got == predicted, f"{case.op}: {x} requires grad -> eager saves {got}, table says {predicted}"
    else:
        assert got <= predicted, f"{case.op}: {x} requires grad -> eager saves {got}, table says {predicted}"


def test_union_over_inputs() -> None:
    """With every input requiring grad, eager saves the union of the single-input entries."""
    for case in CASES:
        if not case.exact or len(case.grads) < 2:
            continue
        got, present = _observe(case, case.grads)
        union = {n for x in case.grads for n in SAVED[case.op][1][x] if n in present}
        assert got == union, case.op


# ------------------------------------------------------------------------------------------------
# (c) the committed file is what the generator produces
# ------------------------------------------------------------------------------------------------


def _load_generator() -> Any:
    path = REPO_ROOT / "tools" / "gen_saved_table.py"
    spec = importlib.util.spec_from_file_location("gen_saved_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_committed_table() -> None:
    pytest.importorskip("yaml")
    if torch.__version__ != TORCH_VERSION:
        pytest.skip(f"table generated for torch {TORCH_VERSION}, running {torch.__version__}")
    gen = _load_generator()
    table = gen.build_table()
    assert table == SAVED, "fxgrad/_saved_table.py is stale: run tools/gen_saved_table.py"
    assert gen.backend_dependent() == BACKEND_DEPENDENT


@pytest.mark.parametrize("installed, noted", [("same", False), ("same-patch", False), ("2.99.0", True)])
def test_a_static_report_notes_a_torch_other_than_the_tables(installed: str, noted: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The table records the torch it was generated for; a static report says when another major.minor runs."""
    import fxgrad

    major, minor = TORCH_VERSION.split("+")[0].split(".")[:2]
    version = {"same": TORCH_VERSION, "same-patch": f"{major}.{minor}.99"}.get(installed, installed)
    monkeypatch.setattr(torch, "__version__", version)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    static = fxgrad.analyze(model)
    assert static.mode == "static"
    assert any("generated for torch" in n for n in static.notes) == noted, static.notes
    if noted:
        assert f"{major}.{minor}" in next(n for n in static.notes if "generated for torch" in n)
    proved = fxgrad.analyze(model, fxgrad.spec((2, 4)))  # the dry-run reads autograd's own saved tensors
    assert proved.mode == "dry-run" and not any("generated for torch" in n for n in proved.notes)
