"""fxgrad: find, before training, why PyTorch gradients go wrong, with the line of your code that causes it."""

from __future__ import annotations

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
