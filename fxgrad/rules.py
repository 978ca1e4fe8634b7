"""The rule catalog: one object per finding code, the only place that knows the code.

A :class:`Rule` holds everything about its code: name, severity, family, the node facts its ``check`` reads (the
first one gates: nodes where it is falsy are not shown to the check), its message template(s), whether the
dry-run proves it, its fix safety, a flagged and a clean example (corpus cases in ``tests/corpus.py``, run
against eager by ``tests/test_rules.py``) and the text of its documentation (``docs/rules.md`` is generated from
it by ``tools/gen_rules_docs.py``). Static findings (:func:`run_rules`) and the dry-run's (:func:`proved_finding`,
from a :class:`Proof`) render through the same template, so they cannot drift. Other modules ask the rule
(:data:`RULE_FOR_FACT`, :data:`BREAKING`, :data:`CUT_CODES`) rather than spell its code.

One code has one meaning, forever. Families: ``FXG0xx`` gradient cuts, ``FXG1xx`` in-place ops, ``FXG2xx``
per-parameter verdicts.
"""

from __future__ import annotations

import operator
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Literal

import torch.fx

from .capture import node_origin
from .facts import GraphFacts, NodeFacts, ParamFacts, SavedUse
from .gcpause import gc_paused
from .report import Finding, Related, Severity

__all__ = [
    "BREAKING",
    "CUT_CODES",
    "FORWARD_ERRORS",
    "RULES",
    "RULES_BY_CODE",
    "RULE_FOR_FACT",
    "Proof",
    "Rule",
    "inplace_warning",
    "param_findings",
    "proved_finding",
    "run_rules",
    "select_codes",
    "without_counterfactuals",
    "without_refuted",
]

Check = Callable[[NodeFacts, GraphFacts], "Finding | None"]
Family = Literal["cut", "write", "param"]
FixSafety = Literal["safe", "unsafe", "none"]


@dataclass(frozen=True)
class Rule:
    """One finding code and everything about it."""

    code: str
    name: str
    severity: Severity
    #: cut (FXG0xx) | write (FXG1xx) | param (FXG2xx)
    family: Family
    #: one line: what it flags (the README's rule table)
    summary: str
    #: why that is bad
    why: str
    #: variant -> ``str.format`` template of the finding's message; ``""`` is the usual one
    messages: Mapping[str, str] = field(default_factory=dict)
    #: the node facts that are set on every node the rule flags; the first gates (see :func:`run_rules`)
    reads: tuple[str, ...] = ()
    check: Check | None = None
    #: the dry-run decides this code: in dry-run mode its static findings are replaced by the proved ones
    dryrun: bool = False
    #: safe: ``fxgrad.fix`` rewrites it by default; unsafe: only with ``unsafe=True`` (the caller sees a change);
    #: none: no automatic fix
    fix: FixSafety = "none"
    #: corpus cases (tests/corpus.py, or tests/test_step.py for the optimizer codes) it flags / leaves alone
    flagged: str = ""
    clean: str = ""
    #: documentation: flagged code, and what to write instead (docs/rules.md)
    example: str = ""
    use_instead: str = ""
    #: shown unless deselected; ``False``: only when selected (``--select FXG101``), because it flags correct code
    default: bool = True
    #: forward | backward: what raises on the code it flags (training stops there); "" when nothing raises
    raises: Literal["forward", "backward", ""] = ""
    #: ``fxgrad.fix`` repairs it without ``unsafe=True`` (``fix == "safe"``; a field: every finding reads it)
    fixable: bool = field(init=False, repr=False, compare=False)
    #: the compiled ``messages`` (see :func:`_compile`)
    _renderers: dict[str, Callable[..., str]] = field(init=False, repr=False, compare=False)


    @property
    def when(self) -> str:
        return self.reads[0] if self.reads else ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixable", self.fix == "safe")
        object.__setattr__(self, "_renderers", {v: _compile(t) for v, t in self.messages.items()})

    def render(self, variant: str = "", **fields: object) -> str:
        """The message ``variant`` with ``fields`` filled in (fields a template does not name are ignored)."""
        return self._renderers[variant](**fields)


def _compile(template: str) -> Callable[..., str]:
    """``template.format`` as an f-string function: the rules render a message per in-place op, and ``str.format``
    costs twenty times an f-string. The source is the template's own ``repr``: a ``{name}`` field is the same in
    both syntaxes, and nothing but the named fields is evaluated."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    if any(not name.isidentifier() for name in names):
        raise ValueError(f"message template fields must be plain names: {template!r}")
    return eval(f"lambda {''.join(n + ', ' for n in dict.fromkeys(names))}**_: f{template!r}")


#: ``Finding(...)`` without the named tuple's generated ``__new__`` (a Python function that fills in defaults):
#: the rules make one per in-place op, tens of thousands on a big graph, and this halves the cost of each
_new_finding = tuple.__new__


def _finding(rule: Rule, nf: NodeFacts, message: str, params: Iterable[str] = (), related: tuple[Related, ...] = (),
             verdict: str = "static", backend: bool = False) -> Finding:
    origin = node_origin(nf.node)
    # every field, in Finding's order
    return _new_finding(Finding, (rule.code, rule.severity, nf.node.name, nf.view.spelling or nf.view.name, message,
                                  origin.module, origin.location, tuple(sorted(params)) if params else (),
                                  rule.fixable, verdict, backend, related))


def _op(nf: NodeFacts) -> str:
    return nf.view.spelling or nf.view.name


def _lost(nf: NodeFacts, facts: GraphFacts) -> list[str]:
    return [p for p in facts.lost.get(nf.node, []) if facts.params[p].status == "no-grad"]


def _name(nf: NodeFacts) -> str:
    if nf.cut_input is None:
        return "its inputs"
    return f"`{nf.cut_input.name}`"


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _params_text(params: list[str]) -> str:
    if not params:
        return "Every parameter still gets a gradient through other paths."
    return f"Parameters that lose their gradient here: {_shown(params)}."


# -- FXG0xx: gradient cuts ----------------------------------------------------------------------------------------


def _cut(kind: str, code: str) -> Check:
    """The check of the cut rule for ``NodeFacts.cut == kind``. The cut matters only where parameters lose their
    gradient: a cut after which every parameter still gets its gradient through another path is correct code (a
    straight-through estimator ``z + (q - z).detach()``, an ``argmin`` that picks a codebook row, a target
    network's output): nothing to report."""

    def check(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
        if nf.cut != kind:
            return None
        lost = _lost(nf, facts)
        if not lost:
            return None
        rule = RULES_BY_CODE[code]
        return _finding(rule, nf, rule.render(op=_op(nf), input=_name(nf), lost=_params_text(lost)), params=lost)

    return check


def _check_zero(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.reach or nf.target is not None or not nf.zero_edge:
        return None
    dep = next((d for d, _, z in nf.dep_edges() if z and d in facts.nodes and facts[d].live), None)
    if dep is None or facts[dep].reach_nz:
        return None
    lost = [p for p in facts.lost.get(nf.node, []) if facts.params[p].status == "zero-grad"]
    rule = RULES_BY_CODE["FXG007"]
    message = rule.render(name=nf.view.name, dep=dep.name, lost=_params_text(lost) if lost else "").strip()
    return _finding(rule, nf, message, params=lost)


def _check_no_derivative(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.no_derivative or not nf.reach:
        return None
    rule = RULES_BY_CODE["FXG009"]
    return _finding(rule, nf, rule.render(op=_op(nf), name=nf.view.name))


def _check_forward_error(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not nf.forward_error:
        return None
    rule = RULES_BY_CODE["FXG010"]
    return _finding(rule, nf, rule.render(op=_op(nf), error=f"RuntimeError: {nf.forward_error}"))


# -- FXG1xx: in-place ops -----------------------------------------------------------------------------------------

_BACKWARD_ERROR = ("RuntimeError: one of the variables needed for gradient computation has been modified by an "
                   "inplace operation.")
_LEAF_ERROR = "RuntimeError: a leaf Variable that requires grad is being used in an in-place operation."
#: what autograd says when forward writes in place into a leaf that requires grad (FXG103)
LEAF_ERRORS = ("leaf Variable that requires grad", "view of a leaf Variable that requires grad")
#: other forward errors autograd raises by design (FXG010); a tensor made under ``inference_mode`` and then saved
#: for backward is one of them
AUTOGRAD_ERRORS = ("you can only change requires_grad flags of leaf variables", "is a view and is being modified "
                   "inplace", "don't support automatic differentiation", "cannot resize variables that require grad",
                   "A view was created in no_grad mode", "Inference tensors cannot be saved for backward")
OVERLAP_ERROR = ("unsupported operation: more than one element of the written-to tensor refers to a single memory "
                 "location. Please clone() the tensor before performing the operation.")
#: what autograd raises at backward for an in-place activation with a negative slope (FXG108), by the op's kind
SLOPE_ERRORS = {
    "leaky_relu": "RuntimeError: In-place leakyReLu backward calculation is triggered with a negative slope which "
                  "is not supported.",
    "elu": "RuntimeError: In-place elu backward calculation is triggered with a negative slope which is not "
           "supported.",
}


def _saver_text(savers: Iterable[tuple[torch.fx.Node, str]]) -> tuple[str, tuple[Related, ...]]:
    """``(saver, saved argument)`` pairs as one sentence part, and as related lines."""
    parts, related = [], []
    for saver, arg in dict.fromkeys(savers):
        origin = node_origin(saver)
        where = f" at {origin.location}" if origin.location else ""
        what = "its output" if arg == "result" else "a tensor" if arg in ("", "saved_tensors") else f"its `{arg}`"
        parts.append(f"`{saver.name}`{where} saved {what} for backward")
        related.append(Related("saved by", saver.name, origin.location))
    return "; ".join(parts), tuple(related)


def _check_overwrites_saved(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    uses = [u for u in nf.overwritten if facts[u.saver].reach]
    if not uses:
        return None
    text, related = _saver_text((u.saver, u.arg) for u in uses)
    rule = RULES_BY_CODE["FXG102"]
    backend = any(u.backend_dependent for u in uses)
    return _finding(rule, nf, rule.render("backend" if backend else "", op=_op(nf), savers=text,
                                          error=_BACKWARD_ERROR, backend=_backend_note(uses)), related=related,
                    backend=backend)


#: the backend note of an op fxgrad has no kernel table for (:mod:`fxgrad.backends`)
_UNKNOWN_BACKEND = "a dry-run with real inputs decides"


def _backend_note(uses: Iterable[SavedUse]) -> str:
    """What the backend kernels that saved ``uses`` are known to save, one sentence."""
    notes = dict.fromkeys(u.backend.note for u in uses if u.backend is not None)
    return "; ".join(notes) or _UNKNOWN_BACKEND


def _check_silent(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    uses = [u for u in nf.silently_written if facts[u.saver].reach]
    if not uses:
        return None
    text, related = _saver_text((u.saver, u.arg) for u in uses)
    rule = RULES_BY_CODE["FXG106"]
    return _finding(rule, nf, rule.render(op=_op(nf), savers=text), related=related)


def _target(nf: NodeFacts, otherwise: str) -> str:
    return f"`{nf.target.name}`" if nf.target is not None else otherwise


def _check_leaf(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    rule = RULES_BY_CODE["FXG103"]
    return _finding(rule, nf, rule.render(op=_op(nf), target=_target(nf, "a parameter"), error=_LEAF_ERROR))


def inplace_warning(nf: NodeFacts, *, proved: bool) -> Finding:
    """FXG101 for a legal in-place op on an activation; ``proved`` when the dry-run showed nothing saved it."""
    rule = RULES_BY_CODE["FXG101"]
    return _finding(rule, nf, rule.render("proved" if proved else "", op=_op(nf), target=_target(nf, "its target")),
                    verdict="dry-run" if proved else "static")


def _check_inplace_activation(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if (nf.target is None or nf.target_role != "activation" or not nf.target_live or nf.leaf_write or nf.meta_write
            or nf.forward_error or nf.overlap_write):
        return None
    if (nf.overwritten or nf.silently_written) and [
            u for u in (*nf.overwritten, *nf.silently_written) if facts[u.saver].reach]:
        return None
    rule = RULES_BY_CODE["FXG101"]
    op, target = nf.view.spelling or nf.view.name, f"`{nf.target.name}`"  # (once per in-place op: inlined)
    if not nf.grad_on:
        return _finding(rule, nf, rule.render("no_grad", op=op, target=target))
    if nf.unknown_savers:
        savers = ", ".join(f"`{n.name}`" for n in nf.unknown_savers[:3])
        return _finding(rule, nf, rule.render("unknown", op=op, target=target, savers=savers))
    return _finding(rule, nf, rule._renderers[""](op=op, target=target))


def _check_alias(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if nf.target is None or nf.meta_write or nf.target_role not in ("activation",):
        return None
    if not (nf.target_live or nf.live):
        # no gradient is involved: filling a buffer through a view (torchvision's batch_images:
        # `batched[i, ...].copy_(img)`) is what the later read of the buffer is meant to see
        return None
    if nf.overlap_write or nf.forward_error or nf.leaf_write:  # forward raises there: nothing is read later
        return None
    rule = RULES_BY_CODE["FXG104"]
    return _finding(rule, nf, rule.render(op=_op(nf), target=_target(nf, "its target")))


def _check_input(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if nf.meta_write or nf.target_role != "input":
        return None
    rule = RULES_BY_CODE["FXG105"]
    return _finding(rule, nf, rule.render(op=_op(nf), target=_target(nf, "its target")))


def _check_overlap(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    rule = RULES_BY_CODE["FXG107"]
    return _finding(rule, nf, rule.render(op=_op(nf), target=_target(nf, "its target"),
                                          error=f"RuntimeError: {OVERLAP_ERROR}"))


def _check_negative_slope(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    """Autograd records the in-place activation's backward only with grad enabled on a target that requires
    grad, and raises only when backward runs it: when a gradient from the outputs reaches it."""
    if not (nf.grad_on and nf.target_live and nf.reach) or nf.leaf_write or nf.forward_error:
        return None
    kind, slope = nf.result_slope  # type: ignore[misc]
    rule = RULE_FOR_FACT["result_slope"]
    return _finding(rule, nf, rule.render(op=_op(nf), slope=f"{slope:g}", error=SLOPE_ERRORS[kind]))


def _check_inplace_no_derivative(nf: NodeFacts, facts: GraphFacts) -> Finding | None:
    if not (nf.grad_on and nf.target_live and nf.reach) or nf.leaf_write or nf.forward_error:
        return None
    rule = RULE_FOR_FACT["inplace_no_derivative"]
    return _finding(rule, nf, rule.render(op=_op(nf), name=nf.view.name))


RULES: tuple[Rule, ...] = (
    Rule("FXG001", "detach", "warning", "cut", "`.detach()` / `detach_()` cuts the gradient of a value that depends "
         "on parameters", "Everything upstream of the detached value gets no gradient through this path.",
         {"": "`.detach()` cuts the gradient of {input}. {lost}"}, ("cut",), _cut("detach", "FXG001"),
         flagged="Detach", clean="DictOutputOneDetached",
         example="h = self.encoder(x).detach()\nreturn self.head(h)",
         use_instead="h = self.encoder(x)\nreturn self.head(h)"),
    Rule("FXG002", "data", "warning", "cut", "`.data` read on a tensor in the graph",
         "`.data` returns a tensor with no history and its own version counter: gradients stop, and in-place "
         "writes through it are invisible to autograd.",
         {"": "`.data` of {input} has no autograd history. {lost}"}, ("cut",), _cut("data", "FXG002"),
         flagged="DataRead", clean="DataWriteUnsaved",
         example="h = self.encoder(x).data", use_instead="h = self.encoder(x)  # or .detach(), on purpose"),
    Rule("FXG003", "no-grad", "warning", "cut", "op runs with grad disabled (`no_grad`, `set_grad_enabled(False)`, "
         "`inference_mode`)", "Ops run with grad disabled record nothing for backward.",
         {"": "`{op}` runs with grad disabled. {lost}"}, ("cut",), _cut("no_grad", "FXG003"),
         flagged="NoGradBlock", clean="BufferUpdateNoGrad",
         example="with torch.no_grad():\n    h = self.encoder(x)", use_instead="h = self.encoder(x)"),
    Rule("FXG004", "leaves-autograd", "warning", "cut", "value leaves autograd: `.item()`, `.tolist()`, `.numpy()`",
         "Python numbers and NumPy arrays carry no autograd history.",
         {"": "`{op}` turns {input} into a plain value. {lost}"}, ("cut",), _cut("leaves", "FXG004"),
         flagged="ItemRetensor", clean="ItemOfInputForScale",
         example="scale = self.gate(x).mean().item()\nreturn x * scale",
         use_instead="scale = self.gate(x).mean()\nreturn x * scale"),
    Rule("FXG005", "requires-grad-false", "warning", "cut", "`requires_grad_(False)` on a tensor in the graph",
         "On a parameter it freezes it; on an activation that requires grad forward raises.",
         {"": "`requires_grad_(False)` stops gradients of {input}. {lost}"}, ("cut",), _cut("requires_grad", "FXG005"),
         flagged="RequiresGradFalseFunctional", clean="RequiresGradFalseOnInput",
         example="w = self.weight.requires_grad_(False)", use_instead="w = self.weight.detach()  # on purpose"),
    Rule("FXG006", "integer-result", "warning", "cut", "op with an integer/bool result: no gradient (`argmax`, "
         "comparisons, `.long()`, `to(int dtype)` …)", "Integer and bool tensors cannot carry gradients.",
         {"": "`{op}` has an integer/bool result: no gradient flows back to {input}. {lost}"}, ("cut",),
         _cut("integer", "FXG006"),
         flagged="ArgmaxBeforeOutput", clean="ArgmaxGather",
         example="return self.head(x).argmax(-1).float()",
         use_instead="logits = self.head(x)\nreturn logits.gather(-1, logits.argmax(-1, keepdim=True))"),
    Rule("FXG007", "zero-gradient", "warning", "cut", "gradient is zero almost everywhere (`round`, `floor`, `ceil`, "
         "`trunc`, `sign`)", "Autograd returns a gradient, but it is zero: parameters upstream never change.",
         {"": "`{name}` has a zero gradient almost everywhere: `{dep}` and everything upstream of it only get zeros. "
              "{lost}"}, ("zero",), _check_zero,
         flagged="RoundZeroGrad", clean="StraightThroughEstimator",
         example="return torch.round(self.encoder(x))",
         use_instead="z = self.encoder(x)\nreturn z + (torch.round(z) - z).detach()  # straight-through"),
    Rule("FXG008", "rebuilt-tensor", "warning", "cut", "tensor rebuilt from values (`torch.tensor`, `from_numpy`, "
         "`new_tensor`)", "The new tensor is a leaf without history.",
         {"": "`{op}` builds a new tensor without the history of {input}. {lost}"}, ("cut",), _cut("rebuild", "FXG008"),
         flagged="NewTensorRebuild", clean="NewTensorOfInput",
         example="h = torch.tensor(self.encoder(x).tolist())", use_instead="h = self.encoder(x)"),
    Rule("FXG009", "no-derivative", "error", "cut", "op without a derivative on the gradient path (`//`, "
         "`floor_divide`): `backward()` raises", "Autograd records the op but cannot differentiate it.",
         {"": "`{op}` has no derivative and the gradient reaches it: backward() will raise \"RuntimeError: the "
              "derivative for '{name}' is not implemented\". Detach its input if no gradient is meant to flow, or "
              "use a differentiable op."}, ("no_derivative", "reach"), _check_no_derivative,
         raises="backward", dryrun=True, flagged="FloorDivideNoDerivative", clean="FloorZeroGrad",
         example="return self.linear(x) // 2",
         use_instead="return self.linear(x) / 2  # or self.linear(x).detach() // 2: no gradient on purpose"),
    Rule("FXG010", "autograd-forward-error", "error", "cut", "autograd rejects the call in forward: "
         "`requires_grad_(False)` on a non-leaf, in-place on a view returned by `split`/`chunk`/`unbind`, `out=` with "
         "inputs that require grad", "These raise during forward, before any gradient exists.",
         {"": "Autograd rejects `{op}` here: forward raises \"{error}\""}, ("forward_error",), _check_forward_error,
         raises="forward", dryrun=True, flagged="ChunkViewInplace", clean="ChunkThenOutOfPlace",
         example="a, b = self.linear(x).chunk(2, dim=-1)\na.mul_(2)",
         use_instead="a, b = self.linear(x).chunk(2, dim=-1)\na = a * 2"),
    Rule("FXG101", "inplace-activation", "warning", "write", "in-place op on an activation (`x.add_()`, "
         "`torch.relu_`, `inplace=True`, in-place modules, `+=`, `x[i] = v`, `out=`)",
         "Legal as long as no op saved the overwritten tensor for backward; fragile under later edits.",
         {"": "In-place `{op}` on activation {target}: no earlier op saved it for backward, so backward stays correct "
              "today; a later edit that saves it would break.",
          "proved": "In-place `{op}` on activation {target}: no earlier op saved it for backward, so backward stays "
                    "correct (proved by the dry-run); a later edit that saves it would break.",
          "no_grad": "In-place `{op}` under no_grad on {target}, which requires grad: the value changes but autograd "
                     "does not record it, so gradients are computed as if this line did not run.",
          "unknown": "In-place `{op}` on activation {target}: not proved statically, fxgrad has no table for what "
                     "{savers} saves for backward (it may have saved this tensor); pass example inputs and the dry-run "
                     "decides.",
          "checkpointed": "In-place `{op}` writes into a tensor that an op of a checkpointed segment saved for "
                          "backward: backward recomputes the segment instead of reading it, so backward stays "
                          "correct; a later edit that keeps the saved tensor would break."},
         ("target_live", "target"), _check_inplace_activation, dryrun=True, fix="safe", default=False,
         flagged="Ex3InplaceMulScalar", clean="Ex2MulScalar",
         example="h = self.linear(x)\nh.mul_(2.0)", use_instead="h = self.linear(x)\nh = h * 2.0"),
    Rule("FXG102", "inplace-saved", "error", "write", "in-place op overwrites a tensor that an earlier op saved for "
         "backward: `backward()` will raise", "Autograd checks the saved tensor's version at backward.",
         {"": "In-place `{op}` overwrites a tensor that an earlier op saved for backward: {savers}. backward() will "
              "raise \"{error}\" Use the out-of-place form.",
          "backend": "In-place `{op}` overwrites a tensor that an earlier op saved for backward: {savers}. backward() "
                     "will raise \"{error}\" Use the out-of-place form. (What this op saves depends on the backend: "
                     "{backend}.)"},
         ("overwritten",), _check_overwrites_saved, raises="backward", dryrun=True, fix="safe",
         flagged="SigmoidMul_", clean="EluThenAdd_",
         example="s = torch.sigmoid(self.linear(x))\ns.mul_(2.0)",
         use_instead="s = torch.sigmoid(self.linear(x))\ns = s * 2.0"),
    Rule("FXG103", "inplace-leaf", "error", "write", "in-place op on a leaf that requires grad (e.g. a parameter) "
         "with grad enabled: forward raises", "Autograd forbids in-place changes of leaves that require grad.",
         {"": "In-place `{op}` on {target}, a leaf that requires grad, with grad enabled: forward raises \"{error}\" "
              "Wrap it in torch.no_grad() if it is a deliberate update, else use the out-of-place form."},
         ("leaf_write",), _check_leaf, raises="forward", dryrun=True, fix="unsafe",
         flagged="ParamInplaceGradEnabled", clean="ParamInplaceNoGrad",
         example="self.weight.mul_(0.99)\nreturn x @ self.weight",
         use_instead="with torch.no_grad():\n    self.weight.mul_(0.99)  # outside forward, on purpose"),
    Rule("FXG104", "inplace-alias", "warning", "write", "in-place op on a view or alias of another tensor that is "
         "used later", "The write is visible through every alias.",
         {"": "In-place `{op}` writes {target}, which shares memory with another tensor that is read later: that read "
              "sees the new values."},
         ("alias_read_after", "target"), _check_alias, dryrun=True,
         flagged="AliasReadAfterWrite", clean="ViewWriteReadView",
         example="v = h[:, :4]\nv.zero_()\nreturn h",
         use_instead="h = torch.cat([torch.zeros_like(h[:, :4]), h[:, 4:]], 1)\nreturn h"),
    Rule("FXG105", "inplace-input", "warning", "write", "in-place op mutates a graph input (visible to the caller)",
         "The caller's tensor changes.",
         {"": "In-place `{op}` changes the graph input {target} (or a view of it): the caller's tensor is modified."},
         ("target",), _check_input, fix="unsafe",
         flagged="InputInplaceMul_", clean="LinearOutputAdd_",
         example="x.mul_(2.0)\nreturn self.linear(x)", use_instead="return self.linear(x * 2.0)"),
    Rule("FXG106", "inplace-behind-counter", "error", "write", "in-place write through `.data` into a tensor saved "
         "for backward: silently wrong gradients", "`.data` has its own version counter, so autograd cannot notice.",
         {"": "In-place `{op}` writes, behind autograd's version counter (through `.data`), into a tensor saved for "
              "backward: {savers}. backward() will not raise but computes gradients from the overwritten values.",
          "checkpointed": "In-place `{op}` inside a checkpointed segment (use_reentrant=False) overwrites a tensor an "
                          "earlier op of the segment saved for backward. backward() does not raise: it recomputes "
                          "the segment, runs this write again over the recomputed tensor, and computes gradients from "
                          "the overwritten values. Use the out-of-place form."},
         ("silently_written",), _check_silent, dryrun=True,
         flagged="DataWriteIntoSaved", clean="DataWriteUnsaved",
         example="s = torch.sigmoid(self.linear(x))\ns.data.mul_(2.0)",
         use_instead="s = torch.sigmoid(self.linear(x))\ns = s * 2.0"),
    Rule("FXG107", "inplace-overlap", "error", "write", "in-place write into an `expand`ed view (elements share "
         "memory): forward raises", "One memory location stands for several elements; PyTorch refuses to write it.",
         {"": "In-place `{op}` writes into {target}, an `expand`ed view whose elements share memory: forward raises "
              "\"{error}\" Clone it first, or use the out-of-place form."},
         ("overlap_write",), _check_overlap, raises="forward", dryrun=True,
         flagged="ExpandedViewInplace", clean="ExpandedCloneInplace",
         example="b = self.bias.expand(4, 8)\nb.add_(x)", use_instead="b = self.bias.expand(4, 8) + x"),
    Rule("FXG108", "inplace-negative-slope", "error", "write", "in-place `leaky_relu_` / `elu_` / `celu_` / "
         "`rrelu_` (eval) with a negative slope: `backward()` raises",
         "The in-place form saves only its output, and with a negative slope the output's sign no longer tells "
         "which branch an element took, so autograd refuses to differentiate it.",
         {"": "In-place `{op}` with the negative slope {slope}: autograd computes its backward from the output, whose "
              "sign a negative slope makes ambiguous, so backward() will raise \"{error}\" Use the out-of-place "
              "form."},
         ("result_slope", "target_live", "grad_on", "reach"), _check_negative_slope, raises="backward", dryrun=True,
         fix="safe",
         flagged="LeakyReluInplaceNegativeSlope", clean="LeakyReluNegativeSlope",
         example="h = F.leaky_relu(self.linear(x), -0.1, inplace=True)  # or nn.LeakyReLU(-0.1, inplace=True)",
         use_instead="h = F.leaky_relu(self.linear(x), -0.1)"),
    Rule("FXG109", "inplace-no-derivative", "error", "write", "in-place `acosh_` / `asinh_` / `atanh_` on a tensor "
         "that needs a gradient: the in-place form has no derivative, `backward()` raises",
         "Autograd implements the derivative of the out-of-place op only; the in-place form's backward raises.",
         {"": "In-place `{op}` has no derivative (only the out-of-place `{name}` has one): backward() will raise "
              "\"RuntimeError: the derivative for 'inplace version of {name}' is not implemented.\" Use the "
              "out-of-place form."},
         ("inplace_no_derivative", "target_live", "grad_on", "reach"), _check_inplace_no_derivative,
         raises="backward", dryrun=True, fix="safe", flagged="AsinhInplace", clean="AsinhOutOfPlace",
         example="h = torch.asinh_(self.linear(x))", use_instead="h = torch.asinh(self.linear(x))"),
    Rule("FXG201", "param-no-grad", "error", "param", "parameter gets no gradient: every path to the output is cut",
         "Its `.grad` stays None and the optimizer never updates it.",
         {"": "{params} {verb} no gradient: {why}."}, dryrun=True, flagged="Detach", clean="DictOutputOneDetached",
         example="h = self.encoder(x).detach()  # encoder.* get no gradient", use_instead="h = self.encoder(x)"),
    Rule("FXG202", "param-zero-grad", "warning", "param", "parameter gets only a zero gradient",
         "Its `.grad` is all zeros: it never changes.",
         {"": "{params} {verb} only a zero gradient: {why}."}, dryrun=True,
         flagged="RoundZeroGrad", clean="StraightThroughEstimator",
         example="return torch.round(self.encoder(x))  # encoder.* get zeros",
         use_instead="z = self.encoder(x)\nreturn z + (torch.round(z) - z).detach()"),
    Rule("FXG203", "param-unused", "warning", "param", "parameter is never used in forward",
         "Unused parameters get no gradient (and break DistributedDataParallel without find_unused_parameters).",
         {"": "{params} {verb} never used in forward, so {they} no gradient."}, dryrun=True,
         flagged="UnusedSubmodule", clean="UnusedTupleOutputBranch",
         example="self.aux = nn.Linear(8, 8)  # never called in forward", use_instead="# delete it, or use it"),
    Rule("FXG204", "optimizer-missing", "error", "param", "trainable parameter is in no param group of the "
         "optimizer (`optimizer=`)", "It gets a gradient and never updates: it silently stays at its initial value.",
         {"": "{params} get a gradient but {be} in no param group of the optimizer: they never update. Hint: build "
              "the optimizer from model.parameters(), or freeze them with requires_grad_(False)."},
         flagged="head-not-in-optimizer", clean="clean",
         example="opt = torch.optim.SGD(model.encoder.parameters(), lr=0.1)  # head left out",
         use_instead="opt = torch.optim.SGD(model.parameters(), lr=0.1)"),
    Rule("FXG205", "optimizer-idle", "error", "param", "parameter in a param group of the optimizer never gets a "
         "gradient (`optimizer=`)", "The optimizer never updates it: a lost gradient, or a parameter that should not "
         "be there.",
         {"": "{params} {be} in param group {group} of the optimizer but never get a gradient{why}: the optimizer "
              "never updates them."}, flagged="frozen-in-optimizer", clean="clean",
         example="h = model.encoder(x).detach()  # encoder.* are in the optimizer", use_instead="h = model.encoder(x)"),
    Rule("FXG206", "optimizer-frozen", "info", "param", "frozen parameter (`requires_grad=False`) in a param group of "
         "the optimizer (`optimizer=`)", "It never updates; harmless, but the group can leave it out.",
         {"": "{params} {be} frozen (requires_grad=False) but in param group {group} of the optimizer: they never "
              "update; the group can leave them out."}, flagged="frozen-in-optimizer", clean="clean",
         example="model.encoder.requires_grad_(False)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)",
         use_instead="opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)"),
)

RULES_BY_CODE: dict[str, Rule] = {r.code: r for r in RULES}

#: the cut warnings: an accepted one makes the parameters it cuts off frozen on purpose (fxgrad.suppress)
CUT_CODES = frozenset(r.code for r in RULES if r.family == "cut" and r.severity == "warning")

#: node fact -> the one rule it gates (facts that gate several rules, like ``cut``, are not here)
_GATE_COUNT = Counter(r.when for r in RULES if r.when)
RULE_FOR_FACT: dict[str, Rule] = {r.when: r for r in RULES if r.when and _GATE_COUNT[r.when] == 1}

#: codes whose op makes forward or backward raise and that ``fxgrad.fix`` can rewrite (``only="breaking"``)
BREAKING = frozenset(r.code for r in RULES if r.raises and r.fix != "none")


def select_codes(select: Iterable[str] = (), ignore: Iterable[str] = ()) -> set[str]:
    """Codes enabled by ``select``/``ignore`` prefixes (``FXG1`` selects the in-place family). Without ``select``,
    the codes that are on by default: not FXG101, which flags correct code (a legal in-place op)."""
    sel, ign = tuple(select), tuple(ignore)
    codes = {c for c, rule in RULES_BY_CODE.items() if any(c.startswith(s) for s in sel) or (not sel and rule.default)}
    return {c for c in codes if not any(c.startswith(i) for i in ign)}


#: why a parameter whose result reaches no output gets no gradient: the finding's words, which
#: :func:`fxgrad.step.mention_loss` looks for to name the loss that leaves it out
NO_PATH = "its result never reaches the output"


def param_findings(facts: GraphFacts) -> Iterator[Finding]:
    groups: dict[tuple[str, torch.fx.Node | None], list[ParamFacts]] = {}
    for p in facts.params.values():
        if p.status in ("no-grad", "zero-grad"):
            groups.setdefault((p.status, p.cause), []).append(p)
    for (status, cause), params in groups.items():
        names = sorted(p.name for p in params)
        rule = RULE_FOR_STATUS[status]
        anchor = cause if cause is not None else (params[0].uses[0] if params[0].uses else None)
        origin = node_origin(anchor) if anchor is not None else None
        if cause is not None:
            cf = facts[cause]
            why = f"every path to the output is cut at `{cause.name}` ({cf.view.spelling or cf.view.name})"
            if status == "zero-grad":
                why = f"its only path to the output goes through `{cause.name}`, whose gradient is zero"
        else:
            why = NO_PATH
        yield Finding(code=rule.code, severity=rule.severity, node=anchor.name if anchor is not None else "",
                      target=facts[cause].view.spelling if cause is not None else "", params=tuple(names),
                      message=rule.render(params=_shown(names), verb="gets" if len(names) == 1 else "get", why=why),
                      module=origin.module if origin else "", location=origin.location if origin else None)
    unused = sorted(p.name for p in facts.params.values() if p.status == "unused")
    if unused:
        rule = RULE_FOR_STATUS["unused"]
        owners = sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in unused})
        one = len(unused) == 1
        yield Finding(code=rule.code, severity=rule.severity, node="", target="", params=tuple(unused),
                      message=rule.render(params=_shown(unused), verb="is" if one else "are",
                                          they="it gets" if one else "they get"),
                      module=owners[0] if len(owners) == 1 else "")


#: parameter status -> the rule that reports it
RULE_FOR_STATUS: dict[str, Rule] = {"no-grad": RULES_BY_CODE["FXG201"], "zero-grad": RULES_BY_CODE["FXG202"],
                                    "unused": RULES_BY_CODE["FXG203"]}
#: codes of the per-parameter verdicts from the graph (the optimizer's are made by fxgrad.step)
PARAM_CODES = frozenset(r.code for r in RULE_FOR_STATUS.values())
#: the parameter verdicts that describe a gradient lost on the way (counterfactual when forward raises)
_CUT_OFF = frozenset((RULE_FOR_STATUS["no-grad"].code, RULE_FOR_STATUS["zero-grad"].code))

#: the facts that gate the node checks (each rule's first fact), read from a node in one C-level call, and the
#: checks each gates, in catalog order
_GATES: tuple[str, ...] = tuple(dict.fromkeys(r.when for r in RULES if r.check is not None))
_READ_GATES = operator.attrgetter(*_GATES)
_GATED: tuple[tuple[Check, ...], ...] = tuple(tuple(r.check for r in RULES if r.check is not None and r.when == g)
                                              for g in _GATES)


def _code(f: Finding) -> str:
    return f.code


def run_rules(facts: GraphFacts) -> list[Finding]:
    """Every finding of every rule, in graph order (at one node, in catalog order), then the per-parameter
    verdicts.

    Most nodes are plain differentiable ops that no rule is about: only the nodes the forward pass flagged are
    looked at, and each is shown to the rules whose first fact (:attr:`Rule.reads`) it sets.
    """
    read_gates, gated = _READ_GATES, _GATED
    with gc_paused():  # (see fxgrad.gcpause)
        findings: list[Finding] = []
        append = findings.append
        for nf in facts.flagged if facts.flagged is not None else facts:
            gates = read_gates(nf)
            if not any(gates):  # (most flagged nodes: two calls in C)
                continue
            before = len(findings)
            for checks in compress(gated, gates):  # the checks of the gates this node sets
                for check in checks:
                    f = check(nf, facts)
                    if f is not None:
                        append(f)
            if len(findings) > before + 1:  # two gates set: keep catalog order (codes sort as the catalog)
                findings[before:] = sorted(findings[before:], key=_code)
        findings.extend(param_findings(facts))
        return without_counterfactuals(without_refuted(findings))


#: codes of findings where eager forward raises: training never gets to a gradient
FORWARD_ERRORS = frozenset(r.code for r in RULES if r.raises == "forward")
_LEGAL = RULE_FOR_FACT["target_live"].code


#: in-place codes whose op is an error: an op with one of them is not a legal in-place op
_WRITE_ERRORS = frozenset(r.code for r in RULES if r.family == "write" and r.severity == "error")


def without_refuted(findings: list[Finding]) -> list[Finding]:
    """FXG101 says backward stays correct: not where another in-place rule finds an error at the same op."""
    broken = {f.node for f in findings if f.code in _WRITE_ERRORS}
    if not broken:
        return findings
    return [f for f in findings if not (f.code == _LEGAL and f.node in broken)]


def without_counterfactuals(findings: list[Finding]) -> list[Finding]:
    """When forward raises, "this parameter would get no gradient" describes a run that never happens."""
    if not any(f.code in FORWARD_ERRORS for f in findings):
        return findings
    return [f for f in findings if f.code not in _CUT_OFF]


# -- the dry-run's proofs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proof:
    """What the dry-run saw autograd do at one node, named by the node fact it proves (a rule's first fact)."""

    #: overwritten | silently_written | no_derivative | forward_error | leaf_write | overlap_write
    fact: str
    node: torch.fx.Node
    #: (saving node, the saved argument: ``self``, ``result`` ...)
    savers: tuple[tuple[torch.fx.Node, str], ...] = ()
    #: the error eager raises, as autograd words it
    error: str = ""
    backend_dependent: bool = False
    #: what the backend kernel that saved the tensor saves, where the meta kernels cannot show it
    #: (:mod:`fxgrad.backends`): the finding renders the rule's ``backend`` template
    backend_note: str = ""
    #: for ``result_slope``: the kind of backward (``leaky_relu``, ``elu``) and the slope it will refuse
    kind: str = ""
    slope: float = 0.0


def proved_finding(proof: Proof, nf: NodeFacts) -> Finding:
    """The finding of the rule that ``proof`` proves, rendered from the rule's template like a static one."""
    rule = RULE_FOR_FACT[proof.fact]
    error = f"RuntimeError: {proof.error}" if proof.error else SLOPE_ERRORS.get(proof.kind, "")
    fields: dict[str, object] = {"op": _op(nf), "name": nf.view.name, "error": error, "slope": f"{proof.slope:g}"}
    related: tuple[Related, ...] = ()
    if proof.savers:
        fields["savers"], related = _saver_text(proof.savers)
    if proof.fact in ("leaf_write",):
        fields["target"] = _target(nf, "a parameter")
    else:
        fields["target"] = _target(nf, "its target")
    fields["backend"] = proof.backend_note
    return _finding(rule, nf, rule.render("backend" if proof.backend_note else "", **fields), related=related,
                    verdict="dry-run", backend=proof.backend_dependent)
