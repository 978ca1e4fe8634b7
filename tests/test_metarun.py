"""The dry-run's meta substrate on its own: its op memo must give what eager gives, and turning it off must change
nothing but the time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fxgrad import capturing, dryrun
from fxgrad.facts import compute_facts
from fxgrad.metarun import MEMO_ENV, MetaMode, TracingMetaMode

from .corpus import CASES, Case, build, build_inputs


def test_memo_keys_python_scalars_by_type() -> None:
    """`1`, `1.0` and `True` are equal and hash alike; the ops they fill or add are not."""
    eager = [torch.full((4,), v).dtype for v in (1, 1.0, True, 1 + 0j)]
    assert eager == [torch.int64, torch.float32, torch.bool, torch.complex64]
    with MetaMode():
        meta = [torch.full((4,), v, device="meta").dtype for v in (1, 1.0, True, 1 + 0j)]
        lists = [torch.ones(2, device="meta").new_full([2], v).dtype for v in (1, 1.0)]
    assert meta == eager
    assert lists == [torch.ones(2).new_full([2], 1).dtype, torch.ones(2).new_full([2], 1.0).dtype]


def test_memo_keys_scalars_inside_lists_and_kwargs() -> None:
    """Scalars inside a list argument and in keyword arguments are keyed with their type too."""
    def run(device: str) -> list[torch.dtype]:
        x = torch.zeros(3, dtype=torch.int64, device=device)
        return [torch.full(size=(2,), fill_value=1, device=device).dtype,
                torch.full(size=(2,), fill_value=1.0, device=device).dtype,
                torch.cat([x, x]).add(1).dtype, torch.cat([x, x]).add(1.0).dtype,
                torch.tensor([1, 2], device=device).dtype, torch.tensor([1.0, 2.0], device=device).dtype,
                torch.where(x > 0, x, 1).dtype, torch.where(x > 0, x, 1.0).dtype]

    eager = run("cpu")
    with MetaMode():
        meta = run("meta")
    assert meta == eager
    assert eager[0] != eager[1] and eager[2] != eager[3]  # the pairs really differ in eager


def test_memo_keys_conj_and_neg_bits() -> None:
    """``dot`` of conjugate views returns a conjugate-bit result; the plain ``dot`` remembered first must not
    answer for it (nor a neg-bit ``clone`` for a plain one)."""
    def run(device: str) -> list[tuple[bool, bool]]:
        c = torch.zeros(2, 4, dtype=torch.complex64, device=device)
        outs = [c[0].dot(c[1]), c.conj()[0].dot(c.conj()[1]), c.imag.clone(), c.conj().imag.clone()]
        return [(o.is_conj(), o.is_neg()) for o in outs]

    eager = run("cpu")
    assert eager[1] == (True, False)  # the case the key must tell apart really differs in eager
    with MetaMode():
        assert run("meta") == eager


def test_memo_keys_scalars_in_nested_values() -> None:
    """Scalar lists (``_foreach_add``'s ``Scalar[]``), nested tuples and dicts keep their items' types."""
    from fxgrad.metarun import _args_key

    values = ([1, 2], [1.0, 2.0], [True, 2], [(1, 2)], [(1.0, 2.0)], [[1]], [[1.0]], {"a": 1}, {"a": 1.0})
    assert len({_args_key([v]) for v in values}) == len(values)
    for device in ("cpu", "meta"):
        with MetaMode() if device == "meta" else torch.no_grad():
            ts = [torch.zeros(2, dtype=torch.int64, device=device)] * 2
            dtypes = [torch._foreach_add(ts, s)[0].dtype for s in ([1, 2], [1.0, 2.0])]
        assert dtypes == [torch.int64, torch.float32], device


def test_an_int_tensors_float_add_raises_as_in_eager() -> None:
    with pytest.raises(RuntimeError) as eager:
        torch.zeros(4, dtype=torch.int64).add_(1.0)
    with MetaMode():
        torch.zeros(4, dtype=torch.int64, device="meta").add_(1)  # memoised with an int
        with pytest.raises(RuntimeError) as meta:
            torch.zeros(4, dtype=torch.int64, device="meta").add_(1.0)
    assert eager.value is not None and meta.value is not None  # the meta kernel words it its own way


def test_memo_follows_the_default_dtype() -> None:
    before = torch.get_default_dtype()
    try:
        with MetaMode():
            first = torch.full((2,), 1.0, device="meta").dtype
            torch.set_default_dtype(torch.float64)
            second = torch.full((2,), 1.0, device="meta").dtype
    finally:
        torch.set_default_dtype(before)
    assert (first, second) == (torch.float32, torch.float64)


def test_memo_switch() -> None:
    """``memo=False`` and ``FXGRAD_DRYRUN_MEMO=0`` run every kernel: nothing is remembered."""
    def ops(mode: MetaMode) -> int:
        with mode:
            for _ in range(3):
                torch.ones(2, 3, device="meta") @ torch.ones(3, 4, device="meta")
        return len(mode._memo)

    assert ops(MetaMode()) > 0
    assert ops(MetaMode(memo=False)) == 0
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv(MEMO_ENV, "0")
        assert ops(MetaMode()) == 0
        assert ops(MetaMode(memo=True)) > 0  # the keyword wins over the environment
    finally:
        mp.undo()


# ----------------------------------------------------------------------------------------------------------------
# Scalar types, conj and neg bits against eager, op by op.
# ----------------------------------------------------------------------------------------------------------------

_DTYPES = (torch.int64, torch.float32, torch.bool, torch.complex64)
_SCALARS = (1, 1.0, True, 1 + 0j, 2, 0.5, False)
#: (name, op on a tensor and a scalar)
_OPS: dict[str, Callable[[torch.Tensor, Any], Any]] = {
    "add": lambda t, s: t + s,
    "mul": lambda t, s: t * s,
    "div": lambda t, s: t / s,
    "add_": lambda t, s: t.clone().add_(s),
    "mul_": lambda t, s: t.clone().mul_(s),
    "fill_": lambda t, s: t.clone().fill_(s),
    "full_like": lambda t, s: torch.full_like(t, s),
    "new_full": lambda t, s: t.new_full([2, 3], s),
    "full": lambda t, s: torch.full((t.shape[0],), s, device=t.device),
    "where": lambda t, s: torch.where(torch.ones(t.shape, dtype=torch.bool, device=t.device), t, s),
    "clamp_min": lambda t, s: t.clamp(min=s),
    "pow": lambda t, s: t ** s,
    "mm": lambda t, s: t @ t.transpose(-1, -2).resolve_conj().resolve_neg(),
    "clone": lambda t, s: t.clone(),
    "dot": lambda t, s: t[0].dot(t[1]),  # conj inputs give a conj-bit result: the bits must be in the key
    "vdot": lambda t, s: t[0].vdot(t[1]),
    "view_as_real": lambda t, s: torch.view_as_real(t),
    "cat_scalar_list": lambda t, s: torch.tensor([s, s], device=t.device),
}


def _make(dtype: torch.dtype, bit: str, device: str) -> torch.Tensor:
    """A (3, 4) tensor of ``dtype`` carrying the conj bit, the neg bit or neither."""
    if bit == "conj":
        return torch.zeros(3, 4, dtype=torch.complex64, device=device).conj()
    if bit == "neg":  # the imaginary part of a conjugate view: a real tensor with the neg bit
        return torch.zeros(3, 4, dtype=torch.complex64, device=device).conj().imag
    return torch.zeros(3, 4, dtype=dtype, device=device)


def _outcome(op: str, dtype: torch.dtype, bit: str, scalar: Any, device: str) -> Any:
    """What ``op`` gives on a fresh tensor: the result's metadata, or the kind of error it raises."""
    try:
        out = _OPS[op](_make(dtype, bit, device), scalar)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        return "raises", type(e).__name__
    return out.dtype, tuple(out.shape), out.stride(), out.is_conj(), out.is_neg()


_PROGRAM_MODE = MetaMode()  # one memo for every example: later examples hit what earlier ones remembered
_NO_MEMO = MetaMode(memo=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_DTYPES), st.sampled_from(("", "", "conj", "neg")),
                          st.sampled_from(sorted(_OPS)), st.sampled_from(_SCALARS)), min_size=1, max_size=6))
def test_memo_gives_eagers_dtypes_and_errors(program: list[tuple[torch.dtype, str, str, Any]]) -> None:
    """Each op on tensors of every dtype with and without conj/neg bits, with scalars of every type, in a sequence
    that shares one memo with all earlier examples: dtype, shape, strides, bits and whether it raises are what
    every kernel run gives, and eager's wherever torch's own meta kernel agrees with eager (where it does not,
    ``int64.add_(1+0j)``, ``bool.mul_(2)``, ``complex.clamp(min=1)`` …, the dry-run inherits torch's meta kernel)."""
    for dtype, bit, op, scalar in program:
        eager = _outcome(op, dtype, bit, scalar, "cpu")
        bare = _outcome(op, dtype, bit, scalar, "meta")
        with _NO_MEMO:
            off = _outcome(op, dtype, bit, scalar, "meta")
        with _PROGRAM_MODE:
            on = _outcome(op, dtype, bit, scalar, "meta")
        assert on == off, (dtype, bit, op, scalar)
        if bare == eager:
            assert on == eager, (dtype, bit, op, scalar)
        else:
            event("torch's meta kernel differs from eager")


# ----------------------------------------------------------------------------------------------------------------
# The corpus with the memo on and off.
# ----------------------------------------------------------------------------------------------------------------

#: one memo shared by every corpus case's run with the memo on, so each case also meets entries other cases made
_SHARED_MEMO: dict[Any, Any] = {}


class _SharedMemoMode(TracingMetaMode):
    def __init__(self, trace: list[Any], *, meta: bool = True, memo: bool | None = None) -> None:
        super().__init__(trace, meta=meta, memo=memo)
        if self.memo:
            self._memo = _SHARED_MEMO


def _dry(c: Case, *, memo: bool) -> tuple[list[Any], Any]:
    """Every op's and node's result metadata, and what the dry-run proved (or raised), by node name."""
    model, inputs = build(c), build_inputs(c)
    captured = capturing.capture(model, inputs)
    facts = compute_facts(captured.gm, model=model)
    trace: list[Any] = []
    try:
        r = dryrun.run_dryrun(captured.gm, facts, inputs, real=False, memo=memo, trace=trace)
    except Exception as e:
        return trace, ("raised", type(e).__name__, str(e))

    def name(n: torch.fx.Node | None) -> str | None:
        return None if n is None else n.name

    return trace, (sorted((name(t[0]), name(t[1]), *t[2:]) for t in r.conflicts),
                   sorted((t[0].name, t[1].name, *t[2:]) for t in r.silent),
                   sorted((n.name, v) for n, v in r.forward_errors.items()),
                   sorted(r.reached_params), r.any_output_requires_grad, sorted(n.name for n in r.no_derivative),
                   sorted(n.name for n in r.aliased_writes))


@pytest.mark.parametrize("c", list(CASES.values()), ids=list(CASES))
def test_memo_on_and_off_agree_on_the_corpus(c: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per op and per node: the same shapes, strides, dtypes, bits and errors, and the same proofs."""
    monkeypatch.setattr(dryrun, "TracingMetaMode", _SharedMemoMode)
    off_trace, off = _dry(c, memo=False)
    on_trace, on = _dry(c, memo=True)
    assert off_trace, f"{c.name}: nothing ran"
    first = next((i for i, (a, b) in enumerate(zip(off_trace, on_trace, strict=False)) if a != b), None)
    assert first is None, f"{c.name}: memo off {off_trace[first]} != memo on {on_trace[first]}"
    assert len(off_trace) == len(on_trace)
    assert on == off


def test_a_clean_model_mixing_scalar_types_is_clean_under_the_dry_run() -> None:
    """The confirmed bug end to end: ``full((4,), 1)`` then ``full((4,), 1.0)`` came out int64 under the dry-run,
    and an op that needs the float (``lerp``'s weight) made a clean model fail with an InputError blaming its line."""
    from torch import nn

    import fxgrad

    from .oracle import eager_truth

    class Fills(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            count = torch.full((x.shape[1],), 1)  # int64 (sized by the input: a node, not a traced constant)
            scale = torch.full((x.shape[1],), 1.0)  # float32, equal to the 1 above
            return torch.lerp(self.lin(x), x, scale) + count.sum()  # an int64 ``scale`` would raise here

    truth = eager_truth(Fills(), (torch.randn(2, 4),))
    assert truth.clean_run and not truth.no_grad_params
    # shapes only: the meta run cannot fall back to a real one
    report = fxgrad.analyze(Fills(), fxgrad.spec((2, 4)))
    assert report.mode == "dry-run" and report.ok and not report.findings, report
    report = fxgrad.analyze(Fills(), torch.randn(2, 4))
    assert not any("could not run" in n for n in report.notes), report.notes  # the meta run itself went through
    assert {p.status for p in report.params.values()} == {"ok"}
