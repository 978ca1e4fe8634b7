"""Accepting findings on purpose: ``# fxgrad: ignore[FXG001]`` comments, like ``# noqa``, and their consequences.

Intentional stop-gradients are common (target networks, frozen teachers, GAN discriminator steps); a comment says so
where the next reader looks, and survives refactors that move the line. A reader expects three things of it:

1. On a finding's own line it accepts that finding (all codes without ``[...]``).
2. On a ``with torch.no_grad():`` (or ``inference_mode``, ``set_grad_enabled(False)``) line it accepts the findings
   of the block it opens.
3. An accepted cut accepts its consequence: the parameters that lose their gradient only there are frozen on
   purpose (status ``frozen``), not an FXG201 error. A parameter that loses its gradient at a cut nobody accepted
   is still reported.
"""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.fx
from torch.autograd import grad_mode

from .capture import SourceLocation, node_origin
from .report import Finding, Report
from .rules import CUT_CODES, RULES_BY_CODE

__all__ = ["accept_intended_cuts", "is_suppressed", "region_openers", "suppressed_codes"]

_COMMENT = re.compile(r"#\s*fxgrad:\s*ignore(?:\[(?P<codes>[A-Za-z0-9_,\s]*)\])?", re.IGNORECASE)
_NO_GRAD_ENTRIES = (grad_mode._enter_inference_mode,)


def suppressed_codes(code_line: str) -> set[str] | None:
    """Codes silenced on this source line: ``None`` when nothing is, an empty set when everything is."""
    m = _COMMENT.search(code_line)
    if m is None:
        return None
    codes = m.group("codes")
    if not codes:
        return set()
    return {c.strip().upper() for c in codes.split(",") if c.strip()}


def _silences(line: SourceLocation | None, code: str) -> bool:
    codes = suppressed_codes(line.code) if line is not None else None
    return codes is not None and (not codes or any(code.startswith(c) for c in codes))


def is_suppressed(finding: Finding, opener: SourceLocation | None = None) -> bool:
    """Step 1, and step 2 when ``opener`` is the line that opened the no-grad block the finding is in."""
    return _silences(finding.location, finding.code) or _silences(opener, finding.code)


def region_openers(gm: torch.fx.GraphModule) -> dict[str, SourceLocation]:
    """Node name -> the line that opened the grad-disabled block it runs in: the most recent grad-mode node
    before it (``_set_grad_enabled(False)``, ``_enter_inference_mode``), when that one disables grad. One walk."""
    out: dict[str, SourceLocation] = {}
    opener: SourceLocation | None = None
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch._C._set_grad_enabled:
            opener = node_origin(node).location if node.args and node.args[0] is False else None
        elif node.op == "call_function" and node.target in _NO_GRAD_ENTRIES:
            opener = node_origin(node).location
        elif node.op == "call_function" and node.target is grad_mode._exit_inference_mode:
            opener = None
        elif opener is not None:
            out[node.name] = opener
    return out


def accept_intended_cuts(report: Report, ignore: tuple[str, ...] = ()) -> None:
    """Step 3: FXG201 findings anchored at an accepted cut (by a comment, a baseline, or ``ignore`` d codes) are
    accepted too, their parameters ``frozen``."""
    ignored = [f for f in report.suppressed if ignore and f.code.startswith(ignore)]
    cuts = {f.node: f for f in (*ignored, *report.accepted) if f.code in CUT_CODES}
    if not cuts:
        return
    kept: list[Finding] = [f for f in report.findings if not (f.code == "FXG201" and f.node in cuts)]
    moved = [f for f in report.findings if f.code == "FXG201" and f.node in cuts]
    for f in moved:
        report.suppressed.append(f)
        if cuts[f.node] in report.accepted:
            report.accepted.append(f)
    report.findings = kept
    for f in report.suppressed:  # moved here, or accepted on its own line too
        cut = cuts.get(f.node) if f.code == "FXG201" else None
        if cut is None:
            continue
        where = f" at {cut.location}" if cut.location else ""
        for name in f.params:
            status = report.params.get(name)
            if status is not None and status.status == "no-grad":
                report.params[name] = dataclasses.replace(
                    status, status="frozen", cause=f"frozen on purpose: the {RULES_BY_CODE[cut.code].name} cut "
                    f"`{cut.target}`{where} is accepted")
