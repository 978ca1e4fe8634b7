"""fxgrad.verify's bulk comparison: one differing tensor among many is still caught and named.

Each "fixed" module here is a deliberately wrong copy whose forward values are bitwise those of the original
(``w + (w * s - (w * s).detach())`` adds an exact zero) while one gradient or one buffer differs. Every test
first shows with a real eager forward+backward which single tensor differs, then that ``verify`` names it.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn

from fxgrad.errors import VerificationError
from fxgrad.fixing import fix
from fxgrad.verify import _all_equal, _check, _checks, verify

LAYERS = 24


def _scaled_grad(t: torch.Tensor, s: float) -> torch.Tensor:
    """``t`` in value (exactly), with ``1 + s`` times its gradient."""
    return t + (t * s - (t * s).detach())


class Deep(nn.Module):
    """Many Linear+BatchNorm layers; ``wrong_weight``/``wrong_input`` scale one gradient, nothing else."""

    def __init__(self, wrong_weight: int = -1, wrong_input: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(6, 6) for _ in range(LAYERS))
        self.norms = nn.ModuleList(nn.BatchNorm1d(6) for _ in range(LAYERS))
        self.wrong_weight = wrong_weight
        self.wrong_input = wrong_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _scaled_grad(x, 0.5) if self.wrong_input else x
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms, strict=True)):
            w = _scaled_grad(layer.weight, 0.5) if i == self.wrong_weight else layer.weight
            h = torch.tanh(norm(nn.functional.linear(h, w, layer.bias)))
        return h


def _eager(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and every gradient (parameters and the input) of one eager run on a copy, same cotangent."""
    run = copy.deepcopy(model)
    xi = x.detach().clone().requires_grad_(True)
    out = run(xi)
    out.backward(torch.ones_like(out))
    grads = {n: p.grad for n, p in run.named_parameters() if p.grad is not None}
    assert xi.grad is not None
    grads["input x"] = xi.grad
    return out.detach(), grads


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def _twin(wrong_weight: int = -1, wrong_input: bool = False) -> tuple[Deep, Deep]:
    torch.manual_seed(0)
    original = Deep()
    wrong = Deep(wrong_weight, wrong_input)
    wrong.load_state_dict(original.state_dict())
    return original, wrong


def test_one_parameter_gradient_among_many_is_caught_and_named() -> None:
    original, wrong = _twin(wrong_weight=17)
    x = torch.randn(5, 6, requires_grad=True)
    out_a, grads_a = _eager(original, x)
    out_b, grads_b = _eager(wrong, x)
    assert torch.equal(out_a, out_b)
    assert _differing(grads_a, grads_b) == {"layers.17.weight"}  # eager: this one gradient and no other
    with pytest.raises(VerificationError, match=r"gradient `layers\.17\.weight` differs"):
        verify(original, wrong, (x,))
    assert verify(original, copy.deepcopy(original), (x,)).ok  # and the model against itself passes


def test_an_input_gradient_mismatch_is_caught_and_named() -> None:
    original, wrong = _twin(wrong_input=True)
    x = torch.randn(5, 6, requires_grad=True)
    out_a, grads_a = _eager(original, x)
    out_b, grads_b = _eager(wrong, x)
    assert torch.equal(out_a, out_b)
    assert _differing(grads_a, grads_b) == {"input x"}
    with pytest.raises(VerificationError, match=r"gradient `input x` differs"):
        verify(original, wrong, (x,))


def test_one_buffer_among_many_is_caught_and_named() -> None:
    original, wrong = _twin()
    wrong.norms[9].momentum = 0.5  # training-mode outputs and gradients use batch statistics: only buffers move
    x = torch.randn(5, 6, requires_grad=True)
    out_a, grads_a = _eager(original, x)
    out_b, grads_b = _eager(wrong, x)
    assert torch.equal(out_a, out_b) and not _differing(grads_a, grads_b)
    after_a, after_b = copy.deepcopy(original), copy.deepcopy(wrong)
    after_a(x), after_b(x)
    buffers_a, buffers_b = dict(after_a.named_buffers()), dict(after_b.named_buffers())
    assert _differing(buffers_a, buffers_b) == {"norms.9.running_mean", "norms.9.running_var"}
    with pytest.raises(VerificationError, match=r"buffer `norms\.9\.running_(mean|var)` differs"):
        verify(original, wrong, (x,))
    # The user's modules were not run: their statistics are the initial ones.
    assert all(int(n.num_batches_tracked) == 0 for n in original.norms)


def test_bulk_comparison_gives_the_records_of_one_at_a_time() -> None:
    """Every pair gets the record ``_check`` gives it alone, whatever the bulk pass makes of it."""
    torch.manual_seed(0)
    a = torch.randn(3, 4)
    nan = torch.tensor([1.0, float("nan")])
    inf = torch.tensor([float("inf"), -float("inf")])
    pairs = [
        ("equal", a, a.clone()),
        ("close", a, a + 1e-7),
        ("far", a, a + 1.0),
        ("nan", nan, nan.clone()),
        ("inf", inf, inf.clone()),
        ("signed zero", torch.tensor([0.0]), torch.tensor([-0.0])),
        ("int", torch.tensor([1, 2]), torch.tensor([1, 3])),
        ("int equal", torch.tensor(7), torch.tensor(7)),
        ("bool", torch.tensor([True]), torch.tensor([False])),
        ("dtype", a, a.double()),
        ("shape", a, a.reshape(4, 3)),
        ("empty", torch.empty(0), torch.empty(0)),
        ("complex", torch.tensor([1 + 2j]), torch.tensor([1 + 2j])),
        ("half", a.half(), a.half() + 1),
        ("none", None, torch.zeros(2)),
        ("both none", None, None),
    ]
    bulk = _checks("gradient", list(pairs), None, None, none_is_zero=True)
    alone = [_check("gradient", n, x, y, None, None, True) for n, x, y in pairs]
    assert bulk == alone
    assert [c.ok for c in bulk] == [True, True, False, True, True, True, False, True, False, False, False, True,
                                    True, False, True, True]


def test_named_state_walks_the_tree_as_named_parameters_and_named_buffers() -> None:
    """Shared submodules, tied parameters and one buffer under two names: the same names, tensors and order."""
    from fxgrad.verify import _named_state

    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model = nn.Module()
    model.a = shared
    model.b = nn.Sequential(shared, nn.Linear(3, 3))
    model.b[1].weight = model.a[0].weight  # tied
    model.register_buffer("alias", model.a[1].running_mean)  # one tensor, two names
    model.register_parameter("nothing", None)
    params, buffers = _named_state(model)
    expected = list(model.named_parameters(remove_duplicate=False))
    assert [n for n, _ in params] == [n for n, _ in expected]
    assert all(p is q for (_, p), (_, q) in zip(params, expected, strict=True))
    expected_buffers = dict(model.named_buffers())
    assert list(buffers) == list(expected_buffers)
    assert all(buffers[k] is expected_buffers[k] for k in buffers)


class Counter(nn.Module):
    """Python state that forward changes: a counter rebound, a list appended to."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.history: list[int] = []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.history.append(self.calls)
        return h * self.calls * len(self.history)


class Counting(nn.Module):
    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)
        self.head.weight = self.fc.weight  # tied
        self.counter = Counter()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc(x))
        h = h.mul_(2.0) if self.inplace else h * 2.0  # in place over sigmoid's saved output: backward raises
        return self.counter(self.head(h))


class CountingFixed(nn.Module):
    """The out-of-place program over the original's own submodules, as a fixed GraphModule holds them."""

    def __init__(self, original: Counting) -> None:
        super().__init__()
        self.fc, self.head, self.counter = original.fc, original.head, original.counter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.counter(self.head(torch.sigmoid(self.fc(x)) * 2.0))


@pytest.mark.parametrize("raises", [False, True])
def test_each_run_starts_from_the_users_state(raises: bool) -> None:
    """Both runs share one copy of the module tree where they can; a forward that changes the module's Python
    state must still find, in the second run, the state the user's module has, or a correct fix would be
    reported as a mismatch."""
    torch.manual_seed(0)
    original = Counting(inplace=raises)
    fixed = CountingFixed(original)
    x = torch.randn(3, 4)
    # Eager: a second forward on the same module computes something else (so leaked state shows), the fixed
    # module on a fresh copy computes what the original computes, and the original's backward raises or not.
    once = copy.deepcopy(fixed)
    first, second = once(x), once(x)
    assert not torch.allclose(first, second)
    try:
        copy.deepcopy(original)(x).sum().backward()
        eager_raises = False
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        eager_raises = True
    assert eager_raises == raises
    result = verify(original, fixed, (x,))
    assert result.ok and result.reference == ("functionalize" if raises else "eager")
    assert {c.name for c in result.gradients} >= {"fc.weight", "head.weight", "fc.bias", "head.bias"}
    # The user's modules were not run.
    assert original.counter.calls == 0 and original.counter.history == []
    assert original.fc.weight.grad is None


def test_shared_copy_and_separate_copies_give_the_same_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixed run on the original's re-armed copy (the usual case, checked to happen) records what it records
    on a copy of its own; buffers (BatchNorm statistics) included."""
    import fxgrad
    import fxgrad.verify as verify_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.ReLU(inplace=True), nn.Linear(6, 6),
                          nn.Sigmoid())
    x = torch.randn(5, 6, requires_grad=True)
    fixed = fxgrad.fix(model, (x,), only="all", verify=False)
    outcomes: list[bool] = []
    rearm = verify_module._rearm

    def spy(arming: verify_module._Arming) -> bool:
        outcomes.append(rearm(arming))
        return outcomes[-1]

    monkeypatch.setattr(verify_module, "_rearm", spy)
    shared = verify(model, fixed, (x,))
    assert outcomes == [True]
    monkeypatch.setattr(verify_module, "_rearm", lambda arming: False)
    separate = verify(model, fixed, (x,))
    assert shared == separate and shared.ok
    assert {c.name for c in shared.buffers} == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert int(model[1].num_batches_tracked) == 0 and model[0].weight.grad is None


def test_equal_pairs_are_found_in_one_concatenation_with_the_records_of_one_at_a_time() -> None:
    """Pairs that ``torch.equal`` finds equal, across dtypes, types and shapes, take the concatenated path and get
    the records ``_check`` gives each alone; one differing element among them sends all to the pair-by-pair path."""
    torch.manual_seed(0)
    pairs: list[tuple[str, object, object]] = [
        ("float", (a := torch.randn(3, 4)), a.clone()),
        ("transposed", a.t(), a.clone().t()),
        ("parameter", nn.Parameter(a.clone()), nn.Parameter(a.clone())),
        ("int", torch.tensor([1, 2]), torch.tensor([1, 2])),
        ("bool", torch.tensor([True]), torch.tensor([True])),
        ("empty", torch.empty(0), torch.empty(0)),
        ("complex", torch.tensor([1 + 2j]), torch.tensor([1 + 2j])),
        ("double", a.double(), a.double()),
    ] + [(f"many {i}", torch.full((2,), float(i)), torch.full((2,), float(i))) for i in range(50)]
    assert all(torch.equal(x, y) for _, x, y in pairs)  # type: ignore[arg-type]
    assert _all_equal([(x, y) for _, x, y in pairs])
    assert _checks("buffer", list(pairs), None, None) == [_check("buffer", n, x, y, None, None) for n, x, y in pairs]
    wrong = list(pairs)
    wrong[30] = ("many 22", torch.full((2,), 22.0), torch.tensor([22.0, 22.5]))
    assert not _all_equal([(x, y) for _, x, y in wrong])
    bulk = _checks("buffer", wrong, None, None)
    assert bulk == [_check("buffer", n, x, y, None, None) for n, x, y in wrong]
    assert [c.name for c in bulk if not c.ok] == ["many 22"]


def test_verify_leaves_no_garbage_cycle() -> None:
    """The copies and their tensors are freed by reference counting when verify returns (a recursive closure once
    kept them in a cycle until the next collection)."""
    original, _ = _twin()
    fixed = copy.deepcopy(original)
    x = torch.randn(5, 6, requires_grad=True)
    verify(original, fixed, (x,))
    gc.collect()
    gc.disable()
    try:
        assert verify(original, fixed, (x,)).ok
        assert gc.collect() == 0
    finally:
        gc.enable()


class BrokenNorm(nn.Module):
    """BatchNorm statistics and a scale buffer (read after) change in every forward, and an in-place op over
    sigmoid's saved output makes backward raise: the reference is the functionalized original."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 6)
        self.register_buffer("scale", torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.scale.add_(0.5)
        h = torch.sigmoid(self.norm(self.fc(x) * self.scale))
        h.mul_(2.0)
        return self.out(h)


def test_functionalized_reference_on_the_run_copy_records_what_a_copy_of_its_own_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the original's backward raises and every slot of its copy is a parameter or a buffer, the reference
    runs on the copy the original ran on (checked to happen), with the user's values: BatchNorm statistics the
    first run changed are not read. It records what it records on a new copy, and the user's model is untouched."""
    import fxgrad
    import fxgrad.verify as verify_module

    torch.manual_seed(0)
    model = BrokenNorm()
    x = torch.randn(5, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        copy.deepcopy(model)(x).sum().backward()  # eager: the original cannot be its own reference
    fixed = fxgrad.fix(model, (x,), only="breaking", verify=False)
    on: list[bool] = []
    functionalized = verify_module._functionalized

    def spy(*args: object, module: nn.Module | None = None) -> object:
        on.append(module is not None)
        return functionalized(*args, module=module)  # type: ignore[arg-type]

    monkeypatch.setattr(verify_module, "_functionalized", spy)
    shared = verify(model, fixed, (x,))
    assert on == [True]
    monkeypatch.setattr(verify_module, "_functionalized", lambda *args, module=None: functionalized(*args))
    separate = verify(model, fixed, (x,))
    assert shared == separate and shared.ok and shared.reference == "functionalize"
    assert {c.name for c in shared.buffers} == {"scale", "norm.running_mean", "norm.running_var",
                                                "norm.num_batches_tracked"}
    assert int(model.norm.num_batches_tracked) == 0 and torch.equal(model.norm.running_mean, torch.zeros(6))
    assert torch.equal(model.scale, torch.ones(6))
    assert all(p.grad is None for p in model.parameters())


class _ViewTurnedLeaf(nn.Module):
    """A view taken of a tensor without grad is a leaf; once its base is written with a tensor that requires grad,
    the view requires grad too, and writing into it makes eager's forward raise (a torch rule neither reference
    lifts: fxgrad.decoupled replaces written leaves that are leaves in the graph, not this view)."""

    def __init__(self) -> None:
        super().__init__()
        self.w0 = nn.Parameter(torch.randn(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.w0
        s = torch.sigmoid(x)
        t = s.transpose(0, 1)
        s.add_(h)
        t.add_(0.5)
        return t


def test_a_fix_no_reference_can_run_names_both_references() -> None:
    x = torch.randn(1, 1)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        _ViewTurnedLeaf()(x)
    with pytest.raises(VerificationError, match=r"neither torch\.func\.functionalize .* nor fxgrad\.decoupled") as info:
        fix(_ViewTurnedLeaf(), (x,))
    assert "leaf Variable that requires grad" in str(info.value)
    assert "verify=False" in str(info.value)
