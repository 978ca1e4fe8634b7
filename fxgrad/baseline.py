"""Baselines: accept today's findings once, and report only new ones from then on.

A finding is identified by its code, its module path and the text of its source line (for a finding with no
line, the parameters it names), never by line number: the baseline survives code moving up or down a file.
Identical fingerprints are counted, so a second copy of an accepted line is still reported as new.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import InputError
from .report import Finding, Report
from .suppress import accept_intended_cuts

__all__ = ["BASELINE_VERSION", "Fingerprint", "apply_baseline", "fingerprint", "load_baseline", "write_baseline"]

#: version of the baseline file format; bumped on any incompatible change.
BASELINE_VERSION = 1

Fingerprint = tuple[str, str, str]


def fingerprint(finding: Finding) -> Fingerprint:
    """``(code, module, source text)``; the source text is the stripped line, or the parameter names."""
    text = " ".join(finding.location.code.split()) if finding.location else ",".join(finding.params)
    return finding.code, finding.module, text


def write_baseline(path: Path, report: Report) -> int:
    """Record every finding of ``report`` in ``path``; returns how many."""
    entries = [{"code": c, "module": m, "source": s} for c, m, s in sorted(map(fingerprint, report.findings))]
    data = {"tool": "fxgrad", "baseline_version": BASELINE_VERSION, "model": report.model, "findings": entries}
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise InputError(f"Cannot write the baseline {path} ({e.strerror}). Hint: check that its directory "
                         "exists and is writable.") from e
    return len(entries)


def load_baseline(path: Path) -> Counter[Fingerprint]:
    """The accepted fingerprints of a baseline file, with their counts."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"Cannot read the baseline {path} ({e}). Hint: delete it to record a new one.") from e
    if not isinstance(data, dict) or data.get("baseline_version") != BASELINE_VERSION:
        raise InputError(f"{path} is not an fxgrad baseline of version {BASELINE_VERSION}. Hint: delete it to "
                         "record a new one.")
    try:
        return Counter((e["code"], e["module"], e["source"]) for e in data["findings"])
    except (KeyError, TypeError) as e:
        raise InputError(f"{path} is not a valid fxgrad baseline ({type(e).__name__}: {e}). Hint: delete it to "
                         "record a new one.") from e


def apply_baseline(report: Report, accepted: Counter[Fingerprint], path: Path) -> Report:
    """A copy of ``report`` that keeps only the findings not in the baseline."""
    left = Counter(accepted)
    new: list[Finding] = []
    known: list[Finding] = []
    for f in report.sorted_findings():
        key = fingerprint(f)
        if left[key] > 0:
            left[key] -= 1
            known.append(f)
        else:
            new.append(f)
    notes = [*report.notes]
    if known:
        notes.append(f"{len(known)} finding(s) recorded in the baseline {path} are not shown.")
    out = dataclasses.replace(report, findings=new, notes=notes, suppressed=[*report.suppressed, *known],
                              accepted=[*report.accepted, *known], params=dict(report.params))
    accept_intended_cuts(out)  # a baselined cut accepts its consequences, as a comment on its line does
    return out
