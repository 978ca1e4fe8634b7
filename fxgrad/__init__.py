"""fxgrad: find, before training, why PyTorch gradients go wrong, with the line of your code that causes it.

The public names are imported on first use (PEP 562): ``import fxgrad`` alone does not import torch, so the
command line answers ``fxgrad --help`` and ``--version`` at once. ``fxgrad.analyze`` and the rest behave as
ordinary attributes; type checkers see the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .analysis import analyze
    from .capture import FaithfulTracer, trace
    from .errors import AnalysisError, FxgradError, InputError, TraceError, VerificationError
    from .fixing import FixRecord, fix
    from .inputs import Spec, spec
    from .report import Finding, ParamStatus, Report
    from .rules import RULES
    from .watch import FxgradWarning, watch

__all__ = [
    "RULES",
    "AnalysisError",
    "FaithfulTracer",
    "Finding",
    "FixRecord",
    "FxgradError",
    "FxgradWarning",
    "InputError",
    "ParamStatus",
    "Report",
    "Spec",
    "TraceError",
    "VerificationError",
    "analyze",
    "fix",
    "spec",
    "trace",
    "watch",
]

__version__ = "0.1.0"

#: where each public name lives (the module is imported when the name is first read)
_HOMES = {
    "analyze": "analysis",
    "FaithfulTracer": "capture", "trace": "capture",
    "AnalysisError": "errors", "FxgradError": "errors", "InputError": "errors", "TraceError": "errors",
    "VerificationError": "errors",
    "FixRecord": "fixing", "fix": "fixing",
    "Spec": "inputs", "spec": "inputs",
    "Finding": "report", "ParamStatus": "report", "Report": "report",
    "RULES": "rules",
    "FxgradWarning": "watch", "watch": "watch",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
