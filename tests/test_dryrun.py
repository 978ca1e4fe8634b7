"""The dry-run's own guarantees, each checked against eager PyTorch in the same test.

The corpus-wide agreement with eager (every case, 100%) is ``test_rules.test_dryrun_verdicts_match_eager``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fxgrad
from fxgrad.errors import InputError

from .oracle import eager_truth


def _status(report: fxgrad.Report, *statuses: str) -> frozenset[str]:
    return frozenset(n for n, p in report.params.items() if p.status in statuses)


def test_dryrun_names_both_lines_of_the_classic_error() -> None:
    class SigmoidMul(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.sigmoid(self.linear(x))
            t.mul_(2.0)
            return t

    model = SigmoidMul()
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="modified by an inplace operation") as eager:
        model(x).sum().backward()
    report = fxgrad.analyze(model, fxgrad.spec((4, 8)))
    (f,) = report.by_code("FXG102")
    assert f.verdict == "dry-run"
    assert f.location is not None and f.location.code == "t.mul_(2.0)"
    assert [r.location.code for r in f.related if r.location] == ["t = torch.sigmoid(self.linear(x))"]
    # the message carries the very error backward raises (shape aside: the spec's batch is the same here)
    assert str(eager.value).split(" Hint:")[0] in f.message


def test_dryrun_does_not_touch_the_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    model.train()
    before = copy.deepcopy(model.state_dict())
    flags = [(m.training, getattr(m, "inplace", None)) for m in model.modules()]
    versions = [t._version for t in (*model.parameters(), *model.buffers())]
    x = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    report = fxgrad.analyze(model, x)
    assert report.mode == "dry-run"
    # BatchNorm's ``num_batches_tracked += 1`` ran on a twin: no version counter of the user's tensors moved
    assert versions == [t._version for t in (*model.parameters(), *model.buffers())]
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # num_batches_tracked and running stats included
    assert all(p.grad is None for p in model.parameters())
    assert flags == [(m.training, getattr(m, "inplace", None)) for m in model.modules()]
    assert torch.equal(rng, torch.get_rng_state())
    assert torch.is_grad_enabled()


def test_module_keeping_its_own_parameter_list_runs_on_the_twins() -> None:
    """``nn.LSTM`` reads its weights from ``_flat_weights``, a plain list: the dry-run must hand autograd the meta
    twins, never the user's parameters, and still name every parameter that eager gives a gradient."""
    from fxgrad.dryrun import _Twins
    from fxgrad.facts import compute_facts

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = Tagger()
    gm = fxgrad.trace(model)
    twin = _Twins(gm, compute_facts(gm, model=model), meta=True).attr("rnn")
    assert all(w.is_meta for w in twin._flat_weights)
    assert [id(w) for w in twin._flat_weights] == [id(twin._parameters[n]) for n in model.rnn._flat_weights_names]
    assert not any(w.is_meta for w in model.rnn._flat_weights)

    x = torch.randn(2, 5, 4)
    report = fxgrad.analyze(model, fxgrad.spec((2, 5, 4)))
    model(x).sum().backward()
    assert _status(report, "ok") == {n for n, p in model.named_parameters() if p.grad is not None}


def test_dryrun_verdict_does_not_depend_on_batch_size() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.Sigmoid())

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            y += 1  # Sigmoid saved y: backward raises
            return y

    small = fxgrad.analyze(Wrapped(), fxgrad.spec((8, 16)))
    huge = fxgrad.analyze(Wrapped(), fxgrad.spec((4096, 16)))
    assert small.codes() == huge.codes() == ["FXG102"]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        Wrapped()(torch.randn(8, 16)).sum().backward()


class _ItemScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self.a(x).mean().item())
        return self.b(x) * scale


def test_data_dependent_op_falls_back_to_a_real_run_with_real_inputs() -> None:
    model = _ItemScale()
    x = torch.randn(3, 4)
    truth = eager_truth(model, (x,))
    report = fxgrad.analyze(model, x)
    assert report.mode == "dry-run"
    assert any("real example inputs" in n for n in report.notes)
    assert _status(report, "no-grad") == truth.no_grad_params == {"a.weight", "a.bias"}


def test_data_dependent_op_with_shapes_only_keeps_static_verdicts_and_says_why() -> None:
    report = fxgrad.analyze(_ItemScale(), fxgrad.spec((3, 4)))
    assert report.mode == "static"
    assert any("no dry-run" in n for n in report.notes)
    assert _status(report, "no-grad") == {"a.weight", "a.bias"}


def test_inputs_that_do_not_fit_raise_a_clear_error_naming_the_line() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(InputError, match=r"example inputs raised.*return self.fc\(x\)") as err:
        fxgrad.analyze(Net(), torch.randn(3, 5))
    assert err.value.__cause__ is not None
    with pytest.raises(RuntimeError):
        Net()(torch.randn(3, 5))


def test_meta_tensor_inputs_work_like_specs() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.tanh(self.fc(x))
            y[0] = 0.0
            return y

    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        Net()(torch.randn(2, 4)).sum().backward()
    report = fxgrad.analyze(Net(), torch.empty(2, 4, device="meta"))
    assert report.mode == "dry-run"
    assert report.codes() == ["FXG102"]


def test_dryrun_real_mode_runs_on_real_inputs_and_needs_them() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    report = fxgrad.analyze(model, torch.randn(2, 4), dryrun="real")
    assert report.mode == "dry-run" and report.ok
    with pytest.raises(InputError, match="needs real tensors"):
        fxgrad.analyze(model, fxgrad.spec((2, 4)), dryrun="real")
