"""A report as one self-contained HTML page: the model's module tree, drawn in inline SVG, with the gradient flow
marked on it, and the findings in a table below.

Why a picture: the table says *which line* cuts the gradient; the tree says *what it cuts off* (a red subtree under
a healthy trunk) and *where* the in-place bugs sit, which is what one needs to see on a model of a hundred modules.
The page needs nothing: no JavaScript, no network, no graphviz (the layout is a tree, so it is computed here), and
it opens from disk, in a CI artifact or in a mail.

The layout, linear in the number of modules:

1. **Tree.** ``report.modules`` lists every module parents first, so each one's parent (its qualified name up to
   the last dot) is already known when it comes: one pass builds the tree. A parameter belongs to the module named
   by its qualified name up to the last dot; a finding to ``Finding.module``; either goes to the nearest ancestor
   the tree has when its own module is missing.
2. **Signatures**, bottom-up in one reverse pass: a module's signature is its class, its parameters' names and
   verdicts, and its children's names and signatures, interned to a small integer, so comparing two subtrees costs
   one integer comparison. The same pass marks the modules whose subtree carries a finding (*flagged*) and gives
   every module the worst verdict in its subtree (the colour of its box).
3. **Collapse.** Among the children of a module, a run of consecutive siblings with equal signatures, none
   flagged, is drawn once with a "× N" badge: ``layer1.1`` … ``layer1.3`` or a transformer's ``h.0`` … ``h.11``.
   Runs of indexed children (``nn.Sequential``, ``nn.ModuleList``) collapse from two on; runs of named siblings
   from four on, since a handful of named layers reads better spelled out. A flagged module is never collapsed:
   the module a finding is marked on is always drawn on its own row.
4. **Rows.** A pre-order walk of the collapsed tree gives one row per drawn module; each row keeps the qualified
   names it stands for (its *members*), so every parameter of the model is still on exactly one chip, and every
   module name maps to the row it is drawn on.
5. **Geometry.** The tree is drawn on the left: depth is the indentation, elbow lines join parents and children;
   after each box come its parameters as chips coloured by verdict. The findings' marks go in one column to the
   right of the widest row, packed greedily into lines (a row with many marks grows taller), so the marks read
   as a list aligned with the tree. A cut also draws a bracket in a lane left of that column, from its mark to the
   rows of the parameters it cuts off (the first few cuts only, to keep the lanes readable).
6. **Page.** A header (model, capture, mode, counts, notes), a legend, the SVG, then the findings table that every
   mark links to (code, severity, message, ``file:line``, the source line, the related lines such as the op that
   saved the overwritten tensor, ``file://`` links), the parameters without a gradient, and the suppressed findings.

Every string that comes from the model or the user's code is escaped with :func:`html.escape`; the document is
also well-formed XML, so tests can parse it with :mod:`xml.etree.ElementTree`.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .capture import SourceLocation
from .rules import CUT_CODES, RULE_FOR_FACT

if TYPE_CHECKING:
    from .report import Finding, ParamState, Report

__all__ = ["render_html"]

#: parameter verdicts, worst first; the colour of each, and a few words for the legend
STATUSES: tuple[ParamState, ...] = ("no-grad", "zero-grad", "unused", "frozen", "ok")
_RANK: dict[str, int] = {s: i for i, s in enumerate(STATUSES)}
_COLOUR = {"ok": "#2e7d32", "no-grad": "#c62828", "zero-grad": "#e65100", "unused": "#757575", "frozen": "#1565c0"}
_TINT = {"ok": "#edf7ee", "no-grad": "#fdecea", "zero-grad": "#fff3e0", "unused": "#f2f2f2", "frozen": "#e8f0fb"}
_MEANING = {"ok": "gets a gradient", "no-grad": "no gradient (.grad is None)", "zero-grad": "only zeros",
            "unused": "never used in forward", "frozen": "cut off on purpose (accepted cut)"}
_NO_PARAMS = "#9aa3af"

#: the codes whose mark is a cut, and the in-place writes over a tensor saved for backward
_CUT_CODES = CUT_CODES
_SAVED_CODES = frozenset(RULE_FOR_FACT[fact].code for fact in ("overwritten", "silently_written"))
_SEVERITY_COLOUR = {"error": "#b71c1c", "warning": "#e65100", "info": "#455a64"}
_CUT_RED, _INPLACE = "#c62828", "#6a1b9a"

#: collapse runs of named (non-numeric) siblings only from this length on (step 3)
MIN_NAMED_RUN = 4
_MAX_CHIPS = 6  # per row; the rest go on one chip per verdict ("+3")
_MAX_LANES = 6  # cut brackets drawn (step 5)
_MARK_ORDER = {"cut": 0, "accepted": 1, "inplace": 2, "other": 3}

# geometry, in px; text is monospace, so its width is its length times the advance
_FONT = "'DejaVu Sans Mono', Menlo, Consolas, 'Liberation Mono', monospace"
_ADV, _ADV_SMALL = 7.3, 6.7  # advance of a 12px / 11px monospace character
_PAD, _INDENT, _ROW_H, _BOX_H, _LINE_H = 16, 22, 30, 20, 24
_MARKS_MAX_W = 620


# --------------------------------------------------------------------------------------------------------------
# Steps 1-4: the tree, its signatures, the collapse and the rows
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Module:
    name: str
    cls: str
    local: str
    children: list[_Module] = field(default_factory=list)
    #: (local name, verdict) of the parameters it owns directly
    params: list[tuple[str, str]] = field(default_factory=list)
    #: marks on this module: (kind, finding number); kind is "finding" or "accepted"
    marks: list[tuple[str, int]] = field(default_factory=list)
    sig: int = 0
    flagged: bool = False
    worst: str = ""


@dataclass
class _Mark:
    kind: str  # cut | inplace | other | accepted
    anchor: str
    head: str  # "FXG001 net.py:12"
    tail: str  # the saver, for in-place marks
    title: str
    colour: str
    width: float
    finding: Finding
    x: float = 0.0
    line: int = 0
    #: the rows a bracket joins this mark to (a cut's: the rows of the parameters it cuts off)
    targets: set[int] = field(default_factory=set)


@dataclass
class _Row:
    module: _Module
    depth: int
    parent: int
    #: the qualified module names this row stands for (more than one inside or at a collapsed run)
    members: list[str]
    count: int = 1
    label: str = ""
    end: int = 0  # last row of its subtree
    y: float = 0.0
    height: float = _ROW_H
    box_w: float = 0.0
    chips_end: float = 0.0
    marks: list[_Mark] = field(default_factory=list)


def _parent_name(name: str) -> str:
    return name.rpartition(".")[0]


def _nearest(name: str, tree: dict[str, _Module]) -> _Module:
    """The module called ``name``, or its nearest ancestor the tree has (the root at worst)."""
    while name not in tree and name:
        name = _parent_name(name)
    return tree.get(name) or tree[""]


def _build_tree(report: Report, findings: Sequence[Finding], accepted: Sequence[Finding]) -> dict[str, _Module]:
    """Step 1: the module tree, with each parameter and mark on its module."""
    modules = list(report.modules) or [("", report.model)]
    if modules[0][0] != "":
        modules.insert(0, ("", report.model))
    tree: dict[str, _Module] = {}
    for name, cls in modules:
        if name in tree:
            continue
        node = _Module(name, cls, name.rpartition(".")[2])
        tree[name] = node
        if name:
            _nearest(_parent_name(name), tree).children.append(node)
    for pname, status in report.params.items():
        owner = _nearest(_parent_name(pname), tree)
        local = pname[len(owner.name) + 1:] if owner.name else pname
        owner.params.append((local, status.status))
    for i, f in enumerate(findings, 1):
        _nearest(f.module, tree).marks.append(("finding", i))
    for i, f in enumerate(accepted, 1):
        if f.code in _CUT_CODES:
            _nearest(f.module, tree).marks.append(("accepted", i))
    return tree


def _sign(tree: dict[str, _Module]) -> None:
    """Step 2: signatures, flags and worst verdicts, children before parents (``tree`` is in parents-first order)."""
    interned: dict[tuple[object, ...], int] = {}
    for node in reversed(tree.values()):
        worst = min((s for _, s in node.params), key=_rank, default="")
        for c in node.children:
            if c.worst and (not worst or _rank(c.worst) < _rank(worst)):
                worst = c.worst
        node.worst = worst
        node.flagged = bool(node.marks) or any(c.flagged for c in node.children)
        key = (node.cls, tuple(node.params), tuple((c.local, c.sig) for c in node.children))
        node.sig = interned.setdefault(key, len(interned))


def _rank(status: str) -> int:
    return _RANK.get(status, _RANK["unused"])  # a verdict this renderer does not know ranks like "unused"


def _runs(children: Sequence[_Module]) -> list[list[_Module]]:
    """Step 3: the children in runs; a run of more than one is drawn once."""
    runs: list[list[_Module]] = []
    for c in children:
        last = runs[-1] if runs else None
        if last is not None and not c.flagged and not last[0].flagged and last[0].sig == c.sig:
            last.append(c)
        else:
            runs.append([c])
    out: list[list[_Module]] = []
    for run in runs:
        numeric = all(c.local.isdigit() for c in run)
        if len(run) > 1 and not numeric and len(run) < MIN_NAMED_RUN:
            out.extend([c] for c in run)
        else:
            out.append(run)
    return out


def _join(prefix: str, local: str) -> str:
    return f"{prefix}.{local}" if prefix else local


def _rows(root: _Module, model: str) -> list[_Row]:
    """Step 4: a pre-order walk of the collapsed tree, one row per drawn module."""
    label = model if model == root.cls else f"{model}: {root.cls}"
    rows: list[_Row] = []
    stack: list[tuple[list[_Module], int, int, list[str]]] = [([root], 0, -1, [""])]
    while stack:
        run, depth, parent, parent_members = stack.pop()
        rep = run[0]
        members = [""] if rep is root else [_join(pm, c.local) for pm in parent_members for c in run]
        row = _Row(rep, depth, parent, members, count=len(run))
        if rep is root:
            row.label = label
        elif len(run) > 1:
            row.label = f"{run[0].local} … {run[-1].local}"
        else:
            row.label = rep.local
        index = len(rows)
        rows.append(row)
        for child_run in reversed(_runs(rep.children)):
            stack.append((child_run, depth + 1, index, members))
    # the last row of each subtree (for the bands behind collapsed runs)
    open_rows: list[int] = []
    for i, row in enumerate(rows):
        while open_rows and rows[open_rows[-1]].depth >= row.depth:
            rows[open_rows.pop()].end = i - 1
        open_rows.append(i)
    for i in open_rows:
        rows[i].end = len(rows) - 1
    return rows


# --------------------------------------------------------------------------------------------------------------
# Step 5: geometry and SVG
# --------------------------------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _short_loc(loc: SourceLocation | None) -> str:
    return f"{os.path.basename(loc.file)}:{loc.line}" if loc is not None else ""


def _make_mark(kind: str, number: int, f: Finding) -> _Mark:
    where = _short_loc(f.location) or (f.module or "model")
    head = f"{f.code} {where}"
    tail = ""
    title = f"{f.code} ({f.severity}) at {f.where}: {f.message}"
    if kind == "accepted":
        return _Mark("accepted", f"suppressed-{number}", f"{f.code} accepted", "", "accepted on purpose: " + title,
                     _COLOUR["frozen"], 0.0, f)
    if f.code in _CUT_CODES:
        mk, colour = "cut", _CUT_RED
    elif f.code in _SAVED_CODES:
        mk, colour = "inplace", _INPLACE
        saver = next((r for r in f.related if r.role == "saved by"), f.related[0] if f.related else None)
        if saver is not None:
            if saver.location is not None and f.location is not None and saver.location.file == f.location.file:
                at = f":{saver.location.line}"
            else:
                at = f" {_short_loc(saver.location)}" if saver.location is not None else ""
            tail = f"saved by {saver.node}{at}".strip()
    else:
        mk, colour = "other", _SEVERITY_COLOUR.get(f.severity, _SEVERITY_COLOUR["info"])
    return _Mark(mk, f"finding-{number}", head, tail, title, colour, 0.0, f)


def _mark_width(m: _Mark) -> float:
    w = 22 + len(m.head) * _ADV_SMALL + 10
    if m.tail:
        w += 12 + len(m.tail) * _ADV_SMALL
    return w


def _cut_icon(x: float, y: float, colour: str) -> str:
    """A gradient edge broken by two slashes: the cut."""
    return (f'<path d="M{_num(x)} {_num(y)}h4M{_num(x + 12)} {_num(y)}h4" stroke="{colour}" stroke-width="2"/>'
            f'<path d="M{_num(x + 4)} {_num(y + 5)}l4 -10M{_num(x + 8)} {_num(y + 5)}l4 -10" stroke="{colour}" '
            'stroke-width="2" stroke-linecap="round"/>')


def _inplace_icon(x: float, y: float, colour: str) -> str:
    """A circular arrow: a tensor written over."""
    return (f'<path d="M{_num(x + 13)} {_num(y - 2)}a5.5 5.5 0 1 0 -1.2 5.2" fill="none" stroke="{colour}" '
            f'stroke-width="2"/><path d="M{_num(x + 10)} {_num(y - 3)}l4 1.5 0.5 -4.5z" fill="{colour}"/>')


def _dot_icon(x: float, y: float, colour: str) -> str:
    return (f'<circle cx="{_num(x + 8)}" cy="{_num(y)}" r="6" fill="{colour}"/>'
            f'<text x="{_num(x + 8)}" y="{_num(y + 4)}" class="bang">!</text>')


def _draw_mark(m: _Mark, x: float, cy: float) -> str:
    h = 18
    top = cy - h / 2
    icon = {"cut": _cut_icon, "inplace": _inplace_icon, "accepted": _cut_icon}.get(m.kind, _dot_icon)
    dash = ' stroke-dasharray="3 2"' if m.kind == "accepted" else ""
    head_w = 22 + len(m.head) * _ADV_SMALL + 10
    f = m.finding
    line = f' data-line="{f.location.line}"' if f.location is not None else ""
    parts = [f'<a href="#{_e(m.anchor)}" class="mark mark-{m.kind}" data-code="{_e(f.code)}" '
             f'data-severity="{_e(f.severity)}"{line}><title>{_e(m.title)}</title>',
             f'<rect x="{_num(x)}" y="{_num(top)}" width="{_num(m.width)}" height="{h}" rx="4" fill="#fff" '
             f'stroke="{m.colour}" stroke-width="1.5"{dash}/>']
    if m.tail:
        parts.append(f'<rect x="{_num(x + head_w)}" y="{_num(top)}" width="{_num(m.width - head_w)}" height="{h}" '
                     f'rx="4" fill="{m.colour}" fill-opacity="0.12" stroke="{m.colour}" stroke-width="1.5"/>')
    parts.append(icon(x + 4, cy, m.colour))
    parts.append(f'<text x="{_num(x + 24)}" y="{_num(cy + 4)}" class="mk" fill="{m.colour}">{_e(m.head)}</text>')
    if m.tail:
        parts.append(f'<text x="{_num(x + head_w + 6)}" y="{_num(cy + 4)}" class="mk" fill="{m.colour}">'
                     f'{_e(m.tail)}</text>')
    parts.append("</a>")
    return "".join(parts)


def _chips(row: _Row) -> list[tuple[str, str, list[str]]]:
    """(text, verdict, full parameter names) per chip: the first few parameters, then one chip per verdict."""
    params = row.module.params
    shown = params if len(params) <= _MAX_CHIPS else params[: _MAX_CHIPS - 1]
    out = [(local, status, [_join(m, local) for m in row.members]) for local, status in shown]
    rest: dict[str, list[str]] = {}
    for local, status in params[len(shown):]:
        rest.setdefault(status, []).extend(_join(m, local) for m in row.members)
    for status in STATUSES:
        if status in rest:
            out.append((f"+{len(rest[status]) // max(1, len(row.members))} {status}", status, rest[status]))
    return out


@dataclass
class _Layout:
    chips: list[list[tuple[str, str, list[str]]]]
    #: (row, mark) of the cuts that get a bracket; the k-th is in the k-th lane left of the marks column
    lanes: list[tuple[int, _Mark]]
    marks_x: float
    width: float
    height: float


def _layout(report: Report, rows: list[_Row], findings: Sequence[Finding], tree: dict[str, _Module]) -> _Layout:
    """Step 5: every row's box, chips and marks measured; marks packed into lines; rows placed top to bottom."""
    row_of = {name: i for i, row in enumerate(rows) for name in row.members}
    chips_of: list[list[tuple[str, str, list[str]]]] = []
    for i, row in enumerate(rows):
        row.box_w = 16 + len(row.label) * _ADV + (10 + len(row.module.cls) * _ADV_SMALL if row.depth else 0)
        end = _PAD + row.depth * _INDENT + row.box_w
        if row.count > 1:
            end += 8 + (len(str(row.count)) + 2) * _ADV_SMALL + 12
        chips = _chips(row)
        chips_of.append(chips)
        end += sum(6 + len(text) * _ADV_SMALL + 14 for text, _, _ in chips)
        row.chips_end = end
        for kind, number in row.module.marks:
            f = findings[number - 1] if kind == "finding" else report.accepted[number - 1]
            mark = _make_mark(kind, number, f)
            mark.width = _mark_width(mark)
            if f.code in _CUT_CODES:
                mark.targets = {row_of.get(_nearest(_parent_name(p), tree).name, -1) for p in f.params} - {-1, i}
            row.marks.append(mark)
        row.marks.sort(key=lambda mk: _MARK_ORDER[mk.kind])  # cuts first: their bracket ends at the mark
    lanes = [(i, mk) for i, row in enumerate(rows) for mk in row.marks if mk.targets][:_MAX_LANES]
    # the longest bracket in the lane next to the marks, the shortest outermost: nested brackets do not cross
    lanes.sort(key=lambda t: -max(abs(t[0] - r) for r in t[1].targets))
    bracketed = {id(mk) for _, mk in lanes}
    marks_x = max(r.chips_end for r in rows) + 28 + 10 * len(lanes)
    width = marks_x + _PAD
    y = float(_PAD)
    for row in rows:
        line, x = 0, 0.0
        for mk in row.marks:
            # a bracketed mark starts a line, so that its bracket reaches it without crossing another mark
            if x and (x + mk.width > _MARKS_MAX_W or id(mk) in bracketed):
                line, x = line + 1, 0.0
            mk.x, mk.line = x, line
            x += mk.width + 8
            width = max(width, marks_x + x + _PAD)
        row.height = max(_ROW_H, 6 + (row.marks[-1].line + 1 if row.marks else 1) * _LINE_H)
        row.y = y
        y += row.height
    return _Layout(chips_of, lanes, marks_x, width, y + _PAD)


def _cy(row: _Row) -> float:
    """The centre of a row's first line."""
    return row.y + _ROW_H / 2


def _draw_under(rows: list[_Row], lay: _Layout) -> list[str]:
    """What lies under the boxes: bands behind collapsed runs, guides to the marks, tree lines, cut brackets."""
    out: list[str] = []
    for row in rows:
        if row.count > 1:
            top, bottom = row.y + 2, rows[row.end].y + rows[row.end].height - 2
            out.append(f'<rect x="{_num(_PAD + row.depth * _INDENT - 6)}" y="{_num(top)}" '
                       f'width="{_num(lay.width - _PAD - row.depth * _INDENT)}" height="{_num(bottom - top)}" '
                       'rx="6" class="band"/>')
    for row in rows:
        if row.marks:
            out.append(f'<line x1="{_num(row.chips_end + 6)}" y1="{_num(_cy(row))}" x2="{_num(lay.marks_x - 6)}" '
                       f'y2="{_num(_cy(row))}" class="guide"/>')
    # an elbow from the previous sibling (or the parent's box) to each child
    last_y: dict[int, float] = {}
    for row in rows:
        if row.parent < 0:
            continue
        parent = rows[row.parent]
        x = _PAD + parent.depth * _INDENT + 10
        y0 = last_y.get(row.parent, _cy(parent) + _BOX_H / 2)
        out.append(f'<path d="M{_num(x)} {_num(y0)}V{_num(_cy(row))}H{_num(_PAD + row.depth * _INDENT)}" '
                   'class="edge"/>')
        last_y[row.parent] = _cy(row)
    # from a cut's mark to the rows of the parameters it cuts off
    for k, (src, mark) in enumerate(lay.lanes):
        lx = lay.marks_x - 16 - 10 * k
        sy = _cy(rows[src]) + mark.line * _LINE_H
        ys = [_cy(rows[t]) for t in mark.targets] + [sy]
        out.append(f'<g class="lane" stroke="{mark.colour}"><path d="M{_num(lx)} {_num(min(ys))}V{_num(max(ys))}" '
                   f'class="bracket"/><path d="M{_num(lay.marks_x - 2)} {_num(sy)}H{_num(lx)}" class="bracket"/>')
        for t in sorted(mark.targets):
            ty, tx = _cy(rows[t]), rows[t].chips_end
            out.append(f'<path d="M{_num(lx)} {_num(ty)}H{_num(tx + 4)}" class="bracket"/>'
                       f'{_cut_icon(tx + 6, ty, mark.colour)}')
        out.append("</g>")
    return out


def _draw_row(i: int, row: _Row, chips: list[tuple[str, str, list[str]]], lay: _Layout,
              first_finding: dict[str, int]) -> str:
    """One module: its box, the "× N" badge of a collapsed run, its parameters' chips, its marks."""
    x, c, mod = _PAD + row.depth * _INDENT, _cy(row), row.module
    stroke = _COLOUR.get(mod.worst, _NO_PARAMS)
    fill = _TINT.get(mod.worst, "#fff")
    names = ", ".join(n or "(model)" for n in row.members[:12]) + (" …" if len(row.members) > 12 else "")
    tip = f"{names}: {mod.cls}" + (f" (× {row.count})" if row.count > 1 else "")
    out = [f'<g class="row" id="module-{i}" data-module="{_e(row.members[0])}" data-count="{row.count}" '
           f'data-depth="{row.depth}"><title>{_e(tip)}</title>',
           f'<rect x="{_num(x)}" y="{_num(c - _BOX_H / 2)}" width="{_num(row.box_w)}" height="{_BOX_H}" rx="4" '
           f'fill="{fill}" stroke="{stroke}" stroke-width="{1.8 if mod.worst else 1.2}"/>',
           f'<text x="{_num(x + 8)}" y="{_num(c + 4)}" class="name">{_e(row.label)}',
           f'<tspan dx="{_num(_ADV)}" class="cls">{_e(mod.cls)}</tspan></text>' if row.depth else "</text>"]
    bx = x + row.box_w + 8
    if row.count > 1:
        text = f"× {row.count}"
        w = len(text) * _ADV_SMALL + 12
        out.append(f'<rect x="{_num(bx)}" y="{_num(c - 9)}" width="{_num(w)}" height="18" rx="9" class="badge"/>'
                   f'<text x="{_num(bx + w / 2)}" y="{_num(c + 4)}" class="badge-t">{_e(text)}</text>')
        bx += w + 8
    for text, status, full in chips:
        w = len(text) * _ADV_SMALL + 14
        link = next((first_finding[n] for n in full if n in first_finding), 0) if status != "ok" else 0
        shown = ", ".join(full[:20]) + (" …" if len(full) > 20 else "")
        chip = (f'<g class="chip chip-{_e(status)}" data-status="{_e(status)}" data-params="{_e(" ".join(full))}">'
                f'<title>{_e(shown)}: {_e(status)} ({_e(_MEANING.get(status, status))})</title>'
                f'<rect x="{_num(bx)}" y="{_num(c - 8)}" width="{_num(w)}" height="16" rx="8" '
                f'fill="{_COLOUR.get(status, _NO_PARAMS)}"/>'
                f'<text x="{_num(bx + 7)}" y="{_num(c + 4)}" class="chip-t">{_e(text)}</text></g>')
        out.append(f'<a href="#finding-{link}">{chip}</a>' if link else chip)
        bx += w + 6
    out.extend(_draw_mark(mk, lay.marks_x + mk.x, c + mk.line * _LINE_H) for mk in row.marks)
    out.append("</g>")
    return "".join(out)


def _svg(report: Report, rows: list[_Row], findings: Sequence[Finding], tree: dict[str, _Module],
         first_finding: dict[str, int]) -> str:
    lay = _layout(report, rows, findings, tree)
    w, h = _num(lay.width), _num(lay.height)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-family="{_e(_FONT)}" role="img" aria-label="module tree of {_e(report.model)} with the gradient '
           f'flow"><title>{_e(report.model)}: module tree, parameters coloured by gradient verdict</title>']
    out.extend(_draw_under(rows, lay))
    out.extend(_draw_row(i, row, lay.chips[i], lay, first_finding) for i, row in enumerate(rows))
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# Step 6: the page
# --------------------------------------------------------------------------------------------------------------


def _file_link(loc: SourceLocation | None) -> str:
    if loc is None:
        return '<span class="muted">no line</span>'
    text = _e(str(loc))
    if loc.file.startswith("<"):
        return f"<span>{text}</span>"
    uri = Path(os.path.abspath(loc.file)).as_uri()
    return f'<a href="{_e(uri)}">{text}</a>'


def _source(loc: SourceLocation | None) -> str:
    return f"<code>{_e(loc.code)}</code>" if loc is not None and loc.code else ""


def _rule_name(code: str) -> str:
    from .rules import RULES_BY_CODE

    rule = RULES_BY_CODE.get(code)
    return rule.name if rule is not None else ""


def _findings_table(findings: Sequence[Finding], prefix: str, module_row: dict[str, int],
                    tree: dict[str, _Module]) -> str:
    out = ['<table class="findings"><thead><tr><th>#</th><th>code</th><th>severity</th><th>module</th>'
           "<th>where</th><th>finding</th></tr></thead><tbody>"]
    for i, f in enumerate(findings, 1):
        row = module_row.get(_nearest(f.module, tree).name)
        module = _e(f.module or "(model)")
        module_cell = f'<a href="#module-{row}">{module}</a>' if row is not None else module
        related = "".join(
            f'<div class="related"><span class="role">{_e(r.role)}</span> '
            + (f"<code>{_e(r.node)}</code> · " if r.node else "")
            + f"{_file_link(r.location)} {_source(r.location)}</div>" for r in f.related)
        params = (f'<div class="related"><span class="role">parameters</span> {_e(", ".join(f.params[:12]))}'
                  f'{" …" if len(f.params) > 12 else ""}</div>') if f.params else ""
        verdict = f' <span class="verdict">{_e(f.verdict)}</span>'
        out.append(f'<tr id="{prefix}-{i}" class="sev-{_e(f.severity)}"><td>{i}</td>'
                   f'<td><b>{_e(f.code)}</b><div class="muted">{_e(_rule_name(f.code))}</div></td>'
                   f'<td><span class="sev">{_e(f.severity)}</span>{verdict}</td><td>{module_cell}</td>'
                   f'<td class="where">{_file_link(f.location)}<div>{_source(f.location)}</div></td>'
                   f"<td>{_e(f.message)}{related}{params}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _params_table(report: Report) -> str:
    bad = [p for p in report.params.values() if p.status != "ok"]
    if not bad:
        return ""
    out = [f"<h2>Parameters without a useful gradient ({len(bad)} of {len(report.params)})</h2>",
           '<table class="params"><thead><tr><th>parameter</th><th>verdict</th><th>cause</th><th>where</th></tr>'
           "</thead><tbody>"]
    for p in bad:
        out.append(f'<tr><td><code>{_e(p.name)}</code></td><td><span class="swatch" style="background:'
                   f'{_COLOUR.get(p.status, _NO_PARAMS)}"></span>{_e(p.status)}</td><td>{_e(p.cause)}</td>'
                   f"<td>{_file_link(p.location) if p.location else ''}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _legend() -> str:
    chips = "".join(f'<span class="item"><span class="swatch" style="background:{_COLOUR[s]}"></span><b>{s}</b> '
                    f"{_e(_MEANING[s])}</span>" for s in ("ok", "no-grad", "zero-grad", "unused", "frozen"))

    def icon(svg: str) -> str:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="20" height="14" viewBox="0 0 20 14">{svg}</svg>'

    marks = (f'<span class="item">{icon(_cut_icon(1, 7, _CUT_RED))} gradient cut (FXG001–FXG008), bracketed to '
             "the parameters it cuts off</span>"
             f'<span class="item">{icon(_inplace_icon(1, 8, _INPLACE))} in-place write over a tensor saved for '
             "backward (FXG102, FXG106), with the line that saved it</span>"
             f'<span class="item">{icon(_dot_icon(1, 7, _SEVERITY_COLOUR["error"]))} other finding, by severity'
             "</span>"
             '<span class="item"><span class="badge-h">× N</span> N identical sibling blocks drawn once (shaded)'
             "</span>"
             '<span class="item"><span class="box-h"></span> box border: worst verdict in the subtree</span>')
    return (f'<section class="legend"><div><span class="lh">parameters</span>{chips}</div>'
            f'<div><span class="lh">marks</span>{marks}</div></section>')


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif; color: #1f2328;
       margin: 0; padding: 20px 28px; background: #fff; }
h1 { font-size: 21px; margin: 0 0 6px; }
h1 code { font-size: 19px; }
h2 { font-size: 17px; margin: 26px 0 8px; }
code, .mono { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12.5px; }
.meta span.tag { display: inline-block; border: 1px solid #d0d7de; border-radius: 10px; padding: 0 9px;
                 margin-right: 6px; background: #f6f8fa; font-size: 13px; }
.counts { margin: 6px 0; }
.counts b.err { color: #b71c1c; } .counts b.warn { color: #e65100; }
.notes { margin: 4px 0 0; padding-left: 20px; color: #57606a; font-size: 13px; }
.legend { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; margin: 12px 0; background: #fafbfc;
          font-size: 12.5px; }
.legend div { margin: 2px 0; }
.legend .lh { display: inline-block; width: 92px; font-weight: 600; color: #57606a; }
.legend .item { display: inline-block; margin-right: 16px; white-space: nowrap; }
.legend svg { vertical-align: -2px; margin-right: 2px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 6px; margin-right: 4px;
          vertical-align: -1px; }
.badge-h { display: inline-block; background: #37474f; color: #fff; border-radius: 8px; padding: 0 6px;
           font-size: 11px; }
.box-h { display: inline-block; width: 18px; height: 10px; border: 2px solid #c62828; border-radius: 3px;
         background: #fdecea; vertical-align: -1px; }
.picture { overflow-x: auto; border: 1px solid #d0d7de; border-radius: 6px; }
.picture svg { display: block; }
svg .name { font-size: 12px; font-weight: 700; fill: #1f2328; }
svg .cls { font-weight: 400; fill: #6e7781; font-size: 11px; }
svg .chip-t { font-size: 11px; fill: #fff; font-weight: 600; }
svg .badge { fill: #37474f; }
svg .badge-t { font-size: 11px; fill: #fff; text-anchor: middle; font-weight: 700; }
svg .band { fill: #f1f3f6; }
svg .edge { fill: none; stroke: #9aa3af; stroke-width: 1.2; }
svg .guide { stroke: #d0d7de; stroke-dasharray: 2 3; }
svg .bracket { fill: none; stroke-width: 1.5; stroke-dasharray: 5 3; }
svg .mk { font-size: 11px; font-weight: 700; }
svg .bang { font-size: 10px; fill: #fff; text-anchor: middle; font-weight: 700; }
svg a:hover rect { stroke-width: 2.5; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-top: 1px solid #d0d7de; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:target { background: #fff8c5; }
tr.sev-error .sev { color: #b71c1c; font-weight: 700; }
tr.sev-warning .sev { color: #e65100; font-weight: 700; }
tr.sev-info .sev { color: #455a64; font-weight: 700; }
.verdict { color: #6e7781; font-size: 11.5px; }
.muted { color: #6e7781; font-size: 12px; }
.related { margin-top: 3px; font-size: 12.5px; }
.related .role { color: #6a1b9a; font-weight: 600; }
td code { white-space: pre-wrap; overflow-wrap: anywhere; }
td.where { min-width: 260px; max-width: 420px; }
footer { margin-top: 24px; color: #6e7781; font-size: 12px; }
"""


def _counts(report: Report) -> str:
    severities = Counter(f.severity for f in report.findings)
    statuses = Counter(p.status for p in report.params.values())
    parts = [f'<b class="err">{severities["error"]} error(s)</b>', f'<b class="warn">{severities["warning"]} '
             "warning(s)</b>", f'{severities["info"]} info']
    params = ", ".join(f'<span class="swatch" style="background:{_COLOUR[s]}"></span>{statuses[s]} {s}'
                       for s in STATUSES[::-1] if statuses[s])
    line = " · ".join(parts) + f" — {len(report.params)} trainable parameter(s)" + (f": {params}" if params else "")
    extra: list[str] = []
    hidden = sum(report.hidden.values())
    if len(report.suppressed) > hidden:
        extra.append(f"{len(report.suppressed) - hidden} suppressed")
    if hidden:
        extra.append(f"{hidden} harmless finding(s) off by default ({_e(', '.join(sorted(report.hidden)))})")
    return f'<p class="counts">{line}{" · " + "; ".join(extra) if extra else ""}</p>'


def _notes(notes: Iterable[str]) -> str:
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f'<ul class="notes">{items}</ul>' if items else ""


def _suppressed(report: Report, module_row: dict[str, int], tree: dict[str, _Module]) -> str:
    """The accepted findings (their marks link here), then the other suppressed ones; not the harmless ones that
    are off by default (``report.hidden``: only counted, as in the table output)."""
    accepted = {id(f) for f in report.accepted}
    others = [f for f in report.suppressed if id(f) not in accepted and f.code not in report.hidden]
    if not report.accepted and not others:
        return ""
    out = ['<h2>Suppressed findings</h2>']
    if report.accepted:
        out.append(f'<p class="muted">Accepted on purpose ({len(report.accepted)}): a comment on their line or '
                   "block, or the consequence of an accepted cut.</p>")
        out.append(_findings_table(report.accepted, "suppressed", module_row, tree))
    if others:
        out.append(f'<p class="muted">Silenced by --ignore / --select or settings ({len(others)}).</p>')
        out.append(_findings_table(others, "suppressed-other", module_row, tree))
    return "".join(out)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (inline SVG and CSS, no script): see the module docstring."""
    from . import __version__

    findings = report.sorted_findings()
    tree = _build_tree(report, findings, report.accepted)
    _sign(tree)
    rows = _rows(tree[""], report.model)
    first_finding: dict[str, int] = {}  # parameter -> the finding that explains it, cuts first
    for i, f in sorted(enumerate(findings, 1), key=lambda t: t[1].code not in _CUT_CODES):
        for p in f.params:
            first_finding.setdefault(p, i)
    module_row = {m: i for i, row in enumerate(rows) for m in row.members}
    how = "traced symbolically (every branch)" if report.capture == "trace" else \
        "captured by running it on the inputs (the branches they take)"
    verdict = "verdicts proved by a dry-run" if report.mode == "dry-run" else "static verdicts (no example inputs)"
    collapsed = sum(r.count > 1 for r in rows)
    picture_note = (f"{len(rows)} row(s) for {len(tree)} module(s)"
                    + (f"; {collapsed} run(s) of identical blocks drawn once" if collapsed else ""))
    suppressed = _suppressed(report, module_row, tree)
    table = (_findings_table(findings, "finding", module_row, tree) if findings
             else '<p class="muted">No findings.</p>')
    return "".join([
        "<!DOCTYPE html>\n",
        '<html lang="en"><head><meta charset="utf-8"/>',
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
        f"<title>fxgrad: {_e(report.model)}</title><style>{_CSS}</style></head><body>",
        f'<header id="header"><h1>fxgrad · gradient flow of <code>{_e(report.model)}</code></h1>',
        f'<p class="meta"><span class="tag">capture: <b>{_e(report.capture)}</b></span>'
        f'<span class="tag">mode: <b>{_e(report.mode)}</b></span>'
        f'<span class="muted">{_e(how)}; {_e(verdict)}</span></p>',
        _counts(report),
        _notes(report.notes),
        "</header>",
        _legend(),
        f'<div class="picture">{_svg(report, rows, findings, tree, first_finding)}</div>',
        f'<p class="muted">{_e(picture_note)}</p>',
        f"<h2>Findings ({len(findings)})</h2>",
        table,
        _params_table(report),
        suppressed,
        f"<footer>fxgrad {_e(__version__)} · {_e(report.model)}</footer>",
        "</body></html>\n",
    ])
