"""A :class:`~fxgrad.report.Report` as SARIF 2.1.0, the format GitHub code scanning and IDEs read.

Every code of :data:`fxgrad.rules.RULES` is described in ``tool.driver.rules`` (so a viewer can explain a code
that this run did not report), every finding becomes a ``result`` whose physical location is the user's line,
with a URI relative to ``root`` and ``uriBaseId: "%SRCROOT%"`` so that code scanning shows it on the right line
of the repository. Lines outside ``root`` keep an absolute ``file://`` URI. Findings silenced with
``# fxgrad: ignore[...]`` are kept with an ``inSource`` suppression, as SARIF intends, so viewers can hide them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import __version__
from .capture import SourceLocation
from .report import Finding, Report
from .rules import PARAM_CODES, RULES, Rule

__all__ = ["SARIF_SCHEMA", "SRCROOT", "to_sarif"]

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"
_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
_FAMILY = {"cut": "gradient-cut", "write": "in-place", "param": "parameter"}


def _rule(rule: Rule) -> dict[str, Any]:
    silence = f"Silence it on purpose with `# fxgrad: ignore[{rule.code}]` on the line, or `--ignore {rule.code}`."
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": f"{rule.summary}. {rule.why}"},
        "help": {"text": f"{rule.why} {silence}", "markdown": f"{rule.why}\n\n{silence}"},
        "defaultConfiguration": {"level": _LEVEL[rule.severity]},
        "properties": {"tags": ["pytorch", "autograd", _FAMILY[rule.family]],
                       "precision": "high" if rule.severity == "error" else "medium",
                       "problem.severity": rule.severity, "fixable": rule.fixable},
    }


def _artifact(file: str, root: Path) -> dict[str, Any] | None:
    if file.startswith("<"):  # generated code has no file a viewer could open
        return None
    path = Path(file).resolve()
    try:
        rel = path.relative_to(root)
    except ValueError:
        return {"uri": path.as_uri()}
    return {"uri": quote(rel.as_posix()), "uriBaseId": SRCROOT}


def _physical(loc: SourceLocation, root: Path) -> dict[str, Any] | None:
    artifact = _artifact(loc.file, root)
    if artifact is None:
        return None
    region: dict[str, Any] = {"startLine": max(loc.line, 1)}
    if loc.code:
        region["snippet"] = {"text": loc.code}
    return {"artifactLocation": artifact, "region": region}


def _location(loc: SourceLocation | None, module: str, root: Path) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    physical = _physical(loc, root) if loc is not None else None
    if physical is not None:
        out["physicalLocation"] = physical
    if module:
        out["logicalLocations"] = [{"fullyQualifiedName": module, "kind": "module"}]
    return out or None


def _result(f: Finding, index: dict[str, int], root: Path, fallback: SourceLocation | None) -> dict[str, Any]:
    text = f.message
    if f.params and f.code not in PARAM_CODES:
        text += f" (parameters: {', '.join(f.params)})"
    result: dict[str, Any] = {
        "ruleId": f.code,
        "ruleIndex": index[f.code],
        "level": _LEVEL.get(f.severity, "warning"),
        "message": {"text": text},
    }
    loc = _location(f.location or fallback, f.module, root)
    if loc is not None:
        result["locations"] = [loc]
    related = []
    for i, r in enumerate(f.related):
        phys = _physical(r.location, root) if r.location is not None else None
        if phys is not None:
            related.append({"id": i + 1, "physicalLocation": phys, "message": {"text": f"{r.role} `{r.node}`"}})
    if related:
        result["relatedLocations"] = related
    key = "|".join((f.code, f.module, f.location.code if f.location else ",".join(f.params)))
    result["partialFingerprints"] = {"fxgrad/v1": hashlib.sha256(key.encode()).hexdigest()[:32]}
    result["properties"] = {"node": f.node, "params": list(f.params), "verdict": f.verdict,
                            "fixable": f.fixable, "backendDependent": f.backend_dependent}
    return result


def to_sarif(report: Report, *, root: Path | str | None = None,
             fallback: SourceLocation | None = None) -> dict[str, Any]:
    """The SARIF log of one report.

    ``root`` (default: the current directory) is what ``%SRCROOT%`` stands for; in CI it is the repository
    checkout. ``fallback`` is where findings without a line of their own are shown (the model's class
    definition), since code scanning drops results without a location.
    """
    base = Path(root if root is not None else os.getcwd()).resolve()
    index = {r.code: i for i, r in enumerate(RULES)}
    results = [_result(f, index, base, fallback) for f in report.sorted_findings()]
    for f in report.suppressed:
        if f in report.accepted:  # accepted on purpose; findings left out by --select/--ignore are not results
            result = _result(f, index, base, fallback)
            result["suppressions"] = [{"kind": "inSource"}]
            results.append(result)
    notifications = [{"level": "note", "message": {"text": n}} for n in report.notes]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "fxgrad", "version": __version__, "semanticVersion": __version__,
                                "rules": [_rule(r) for r in RULES]}},
            "originalUriBaseIds": {SRCROOT: {"uri": base.as_uri().rstrip("/") + "/"}},
            "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notifications}],
            "results": results,
            "properties": {"model": report.model, "mode": report.mode},
        }],
    }
