"""Which capture runs: the faithful tracer, the run capture, or the tracer first and the run when it fails.

``capture="trace"`` (:mod:`fxgrad.capture`) needs no inputs and holds every branch of the program, but cannot
follow Python that reads tensor values. ``capture="run"`` (:mod:`fxgrad.record`) follows any model that runs,
for the branches the example inputs take. ``"auto"`` traces and, when tracing fails and inputs are given, runs.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx
from torch import nn

from .capture import trace
from .errors import InputError, TraceError
from .record import record

__all__ = ["CAPTURES", "Captured", "capture", "unwrap"]

log = logging.getLogger(__name__)

Capture = Literal["auto", "trace", "run"]
CAPTURES: tuple[str, ...] = ("auto", "trace", "run")


@dataclass(frozen=True)
class Captured:
    """A captured graph and how it was made, in words the report can show."""

    gm: torch.fx.GraphModule
    how: Literal["trace", "run"]
    #: why the run capture ran instead of the tracer ("" when it was asked for, or the tracer ran)
    fallback: str = ""

    @property
    def note(self) -> str:
        if self.how == "trace":
            return ""
        why = f" because {self.fallback}" if self.fallback else ""
        return (f"captured by running the model on the example inputs{why}: the verdicts hold for the branches "
                "these inputs took.")


def capture(
    model: nn.Module,
    example_inputs: Any,
    how: str = "auto",
    *,
    concrete_args: dict[str, Any] | None = None,
    tracer: type[torch.fx.Tracer] | torch.fx.Tracer | None = None,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
) -> Captured:
    """Capture ``model`` the way ``how`` says; see the module docstring."""
    if how not in CAPTURES:
        raise InputError(f"capture must be one of {', '.join(CAPTURES)}, not {how!r}.")
    if how == "run":
        if example_inputs is None:
            raise InputError(f"capture=\"run\" runs {type(model).__name__} to capture it, so it needs example "
                             "inputs. Hint: pass them, e.g. analyze(model, torch.randn(8, 3, 32, 32)).")
        return Captured(record(model, example_inputs), "run")
    if concrete_args is None and example_inputs is not None:
        concrete_args = _none_arguments(model, example_inputs)
    try:
        return Captured(trace(model, concrete_args, tracer=tracer, leaf_modules=leaf_modules), "trace")
    except TraceError as e:
        if how == "trace":
            raise
        hint = getattr(e, "hint", "")
        if example_inputs is None:
            if getattr(e, "user_error", False):
                raise  # the model's own code raised: running it would not help
            text = str(e).replace(hint, "").rstrip()
            raise TraceError(f"{text} Hint: pass example inputs (--input / --inputs, or analyze(model, inputs)): "
                             "fxgrad then captures the model by running it.") from e
        log.info("tracing failed, capturing by running: %s", e)
        where = getattr(e, "location", None)
        return Captured(record(model, example_inputs), "run",
                        f"tracing stops at {where}: `{where.code}`" if where else str(e).replace(hint, "").rstrip())


def _none_arguments(model: nn.Module, example_inputs: Any) -> dict[str, Any] | None:
    """Arguments the example inputs pass as ``None`` (``mask=None``): concrete for the tracer, which would otherwise
    trace them as tensors and take the `is not None` branch."""
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not any(a is None for a in args):
        return None
    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return None
    return {names[i]: None for i, a in enumerate(args) if a is None and i < len(names)} or None


def unwrap(model: Any) -> Any:
    """The user's own module inside a ``torch.compile`` wrapper: fxgrad analyses that, and never runs the
    compiled wrapper (which would compile, or recompile, the user's model)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(model, nn.Module) and isinstance(inner, nn.Module) else model
