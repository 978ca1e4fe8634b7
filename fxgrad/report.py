"""The records fxgrad reports, and how they are rendered (table, JSON).

One immutable :class:`Finding` per problem and one :class:`ParamStatus` per trainable parameter; a :class:`Report`
holds them and renders them. Nothing here knows how the facts were found.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from tabulate import tabulate

from .capture import SourceLocation

__all__ = ["SCHEMA_VERSION", "Finding", "ParamStatus", "Report"]

#: version of the JSON schema of :meth:`Report.to_dict`; bumped on any incompatible change.
SCHEMA_VERSION = 1

#: how bad a finding is: an error breaks training (backward raises, a parameter gets no gradient)
Severity = Literal["error", "warning", "info"]
#: how a verdict was reached: from fxgrad's op tables, or proved by running the graph on meta (or real) tensors
Verdict = Literal["static", "dry-run"]
#: a parameter's verdict; "frozen": cut off on purpose (an accepted cut)
ParamState = Literal["ok", "no-grad", "zero-grad", "unused", "frozen"]

_SEVERITY_ORDER: dict[Severity, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Related:
    """Another line involved in a finding (e.g. the op that saved the tensor an in-place op overwrites)."""

    role: str
    node: str
    location: SourceLocation | None


class Finding(NamedTuple):
    """One problem, at one node. An immutable record, made a named tuple rather than a frozen dataclass: the rules
    make one per in-place op, thousands on a large graph, and a tuple costs a fifth of the time to make and a third
    of the memory. A changed copy is ``finding._replace(verdict=...)``."""

    code: str
    severity: Severity
    node: str
    target: str
    message: str
    module: str = ""
    location: SourceLocation | None = None
    params: tuple[str, ...] = ()
    fixable: bool = False
    #: "static" (from the op tables) or "dry-run" (proved by running the graph on meta tensors)
    verdict: Verdict = "static"
    backend_dependent: bool = False
    related: tuple[Related, ...] = ()

    @property
    def where(self) -> str:
        return str(self.location) if self.location else (self.module or "<model>")

    def to_dict(self) -> dict[str, Any]:
        d = self._asdict()
        d["location"] = _loc_dict(self.location)
        d["related"] = [{"role": r.role, "node": r.node, "location": _loc_dict(r.location)} for r in self.related]
        d["params"] = list(self.params)
        return d


def _loc_dict(loc: SourceLocation | None) -> dict[str, Any] | None:
    if loc is None:
        return None
    return {"file": loc.file, "line": loc.line, "function": loc.function, "code": loc.code}


@dataclass(frozen=True)
class ParamStatus:
    name: str
    status: ParamState
    cause: str = ""
    location: SourceLocation | None = None
    verdict: Verdict = "static"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["location"] = _loc_dict(self.location)
        return d


@dataclass
class Report:
    model: str
    findings: list[Finding] = field(default_factory=list)
    params: dict[str, ParamStatus] = field(default_factory=dict)
    #: "static" when no example inputs were given; "dry-run" when verdicts were proved by running the graph
    mode: Verdict = "static"
    #: how the model became a graph: "trace" (symbolic, every branch) or "run" (the branches the inputs took)
    capture: Literal["trace", "run"] = "trace"
    notes: list[str] = field(default_factory=list)
    suppressed: list[Finding] = field(default_factory=list)
    #: the findings of ``suppressed`` that were accepted on purpose: a comment on their line or on the ``with``
    #: line of their block, or an accepted cut's consequence (SARIF keeps them as in-source suppressions)
    accepted: list[Finding] = field(default_factory=list)
    #: code -> findings not shown because the code is off by default (harmless in-place ops: FXG101)
    hidden: dict[str, int] = field(default_factory=dict)
    #: the model's module tree: (qualified name, class name), parents first ("" is the model itself)
    modules: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No error: backward will run and every trainable parameter gets a gradient."""
        return not any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def by_code(self, code: str) -> list[Finding]:
        return [f for f in self.findings if f.code == code]

    def sorted_findings(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: (_SEVERITY_ORDER.get(f.severity, 9), f.code,
                                                    f.location.line if f.location else 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "fxgrad",
            "model": self.model,
            "mode": self.mode,
            "capture": self.capture,
            "ok": self.ok,
            "summary": self._summary(),
            "findings": [f.to_dict() for f in self.sorted_findings()],
            "params": {name: p.to_dict() for name, p in self.params.items()},
            "suppressed": [f.to_dict() for f in self.suppressed],
            "hidden": dict(self.hidden),
            "modules": [{"name": n, "class": c} for n, c in self.modules],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _summary(self) -> dict[str, int]:
        counts = {"errors": len(self.errors), "warnings": len(self.warnings)}
        for status in ("ok", "no-grad", "zero-grad", "unused", "frozen"):
            counts[f"params_{status.replace('-', '_')}"] = sum(p.status == status for p in self.params.values())
        return counts

    def render(self, *, width: int = 60) -> str:
        return render_table(self, width=width)

    def to_html(self) -> str:
        """One self-contained HTML page: the module tree in inline SVG with the gradient flow marked, the findings
        in a table below (:mod:`fxgrad.html`)."""
        from .html import render_html  # here, not at the top: fxgrad.html imports this module

        return render_html(self)

    def __str__(self) -> str:
        return self.render()


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    if line:
        lines.append(line)
    return "\n".join(lines)


#: the note the dry-run leaves when it ran on the real example inputs instead of meta tensors
REAL_DRYRUN_NOTE = "dry-run executed on the real example inputs"


def render_table(report: Report, *, width: int = 60) -> str:
    """Findings grouped by severity, then the parameter summary; plain text, no colour."""
    out: list[str] = []
    verdict = "static analysis" if report.mode != "dry-run" else (
        "proved by a dry-run on the real example inputs" if REAL_DRYRUN_NOTE in report.notes
        else "proved by a dry-run on meta tensors")
    how = "traced symbolically" if report.capture == "trace" else "captured by running it on the inputs"
    out.append(f"fxgrad report for {report.model} ({how}; {verdict})")
    for severity in ("error", "warning", "info"):
        rows = [
            [f.code, f.where, _short(f.location.code, 40) if f.location else "", _wrap(f.message, width)]
            for f in report.sorted_findings()
            if f.severity == severity
        ]
        if rows:
            out.append("")
            out.append(f"{severity.upper()}S ({len(rows)})")
            out.append(tabulate(rows, headers=["code", "where", "line", "finding"], tablefmt="simple"))
    if not report.findings:
        out.append("")
        out.append("No findings.")
    if report.params:
        out.append("")
        bad = [p for p in report.params.values() if p.status != "ok"]
        ok = len(report.params) - len(bad)
        out.append(f"PARAMETERS: {ok} of {len(report.params)} get a gradient")
        if bad:
            rows2 = [[p.name, p.status, _wrap(p.cause, width)] for p in bad]
            out.append(tabulate(rows2, headers=["parameter", "status", "cause"], tablefmt="simple"))
    if report.suppressed:
        out.append("")
        hidden = sum(report.hidden.values())
        shown = ", ".join(f"--select {code}" for code in sorted(report.hidden))
        parts = [f"{len(report.suppressed) - hidden} finding(s) suppressed"] if len(report.suppressed) > hidden else []
        parts += [f"{hidden} harmless finding(s) not shown, off by default: {shown} shows them"] if hidden else []
        out.append(f"({'; '.join(parts)})")
    for note in report.notes:
        out.append(f"note: {note}")
    return "\n".join(out)
