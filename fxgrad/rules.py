"""The rule catalog: one small declarative object per finding code.

A rule's identity is data (code, name, severity, summary, fixable); its ``check`` reads the facts of one node
and returns early on anything that is not its business. One code has one meaning, forever. Families:
``FXG0xx`` gradient cuts, ``FXG1xx`` in-place ops, ``FXG2xx`` per-parameter verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch.fx

from .capture import node_origin
from .facts import GraphFacts, NodeFacts, ParamFacts
from .gcpause import gc_paused
from .report import Finding, Related, Severity

__all__ = [
    "FORWARD_ERRORS",
    "RULES",
    "RULES_BY_CODE",
    "Rule",
    "inplace_warning",
    "param_findings",
    "run_rules",
    "select_codes",
    "without_counterfactuals",
]


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    summary: str
    why: str
    fixable: bool = False
    check: Callable[[NodeFacts, GraphFacts], Finding | None] | None = None
    #: the node fact without which ``check`` has nothing to say: nodes where it is falsy are not shown to it
    when: str = ""
    #: shown unless deselected; ``False``: only when selected (``--select FXG101``), because it flags correct code
    default: bool = True


#: ``Finding(...)`` without the named tuple's generated ``__new__`` (a Python function that fills in defaults):
#: the rules make one per in-place op, tens of thousands on a big graph, and this halves the cost of each
_new_finding = tuple.__new__


def _finding(rule_code: str, nf: NodeFacts, message: str, *, params: Iterable[str] = (),
             related: tuple[Related, ...] = ()) -> Finding:
    rule = RULES_BY_CODE[rule_code]
    origin = node_origin(nf.node)
    # every field, in Finding's order
    return _new_finding(Finding, (rule.code, rule.severity, nf.node.name, nf.view.spelling or nf.view.name, message,
                                  origin.module, origin.location, tuple(sorted(params)) if params else (),
                                  rule.fixable, "static", False, related))


def _lost(nf: NodeFacts, facts: GraphFacts) -> list[str]:
    return [p for p in facts.lost.get(nf.node, []) if facts.params[p].status == "no-grad"]


def _load_bearing(nf: NodeFacts, facts: GraphFacts) -> bool:
    """The cut matters: parameters lose their gradient here. A cut after which every parameter still gets its
    gradient through another path is correct code (a straight-through estimator ``z + (q - z).detach()``, an
    ``argmin`` that picks a codebook row, a target network's output): nothing to report."""
    return bool(_lost(nf, facts))


def _name(nf: NodeFacts, facts: GraphFacts) -> str:
    if nf.cut_input is None:
        return "its inputs"
    return f"`{nf.cut_input.name}`"


def _params_text(params: list[str]) -> str:
    if not params:
        return "Every parameter still gets a gradient through other paths."
    shown = ", ".join(params[:6]) + (f" and {len(params) - 6} more" if len(params) > 6 else "")
    return f"Parameters that lose their gradient here: {shown}."


def _cut_rule(kind: str, code: str, text: Callable[[NodeFacts, GraphFacts], str]) -> Callable[
        [NodeFacts, GraphFacts], Finding | None]:
    def check(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
        if nf.cut != kind or not _load_bearing(nf, facts):
            return None
        lost = _lost(nf, facts)
        return _finding(code, nf, f"{text(nf, facts)} {_params_text(lost)}", params=lost)

    return check


def _check_zero(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.reach or nf.target is not None or not nf.zero_edge:
        return None
    dep = next((d for d, _, z in nf.dep_edges() if z and d in facts.nodes and facts[d].live), None)
    if dep is None or facts[dep].reach_nz:
        return None
    lost = [p for p in facts.lost.get(nf.node, []) if facts.params[p].status == "zero-grad"]
    return _finding("FXG007", nf, f"`{nf.view.name}` has a zero gradient almost everywhere: `{dep.name}` and "
                    f"everything upstream of it only get zeros. {_params_text(lost) if lost else ''}".strip(),
                    params=lost)


_BACKWARD_ERROR = ("RuntimeError: one of the variables needed for gradient computation has been modified by an "
                   "inplace operation")


def _saver_text(facts: GraphFacts, uses: list) -> tuple[str, tuple[Related, ...]]:  # type: ignore[type-arg]
    parts, related = [], []
    for use in uses:
        origin = node_origin(use.saver)
        where = f" at {origin.location}" if origin.location else ""
        what = "its output" if use.arg == "result" else f"its `{use.arg}`"
        parts.append(f"`{use.saver.name}`{where} saved {what} for backward")
        related.append(Related("saved by", use.saver.name, origin.location))
    return "; ".join(parts), tuple(related)


def _check_overwrites_saved(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.overwritten:
        return None
    uses = [u for u in nf.overwritten if facts[u.saver].reach]
    if not uses:
        return None
    text, related = _saver_text(facts, uses)
    msg = (f"In-place `{nf.view.spelling}` overwrites a tensor that an earlier op saved for backward: {text}. "
           f"backward() will raise \"{_BACKWARD_ERROR}\". Use the out-of-place form.")
    if any(u.backend_dependent for u in uses):
        msg += " (What this op saves depends on the backend; a dry-run with real inputs decides.)"
    return _finding("FXG102", nf, msg, related=related)


def _check_silent(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.silently_written:
        return None
    uses = [u for u in nf.silently_written if facts[u.saver].reach]
    if not uses:
        return None
    text, related = _saver_text(facts, uses)
    return _finding("FXG106", nf, f"In-place `{nf.view.spelling}` writes, behind autograd's version counter "
                    f"(through `.data`), into a tensor saved for backward: {text}. backward() will not raise but "
                    "computes gradients from the overwritten values.", related=related)


def _check_leaf(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.leaf_write:
        return None
    target = nf.target.name if nf.target is not None else "a parameter"
    return _finding("FXG103", nf, f"In-place `{nf.view.spelling}` on `{target}`, a leaf that requires grad, with "
                    "grad enabled: forward raises \"RuntimeError: a leaf Variable that requires grad is being used "
                    "in an in-place operation.\" Wrap it in torch.no_grad() if it is a deliberate update, else use "
                    "the out-of-place form.")


def inplace_warning(nf: NodeFacts, *, proved: bool) -> Finding:
    """FXG101 for a legal in-place op on an activation; ``proved`` when the dry-run showed nothing saved it."""
    assert nf.target is not None
    how = "(proved by the dry-run)" if proved else "today"
    return _finding("FXG101", nf, f"In-place `{nf.view.spelling}` on activation `{nf.target.name}`: no earlier op "
                    f"saved it for backward, so backward stays correct {how}; a later edit that saves it would break.")


def _check_inplace_activation(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if (nf.target is None or nf.target_role != "activation" or not nf.target_live or nf.leaf_write or nf.meta_write
            or nf.forward_error or nf.overlap_write):
        return None
    if (nf.overwritten or nf.silently_written) and [
            u for u in (*nf.overwritten, *nf.silently_written) if facts[u.saver].reach]:
        return None
    if not nf.grad_on:
        return _finding("FXG101", nf, f"In-place `{nf.view.spelling}` under no_grad on `{nf.target.name}`, which "
                        "requires grad: the value changes but autograd does not record it, so gradients are "
                        "computed as if this line did not run.")
    unknown = [n.name for n in nf.unknown_savers] if nf.unknown_savers else []
    msg = (f"In-place `{nf.view.spelling}` on activation `{nf.target.name}`: no earlier op saved it for "
           "backward, so backward stays correct today; a later edit that saves it would break.")
    if unknown:
        msg += (f" Not proved statically: fxgrad does not know what {', '.join(f'`{u}`' for u in unknown[:3])} "
                "saves; pass example inputs for a dry-run.")
    return _finding("FXG101", nf, msg)


def _check_alias(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if nf.target is None or nf.meta_write or not nf.alias_read_after or nf.target_role not in ("activation",):
        return None
    if not (nf.target_live or nf.live):
        # no gradient is involved: filling a buffer through a view (torchvision's batch_images:
        # `batched[i, ...].copy_(img)`) is what the later read of the buffer is meant to see
        return None
    if nf.overlap_write or nf.forward_error or nf.leaf_write:  # forward raises there: nothing is read later
        return None
    return _finding("FXG104", nf, f"In-place `{nf.view.spelling}` writes `{nf.target.name}`, which shares memory "
                    "with another tensor that is read later: that read sees the new values.")


def _check_input(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if nf.target is None or nf.meta_write or nf.target_role != "input":
        return None
    return _finding("FXG105", nf, f"In-place `{nf.view.spelling}` changes the graph input `{nf.target.name}` "
                    "(or a view of it): the caller's tensor is modified.")


def _check_no_derivative(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.no_derivative or not nf.reach:
        return None
    return _finding("FXG009", nf, f"`{nf.view.spelling}` has no derivative: backward() will raise \"RuntimeError: "
                    f"the derivative for '{nf.view.name}' is not implemented\" when the gradient reaches it. Detach "
                    "its input if no gradient is meant to flow, or use a differentiable op.")


def _check_forward_error(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.forward_error:
        return None
    return _finding("FXG010", nf, f"Autograd rejects `{nf.view.spelling or nf.view.name}` here: forward raises "
                    f"\"RuntimeError: {nf.forward_error}\"")


#: what autograd says when forward writes in place into a leaf that requires grad (FXG103)
LEAF_ERRORS = ("leaf Variable that requires grad", "view of a leaf Variable that requires grad")
#: other forward errors autograd raises by design (FXG010); a tensor made under ``inference_mode`` and then saved
#: for backward is one of them
AUTOGRAD_ERRORS = ("you can only change requires_grad flags of leaf variables", "is a view and is being modified "
                   "inplace", "don't support automatic differentiation", "cannot resize variables that require grad",
                   "A view was created in no_grad mode", "Inference tensors cannot be saved for backward")
OVERLAP_ERROR = ("unsupported operation: more than one element of the written-to tensor refers to a single memory "
                 "location. Please clone() the tensor before performing the operation.")


def _check_overlap(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.overlap_write:
        return None
    target = nf.target.name if nf.target is not None else "its target"
    return _finding("FXG107", nf, f"In-place `{nf.view.spelling}` writes into `{target}`, an `expand`ed view whose "
                    f"elements share memory: forward raises \"RuntimeError: {OVERLAP_ERROR}\" Clone it first, or "
                    "use the out-of-place form.")


RULES: tuple[Rule, ...] = (
    Rule("FXG001", "detach", "warning", "`.detach()` / `detach_()` cuts the gradient of a value that depends on "
         "parameters", "Everything upstream of the detached value gets no gradient through this path.",
         when="cut",
         check=_cut_rule("detach", "FXG001", lambda nf, f: f"`.detach()` cuts the gradient of {_name(nf, f)}.")),
    Rule("FXG002", "data", "warning", "`.data` read on a tensor in the graph",
         "`.data` returns a tensor with no history and its own version counter: gradients stop, and in-place "
         "writes through it are invisible to autograd.",
         when="cut",
         check=_cut_rule("data", "FXG002", lambda nf, f: f"`.data` of {_name(nf, f)} has no autograd history.")),
    Rule("FXG003", "no-grad", "warning", "op runs with grad disabled (`no_grad`, `set_grad_enabled(False)`, "
         "`inference_mode`)", "Ops run with grad disabled record nothing for backward.",
         when="cut", check=_cut_rule("no_grad", "FXG003",
                         lambda nf, f: f"`{nf.view.spelling or nf.view.name}` runs with grad disabled.")),
    Rule("FXG004", "leaves-autograd", "warning", "value leaves autograd: `.item()`, `.tolist()`, `.numpy()`",
         "Python numbers and NumPy arrays carry no autograd history.",
         when="cut", check=_cut_rule("leaves", "FXG004",
                         lambda nf, f: f"`{nf.view.spelling}` turns {_name(nf, f)} into a plain value.")),
    Rule("FXG005", "requires-grad-false", "warning", "`requires_grad_(False)` on a tensor in the graph",
         "On a parameter it freezes it; on an activation that requires grad forward raises.",
         when="cut", check=_cut_rule("requires_grad", "FXG005",
                         lambda nf, f: f"`requires_grad_(False)` stops gradients of {_name(nf, f)}.")),
    Rule("FXG006", "integer-result", "warning", "op with an integer/bool result: no gradient (`argmax`, "
         "comparisons, `.long()`, `to(int dtype)` …)", "Integer and bool tensors cannot carry gradients.",
         when="cut", check=_cut_rule("integer", "FXG006",
                         lambda nf, f: f"`{nf.view.spelling}` has an integer/bool result: no gradient flows back to "
                         f"{_name(nf, f)}.")),
    Rule("FXG007", "zero-gradient", "warning", "gradient is zero almost everywhere (`round`, `floor`, `ceil`, "
         "`trunc`, `sign`)", "Autograd returns a gradient, but it is zero: parameters upstream never change.",
         check=_check_zero, when="zero"),
    Rule("FXG008", "rebuilt-tensor", "warning", "tensor rebuilt from values (`torch.tensor`, `from_numpy`, "
         "`new_tensor`)", "The new tensor is a leaf without history.",
         when="cut", check=_cut_rule("rebuild", "FXG008",
                         lambda nf, f: f"`{nf.view.spelling}` builds a new tensor without the history of "
                         f"{_name(nf, f)}.")),
    Rule("FXG009", "no-derivative", "error", "op without a derivative on the gradient path (`//`, `floor_divide`): "
         "`backward()` raises", "Autograd records the op but cannot differentiate it.",
         check=_check_no_derivative, when="no_derivative"),
    Rule("FXG010", "autograd-forward-error", "error", "autograd rejects the call in forward: `requires_grad_(False)` "
         "on a non-leaf, in-place on a view returned by `split`/`chunk`/`unbind`, `out=` with inputs that require "
         "grad", "These raise during forward, before any gradient exists.",
         check=_check_forward_error, when="forward_error"),
    Rule("FXG101", "inplace-activation", "warning", "in-place op on an activation (`x.add_()`, `torch.relu_`, "
         "`inplace=True`, in-place modules, `+=`, `x[i] = v`, `out=`)",
         "Legal as long as no op saved the overwritten tensor for backward; fragile under later edits.",
         fixable=True, check=_check_inplace_activation, when="target", default=False),
    Rule("FXG102", "inplace-saved", "error", "in-place op overwrites a tensor that an earlier op saved for "
         "backward: `backward()` will raise", "Autograd checks the saved tensor's version at backward.",
         fixable=True, check=_check_overwrites_saved, when="overwritten"),
    Rule("FXG103", "inplace-leaf", "error", "in-place op on a leaf that requires grad (e.g. a parameter) with grad "
         "enabled: forward raises", "Autograd forbids in-place changes of leaves that require grad.",
         check=_check_leaf, when="leaf_write"),
    Rule("FXG104", "inplace-alias", "warning", "in-place op on a view or alias of another tensor that is used "
         "later", "The write is visible through every alias.", check=_check_alias, when="alias_read_after"),
    Rule("FXG105", "inplace-input", "warning", "in-place op mutates a graph input (visible to the caller)",
         "The caller's tensor changes.", check=_check_input, when="target"),
    Rule("FXG106", "inplace-behind-counter", "error", "in-place write through `.data` into a tensor saved for "
         "backward: silently wrong gradients", "`.data` has its own version counter, so autograd cannot notice.",
         check=_check_silent, when="silently_written"),
    Rule("FXG107", "inplace-overlap", "error", "in-place write into an `expand`ed view (elements share memory): "
         "forward raises", "One memory location stands for several elements; PyTorch refuses to write it.",
         check=_check_overlap, when="overlap_write"),
    Rule("FXG201", "param-no-grad", "error", "parameter gets no gradient: every path to the output is cut",
         "Its `.grad` stays None and the optimizer never updates it."),
    Rule("FXG202", "param-zero-grad", "warning", "parameter gets only a zero gradient",
         "Its `.grad` is all zeros: it never changes."),
    Rule("FXG203", "param-unused", "warning", "parameter is never used in forward",
         "Unused parameters get no gradient (and break DistributedDataParallel without find_unused_parameters)."),
    Rule("FXG204", "optimizer-missing", "error", "trainable parameter is in no param group of the optimizer "
         "(`optimizer=`)", "It gets a gradient and never updates: it silently stays at its initial value."),
    Rule("FXG205", "optimizer-idle", "error", "parameter in a param group of the optimizer never gets a gradient "
         "(`optimizer=`)", "The optimizer never updates it: a lost gradient, or a parameter that should not be there."),
    Rule("FXG206", "optimizer-frozen", "info", "frozen parameter (`requires_grad=False`) in a param group of the "
         "optimizer (`optimizer=`)", "It never updates; harmless, but the group can leave it out."),
)

RULES_BY_CODE: dict[str, Rule] = {r.code: r for r in RULES}


#: the cut warnings: an accepted one makes the parameters it cuts off frozen on purpose (fxgrad.suppress)
CUT_CODES = frozenset(f"FXG00{i}" for i in range(1, 9))


def select_codes(select: Iterable[str] = (), ignore: Iterable[str] = ()) -> set[str]:
    """Codes enabled by ``select``/``ignore`` prefixes (``FXG1`` selects the in-place family). Without ``select``,
    the codes that are on by default: not FXG101, which flags correct code (a legal in-place op)."""
    sel, ign = tuple(select), tuple(ignore)
    codes = {c for c, rule in RULES_BY_CODE.items() if any(c.startswith(s) for s in sel) or (not sel and rule.default)}
    return {c for c in codes if not any(c.startswith(i) for i in ign)}


def param_findings(facts: GraphFacts) -> Iterator[Finding]:
    groups: dict[tuple[str, torch.fx.Node | None], list[ParamFacts]] = {}
    for p in facts.params.values():
        if p.status in ("no-grad", "zero-grad"):
            groups.setdefault((p.status, p.cause), []).append(p)
    for (status, cause), params in groups.items():
        names = sorted(p.name for p in params)
        code = "FXG201" if status == "no-grad" else "FXG202"
        anchor = cause if cause is not None else (params[0].uses[0] if params[0].uses else None)
        origin = node_origin(anchor) if anchor is not None else None
        if cause is not None:
            cf = facts[cause]
            why = f"every path to the output is cut at `{cause.name}` ({cf.view.spelling or cf.view.name})"
            if status == "zero-grad":
                why = f"its only path to the output goes through `{cause.name}`, whose gradient is zero"
        else:
            why = "its result never reaches the output"
        rule = RULES_BY_CODE[code]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        yield Finding(code=code, severity=rule.severity, node=anchor.name if anchor is not None else "",
                      target=facts[cause].view.spelling if cause is not None else "", params=tuple(names),
                      message=f"{shown} {'gets' if len(names) == 1 else 'get'} "
                      f"{'no' if status == 'no-grad' else 'only a zero'} gradient: {why}.",
                      module=origin.module if origin else "", location=origin.location if origin else None)
    unused = sorted(p.name for p in facts.params.values() if p.status == "unused")
    if unused:
        rule = RULES_BY_CODE["FXG203"]
        owners = sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in unused})
        shown = ", ".join(unused[:6]) + (f" and {len(unused) - 6} more" if len(unused) > 6 else "")
        yield Finding(code="FXG203", severity=rule.severity, node="", target="", params=tuple(unused),
                      message=f"{shown} {'is' if len(unused) == 1 else 'are'} never used in forward, so "
                      f"{'it gets' if len(unused) == 1 else 'they get'} no gradient.",
                      module=owners[0] if len(owners) == 1 else "")


def _family(code: str) -> str:
    return "cut" if code.startswith("FXG0") else "write" if code.startswith("FXG1") else "param"


Check = Callable[[NodeFacts, GraphFacts], "Finding | None"]
#: the node checks of each family, with the fact that must be set for each to have something to say
_CUT_RULES: list[tuple[str, Check]] = [(r.when, r.check) for r in RULES if r.check and _family(r.code) == "cut"]
_WRITE_RULES: list[tuple[str, Check]] = [(r.when, r.check) for r in RULES if r.check and _family(r.code) == "write"]
_ALL_RULES = _CUT_RULES + _WRITE_RULES


def run_rules(facts: GraphFacts) -> list[Finding]:
    """Every finding of every rule, in graph order, then the per-parameter verdicts.

    Most nodes are plain differentiable ops that no rule is about: only the nodes the forward pass flagged are
    looked at, and one is shown to a family's rules only when its facts say it cuts, zeroes or raises (FXG0xx) or
    writes (FXG1xx).
    """
    with gc_paused():  # (see fxgrad.gcpause)
        findings: list[Finding] = []
        for nf in facts.flagged if facts.flagged is not None else facts:
            checks = None
            if nf.cut is not None or nf.zero or nf.no_derivative or nf.forward_error:
                checks = _CUT_RULES
            if nf.target is not None or nf.overwritten or nf.silently_written:
                checks = _ALL_RULES if checks else _WRITE_RULES
            if checks:
                # each family's checks in catalog order; a check whose fact is not set on the node is skipped
                for when, check in checks:
                    if getattr(nf, when):
                        f = check(nf, facts)
                        if f is not None:
                            findings.append(f)
        findings.extend(param_findings(facts))
        return without_counterfactuals(findings)


#: codes of findings where eager forward raises: training never gets to a gradient
FORWARD_ERRORS = frozenset({"FXG010", "FXG103", "FXG107"})


def without_counterfactuals(findings: list[Finding]) -> list[Finding]:
    """When forward raises, "this parameter would get no gradient" describes a run that never happens."""
    if not any(f.code in FORWARD_ERRORS for f in findings):
        return findings
    return [f for f in findings if f.code not in ("FXG201", "FXG202")]
