"""``fxgrad.watch``: name the culprit line when ``backward()`` fails inside the user's own training loop.

Most people meet these bugs inside a loop they already have. Autograd's error names neither the line that saved
the tensor nor the line that overwrote it, and anomaly mode makes every step several times slower to name only
the op whose backward failed. ``watch`` costs almost nothing until something goes wrong:

1. On entry, one forward pre-hook on the model remembers the last inputs it saw (one assignment; their shapes,
   dtypes and devices are read only when needed, and on exit only those are kept; nothing runs per op). Until the
   first check (below), the forward hook also asks autograd for one callback at the end of the next
   ``backward()``.
2. When an autograd error leaves the block (``backward()`` raising "modified by an inplace operation", "does not
   require grad and does not have a grad_fn", ...), fxgrad analyses the model with the remembered shapes (the
   dry-run on meta tensors: no FLOPs, the model untouched) and raises the same exception type, chained to the
   original, with the lines that saved and overwrote the tensor, the parameters affected and the fix.
3. At the first ``optimizer.step()`` of an optimizer of the model, the parameters it is about to update whose
   ``.grad`` is None get one warning that names the line that cuts each off (a GAN's discriminator step does not
   warn about the generator). With no optimizer, the trainable parameters are checked after the first
   ``backward()``, at the next forward (or on exit).
4. On exit, every hook is removed.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import threading
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils import _pytree as pytree

from .capture import _is_library_file
from .errors import FxgradError
from .inputs import Spec
from .report import Finding, Report

__all__ = ["FxgradWarning", "watch"]

log = logging.getLogger(__name__)

#: autograd errors that fxgrad can explain from the model's graph
_EXPLAINED = ("modified by an inplace operation", "does not require grad and does not have a grad_fn",
              "leaf Variable that requires grad", "Inference tensors cannot be saved for backward",
              "derivative for", "is not implemented", "Trying to backward through the graph a second time",
              "negative slope")


class FxgradWarning(UserWarning):
    """A gradient problem fxgrad found while watching a training loop (parameters without gradient)."""


def _spec(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Spec(tuple(value.shape), value.dtype, str(value.device), value.requires_grad)
    return value


class watch(contextlib.ContextDecorator):
    """``with fxgrad.watch(model):`` around a training loop (or ``@fxgrad.watch(model)`` on a step function, or
    ``w = fxgrad.watch(model).start()`` ... ``w.stop()`` from a trainer's callbacks). See the module docstring.

    ``analyze_kwargs`` are passed to :func:`fxgrad.analyze` when something goes wrong (``loss=``, ``capture=``).
    """

    def __init__(self, model: nn.Module, **analyze_kwargs: Any) -> None:
        if not isinstance(model, nn.Module):
            raise FxgradError(f"fxgrad.watch needs an nn.Module, got {type(model).__name__}. Hint: "
                              "with fxgrad.watch(model): ...")
        self.model = model
        self.analyze_kwargs = analyze_kwargs
        self._last: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.checked = False
        self._saw_backward = False
        self._handles: list[Any] = []
        self._lock = threading.Lock()

    # -- step 1 and 4: hooks ------------------------------------------------------------------------------------
    def start(self) -> watch:
        self._handles.append(self.model.register_forward_pre_hook(self._remember, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._after_forward))
        self._handles.append(register_optimizer_step_pre_hook(self._before_step))
        return self

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._saw_backward and not self.checked:
            self._check_grads(dict(self.model.named_parameters()))
        self._last = self.last_inputs  # shapes only: no tensor of the user's is kept after the loop

    def __enter__(self) -> watch:
        return self.start()

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        self.stop()
        if exc is not None and isinstance(exc, RuntimeError) and any(m in str(exc) for m in _EXPLAINED):
            explained = self.explain(exc)
            if explained is not None:
                raise explained from exc
        return False

    def _remember(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # one assignment per forward: the shapes are read only when something goes wrong (the batch is alive
        # until the next forward anyway; stop() keeps only its shapes)
        if self._saw_backward and not self.checked:  # a backward and no step of an optimizer of this model
            self._check_grads(dict(self.model.named_parameters()))
        self._last = (args, kwargs)

    @property
    def last_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The last inputs the model saw, as shapes (:class:`~fxgrad.inputs.Spec`): (args, kwargs)."""
        if self._last is None:
            return None
        args, kwargs = self._last
        return pytree.tree_map(_spec, args), pytree.tree_map(_spec, kwargs)

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.checked or not torch.is_grad_enabled():
            return
        out = next((t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor) and t.requires_grad), None)
        if out is None:
            return

        def at_end_of_backward(grad: torch.Tensor) -> None:
            torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)

        out.register_hook(at_end_of_backward)

    # -- step 3: parameters without gradient --------------------------------------------------------------------
    def _after_backward(self) -> None:
        self._saw_backward = True  # checked at the first optimizer step, or at the next forward if none comes

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.checked:  # every later step: nothing
            return
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        mine = {n: p for n, p in self.model.named_parameters() if id(p) in stepped}
        if mine:  # an optimizer of this model: the parameters it is about to update
            self._check_grads(mine)

    def _check_grads(self, params: Mapping[str, torch.Tensor]) -> None:
        with self._lock:
            if self.checked:
                return
            self.checked = True
        missing = [n for n, p in params.items() if p.requires_grad and p.grad is None]
        if not missing:
            return
        report = self._analyse()
        lines = []
        for name in missing:
            status = report.params.get(name) if report is not None else None
            cause = f": {status.cause}" if status is not None and status.cause else ""
            lines.append(f"  {name}{cause}")
        warnings.warn(FxgradWarning(f"fxgrad: {len(missing)} trainable parameter(s) got no gradient in the first "
                                    "backward(), so they never train:\n" + "\n".join(lines)),
                      stacklevel=_user_stacklevel())

    # -- step 2: explaining a failed backward -------------------------------------------------------------------
    def _analyse(self) -> Report | None:
        from .analysis import analyze

        if self.last_inputs is None:
            return None
        args, kwargs = self.last_inputs
        inputs: Any = args
        if kwargs:  # a keyword call: forward's names for the positional ones too (fxgrad.inputs.bind_keywords)
            names = list(inspect.signature(self.model.forward).parameters)
            inputs = {**dict(zip(names, args, strict=False)), **kwargs}
        try:
            return analyze(self.model, inputs, **self.analyze_kwargs)
        except FxgradError as e:
            log.info("fxgrad.watch could not analyse %s: %s", type(self.model).__name__, e)
            return None

    def explain(self, exc: BaseException) -> BaseException | None:
        """The same exception type with fxgrad's explanation of ``exc`` added, or None when it has none."""
        report = self._analyse()
        if report is None:
            return None
        text = _explanation(str(exc), report, self.model)
        if not text:
            return None
        try:
            return type(exc)(f"{exc}\n\n{text}")
        except TypeError:  # an exception type whose constructor takes something else
            return RuntimeError(f"{exc}\n\n{text}")


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the user's line (``optimizer.step()``, ``backward()``)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _is_library_file(frame.f_code.co_filename, ()):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


def _line(f: Finding) -> str:
    return f"{f.location} `{f.location.code}`" if f.location is not None else f"module `{f.module or '<model>'}`"


def _explanation(message: str, report: Report, model: nn.Module) -> str:
    """What fxgrad found that explains ``message``: the findings of the kinds that raise it, with their lines."""
    kinds: dict[str, tuple[str, ...]] = {
        "modified by an inplace operation": ("FXG102", "FXG106"),
        "does not require grad": ("FXG001", "FXG002", "FXG003", "FXG004", "FXG005", "FXG006", "FXG008", "FXG201"),
        "leaf Variable": ("FXG103",),
        "Inference tensors": ("FXG010",),
        "derivative for": ("FXG009",),
        "is not implemented": ("FXG009",),
    }
    codes = next((c for key, c in kinds.items() if key in message), ())
    found = [f for f in report.findings if f.code in codes] or report.errors
    if not found:
        return ""
    out = ["fxgrad: what causes it (found by analysing the model with the shapes of its last inputs):"]
    for f in found:
        out.append(f"  {f.code} at {_line(f)}")
        out.append(f"      {f.message}")
        for r in f.related:
            if r.location is not None:
                out.append(f"      {r.role}: {r.location} `{r.location.code}`")
    fixable = [f for f in found if f.fixable]
    if fixable:
        out.append(f"  fix: make the in-place op out-of-place at {', '.join(_line(f) for f in fixable)} "
                   f"(fxgrad.fix(model, inputs) rewrites and verifies it; `fxgrad fix` on the command line).")
    return "\n".join(out)

