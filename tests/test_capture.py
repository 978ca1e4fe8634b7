"""The faithful tracer: the traced GraphModule must run like the eager model, gradients included.

For each construct that plain ``torch.fx.symbolic_trace`` gets wrong, the test measures three programs on the
same inputs (eager, fxgrad's graph, plain fx's graph) and asserts that fxgrad's graph behaves like eager and
that plain fx's does not -- so the fidelity is shown to matter, not assumed.
"""

from __future__ import annotations

import copy
import inspect
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.fx
from torch import nn
from torch.autograd import grad_mode

import fxgrad
from fxgrad.capture import NodeOrigin

from .oracle import eager_truth


def _current_globals() -> dict[str, Any]:
    return {
        "tensor": torch.tensor,
        "as_tensor": torch.as_tensor,
        "asarray": torch.asarray,
        "from_numpy": torch.from_numpy,
        "no_grad.__enter__": grad_mode.no_grad.__enter__,
        "no_grad.__exit__": grad_mode.no_grad.__exit__,
        "enable_grad.__enter__": grad_mode.enable_grad.__enter__,
        "set_grad_enabled.__init__": grad_mode.set_grad_enabled.__init__,
        "set_grad_enabled.__enter__": grad_mode.set_grad_enabled.__enter__,
        "inference_mode.__enter__": grad_mode.inference_mode.__enter__,
        "Proxy.__iadd__": getattr(torch.fx.Proxy, "__iadd__", None),
        "Proxy.__setitem__": getattr(torch.fx.Proxy, "__setitem__", None),
    }


#: taken at import, before any test traces: what every trace must leave behind
_ORIGINALS = _current_globals()


# ----------------------------------------------------------------------------------------------------------------
# Measuring behaviour: outputs and gradients of one call.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    outputs: list[torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    error: str | None = None


def _behaviour(module: nn.Module, x: torch.Tensor, *, outer_grad: bool = True) -> Behaviour:
    """One forward (under ``outer_grad``) and one backward of a fixed weighting of the outputs, on copies."""
    module = copy.deepcopy(module)
    x = x.clone()
    try:
        with torch.set_grad_enabled(outer_grad):
            out = module(x)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        live = [o for o in outs if o.requires_grad]
        if live:
            gen = torch.Generator().manual_seed(0)
            torch.autograd.backward(live, [torch.randn(o.shape, generator=gen) for o in live])
    except (RuntimeError, TypeError) as e:
        return Behaviour([], {}, f"{type(e).__name__}: {e}")
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}
    return Behaviour([o.detach().clone() for o in outs], grads)


def _same(a: Behaviour, b: Behaviour) -> bool:
    if a.error or b.error:
        return a.error == b.error
    if len(a.outputs) != len(b.outputs) or a.grads.keys() != b.grads.keys():
        return False
    if any(x.shape != y.shape or not torch.allclose(x, y, atol=1e-6) for x, y in zip(a.outputs, b.outputs,
                                                                                        strict=True)):
        return False
    for name, g in a.grads.items():
        h = b.grads[name]
        if (g is None) != (h is None) or (g is not None and h is not None and not torch.allclose(g, h, atol=1e-6)):
            return False
    return True


def _plain(model: nn.Module) -> torch.fx.GraphModule | None:
    """Plain fx's graph, or None when plain fx cannot trace the model at all."""
    try:
        return torch.fx.symbolic_trace(copy.deepcopy(model))
    except (TypeError, RuntimeError, torch.fx.proxy.TraceError):
        return None


def _assert_faithful_where_plain_fx_is_not(model: nn.Module, x: torch.Tensor, *, outer_grad: bool = True) -> \
        torch.fx.GraphModule:
    eager = _behaviour(model, x, outer_grad=outer_grad)
    assert eager.error is None, eager.error
    gm = fxgrad.trace(copy.deepcopy(model))
    ours = _behaviour(gm, x, outer_grad=outer_grad)
    assert _same(eager, ours), f"fxgrad's graph does not run like eager:\n{gm.code}"
    plain = _plain(model)
    if plain is not None:
        assert not _same(eager, _behaviour(plain, x, outer_grad=outer_grad)), (
            "plain symbolic_trace already gets this right; the test shows nothing:\n" + plain.code)
    return gm


def _targets(gm: torch.fx.GraphModule) -> list[Any]:
    return [n.target for n in gm.graph.nodes]


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)


X = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------------------------------------------
# Augmented assignment and item assignment.
# ----------------------------------------------------------------------------------------------------------------


class _Augmented(_Two):
    """`v op= g` on a view `v` of `h`, then `h` is returned: only a real in-place op changes `h`."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(x).sigmoid() + 0.5
        v = h[:, :2]
        if self.op == "+=":
            v += g[:, :2]
        elif self.op == "-=":
            v -= g[:, :2]
        elif self.op == "*=":
            v *= g[:, :2]
        elif self.op == "/=":
            v /= g[:, :2]
        elif self.op == "**=":
            v **= 2
        elif self.op == "%=":
            v %= 0.7
        return h


_AUGMENTED = {"+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
              "**=": operator.ipow, "%=": operator.imod}


@pytest.mark.parametrize("op", sorted(_AUGMENTED))
def test_augmented_assignment_stays_in_place(op: str) -> None:
    gm = _assert_faithful_where_plain_fx_is_not(_Augmented(op), X)
    assert _AUGMENTED[op] in _targets(gm)
    plain = _plain(_Augmented(op))
    assert plain is not None and _AUGMENTED[op] not in _targets(plain)  # plain fx records the out-of-place op


class _Setitem(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(x)
        h[:, 0] = g[:, 1]
        return h


class _SetitemAugmented(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(x)
        h[:, 0] += g[:, 1]  # getitem, in-place add on the view, setitem back
        return h


@pytest.mark.parametrize("factory", [_Setitem, _SetitemAugmented], ids=["x[i] = v", "x[i] += v"])
def test_item_assignment_is_recorded(factory: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    gm = _assert_faithful_where_plain_fx_is_not(factory(), X)
    assert operator.setitem in _targets(gm)
    with pytest.raises(TypeError):
        torch.fx.symbolic_trace(factory())


class _SetitemIntoFresh(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buf = torch.zeros(3, 4)
        buf[:, :2] = self.b(x)[:, :2]
        return buf + self.a(x)


def test_item_assignment_into_a_fresh_tensor_runs_like_eager_every_call() -> None:
    model = _SetitemIntoFresh()
    gm = fxgrad.trace(model)
    for _ in range(2):  # the same modules called twice, as in a training loop
        eager_out, traced_out = model(X), gm(X)
        eager_out.sum().backward()
        traced_out.sum().backward()  # the second call raises here
        assert torch.allclose(eager_out, traced_out)
    for name, p in model.named_parameters():
        q = gm.get_parameter(name)
        assert p.grad is not None and q.grad is not None and torch.allclose(p.grad, q.grad), name


# ----------------------------------------------------------------------------------------------------------------
# Grad-mode regions.
# ----------------------------------------------------------------------------------------------------------------


class _NoGradContext(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.a(x)
        return self.b(h)


class _EnableGradInsideNoGrad(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.a(x)
            with torch.enable_grad():
                g = self.b(h)
        return g * 2.0


class _SetGradEnabledCall(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(False)
        h = self.a(x)
        torch.set_grad_enabled(True)
        return self.b(h)


class _SetGradEnabledContext(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(False):
            h = self.a(x)
        return self.b(h)


class _DecoratedHelper(_Two):
    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.embed(x))


class _NestedNoGrad(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            with torch.no_grad():
                h = self.a(x)
            g = self.b(x)  # still under the outer no_grad
        return h + g + self.b(x)


class _GradModeObject(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = torch.set_grad_enabled(False)
        with ctx:
            h = self.a(x)
        return self.b(h)


class _InferenceModeHelper(_Two):
    @torch.inference_mode()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.embed(x).clone())


class _InferenceMode(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            h = self.a(x)
        return self.b(h.clone())


class _EnableGradOnly(_Two):
    """Run under an outer no_grad: only the enable_grad region records a graph."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.a(x)
        with torch.enable_grad():
            g = self.b(x)
        return h, g


_GRAD_MODE: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "no_grad context": (_NoGradContext, True),
    "enable_grad inside no_grad": (_EnableGradInsideNoGrad, True),
    "set_grad_enabled(False) call": (_SetGradEnabledCall, True),
    "set_grad_enabled(False) context": (_SetGradEnabledContext, True),
    "@torch.no_grad() helper": (_DecoratedHelper, True),
    "inference_mode": (_InferenceMode, True),
    "@torch.inference_mode() helper": (_InferenceModeHelper, True),
    "nested no_grad": (_NestedNoGrad, True),
    "set_grad_enabled object entered later": (_GradModeObject, True),
    "enable_grad under an outer no_grad": (_EnableGradOnly, False),
}


@pytest.mark.parametrize("construct", list(_GRAD_MODE))
def test_grad_mode_regions_run_like_eager(construct: str) -> None:
    factory, outer_grad = _GRAD_MODE[construct]
    torch.manual_seed(0)
    model = factory()
    gm = _assert_faithful_where_plain_fx_is_not(model, X, outer_grad=outer_grad)
    assert torch.is_grad_enabled()
    # the region is in the graph as grad-mode nodes, not lost at trace time
    assert {torch._C._set_grad_enabled, grad_mode._enter_inference_mode} & set(_targets(gm))


def test_traced_grad_mode_restores_the_callers_mode() -> None:
    """Leaving a traced `no_grad` region restores the mode at run time, as eager does (not the trace-time mode)."""
    gm = fxgrad.trace(_NoGradContext())
    for outer in (True, False):
        with torch.set_grad_enabled(outer):
            out = gm(X)
            assert torch.is_grad_enabled() is outer
        assert out.requires_grad is outer


# ----------------------------------------------------------------------------------------------------------------
# Values rebuilt from Python numbers and NumPy arrays.
# ----------------------------------------------------------------------------------------------------------------


class _TensorOfItem(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self.a(x).sum().item())
        return self.b(x) * scale


class _FromNumpy(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.from_numpy(self.a(x).detach().numpy())
        return self.b(h)


@pytest.mark.parametrize("factory", [_TensorOfItem, _FromNumpy], ids=["tensor(item)", "from_numpy(numpy)"])
def test_rebuilt_tensors_are_graph_nodes(factory: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = factory()
    assert _plain(model) is None  # plain fx cannot trace these at all
    gm = _assert_faithful_where_plain_fx_is_not(model, X)
    assert {torch.tensor, torch.from_numpy} & {getattr(t, "__wrapped__", t) for t in _targets(gm)}
    assert eager_truth(model, (X,)).no_grad_params == {"a.weight", "a.bias"}


class _NewTensor(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x.new_tensor(self.a(x)))


def test_new_tensor_runs_like_eager() -> None:
    model = _NewTensor()
    eager = _behaviour(model, X)
    assert _same(eager, _behaviour(fxgrad.trace(model), X))
    assert eager.grads["a.weight"] is None
    # `x.new_tensor(...)` is a method call, which plain fx already records faithfully: nothing to fix there.
    plain = _plain(model)
    assert plain is not None and _same(eager, _behaviour(plain, X))


# ----------------------------------------------------------------------------------------------------------------
# Buffers written in place during forward.
# ----------------------------------------------------------------------------------------------------------------


class _RunningMean(nn.Module):
    running: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("running", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        with torch.no_grad():
            self.running.mul_(0.9).add_(h.mean(0), alpha=0.1)
        return h


def test_buffer_update_is_recorded_not_run_at_trace_time() -> None:
    model = _RunningMean()
    before = model.running.clone()
    gm = fxgrad.trace(model)
    assert torch.equal(model.running, before), "tracing changed the model's buffer"
    eager_model = copy.deepcopy(model)
    eager_model(X)
    gm.get_buffer("running").copy_(before)
    gm(X)
    assert torch.allclose(gm.get_buffer("running"), eager_model.running)


# ----------------------------------------------------------------------------------------------------------------
# Source locations and module paths.
# ----------------------------------------------------------------------------------------------------------------


def _line(marker: str) -> int:
    """The line of this file that carries ``# @marker``."""
    with open(__file__) as f:
        lines = [i for i, text in enumerate(f, 1) if text.rstrip().endswith(f"# @{marker}")]
    assert len(lines) == 1, marker
    return lines[0]


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-2, -1)  # @scores
        return scores.softmax(-1) @ x


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Layer(), _Layer()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        h *= 2.0  # @scale
        return self.head(h)


def _origin(node: torch.fx.Node) -> NodeOrigin:
    origin = node.meta["fxgrad"]
    assert isinstance(origin, NodeOrigin)
    return origin


def test_nodes_point_at_the_users_line_and_module() -> None:
    gm = fxgrad.trace(_Net())
    by_module: dict[str, list[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        by_module.setdefault(_origin(node).module, []).append(node)

    (scale,) = [n for n in gm.graph.nodes if n.target is operator.imul]
    loc = _origin(scale).location
    assert loc is not None
    assert loc.file == os.path.abspath(__file__)
    assert (loc.line, loc.function, loc.code) == (_line("scale"), "forward", "h *= 2.0  # @scale")
    assert _origin(scale).module == ""

    matmuls = [n for n in gm.graph.nodes if n.target is operator.matmul]
    assert [_origin(n).module for n in matmuls] == ["encoder.layers.0.attn"] * 2 + ["encoder.layers.1.attn"] * 2
    first = _origin(matmuls[2]).location
    assert first is not None and first.line == _line("scores")
    calls = {n.target: _origin(n).module for n in gm.graph.nodes if n.op == "call_module"}
    assert calls["encoder.layers.1.attn.q"] == "encoder.layers.1.attn.q"
    assert calls["head"] == "head"
    # placeholders and the output are nobody's line
    assert all(_origin(n).location is None for n in gm.graph.nodes if n.op in ("placeholder", "output"))


def test_findings_carry_the_module_path() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x).sigmoid()
            y.add_(1.0)  # @inner_add
            return y

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Identity(), Inner()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks[1](self.blocks[0](x))

    assert eager_truth(Outer(), (X,)).inplace_error
    (finding,) = fxgrad.analyze(Outer()).by_code("FXG102")
    assert finding.module == "blocks.1"
    assert finding.location is not None and finding.location.line == _line("inner_add")


# ----------------------------------------------------------------------------------------------------------------
# Failing traces: a clear error, and nothing left patched.
# ----------------------------------------------------------------------------------------------------------------


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # @branch
            return self.fc(x)
        return x


def test_untraceable_model_raises_trace_error_naming_the_line() -> None:
    with pytest.raises(fxgrad.TraceError) as err:
        fxgrad.trace(_Branchy())
    message = str(err.value)
    assert "if x.sum() > 0:" in message
    assert f":{_line('branch')}" in message
    assert "Hint:" in message
    assert err.value.__cause__ is not None
    with pytest.raises(fxgrad.TraceError):
        fxgrad.analyze(_Branchy())


class _FailsInsideNoGrad(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.a(x)
            torch.tensor(h.sum().item())
            if h.sum() > 0:  # data-dependent: tracing fails here, inside the patched region
                h = h * 2
        return self.b(h)


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_patches_are_restored_after_a_failing_trace(grad_enabled: bool) -> None:
    assert _current_globals() == _ORIGINALS
    with torch.set_grad_enabled(grad_enabled):
        with pytest.raises(fxgrad.TraceError) as err:
            fxgrad.trace(_FailsInsideNoGrad())
        assert torch.is_grad_enabled() is grad_enabled
    assert err.value.__cause__ is not None
    assert _current_globals() == _ORIGINALS
    assert torch.tensor([1.0]).requires_grad is False  # the real torch.tensor, not the tracing wrapper
    # and tracing still works afterwards
    assert operator.imul in _targets(fxgrad.trace(_Net()))


def test_patches_are_restored_after_a_successful_trace() -> None:
    fxgrad.trace(_TensorOfItem())
    fxgrad.trace(_InferenceMode())
    assert _current_globals() == _ORIGINALS
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------------------------------------------------
# Other tracers.
# ----------------------------------------------------------------------------------------------------------------


class _Block(nn.Module):
    """A block a custom tracer keeps opaque."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 1.5


class _WithBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _Block()
        self.frozen = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        with torch.no_grad():
            f = self.frozen(x)
        h += f
        return self.head(h)


class _BlockLeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _Block) or super().is_leaf_module(m, module_qualified_name)


@pytest.mark.parametrize("tracer", [_BlockLeafTracer, _BlockLeafTracer()], ids=["class", "instance"])
def test_custom_tracer_keeps_its_leaf_rule_and_gains_fidelity(tracer: Any) -> None:
    model = _WithBlock()
    gm = fxgrad.trace(model, tracer=tracer)
    assert ("call_module", "block") in [(n.op, n.target) for n in gm.graph.nodes]
    assert "block.fc" not in [n.target for n in gm.graph.nodes]
    assert operator.iadd in _targets(gm) and torch._C._set_grad_enabled in _targets(gm)
    assert _same(_behaviour(model, X), _behaviour(gm, X))

    truth = eager_truth(model, (X,))
    assert truth.no_grad_params == {"frozen.weight", "frozen.bias"}
    report = fxgrad.analyze(model, tracer=tracer)
    assert {n for n, p in report.params.items() if p.status == "no-grad"} == truth.no_grad_params
    assert report.params["block.fc.weight"].status == "ok"
    # the user's tracer class is not modified
    assert _BlockLeafTracer.__mro__[1] is torch.fx.Tracer


def test_leaf_modules_option() -> None:
    model = _WithBlock()
    gm = fxgrad.trace(model, leaf_modules=[_Block])
    assert ("call_module", "block") in [(n.op, n.target) for n in gm.graph.nodes]
    gm2 = fxgrad.trace(model, leaf_modules=["block"])
    assert ("call_module", "block") in [(n.op, n.target) for n in gm2.graph.nodes]
    assert _same(_behaviour(model, X), _behaviour(gm, X))


def test_a_graph_module_is_returned_unchanged() -> None:
    gm = fxgrad.trace(_Net())
    assert fxgrad.trace(gm) is gm


# ----------------------------------------------------------------------------------------------------------------
# transformers' HFTracer on a tiny BERT.
# ----------------------------------------------------------------------------------------------------------------


def _tiny_bert(cls_name: str) -> tuple[nn.Module, dict[str, Any], tuple[torch.Tensor, ...]]:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=16)
    base = transformers.BertModel

    class TokenEncoder(base):  # type: ignore[misc, valid-type]
        """Trains on the token states only: the pooler is never used for the loss."""

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids).last_hidden_state

    torch.manual_seed(0)
    model = {"BertModel": base, "TokenEncoder": TokenEncoder}[cls_name](config)
    model.train()
    input_names = ["input_ids", "attention_mask", "token_type_ids"]
    concrete = {p.name: p.default for p in inspect.signature(model.forward).parameters.values()
                if p.name not in input_names}
    gen = torch.Generator().manual_seed(0)
    inputs = (torch.randint(0, 64, (2, 8), generator=gen), torch.ones(2, 8, dtype=torch.long),
              torch.zeros(2, 8, dtype=torch.long))
    return model, concrete, inputs


@pytest.mark.parametrize("cls_name", ["BertModel", "TokenEncoder"])
def test_hf_tracer_on_tiny_bert(cls_name: str) -> None:
    model, concrete, inputs = _tiny_bert(cls_name)
    from transformers.utils.fx import HFTracer

    truth = eager_truth(model, inputs)
    assert truth.clean_run
    report = fxgrad.analyze(model, concrete_args=concrete, tracer=HFTracer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(report.params) == trainable  # every parameter has a status
    assert {n for n, p in report.params.items() if p.status in ("no-grad", "unused")} == truth.no_grad_params
    assert {n for n, p in report.params.items() if p.status == "zero-grad"} == truth.zero_grad_params
    assert ("FXG102" in report.codes()) is truth.inplace_error
    if cls_name == "TokenEncoder":
        assert truth.no_grad_params == {"pooler.dense.weight", "pooler.dense.bias"}
    # the traced graph runs like eager (dropout off so that the comparison is deterministic)
    model.eval()
    gm = fxgrad.trace(model, concrete, tracer=HFTracer)
    out, ref = gm(*inputs), model(*inputs)
    out_t = out if isinstance(out, torch.Tensor) else out["last_hidden_state"]
    ref_t = ref if isinstance(ref, torch.Tensor) else ref.last_hidden_state
    assert torch.allclose(out_t, ref_t, atol=1e-5)


def test_input_nodes_index_is_all_input_nodes() -> None:
    """The analysis reads ``node._input_nodes`` (an insertion-ordered dict) where ``node.all_input_nodes`` would
    build the same list through a property: a torch that changed that private field would fail here first."""
    class M(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            h = torch.cat([x, y, x], dim=0)
            return torch.where(h > 0, h, y.sum()) + x

    gm = fxgrad.trace(M())
    assert any(len(n.all_input_nodes) > 1 for n in gm.graph.nodes)
    for n in gm.graph.nodes:
        assert [*n._input_nodes] == n.all_input_nodes
