"""What activation checkpointing changes about in-place writes into saved tensors.

``torch.utils.checkpoint`` does not keep what a segment's ops save: backward runs the segment again and reads the
recomputed tensors. The run capture records a segment inline and marks its nodes (``CHECKPOINT_KEY``), so the
facts and the dry-run see the ops as if nothing were checkpointed; this pass corrects their in-place verdicts to
what eager does. Measured with eager PyTorch (``tests/test_record.py`` checks each against a real backward):

1. A write *after* a segment into a tensor saved inside it (``h = checkpoint(f, x); h.mul_(2)`` with ``f`` saving
   its output): backward reads the recomputed tensor and runs correctly, reentrant or not.
2. A write *inside* a reentrant segment into a tensor saved inside it: the recomputation runs its own backward,
   which raises "modified by an inplace operation" as without checkpointing. The finding stays.
3. A write inside a non-reentrant segment (``use_reentrant=False``): backward never raises. The recomputation
   stops as soon as it has recomputed every saved tensor; when the write is the segment's last op it never runs
   again and the gradients are right; when ops follow it, the write runs again over the
   recomputed tensor and the gradients are silently wrong (FXG106).
"""

from __future__ import annotations

import torch
import torch.fx

from .capture import CHECKPOINT_KEY, Segment
from .report import Finding, Report
from .rules import RULE_FOR_FACT

__all__ = ["apply_checkpointing"]

_SAVED_BY = "saved by"
#: the rules this module re-judges: backward raises on a saved tensor, is legal, or is silently wrong
_RAISES, _LEGAL, _SILENT = (RULE_FOR_FACT[fact] for fact in ("overwritten", "target_live", "silently_written"))


def apply_checkpointing(report: Report, gm: torch.fx.GraphModule) -> None:
    """Correct ``report``'s FXG102 findings for the checkpoint segments of ``gm`` (see the module docstring)."""
    if not any(f.code == _RAISES.code for f in report.findings):
        return
    segments: dict[str, Segment] = {}
    last: dict[Segment, int] = {}
    order: dict[str, int] = {}
    for i, n in enumerate(gm.graph.nodes):
        order[n.name] = i
        seg = n.meta.get(CHECKPOINT_KEY)
        if isinstance(seg, Segment):
            segments[n.name] = seg
            last[seg] = i
    if not segments:
        return
    kept: list[Finding] = []
    for f in report.findings:
        savers = [r.node for r in f.related if r.role == _SAVED_BY]
        if f.code != _RAISES.code or not savers:
            kept.append(f)
            continue
        writer = segments.get(f.node)
        verdicts = [_verdict(segments.get(s), writer, order[f.node] < last.get(writer, -1) if writer else False)
                    for s in savers]
        if "raises" in verdicts:
            kept.append(f)
        elif "silent" in verdicts:
            kept.append(_silently_wrong(f))
        else:
            kept.append(_legal(f))
    report.findings = kept


def _verdict(saver: Segment | None, writer: Segment | None, ops_follow: bool) -> str:
    if saver is None:
        return "raises"  # saved outside any segment: kept as in eager
    if saver != writer:
        return "recomputed"  # step 1
    if saver.reentrant:
        return "raises"  # step 2
    return "silent" if ops_follow else "recomputed"  # step 3


def _legal(f: Finding) -> Finding:
    rule = _LEGAL
    message = rule.render("checkpointed", op=f.target)
    return f._replace(code=rule.code, severity=rule.severity, message=message, fixable=rule.fixable, related=())


def _silently_wrong(f: Finding) -> Finding:
    rule = _SILENT
    message = rule.render("checkpointed", op=f.target)
    return f._replace(code=rule.code, severity=rule.severity, message=message, fixable=rule.fixable)
