"""``# fxgrad: ignore[FXG001]`` comments, like ``# noqa``: accepting a finding deliberately, on its line.

Intentional stop-gradients are common (target networks, straight-through estimators ``x + (q - x).detach()``,
GAN discriminator steps); a comment on the line says so where the next reader looks, and survives refactors
that move the line.
"""

from __future__ import annotations

import re

from .report import Finding

__all__ = ["is_suppressed", "suppressed_codes"]

_COMMENT = re.compile(r"#\s*fxgrad:\s*ignore(?:\[(?P<codes>[A-Za-z0-9_,\s]*)\])?", re.IGNORECASE)


def suppressed_codes(code_line: str) -> set[str] | None:
    """Codes silenced on this source line: ``None`` when nothing is, an empty set when everything is."""
    m = _COMMENT.search(code_line)
    if m is None:
        return None
    codes = m.group("codes")
    if not codes:
        return set()
    return {c.strip().upper() for c in codes.split(",") if c.strip()}


def is_suppressed(finding: Finding) -> bool:
    if finding.location is None:
        return False
    codes = suppressed_codes(finding.location.code)
    if codes is None:
        return False
    return not codes or any(finding.code.startswith(c) for c in codes)
