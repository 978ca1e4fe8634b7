"""The training step, not only the model: the loss that reduces its output, and the optimizer that updates it.

A multi-task model whose loss uses one head leaves the other head without a gradient; a parameter that gets a
gradient but is in no optimizer group never trains; a parameter in the optimizer that never gets a gradient wastes
a slot and hides a bug. None of it shows at the model's output.

1. :class:`TrainingStep` is the model followed by the loss, as one module whose parameters, buffers and submodules
   *are* the model's (the same tables, so every qualified name is the model's own): both captures, the facts,
   the dry-run and the report run on it unchanged, through the lines of the user's loss function.
2. :func:`optimizer_findings` compares the optimizer's param groups with the parameters' verdicts: trainable
   parameters in no group (FXG204), parameters in a group that never get a gradient (FXG205), frozen parameters
   in a group (FXG206).
3. :func:`ddp_note` says which parameters would stop ``DistributedDataParallel``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .capture import SourceLocation
from .errors import InputError
from .report import Finding, Related, Report
from .rules import NO_PATH, RULE_FOR_STATUS, RULES_BY_CODE

__all__ = ["TrainingStep", "ddp_note", "loss_location", "mention_loss", "optimizer_findings", "param_groups",
           "training_step"]

#: statuses of a parameter whose ``.grad`` stays None after ``backward()``
_NO_GRADIENT = ("no-grad", "unused", "frozen")


class TrainingStep(nn.Module):
    """``loss(model(*inputs), *targets)`` as a module with the model's own parameter names (step 1)."""

    def __init__(self, model: nn.Module, loss: Callable[..., Any], targets: Sequence[Any] = ()) -> None:
        super().__init__()
        # the model's own tables: `step.encoder.weight` is `model.encoder.weight`, under the same name
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.training = model.training
        vars(self)["_fxgrad_model"] = model  # not a submodule: its children are this module's children
        vars(self)["_fxgrad_loss"] = loss
        vars(self)["_fxgrad_targets"] = tuple(targets)

    def step(self, *inputs: Any) -> Any:
        parts: dict[str, Any] = vars(self)
        output = parts["_fxgrad_model"].forward(*inputs)
        return parts["_fxgrad_loss"](output, *parts["_fxgrad_targets"])


def training_step(model: nn.Module, loss: Callable[..., Any], targets: Sequence[Any] = ()) -> TrainingStep:
    """A :class:`TrainingStep` whose ``forward`` takes the model's own positional parameters, defaults included:
    symbolic tracing makes one placeholder per named parameter and cannot trace ``*inputs``."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [f"{p.name}" for p in params]
    defaults = {f"_default_{i}": p.default for i, p in enumerate(params) if p.default is not p.empty}
    spelled = [f"{n}=_default_{i}" if f"_default_{i}" in defaults else n for i, n in enumerate(names)]
    source = (f"def forward(self, {', '.join(spelled)}):\n"
              f"    return self.step({', '.join(names)})\n")
    namespace: dict[str, Any] = dict(defaults)
    exec(compile(source, f"<fxgrad training step of {type(model).__name__}>", "exec"), namespace)
    cls = type("TrainingStep", (TrainingStep,), {"forward": namespace["forward"], "__module__": __name__})
    return cls(model, loss, targets)


def loss_location(loss: Callable[..., Any]) -> SourceLocation | None:
    """Where the user's loss function is defined (the FXG201 of a head the loss ignores points there)."""
    try:
        fn = inspect.unwrap(loss)
        code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
        if code is None:
            return None
        lines, start = inspect.getsourcelines(fn if hasattr(fn, "__code__") else type(fn).__call__)
        return SourceLocation(code.co_filename, start, code.co_name, lines[0].strip())
    except (OSError, TypeError):
        return None


def mention_loss(report: Report, loss: Callable[..., Any]) -> None:
    """A parameter whose result never reaches the loss: say that it is the loss that leaves it out, and where."""
    where = loss_location(loss)
    name = getattr(loss, "__name__", type(loss).__name__)
    at = f" ({where})" if where else ""
    out: list[Finding] = []
    for f in report.findings:
        if f.code == RULE_FOR_STATUS["no-grad"].code and NO_PATH in f.message:  # (the rule renders it as its why)
            f = f._replace(message=f"{f.message.rstrip('.')}: the loss `{name}`{at} does not use it.",
                           related=(*f.related, Related("loss", "", where)) if where else f.related)
            for p in f.params:
                report.params[p] = dataclasses.replace(report.params[p], cause=f"the loss `{name}`{at} does not "
                                                       "use its result")
        out.append(f)
    report.findings = out


def param_groups(optimizer: Any) -> list[list[torch.Tensor]]:
    """The parameter lists of a ``torch.optim.Optimizer``, of several (a GAN's two), of ``param_groups``, or of a
    list of parameters."""
    if isinstance(optimizer, (list, tuple)) and optimizer and all(
            isinstance(o, torch.optim.Optimizer) for o in optimizer):
        return [group for o in optimizer for group in param_groups(o)]
    source: Any = optimizer.param_groups if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    if isinstance(source, torch.Tensor) or not isinstance(source, Iterable):
        raise InputError(f"optimizer= takes a torch.optim.Optimizer or its param_groups, not "
                         f"{type(optimizer).__name__}. Hint: pass the optimizer you train with, e.g. "
                         "optimizer=torch.optim.AdamW(model.parameters()).")
    groups: list[Any] = list(source)
    if groups and all(isinstance(g, torch.Tensor) for g in groups):
        return [list(groups)]
    out: list[list[torch.Tensor]] = []
    for g in groups:
        params: Any = g.get("params", []) if isinstance(g, dict) else g
        out.append([params] if isinstance(params, torch.Tensor) else list(params))
    return out


def optimizer_findings(report: Report, model: nn.Module, optimizer: Any) -> list[Finding]:
    """Step 2: what the optimizer will do with each parameter, against the report's gradient verdicts."""
    groups = param_groups(optimizer)
    group_of = {id(p): i for i, group in enumerate(groups) for p in group}
    missing: list[str] = []
    idle: dict[int, list[str]] = {}
    frozen: dict[int, list[str]] = {}
    for name, p in model.named_parameters():
        group, verdict = group_of.get(id(p)), report.params.get(name)
        status = verdict.status if verdict is not None else "no-grad"
        if group is None and p.requires_grad and status not in _NO_GRADIENT:
            missing.append(name)  # it gets a gradient in this step, and nothing applies it
        elif group is not None and not p.requires_grad:
            frozen.setdefault(group, []).append(name)
        elif group is not None and status in ("no-grad", "unused"):  # "frozen": cut off on purpose, accepted
            idle.setdefault(group, []).append(name)
    out: list[Finding] = []
    if missing:
        out.append(_finding("FXG204", missing, params=_names(missing), be=_are(missing)))
    for group, names in idle.items():
        causes = {report.params[n].cause for n in names if report.params[n].cause}
        why = f" ({'; '.join(sorted(causes))})" if causes else ""
        out.append(_finding("FXG205", names, params=_names(names), be=_are(names), group=group, why=why))
    for group, names in frozen.items():
        out.append(_finding("FXG206", names, params=_names(names), be=_are(names), group=group))
    return out


def _finding(code: str, names: list[str], **fields: object) -> Finding:
    """The finding of rule ``code``, its message rendered from the rule's template."""
    rule = RULES_BY_CODE[code]
    message = rule.render("", **fields)
    owners = sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in names})
    return Finding(code=code, severity=rule.severity, node="", target="optimizer", message=message,
                   module=owners[0] if len(owners) == 1 else "", location=None, params=tuple(sorted(names)))


def _names(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _are(names: list[str]) -> str:
    return "is" if len(names) == 1 else "are"


def ddp_note(report: Report, model: nn.Module) -> str | None:
    """Step 3: ``DistributedDataParallel`` expects a gradient for every parameter that requires one."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    idle = sorted(n for n, s in report.params.items() if s.status in _NO_GRADIENT and n in trainable)
    if not idle:
        return None
    return (f"DistributedDataParallel: {_names(idle)} require grad but get no gradient, so DDP fails with \"Expected "
            "to have finished reduction in the prior iteration before starting a new one\" unless it is built with "
            "find_unused_parameters=True (or they are frozen with requires_grad_(False)).")
