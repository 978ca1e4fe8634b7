"""``assert_gradients_flow`` for users' own test suites.

One line in a test keeps a model honest as it changes::

    from fxgrad.testing import assert_gradients_flow

    def test_every_parameter_trains():
        assert_gradients_flow(MyNet(), (torch.randn(2, 3, 32, 32),), allow=("backbone.*",))

It fails (``AssertionError`` with the rendered report) when ``backward()`` would raise, when gradients would be
silently wrong, or when a trainable parameter would get no gradient, only zeros, or is never used; warnings
that change nothing for training (e.g. a harmless in-place op) do not fail it. Deliberate ones are accepted
with ``allow``: codes or prefixes (``"FXG201"``, ``"FXG2"``), parameter names (``fnmatch`` patterns,
``"backbone.*"``) or module prefixes (``"backbone"``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from .analysis import analyze
from .report import Finding, Report

__all__ = ["assert_gradients_flow"]

_CODE = re.compile(r"^FXG\d{0,3}$", re.IGNORECASE)
_STATUS_CODE = {"no-grad": "FXG201", "zero-grad": "FXG202", "unused": "FXG203"}


def _split_allow(allow: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    items = tuple(allow)
    if any(not isinstance(a, str) for a in items):
        raise TypeError("allow= takes codes (\"FXG201\") or parameter names (\"encoder.*\"), as strings")
    codes = tuple(a.upper() for a in items if _CODE.match(a))
    names = tuple(a for a in items if not _CODE.match(a))
    return codes, names


def _allowed_param(name: str, names: tuple[str, ...]) -> bool:
    """A glob (``"backbone.*"``), or a module prefix (``"backbone"``, ``"encoder.layers.0"``)."""
    return any(fnmatch.fnmatchcase(name, pattern) or name.startswith(f"{pattern}.") for pattern in names)


def _problems(report: Report, codes: tuple[str, ...], names: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for f in report.errors:
        if codes and f.code.startswith(codes):
            continue
        if f.params and all(_allowed_param(p, names) for p in f.params):
            continue
        out.append(_describe(f))
    # a parameter is reported once: by its error above, or accepted with its finding by a comment on the line
    reported = {p for f in (*report.errors, *report.suppressed) if f.code in _STATUS_CODE.values() for p in f.params}
    for p in report.params.values():
        code = _STATUS_CODE.get(p.status)
        if code is None or p.name in reported or (codes and code.startswith(codes)) or _allowed_param(p.name, names):
            continue
        out.append(f"{code} {p.name}: {p.status}" + (f" ({p.cause})" if p.cause else ""))
    return out


def _describe(f: Finding) -> str:
    return f"{f.code} {f.where}: {f.message}"


def assert_gradients_flow(model: nn.Module, example_inputs: Sequence[Any] | Any | None, *,
                          allow: Iterable[str] = (), **analyze_kwargs: Any) -> Report:
    """Fail unless ``backward()`` runs and every trainable parameter gets a real gradient.

    ``example_inputs`` are passed to :func:`fxgrad.analyze` (``None`` for a static check); other keyword
    arguments too (``concrete_args``, ``leaf_modules``, ``tracer``). Returns the report when the check passes,
    so a test can look further.
    """
    codes, names = _split_allow(allow)
    report = analyze(model, example_inputs, **analyze_kwargs)
    problems = _problems(report, codes, names)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise AssertionError(f"gradients do not flow in {report.model}:\n{listed}\n\n{report.render()}\n\n"
                             "Accept deliberate ones with allow=(\"FXG201\", \"encoder.*\"), or "
                             "`# fxgrad: ignore[CODE]` on the line.")
    return report
