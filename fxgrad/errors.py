"""Exceptions that fxgrad raises.

Every user-facing failure is an :class:`FxgradError` whose message is one plain sentence, the user's source
line when one is involved, and a ``Hint:``; the underlying exception is always chained (``raise ... from e``) so
nothing is lost for debugging.
"""

from __future__ import annotations

__all__ = ["AnalysisError", "FxgradError", "InputError", "TraceError", "VerificationError"]


class FxgradError(Exception):
    """Base class: catch this to handle every error fxgrad raises on purpose."""


class TraceError(FxgradError):
    """The model could not be captured as a ``torch.fx`` graph."""


class InputError(FxgradError):
    """The arguments given to fxgrad (model, example inputs, options) are not usable."""


class AnalysisError(FxgradError):
    """An internal failure while analysing a node; the message names the node."""


class VerificationError(FxgradError):
    """A rewritten module does not compute the same outputs or gradients as the original."""
