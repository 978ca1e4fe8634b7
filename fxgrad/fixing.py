"""``fxgrad.fix``: a copy of the model whose in-place ops that break (or could break) backward are out-of-place.

Algorithm of :func:`fix`:

1. Check the arguments; the user's model is only read from here on (its modules are shared by the result,
   never modified: in-place modules are replaced by copies with ``inplace=False``).
2. Trace once (:func:`fxgrad.capture.trace`) and run :func:`fxgrad.analyze` on that same ``GraphModule``, so
   finding and node names match; ``only="breaking"`` selects the nodes with a finding in :data:`fxgrad.rules.BREAKING`.
3. Build the result: a new ``GraphModule`` over the traced one's modules with a copy of its graph.
4. Run the :class:`~fxgrad.rewrite.OutOfPlace` pass on it.
5. With example inputs: where the out-of-place result has another dtype than the in-place one had (type
   promotion: ``h_f16 += x_f32`` stays float16, ``h_f16 + x_f32`` is float32), cast it back.
6. With example inputs and ``verify=True``: prove the result against the original (:func:`fxgrad.verify.verify`).
7. For a verified fix: the same rewrites as edits of the user's own source (:func:`fxgrad.sourcefix.plan`).
8. Store the frozen :class:`FixRecord` in ``result.meta["fxgrad"]``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from . import capturing, rules
from .analysis import analyze, preserved
from .decoupled import decoupled
from .errors import InputError
from .inputs import Spec, as_args, bind_keywords, has_real_tensors, map_inputs
from .report import Report
from .rewrite import Left, OutOfPlace, Rewrite
from .sourcefix import SourceDecline, SourceEdit
from .sourcefix import plan as plan_source
from .verify import Verification, flatten
from .verify import verify as run_verification

__all__ = ["FixRecord", "fix", "fix_record"]

log = logging.getLogger(__name__)

META_KEY = "fxgrad"

#: findings whose ops ``only="breaking"`` rewrites: the fixable codes whose op makes backward or forward raise, as
#: the rules declare them, and the forward errors the rewrite also repairs (a write into an expanded view, other
#: calls autograd rejects)
BREAKING = rules.BREAKING | {rules.RULE_FOR_FACT["overlap_write"].code, rules.RULE_FOR_FACT["forward_error"].code}


@dataclass(frozen=True)
class FixRecord:
    """What :func:`fix` did to a model: rewrites, ops it left and why, and the proof."""

    model: str
    only: str
    unsafe: bool
    rewrites: tuple[Rewrite, ...]
    left: tuple[Left, ...]
    verification: Verification | None
    notes: tuple[str, ...] = ()
    #: how the model was captured: "trace" or "run" (for the branches the example inputs took)
    capture: str = "trace"
    #: the verified rewrites as edits of the user's own files (``fxgrad fix --diff``), and the ones fxgrad did not
    #: turn into edits, with the reason (library code, a line it cannot find ...)
    source_edits: tuple[SourceEdit, ...] = ()
    source_declined: tuple[SourceDecline, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.rewrites)

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.ok

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for group in ("rewrites", "left", "source_declined"):
            for item in d[group]:
                loc = item.get("location")
                item["location"] = None if loc is None else {k: loc[k] for k in ("file", "line", "function", "code")}
        return d

    def __str__(self) -> str:
        lines = [f"fxgrad fix for {self.model} (only={self.only!r}{', unsafe' if self.unsafe else ''}): "
                 f"{len(self.rewrites)} rewritten, {len(self.left)} left"]
        for r in self.rewrites:
            codes = f" [{', '.join(r.codes)}]" if r.codes else ""
            lines.append(f"  rewrote {r}{codes}")
            if r.replayed:
                lines.append(f"    later reads of {', '.join(f'`{n}`' for n in r.replayed)} see the new values")
            if r.detached:
                lines.append("    written through a detached alias: invisible to autograd, as in eager")
            if r.unsafe_change:
                lines.append(f"    change: {r.unsafe_change}")
        for lf in self.left:
            lines.append(f"  left {lf}")
        lines += [f"  source edit {e}" for e in self.source_edits]
        lines += [f"  source {d}" for d in self.source_declined]
        if self.verification is not None:
            lines.append(str(self.verification))
        else:
            lines.append("not verified")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def fix_record(gm: torch.fx.GraphModule) -> FixRecord:
    """The record :func:`fix` stored on its result."""
    record = gm.meta.get(META_KEY)
    if not isinstance(record, FixRecord):
        raise InputError("This GraphModule was not made by fxgrad.fix. Hint: call fxgrad.fix(model, ...) first.")
    return record


def _inputs_require_grad(gm: torch.fx.GraphModule, args: tuple[Any, ...]) -> frozenset[str]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = set()
    for node, a in zip(placeholders, args, strict=False):
        if any(t.requires_grad for _, t in flatten(a) if isinstance(t, torch.Tensor)):
            names.add(str(node.target))
    return frozenset(names)


def _python_scalar(a: Any) -> Any:
    """``np.float64(2.8)`` -> ``2.8``: fx writes a constant into the code by its ``repr``, and ``np`` is not defined
    there. torch promotes a numpy scalar as it promotes the Python number."""
    if type(a).__module__ == "numpy" and callable(getattr(a, "item", None)) and getattr(a, "ndim", None) == 0:
        return a.item()
    return a


def _python_scalars(graph: torch.fx.Graph) -> None:
    for node in graph.nodes:
        node.args = torch.fx.node.map_aggregate(node.args, _python_scalar)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, _python_scalar)


def _findings(traced: torch.fx.GraphModule, args: tuple[Any, ...] | None) -> Report:
    """``analyze`` on the traced graph; proved by the dry-run when it is available and inputs are given."""
    if args is not None:
        try:
            return analyze(traced, args)
        except ModuleNotFoundError as e:  # the dry-run module is optional
            if e.name != "fxgrad.dryrun":
                raise
            log.debug("fxgrad.dryrun unavailable; static findings")
    return analyze(traced)


class _Dtypes(torch.fx.Interpreter):
    """Records the dtype of every tensor a graph computes, by node name."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.dtypes: dict[str, torch.dtype] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.dtypes[n.name] = result.dtype
        return result


def _dtypes(gm: torch.fx.GraphModule, args: tuple[Any, ...]) -> dict[str, torch.dtype] | None:
    """Dtypes from one run on copies, or None when the graph cannot run (the caller then assumes no change)."""
    probe = _Dtypes(copy.deepcopy(gm))
    inputs = map_inputs(args, lambda a: a.empty() if isinstance(a, Spec) else a.detach().clone())
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            probe.run(*inputs)
    except Exception as e:
        log.debug("dtype probe failed: %s", e)
        return None
    return probe.dtypes


def _repair_dtypes(fixed: torch.fx.GraphModule, before: dict[str, torch.dtype], pass_: OutOfPlace,
                   args: tuple[Any, ...], cast_back: set[str] | None = None) -> list[str]:
    """Step 5: cast out-of-place results back to the dtype their in-place op kept (their names into ``cast_back``)."""
    after = _dtypes(fixed, args)
    if after is None:
        return []
    notes = []
    for old, new in pass_.replaced.items():
        want, have = before.get(old), after.get(new.name)
        if want is None or have is None or want == have or new.op == "call_module":
            continue
        with fixed.graph.inserting_after(new):
            cast = fixed.graph.call_method("to", (new, want))
        cast.meta = dict(new.meta)
        new.replace_all_uses_with(cast, delete_user_cb=functools.partial(operator.is_not, cast))
        notes.append(f"`{old}`: the out-of-place result is {have}; cast back to {want} as the in-place op kept it")
        if cast_back is not None:
            cast_back.add(old)
    if notes:
        fixed.graph.lint()
        fixed.recompile()
    return notes


def fix(
    model: nn.Module,
    example_inputs: Sequence[Any] | Any | None = None,
    *,
    only: str | None = None,
    verify: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    unsafe: bool = False,
    concrete_args: dict[str, Any] | None = None,
    tracer: type[torch.fx.Tracer] | torch.fx.Tracer | None = None,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    capture: str = "auto",
) -> torch.fx.GraphModule:
    """A new ``GraphModule`` that computes what ``model`` computes, with in-place ops made out-of-place.

    ``only="breaking"`` (the default with example inputs) rewrites the ops that make backward or forward raise
    (:data:`fxgrad.rules.BREAKING`: FXG102, FXG103 ...) and keeps harmless memory-saving in-place ops;
    ``only="all"`` (the default without inputs) rewrites every in-place op on activations that can be rewritten
    safely. ``unsafe=True`` also rewrites writes the caller sees (graph inputs) and records the change. With example
    inputs and ``verify=True`` the result is run against the original (outputs, gradients, buffers) and
    :class:`~fxgrad.errors.VerificationError` is raised on a mismatch. The result shares ``model``'s parameters;
    ``model`` itself is never changed. Its record is ``result.meta["fxgrad"]`` (a :class:`FixRecord`).

    ``capture`` is :func:`fxgrad.analyze`'s. A model captured by running it (``"run"``, or ``"auto"`` when tracing
    fails) gives a module for the branches the example inputs took, and its record says so.
    """
    # Step 1: arguments.
    model = capturing.unwrap(model)
    example_inputs = bind_keywords(model, example_inputs)
    if not isinstance(model, nn.Module):
        raise InputError(f"fxgrad.fix needs an nn.Module, got {type(model).__name__}. "
                         "Hint: pass the model instance, e.g. fix(MyNet(), (x,)).")
    if only not in (None, "breaking", "all"):
        raise InputError(f"only must be 'breaking' or 'all', not {only!r}. Hint: only='breaking' rewrites the "
                         "in-place ops that break backward; only='all' every safe one.")
    args = None if example_inputs is None else as_args(example_inputs)
    mode = only or ("breaking" if args is not None else "all")
    name = type(model).__name__
    notes: list[str] = []
    with preserved(model):
        # Step 2: trace once; analyze that graph.
        captured = capturing.capture(model, args, capture, concrete_args=concrete_args, tracer=tracer,
                                     leaf_modules=leaf_modules)
        traced = captured.gm
        if captured.how == "run":
            notes.append(captured.note.replace("the verdicts hold", "this module computes the model")
                         + " Use it for inputs of these shapes and take the same branches. It is verified against "
                         "the captured program, whose outputs are the model's tensors (an object such as a cache is "
                         "left out).")
        report = _findings(traced, args)
        codes: dict[str, tuple[str, ...]] = {}
        for f in report.findings:
            codes[f.node] = (*codes.get(f.node, ()), f.code)
        select = None
        if mode == "breaking":
            select = {node for node, cs in codes.items() if any(c in BREAKING for c in cs)}
            if report.mode != "dry-run":
                notes.append("only='breaking' chose ops from static findings (no dry-run)")
        # Step 3: the result shares the traced module's submodules, with its own graph.
        graph = copy.deepcopy(traced.graph)
        _python_scalars(graph)
        fixed = torch.fx.GraphModule(traced, graph, name)
        fixed.training = model.training
        # Step 4: the pass.
        pass_ = OutOfPlace(
            select=select, unsafe=unsafe, codes=codes, model=model,
            inputs_require_grad=_inputs_require_grad(traced, args) if args is not None else frozenset(),
            select_reason="it breaks nothing (no finding that makes forward or backward raise), and only='breaking' "
                          "keeps harmless in-place ops; only='all' rewrites it")
        pass_(fixed)
        # Step 5: dtypes.
        cast_back: set[str] = set()
        if args is not None and pass_.rewrites:
            before = _dtypes(traced, args)
            if before is not None:
                notes += _repair_dtypes(fixed, before, pass_, args, cast_back)
        elif pass_.rewrites:
            notes.append("no example inputs: rewrites assume the operands of each in-place op have its dtype "
                         "(h_f16 += x_f32 keeps float16, h_f16 + x_f32 does not); pass example inputs to check")
        # Step 6: verification.
        verification = None
        if verify and args is not None and not has_real_tensors(args):
            notes.append("not verified: the example inputs are shapes (fxgrad.spec) or meta tensors, without values")
        elif verify and args is not None:
            breaking_left = [lf for lf in pass_.left if any(c in BREAKING for c in codes.get(lf.node, ()))]
            # a run capture is the model for these inputs, in the graph's own output structure (a cache object the
            # model also returns is not part of it): the fixed graph is verified against that graph
            reference = traced if captured.how == "run" else model
            leaf_writes = pass_.leaf_writes
            if pass_.detached_aliases or leaf_writes:
                # The original cannot be run as it is (or functionalize misreads it): eager with save-time values
                # for saved tensors and stand-ins for written leaves is what the out-of-place program means.
                reference = decoupled(reference)
                notes.append(
                    "verified against the original run by fxgrad.decoupled: eager, except that backward reads every "
                    "saved tensor as it was when saved and a leaf written in place is replaced by a clone from that "
                    "write on (what the out-of-place program means; "
                    + ("the original raises in forward, so it cannot be its own reference; " if leaf_writes else "")
                    + "torch.func.functionalize detaches the values written through a .detach()/.data alias from "
                    "the base's history and does not cut the gradient at a .data read, eager does)")
            verification = run_verification(reference, fixed, args, rtol=rtol, atol=atol, rewrites=pass_.rewrites,
                                            left=breaking_left, model_name=name)
            if reference is not model and reference is not traced and verification.reference == "eager":
                verification = dataclasses.replace(verification, reference="decoupled")
        elif verify:
            notes.append("not verified: pass example inputs to compare outputs and gradients with the original")
        # Step 7: source edits, only where the rewrites were verified.
        edits, declined = plan_source(model, traced, pass_.rewrites, cast_back=cast_back,
                                      verified=verification is not None and verification.ok)
    # Step 8: the record.
    record = FixRecord(name, mode, unsafe, tuple(pass_.rewrites), tuple(pass_.left), verification, tuple(notes),
                       captured.how, edits, declined)
    fixed.meta[META_KEY] = record
    log.debug("fixed %s: %d rewrites", name, len(record.rewrites))
    return fixed

