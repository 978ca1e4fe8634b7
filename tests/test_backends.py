"""Backend kernels (:mod:`fxgrad.backends`): writes on outputs that only the real kernel saves.

Every case is a pair, a write that breaks backward on the kernel torch picks and a neighbour where it does not
(another dtype, oneDNN off, a bidirectional layer, the hidden state, GRU ...). Each test runs eager backward on
both and checks that it tells them apart, then that the static pass, the dry-run on meta tensors and ``fxgrad.fix``
agree with it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fxgrad
from fxgrad import backends
from fxgrad.fixing import fix_record
from fxgrad.testing import assert_gradients_flow

warnings.filterwarnings("ignore", message=".*(oneDNN|TF32|sdp_kernel|projections).*")


class Recurrent(nn.Module):
    """An RNN layer whose output (``which="out"``), ``h_n`` or ``c_n`` is written in place, or passed through an
    in-place Dropout; ``inplace=False`` is the same program out of place (the reference for ``fxgrad.fix``). A
    written output is the only result read after the write: on oneDNN ``h_n`` may share its memory."""

    def __init__(self, cls: type[nn.RNNBase] = nn.LSTM, which: str = "out", inplace: bool = True,
                 dropout_module: bool = False, **kw: Any) -> None:
        super().__init__()
        self.rnn = cls(8, 16, batch_first=True, **kw)
        self.head = nn.Linear((self.rnn.proj_size or 16) * (2 if self.rnn.bidirectional else 1), 1)
        self.drop = nn.Dropout(0.3, inplace=inplace) if dropout_module else None
        self.which, self.inplace, self.lstm = which, inplace, cls is nn.LSTM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, hidden = self.rnn(x)
        h = hidden[0] if self.lstm else hidden
        if self.drop is not None:
            return self.head(self.drop(out)).sum()
        if self.which == "out":
            out = out.mul_(0.5) if self.inplace else out * 0.5
            return self.head(out).sum()
        if self.which == "h":
            h = h.mul_(0.5) if self.inplace else h * 0.5
        else:
            c = hidden[1]
            c = c.mul_(0.5) if self.inplace else c * 0.5
            return self.head(out).sum() + h.sum() + c.sum()
        return self.head(out).sum() + h.sum()


class FunctionalLSTM(nn.Module):
    """``torch._VF.lstm`` called directly (what ``nn.LSTM.forward`` calls), its output written in place."""

    def __init__(self, bidirectional: bool = False, inplace: bool = True) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True, bidirectional=bidirectional)
        self.bidirectional, self.inplace = bidirectional, inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = 2 if self.bidirectional else 1
        hx = (torch.zeros(d, 2, 16, dtype=x.dtype), torch.zeros(d, 2, 16, dtype=x.dtype))
        weights = [getattr(self.rnn, name) for name in self.rnn._flat_weights_names]  # (seen by functional_call)
        out, _, _ = torch._VF.lstm(x, hx, weights, True, 1, 0.0, True, self.bidirectional, True)
        out = out.mul_(0.5) if self.inplace else out * 0.5
        return out.sum()


class NoGradLSTM(Recurrent):
    """The LSTM runs under ``torch.no_grad()``: autograd records nothing of it, whatever the kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out, _ = self.rnn(x)
        out = out.mul_(0.5) if self.inplace else out * 0.5
        return self.head(out).sum()


class Attention(nn.Module):
    """``F.scaled_dot_product_attention`` whose output is written in place, on q, k, v of ``dims`` dimensions
    (``strided``: a last dim of stride 5, not 1), with an optional boolean ``mask``."""

    def __init__(self, dims: int = 4, dropout_p: float = 0.0, inplace: bool = True, strided: bool = False,
                 mask: bool = False) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.dims, self.dropout_p, self.inplace, self.strided = dims, dropout_p, inplace, strided
        self.mask = torch.ones(5, 5, dtype=torch.bool).tril() if mask else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x)
        if self.strided:
            q = q.transpose(1, 2).contiguous().transpose(1, 2)
        q = {4: q.unsqueeze(1), 3: q, 2: q[0]}[self.dims]
        out = F.scaled_dot_product_attention(q, q, q, attn_mask=self.mask, dropout_p=self.dropout_p)
        out = out.mul_(0.5) if self.inplace else out * 0.5
        return out.sum()


@dataclass
class Case:
    make: Callable[..., nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    flags: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    #: the static pass cannot decide it without shapes (it says so in the finding)
    static_undecided: bool = False
    #: uses Dropout: the fix is checked for the rewrite only (see test_fix_rewrites_out_of_place)
    random: bool = False
    train: bool = True

    def model(self, **extra: Any) -> nn.Module:
        torch.manual_seed(0)
        return self.make(**{**self.kwargs, **extra}).to(self.dtype).train(self.train)

    def inputs(self) -> torch.Tensor:
        return torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1), dtype=self.dtype)


def _mkldnn_off() -> contextlib.AbstractContextManager[Any]:
    return torch.backends.mkldnn.flags(enabled=False)


def _flash_off() -> contextlib.AbstractContextManager[Any]:
    return torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)


LSTM_OUT = Case(Recurrent)
PAIRS: dict[str, tuple[Case, Case]] = {
    "lstm-float64": (LSTM_OUT, Case(Recurrent, dtype=torch.float64)),
    "lstm-onednn-off": (LSTM_OUT, Case(Recurrent, flags=_mkldnn_off)),
    "lstm-dropout-bidirectional": (Case(Recurrent, {"dropout_module": True}, random=True),
                                   Case(Recurrent, {"dropout_module": True, "bidirectional": True}, random=True)),
    "lstm-h_n": (LSTM_OUT, Case(Recurrent, {"which": "h"})),
    "lstm-c_n": (LSTM_OUT, Case(Recurrent, {"which": "c"})),
    "lstm-projections": (LSTM_OUT, Case(Recurrent, {"proj_size": 4})),
    "lstm-layers-gru": (Case(Recurrent, {"num_layers": 2, "dropout": 0.2}, random=True),
                        Case(Recurrent, {"cls": nn.GRU, "num_layers": 2, "dropout": 0.2}, random=True)),
    "lstm-rnn": (Case(Recurrent, {"bidirectional": False, "num_layers": 2}),
                 Case(Recurrent, {"cls": nn.RNN, "num_layers": 2})),
    # eval mode changes nothing: the weights require grad, so autograd records the oneDNN kernel all the same
    "lstm-eval-bidirectional": (Case(Recurrent, train=False), Case(Recurrent, {"bidirectional": True}, train=False)),
    "lstm-no_grad": (LSTM_OUT, Case(NoGradLSTM)),
    "vf-lstm-bidirectional": (Case(FunctionalLSTM), Case(FunctionalLSTM, {"bidirectional": True})),
    "sdpa-4d-2d": (Case(Attention), Case(Attention, {"dims": 2}, static_undecided=True)),
    "sdpa-mask-strided": (Case(Attention, {"mask": True}), Case(Attention, {"strided": True}, static_undecided=True)),
    "sdpa-dropout": (Case(Attention), Case(Attention, {"dropout_p": 0.1}, random=True)),
    "sdpa-math": (Case(Attention), Case(Attention, flags=_flash_off)),
}


def _eager_raises(case: Case) -> bool:
    model = case.model()
    with case.flags():
        try:
            model(case.inputs()).backward()
        except RuntimeError as e:
            assert "modified by an inplace operation" in str(e)
            return True
    return False


def _codes(report: fxgrad.Report) -> list[str]:
    return [f.code for f in report.findings]


def _flagged(case: Case) -> Iterator[tuple[str, fxgrad.Report]]:
    with case.flags():
        yield "static", fxgrad.analyze(case.model())
        yield "dry-run", fxgrad.analyze(case.model(), (case.inputs(),))


@pytest.mark.parametrize("name", list(PAIRS))
def test_pair_against_eager(name: str) -> None:
    flagged, clean = PAIRS[name]
    assert _eager_raises(flagged), "the flagged case must break eager backward"
    assert not _eager_raises(clean), "the clean case must not"
    for mode, report in _flagged(flagged):
        hits = [f for f in report.findings if f.code == "FXG102"]
        assert hits and not report.ok, (mode, _codes(report))
        assert "depends on the backend" in hits[0].message, hits[0].message
        assert hits[0].backend_dependent
    for mode, report in _flagged(clean):
        if mode == "static" and clean.static_undecided:
            # without shapes the static pass says what decides, instead of claiming either way
            assert any("dry-run with example inputs" in f.message for f in report.findings), _codes(report)
            continue
        assert "FXG102" not in _codes(report), (mode, [f.message for f in report.findings])


def test_3d_attention_gets_this_torchs_verdict() -> None:
    """Whether the CPU flash kernel takes 3-D q, k, v changed between torch versions (math in 2.13, flash in
    2.14): the dry-run asks the installed torch, so its verdict is eager's on either, and the static pass, without
    shapes, says that the shapes decide."""
    case = Case(Attention, {"dims": 3})
    raises = _eager_raises(case)
    report = fxgrad.analyze(case.model(), (case.inputs(),))
    assert ("FXG102" in _codes(report)) == raises, (torch.__version__, [f.message for f in report.findings])
    assert report.ok != raises
    static = fxgrad.analyze(case.model())
    assert any("dry-run with example inputs" in f.message for f in static.findings), _codes(static)


def test_dry_run_names_the_backend() -> None:
    """The dry-run claims no proof for the LSTM's output: it reports the oneDNN kernel that saves it."""
    report = fxgrad.analyze(LSTM_OUT.model(), (LSTM_OUT.inputs(),))
    (finding,) = [f for f in report.findings if f.code == "FXG102"]
    assert finding.verdict == "dry-run"
    assert "oneDNN (mkldnn) LSTM, which torch picks for CPU float32, saves its output" in finding.message
    assert not any("proved by the dry-run" in f.message for f in report.findings)


@pytest.mark.parametrize("name", [n for n, (flagged, _) in PAIRS.items() if not flagged.random])
def test_fix_matches_the_out_of_place_program(name: str) -> None:
    """``fxgrad.fix`` rewrites the write out of place; the fixed model's backward runs and its gradients are the
    out-of-place program's, in eager."""
    flagged, _ = PAIRS[name]
    x = flagged.inputs()
    with flagged.flags():
        fixed = fxgrad.fix(flagged.model(), (x,))
        fixed(x).backward()
        reference = flagged.model(inplace=False)
        reference(x).backward()
    got = dict(fixed.named_parameters())
    for pname, p in reference.named_parameters():
        assert got[pname].grad is not None and p.grad is not None
        torch.testing.assert_close(got[pname].grad, p.grad)


def test_fix_rewrites_the_inplace_dropout() -> None:
    """The in-place Dropout on the LSTM's output becomes out of place; ``fix`` verifies it (its functionalized
    reference draws the mask in another layout, so it falls back to the eager one), and the fixed model's
    gradients are the out-of-place program's in eager, from the same random state."""
    case = PAIRS["lstm-dropout-bidirectional"][0]
    x = case.inputs()
    fixed = fxgrad.fix(case.model(), (x,))
    assert fix_record(fixed).verification.reference == "decoupled"
    torch.manual_seed(2)
    fixed(x).backward()
    reference = case.model(inplace=False)
    torch.manual_seed(2)
    reference(x).backward()
    got = dict(fixed.named_parameters())
    for pname, p in reference.named_parameters():
        torch.testing.assert_close(got[pname].grad, p.grad)


def test_pytest_helper_fails_the_lstm_dropout_model() -> None:
    flagged, clean = PAIRS["lstm-dropout-bidirectional"]
    assert _eager_raises(flagged)
    with pytest.raises(AssertionError, match="FXG102"):
        assert_gradients_flow(flagged.model(), (flagged.inputs(),))
    assert_gradients_flow(clean.model(), (clean.inputs(),))


def test_table_entries_cite_their_source() -> None:
    for entry in set(backends.KERNELS.values()):
        assert entry.__doc__ and "aten/src/ATen/native/" in entry.__doc__, entry


def test_cuda_attention_says_it_cannot_see_the_choice() -> None:
    choice = backends.choose("scaled_dot_product_attention", None, "cuda", torch.float16)
    assert choice is not None and not choice.certain
    assert "fxgrad cannot see which one runs" in choice.note
    assert backends.choose("scaled_dot_product_attention", None, "cuda", torch.float64) is None


class PackedLSTM(nn.Module):
    """``nn.LSTM`` on a ``PackedSequence`` whose output's data is scaled in place (``packed=False``: the padded
    batch). On CPU torch runs a packed batch through oneDNN, whose backward reads the output, only when all its
    sequences have the same length (the data is then a view of oneDNN's output); else through the native cells,
    whose output is concatenated from the steps and saved by nothing."""

    def __init__(self, packed: bool = True, inplace: bool = True, **kw: Any) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True, **kw)
        self.head = nn.Linear(16 * (2 if self.rnn.bidirectional else 1), 1)
        self.packed, self.inplace = packed, inplace

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            out, _ = self.rnn(x)
            return self.head(out.mul_(0.5) if self.inplace else out * 0.5).sum()
        seq = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(seq)
        data = out.data.mul_(0.5) if self.inplace else out.data * 0.5
        padded, _ = pad_packed_sequence(PackedSequence(data, out.batch_sizes, out.sorted_indices,
                                                       out.unsorted_indices), batch_first=True)
        return self.head(padded).sum()


def _packed_raises(model: nn.Module, lengths: list[int]) -> bool:
    x = torch.randn(len(lengths), 5, 8, generator=torch.Generator().manual_seed(1))
    try:
        model(x, torch.tensor(lengths)).backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return True
    return False


def _packed_report(model: nn.Module, lengths: list[int]) -> fxgrad.Report:
    x = torch.randn(len(lengths), 5, 8, generator=torch.Generator().manual_seed(1))
    return fxgrad.analyze(model, (x, torch.tensor(lengths)))


def test_packed_lstm_of_equal_lengths_saves_its_output() -> None:
    """Sequences of one length: eager raises, and fxgrad (captured by running: a packed sequence cannot be
    traced; the dry-run runs the real kernels) reports FXG102 with eager's own error; the same write after a
    bidirectional layer is harmless in eager and not reported."""
    assert _packed_raises(PackedLSTM(), [5, 5])
    report = _packed_report(PackedLSTM(), [5, 5])
    (finding,) = [f for f in report.findings if f.code == "FXG102"]
    assert not report.ok and "output 0 of MkldnnRnnLayer" in finding.message, finding.message
    assert not _packed_raises(PackedLSTM(bidirectional=True), [5, 5])
    report = _packed_report(PackedLSTM(bidirectional=True), [5, 5])
    assert "FXG102" not in _codes(report) and report.ok, [f.message for f in report.findings]


def test_packed_lstm_of_other_lengths_raises_on_a_batch_of_equal_ones() -> None:
    """Sequences of different lengths run the native cells: eager backward works on these inputs, but the same
    model raises on any batch whose sequences share one length, a batch of one sequence included. fxgrad says
    so (FXG102, the condition named, not claimed certain); the padded batch beside it is FXG102 outright. No
    FXG104: the packed output's data is its own tensor."""
    assert not _packed_raises(PackedLSTM(), [5, 3])
    assert _packed_raises(PackedLSTM(), [4]) and _packed_raises(PackedLSTM(), [3, 3, 3])
    report = _packed_report(PackedLSTM(), [5, 3])
    (finding,) = [f for f in report.findings if f.code == "FXG102"]
    assert "when all its sequences have the same length" in finding.message, finding.message
    assert "FXG104" not in _codes(report)
    assert _packed_raises(PackedLSTM(packed=False), [5, 5])
    assert "FXG102" in _codes(_packed_report(PackedLSTM(packed=False), [5, 5]))


def test_fix_of_the_packed_lstm_matches_the_out_of_place_program() -> None:
    """``fix`` rewrites the write on the packed output's data out of place and verifies it, on a batch that
    raises in eager and on one that does not; the fixed model's gradients are the out-of-place program's."""
    for lengths in ([5, 5], [5, 3]):
        x, sizes = torch.randn(len(lengths), 5, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(lengths)
        torch.manual_seed(0)
        fixed = fxgrad.fix(PackedLSTM(), (x, sizes))
        assert any(r.node for r in fix_record(fixed).rewrites)
        fixed(x, sizes).backward()
        torch.manual_seed(0)
        reference = PackedLSTM(inplace=False)
        reference(x, sizes).backward()
        got = dict(fixed.named_parameters())
        for pname, p in reference.named_parameters():
            torch.testing.assert_close(got[pname].grad, p.grad)


class PackedFunctionalLSTM(FunctionalLSTM):
    """``torch._VF.lstm``'s packed overload ``(data, batch_sizes, hx, params, ...)`` called directly, its output
    written in place (``packed=False``: the padded overload). Sequences of different lengths: the native cells."""

    def __init__(self, packed: bool = True, inplace: bool = True) -> None:
        super().__init__(inplace=inplace)
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            return super().forward(x)
        hx = (torch.zeros(1, 2, 16, dtype=x.dtype), torch.zeros(1, 2, 16, dtype=x.dtype))
        weights = [getattr(self.rnn, name) for name in self.rnn._flat_weights_names]
        data, batch_sizes = x.transpose(0, 1)[:4].reshape(8, 8)[:7], torch.tensor([2, 2, 2, 1])
        out, _, _ = torch._VF.lstm(data, batch_sizes, hx, weights, True, 1, 0.0, True, False)
        out = out.mul_(0.5) if self.inplace else out * 0.5
        return out.sum()


def test_packed_functional_lstm_reads_its_own_overload() -> None:
    """The packed overload of ``torch._VF.lstm`` takes ``batch_sizes`` second and ``bidirectional`` ninth: read
    where the padded overload has them, ``train=True`` looked like a bidirectional layer."""
    x = Case(Recurrent).inputs()
    assert _eager_raises(Case(PackedFunctionalLSTM, {"packed": False}))
    assert not _eager_raises(Case(PackedFunctionalLSTM))
    options = backends.OPTIONS["lstm"]((x, torch.tensor([2, 1]), [x, x], [x], True, 1, 0.0, True, False), {})
    assert options == {"mode": "LSTM", "packed": True, "bidirectional": False}
    options = backends.OPTIONS["lstm"]((x, [x, x], [x], True, 1, 0.0, True, True, True), {})
    assert options == {"mode": "LSTM", "packed": False, "bidirectional": True}


class LSTMOnPackedInput(nn.Module):
    """An LSTM whose input is a ``PackedSequence`` the caller packed, its output's data scaled in place."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16)

    def forward(self, seq: PackedSequence) -> torch.Tensor:
        out, _ = self.rnn(seq)
        out.data.mul_(0.5)
        return out.data.sum()


def test_a_packed_sequence_given_as_input_is_judged_by_its_lengths() -> None:
    """The packed batch need not be made in forward: one the caller passes in gets the same verdict, the condition
    named when its lengths differ (eager raises once they are equal)."""
    x = torch.randn(5, 2, 8, generator=torch.Generator().manual_seed(1))

    def packed(lengths: list[int]) -> PackedSequence:
        return pack_padded_sequence(x[:, : len(lengths)], torch.tensor(lengths), enforce_sorted=False)

    for lengths, raises in (([5, 3], False), ([4, 4], True), ([3], True)):
        try:
            LSTMOnPackedInput()(packed(lengths)).backward()
            eager_raises = False
        except RuntimeError as e:
            assert "modified by an inplace operation" in str(e)
            eager_raises = True
        assert eager_raises == raises, lengths
    report = fxgrad.analyze(LSTMOnPackedInput(), (packed([5, 3]),))
    (finding,) = [f for f in report.findings if f.code == "FXG102"]
    assert not report.ok and "when all its sequences have the same length" in finding.message, finding.message
    # (a packed batch's lengths must be real: the dry-run ran on the real inputs, and the report's header says so)
    assert "proved by a dry-run on the real example inputs" in str(report).splitlines()[0]
