"""``fxgrad.analyze``: model -> faithful graph -> facts -> rules -> report.

Algorithm:

1. Check the arguments and take a snapshot of everything of the user's model that analysis must not change
   (parameters, buffers, ``.grad``, ``requires_grad``, ``training``, ``inplace`` flags, grad mode).
2. Capture the model (:mod:`fxgrad.capturing`): the faithful tracer, or a recording of a run on the inputs.
3. Compute the static facts (:mod:`fxgrad.facts`) and run the rules (:mod:`fxgrad.rules`).
4. With example inputs, prove the verdicts with the dry-run (:mod:`fxgrad.dryrun`), which replaces the static
   in-place and parameter verdicts.
5. Drop suppressed findings and build the :class:`~fxgrad.report.Report`.
6. Restore the snapshot's global state in a ``finally``; the model's own state is never written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx
from torch import nn

from . import capturing
from .capture import node_origin
from .checkpointing import apply_checkpointing
from .errors import AnalysisError, FxgradError, InputError
from .facts import GraphFacts, compute_facts
from .gcpause import gc_paused
from .inputs import bind_keywords
from .ops import saved_table_note
from .record import RECORDED_KEY
from .report import Finding, ParamStatus, Report
from .rules import NO_PATH, RULES_BY_CODE, run_rules, select_codes
from .step import ddp_note, mention_loss, optimizer_findings, training_step
from .suppress import accept_intended_cuts, is_suppressed, region_openers
from .timing import phase

__all__ = ["analyze", "preserved"]

log = logging.getLogger(__name__)


@contextmanager
def preserved(model: nn.Module | None = None) -> Any:
    """Restore grad mode, RNG state and the model's modes/flags afterwards, whatever happens inside."""
    grad = torch.is_grad_enabled()
    rng = torch.get_rng_state()
    modes: list[tuple[nn.Module, bool, Any]] = []
    req: list[tuple[torch.Tensor, bool]] = []
    if model is not None:
        modes = [(m, m.training, getattr(m, "inplace", None)) for m in model.modules()]
        req = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        torch.set_rng_state(rng)
        for m, training, inplace in modes:
            m.training = training
            if inplace is not None:
                m.inplace = inplace
        for p, r in req:
            if p.requires_grad != r:
                p.requires_grad_(r)


def _param_status(facts: GraphFacts) -> dict[str, ParamStatus]:
    out: dict[str, ParamStatus] = {}
    for name, pf in facts.params.items():
        cause, location = "", None
        if pf.cause is not None:
            nf = facts[pf.cause]
            origin = node_origin(pf.cause)
            location = origin.location
            what = nf.view.spelling or nf.view.name
            where = f" at {location}" if location else ""
            cause = f"cut at `{pf.cause.name}` ({what}){where}"
            if pf.status == "zero-grad":
                cause = f"zero gradient through `{pf.cause.name}` ({what}){where}"
        elif pf.status == "no-grad":
            cause = NO_PATH
        elif pf.status == "unused":
            cause = "never used in forward"
        out[name] = ParamStatus(name, pf.status, cause, location)
    return out


def analyze(
    model: nn.Module | torch.fx.GraphModule,
    example_inputs: Sequence[Any] | Any | None = None,
    *,
    concrete_args: dict[str, Any] | None = None,
    tracer: type[torch.fx.Tracer] | torch.fx.Tracer | None = None,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    dryrun: str | bool = "auto",
    capture: str = "auto",
    loss: Callable[..., Any] | None = None,
    targets: Any = None,
    optimizer: Any = None,
) -> Report:
    """Find, before training, why parameters would get no gradient and which in-place ops break ``backward()``.

    Without ``example_inputs`` the verdicts are static (fxgrad's op tables). With them (real tensors, meta
    tensors, or :func:`fxgrad.spec` shapes) fxgrad runs the graph once on meta tensors and replaces the static
    verdicts with proved ones (``dryrun="real"`` runs it on the real inputs instead, ``dryrun=False`` skips it).
    ``ignore``/``select`` take codes or prefixes (``"FXG1"``). The model is never changed.

    ``capture`` chooses how the model becomes a graph: ``"trace"`` (symbolic, every branch, no inputs needed),
    ``"run"`` (by running it on the example inputs: any Python control flow, the branches these inputs take), or
    ``"auto"``: trace, and run when tracing fails and inputs are given. The report says which one ran.

    The training step, not only the model: ``loss`` is called as ``loss(output, *targets)`` (``targets`` a tensor
    or a tuple) and analysed with the model, so a head the loss ignores is a lost gradient at the loss's line;
    ``optimizer`` (an ``Optimizer`` or its param groups) is compared with the verdicts (FXG204-FXG206).
    """
    model = capturing.unwrap(model)
    example_inputs = bind_keywords(model, example_inputs)
    if not isinstance(model, nn.Module):
        raise InputError(f"fxgrad.analyze needs an nn.Module, got {type(model).__name__}. "
                         "Hint: pass the model instance, e.g. analyze(MyNet(), ...).")
    select, ignore = tuple(select), tuple(ignore)
    enabled = select_codes(select, ignore)
    unknown = [c for c in (*select, *ignore) if not any(code.startswith(c) for code in RULES_BY_CODE)]
    if unknown:
        raise InputError(f"Unknown fxgrad code or prefix: {', '.join(unknown)}. Hint: codes look like FXG102; "
                         "prefixes like FXG1 select a family.")
    name = type(model).__name__
    if loss is not None and not callable(loss):
        raise InputError(f"loss= takes a function of the model's output, not {type(loss).__name__}. Hint: "
                         "loss=lambda out, y: F.cross_entropy(out, y), targets=y.")
    step = model if loss is None else training_step(model, loss, targets if isinstance(targets, tuple) else
                                                   () if targets is None else (targets,))
    with preserved(model):
        with phase("capture"):
            captured = capturing.capture(step, example_inputs, capture, concrete_args=concrete_args, tracer=tracer,
                                         leaf_modules=leaf_modules)
        # One pause of cyclic GC from the facts to the report, and the facts dropped before it ends: the collector
        # never walks the per-node records (see fxgrad.gcpause).
        with gc_paused():
            report = _analyse(captured.gm, step, name, example_inputs, dryrun)
        report.capture = captured.how
        report.modules = [(n, type(m).__name__) for n, m in model.named_modules()]
        if captured.note:
            report.notes.insert(0, captured.note)
        report.notes += captured.gm.meta.get(RECORDED_KEY, {}).get("notes", [])
    if loss is not None:
        mention_loss(report, loss)
    report = _filter(report, enabled, bool(select), ignore, captured.gm)
    if optimizer is not None:  # after the filter: a parameter frozen on purpose is not an idle one
        for f in optimizer_findings(report, model, optimizer):
            (report.findings if f.code in enabled else report.suppressed).append(f)
    note = ddp_note(report, model)
    if note is not None:
        report.notes.append(note)
    return report


def _analyse(gm: torch.fx.GraphModule, model: nn.Module, name: str, example_inputs: Any, dryrun: str | bool
             ) -> Report:
    """Steps 3-4 of :func:`analyze`: the report of a traced model (its facts are freed when this returns)."""
    try:
        with phase("facts and rules"):
            facts = compute_facts(gm, model=model)
            findings = run_rules(facts)
    except FxgradError:
        raise
    except Exception as e:  # an fxgrad bug: say which node, keep the cause
        raise AnalysisError(f"fxgrad failed while analysing {name}: {type(e).__name__}: {e}") from e
    report = Report(model=name, findings=findings, params=_param_status(facts))
    if example_inputs is not None and dryrun:
        from .dryrun import prove  # the dry-run pulls in torch's dispatch machinery; only load it when asked for

        with phase("dry-run"):
            prove(report, gm, facts, example_inputs, mode="real" if dryrun == "real" else "meta")
    if report.mode != "dry-run":  # the static verdicts read the generated saved-tensor table
        note = saved_table_note()
        if note is not None:
            report.notes.append(note)
        note = _unproved_note(findings, facts)
        if note is not None:
            report.notes.append(note)
    apply_checkpointing(report, gm)
    return report


def _unproved_note(findings: list[Finding], facts: GraphFacts) -> str | None:
    """The in-place writes the static pass cannot judge (an op it has no table for may have saved the tensor),
    said where everyone reads it: their finding, FXG101, is off by default."""
    unknown = {nf.node.name for nf in (facts if facts.flagged is None else facts.flagged) if nf.unknown_savers}
    unproved = [f for f in findings if f.code == "FXG101" and f.node in unknown] if unknown else []
    if not unproved:
        return None
    shown = ", ".join(f"`{f.target}`" + (f" at {f.location}" if f.location else "") for f in unproved[:3])
    more = f" and {len(unproved) - 3} more" if len(unproved) > 3 else ""
    return (f"not proved statically: {len(unproved)} in-place write(s) ({shown}{more}) into a tensor that an op "
            "fxgrad has no table for may have saved for backward; pass example inputs and the dry-run decides "
            "(--select FXG101 shows them).")


def _filter(report: Report, enabled: set[str], selected: bool, ignore: tuple[str, ...], gm: torch.fx.GraphModule
            ) -> Report:
    """Findings not enabled, or accepted by a comment (:mod:`fxgrad.suppress`), go to ``report.suppressed``; those
    of a code that is off by default (and nothing was selected) are also counted in ``report.hidden``, so the
    summary can say so. Accepted cuts (by a comment, or by ``ignore``) then take their consequences with them."""
    openers = region_openers(gm) if any(f.location is not None for f in report.findings) else {}
    kept: list[Finding] = []
    for f in report.findings:
        commented = is_suppressed(f, openers.get(f.node))
        if commented:
            report.accepted.append(f)
        if f.code not in enabled or commented:
            report.suppressed.append(f)
            if not commented and not selected and not RULES_BY_CODE[f.code].default:
                report.hidden[f.code] = report.hidden.get(f.code, 0) + 1
        else:
            kept.append(f)
    report.findings = kept
    accept_intended_cuts(report, ignore)
    return report
