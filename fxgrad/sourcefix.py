"""Source fixes: the verified rewrites of :func:`fxgrad.fix` as minimal edits to the user's own files.

``fxgrad.fix`` returns a ``GraphModule``; a user wants the same change in their own code, as ruff's ``--fix`` and
``--diff`` give it. Each :class:`~fxgrad.rewrite.Rewrite` of a verified fix names the in-place node and the
user's line; this module turns it into a column-exact text edit of that line (found with ``ast``, whose nodes
carry ``end_col_offset``), so formatting and comments stay as they were.

Algorithm of :func:`plan`:

1. Take only a verified fix's rewrites; everything else is declined with the reason.
2. Per rewrite, find where the source must change: the op's own line for ``t.mul_(2)``, ``x += y``,
   ``x[i] = v``, ``F.relu(x, inplace=True)``, ``torch.relu_(x)``; for an in-place module (``nn.ReLU(inplace=True)``)
   the line that built it, found by following the module's path through its owners' ``__init__`` sources
   (``self.<name> = ...``, inside ``nn.Sequential(...)`` calls and lists).
3. Refuse code outside the user's files (site-packages, the standard library, torch, fxgrad): the decline names the
   library file and line, and the fixed ``GraphModule`` (``fxgrad fix --out``) is the route there.
4. Parse each file once; on the line, find the op's ``ast`` node by its spelling and compute the replacement span:
   out-of-place twin, rebinding the written name where the write was the point (a statement ``t.mul_(2)`` becomes
   ``t = t.mul(2)``; an expression is rebound too when the fx graph reads the written tensor later), a clone of the
   written name before an item or view write.
5. Merge the spans of a file (one op run in a loop or by several module instances gives one span), and group them
   into whole-line :class:`SourceEdit` records.

Algorithm of :func:`check`, run after the edits are written (or on copies of the files, for ``--diff``):

1. Import the edited files fresh (the file that defines the model under a new module name; other edited files
   replace their ``sys.modules`` entries for the duration, so the model's imports see them), inside
   ``torch.random.fork_rng``.
2. Rebuild the model with the caller's ``build`` (the CLI: ``NAME()`` as its loader does), load the original
   model's ``state_dict`` and train/eval flags.
3. Run :func:`fxgrad.verify.verify` with the verified ``GraphModule`` as the reference: the same inputs, RNG and
   cotangents; outputs, every gradient and the buffers must agree. Restore ``sys.modules`` in a ``finally``.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import inspect
import itertools
import linecache
import logging
import operator
import os
import re
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.fx
from torch import nn

from . import ops
from .capture import SourceLocation, node_origin
from .errors import InputError, VerificationError
from .rewrite import Rewrite, _function_twin, _inplace_position, _method_twin
from .verify import Verification, verify

__all__ = ["SourceDecline", "SourceEdit", "apply", "check", "plan", "unified_diff"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceEdit:
    """Lines ``line`` .. ``line + old.count("\\n")`` of ``file`` read ``old`` and become ``new``."""

    #: absolute path of the user's file
    file: str
    #: 1-based number of the first changed line
    line: int
    #: the whole old line(s), without the final newline
    old: str
    #: what replaces them (may be more lines, or fewer)
    new: str

    def __str__(self) -> str:
        return f"{_display(self.file)}:{self.line}: {self.old.strip()}  ->  {self.new.strip()}"


@dataclass(frozen=True)
class SourceDecline:
    """A verified rewrite that fxgrad does not turn into a source edit, and why."""

    #: the in-place node's name (as in :class:`~fxgrad.rewrite.Rewrite`)
    node: str
    #: the line that would need the change (a library file's line, for library code), when known
    location: SourceLocation | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}`{self.node}` not edited: {self.reason}"


# --------------------------------------------------------------------------------------------------------------
# Whose file is it.
# --------------------------------------------------------------------------------------------------------------

_FXGRAD_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_EXAMPLES = os.path.join(_FXGRAD_DIR, "examples.py")
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.abspath(paths[k]) + os.sep for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(sorted(dirs))


def library_owner(file: str) -> str | None:
    """The library a file belongs to (``torchvision``, ``the standard library``), or None for the user's files."""
    if file.startswith("<"):
        return "generated code"
    path = os.path.abspath(file)
    if path == _EXAMPLES:
        return None  # fxgrad's demo models are user code, as the capture treats them
    parts = path.split(os.sep)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1:]
            return rest[0].removesuffix(".py") if len(rest) > 1 else "an installed package"
    if path.startswith(_TORCH_DIR):
        return "torch"
    if path.startswith(_FXGRAD_DIR):
        return "fxgrad"
    for d in _library_dirs():
        if path.startswith(d):
            return "the standard library"
    return None


def _display(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith(".." + os.sep + "..") else rel


def _library_reason(owner: str, what: str, *, module: bool = False) -> str:
    instead = ("build that module yourself without inplace=True (replace it on your model, or subclass the "
               "library's class)") if module else "override that forward in a subclass, out of place"
    return (f"{what} is in {owner}, which fxgrad never edits. Hint: use the fixed GraphModule "
            f"(fxgrad.fix(model, inputs), or `fxgrad fix --out FILE`), or {instead}")


# --------------------------------------------------------------------------------------------------------------
# Parsed files and spans.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    """Replace the text from (line, col) to (end_line, end_col) (1-based lines, character columns) by ``text``."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    text: str


#: the node types :meth:`_Source.nodes_at` finds
_LOOKED_UP = (ast.Call, ast.Assign, ast.AugAssign)


class _Source:
    """One file: its text, its lines and its ``ast``, with byte-column -> character-column conversion."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.text = Path(file).read_text(encoding="utf-8")
        self.lines = self.text.splitlines(keepends=True)
        self.tree = ast.parse(self.text, filename=file)
        self.parents: dict[ast.AST, ast.AST] = {}
        #: the calls and assignments that span each line, and each function by (name, def or decorator line):
        #: one walk of the tree, so finding an op's node costs the nodes on its line
        self.by_line: dict[int, list[ast.AST]] = {}
        self.functions: dict[tuple[str, int], ast.FunctionDef] = {}
        for parent in ast.walk(self.tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
            if isinstance(parent, _LOOKED_UP):
                for line in range(parent.lineno, (parent.end_lineno or parent.lineno) + 1):
                    self.by_line.setdefault(line, []).append(parent)
            elif isinstance(parent, ast.FunctionDef):
                for line in (parent.lineno, *(d.lineno for d in parent.decorator_list)):
                    self.functions[(parent.name, line)] = parent

    def col(self, line: int, byte_col: int) -> int:
        raw = self.lines[line - 1].encode("utf-8")
        return len(raw[:byte_col].decode("utf-8", errors="replace"))

    def start(self, node: ast.AST) -> tuple[int, int]:
        return node.lineno, self.col(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> tuple[int, int]:
        end_line = node.end_lineno  # type: ignore[attr-defined]
        return end_line, self.col(end_line, node.end_col_offset)  # type: ignore[attr-defined]

    def segment(self, node: ast.AST) -> str:
        """The node's exact source text (``ast.get_source_segment`` splits the whole file on every call)."""
        (line, col), (end_line, end_col) = self.start(node), self.end(node)
        if line == end_line:
            return self.lines[line - 1][col:end_col]
        return self.lines[line - 1][col:] + "".join(self.lines[line:end_line - 1]) + self.lines[end_line - 1][:end_col]

    def span(self, a: tuple[int, int], b: tuple[int, int], text: str) -> _Span:
        return _Span(self.file, a[0], a[1], b[0], b[1], text)

    def statement(self, node: ast.AST) -> ast.stmt | None:
        while node is not None and not isinstance(node, ast.stmt):
            node = self.parents.get(node)  # type: ignore[assignment]
        return node

    def nodes_at(self, line: int, kind: type[ast.AST]) -> list[ast.AST]:
        """Nodes of ``kind`` whose lines include ``line``, in source order (those that start on it first)."""
        found = [n for n in self.by_line.get(line, ()) if isinstance(n, kind)]
        return sorted(found, key=lambda n: (n.lineno != line, n.lineno, n.col_offset))  # type: ignore[attr-defined]


def _apply_spans(source: _Source, spans: Sequence[_Span]) -> str:
    """The file's text with ``spans`` (non-overlapping) replaced."""
    starts = [0, *itertools.accumulate(len(line) for line in source.lines)]

    def offset(line: int, col: int) -> int:
        return starts[line - 1] + col

    text = source.text
    for s in sorted(spans, key=lambda s: (s.line, s.col, s.end_line, s.end_col), reverse=True):
        text = text[:offset(s.line, s.col)] + s.text + text[offset(s.end_line, s.end_col):]
    return text


# --------------------------------------------------------------------------------------------------------------
# Step 2 and 4: per rewrite, the span.
# --------------------------------------------------------------------------------------------------------------


class _Decline(Exception):
    """A rewrite that cannot be a source edit: the reason, and the line that needs the change."""

    def __init__(self, reason: str, location: SourceLocation | None = None, *, library: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location
        #: the change is needed in library code
        self.library = library


_AUG_SYMBOL: dict[type[ast.operator], str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
    ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.MatMult: "@",
}
#: right-hand sides that need no parentheses after ``x = x <op> ``
_ATOMS = (ast.Name, ast.Constant, ast.Call, ast.Attribute, ast.Subscript, ast.List, ast.Tuple, ast.Dict, ast.Set)
#: containers whose positional arguments (or list elements) are their numbered children
_CONTAINERS = ("Sequential", "ModuleList")


class _Planner:
    """Turns rewrites into spans; one parsed :class:`_Source` per file."""

    def __init__(self, model: nn.Module, traced: torch.fx.GraphModule, cast_back: frozenset[str]) -> None:
        self.model = model
        self.cast_back = cast_back
        self.nodes = {n.name: n for n in traced.graph.nodes}
        self.index = {n: i for i, n in enumerate(traced.graph.nodes)}
        self.sources: dict[str, _Source] = {}
        #: (file, line, spelling) -> how many rewrites of that spelling the line had so far (loops repeat it)
        self.seen: dict[tuple[str, int, str], int] = {}

    def source(self, file: str) -> _Source:
        if file not in self.sources:
            try:
                self.sources[file] = _Source(file)
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
                raise _Decline(f"fxgrad cannot read {_display(file)} as Python ({type(e).__name__}: {e})") from e
        return self.sources[file]

    # -- dispatch ------------------------------------------------------------------------------------------------

    def spans(self, rewrite: Rewrite) -> list[_Span]:
        node = self.nodes.get(rewrite.node)
        if node is None:
            raise _Decline("the rewritten node is not in the captured graph")
        if rewrite.kind == "module":
            return self._module(node)
        loc = rewrite.location
        if loc is None or loc.file.startswith("<"):
            raise _Decline("fxgrad does not know the source line of this op", loc)
        owner = library_owner(loc.file)
        if owner is not None:
            raise _Decline(_library_reason(owner, f"`{loc.code}`"), loc)
        src = self.source(loc.file)
        if node.name in self.cast_back and rewrite.kind not in ("augmented", "method", "function", "clone-write"):
            raise _Decline("fix cast the out-of-place result back to the in-place op's dtype, which fxgrad does not "
                           "write for this spelling; add `.to(<the old dtype>)` by hand", loc)
        if rewrite.kind == "augmented":
            return self._augmented(src, node, loc)
        if node.op == "call_function" and node.target is operator.setitem:
            return self._setitem(src, node, loc)
        if rewrite.kind == "inplace-kwarg":
            return self._inplace_kwarg(src, node, loc)
        if rewrite.kind == "out":
            return self._out(src, node, loc)
        if node.op == "call_method" and rewrite.kind in ("method", "function", "clone-write"):
            return self._method(src, node, loc)
        if node.op == "call_function" and rewrite.kind == "function":
            return self._function(src, node, loc)
        raise _Decline(f"fxgrad has no source form for a `{rewrite.kind}` rewrite of `{rewrite.before}`", loc)

    def _pick(self, src: _Source, loc: SourceLocation, kind: type[ast.AST], match: Callable[[Any], bool],
              what: str) -> Any:
        """The ``ast`` node on ``loc``'s line for this op; the n-th one when the line has several."""
        found = [n for n in src.nodes_at(loc.line, kind) if match(n)]
        if not found:
            raise _Decline(f"fxgrad cannot find `{what}` on this line", loc)
        key = (src.file, loc.line, what)
        count = self.seen.get(key, 0)
        self.seen[key] = count + 1
        # the n-th rewrite of this spelling on the line is its n-th occurrence, in evaluation (source) order; a
        # line run once per loop iteration or module instance repeats them: the same spans again
        return found[count % len(found)]

    # -- in-place ops at their own line ----------------------------------------------------------------------------

    def _method(self, src: _Source, node: torch.fx.Node, loc: SourceLocation) -> list[_Span]:
        method = str(node.target)
        call = self._pick(src, loc, ast.Call, lambda c: isinstance(c.func, ast.Attribute) and c.func.attr == method,
                          f".{method}(")
        receiver = call.func.value
        view = self._view_write(src, call, receiver, loc)
        if view is not None:
            return view
        twin = _method_twin(method)
        end = src.end(call.func)
        if twin is not None and twin[0] == "method":
            # `t.mul_(2)` -> `t.mul(2)`: drop the underscore
            spans = [src.span((end[0], end[1] - 1), end, "")]
        else:
            # no out-of-place method: the op writes into a fresh copy, `t.clone().fill_(v)`
            spans = [src.span(src.end(receiver), src.end(receiver), ".clone()")]
        return spans + self._rebind(src, call, receiver, node, loc) + self._cast(src, call, receiver, node, loc)

    def _function(self, src: _Source, node: torch.fx.Node, loc: SourceLocation) -> list[_Span]:
        fn = node.target
        name = getattr(fn, "__name__", "")
        if not callable(fn) or _function_twin(fn) is None:
            raise _Decline(f"fxgrad knows no out-of-place function for `{name}`", loc)
        call = self._pick(src, loc, ast.Call, lambda c: _callee(c) == name, f"{name}(")
        if not call.args or isinstance(call.args[0], ast.Starred):
            raise _Decline(f"`{name}(...)` has no first argument fxgrad can name", loc)
        view = self._view_write(src, call, call.args[0], loc)
        if view is not None:
            return view
        end = src.end(call.func)
        return [src.span((end[0], end[1] - 1), end, ""), *self._rebind(src, call, call.args[0], node, loc),
                *self._cast(src, call, call.args[0], node, loc)]

    def _view_write(self, src: _Source, call: ast.Call, written: ast.expr, loc: SourceLocation) -> list[_Span] | None:
        """A statement that writes into a view, ``h[:, 0].mul_(2)``: the base is cloned first and keeps the write."""
        if not (isinstance(src.parents.get(call), ast.Expr) and isinstance(written, ast.Subscript)):
            return None
        stmt = src.statement(call)
        assert stmt is not None
        return self._clone_base(src, stmt, written, loc)

    def _inplace_kwarg(self, src: _Source, node: torch.fx.Node, loc: SourceLocation) -> list[_Span]:
        fn = node.target
        name = getattr(fn, "__name__", "")
        position = _inplace_position(fn) if callable(fn) else None
        call = self._pick(src, loc, ast.Call, lambda c: _callee(c) == name and _inplace_arg(c, position) is not None,
                          f"{name}(..., inplace=True)")
        if not call.args or isinstance(call.args[0], ast.Starred):
            raise _Decline(f"`{name}(...)` has no first argument fxgrad can name", loc)
        removed = _remove_argument(src, call, _inplace_arg(call, position))
        return [removed, *self._rebind(src, call, call.args[0], node, loc)]

    def _out(self, src: _Source, node: torch.fx.Node, loc: SourceLocation) -> list[_Span]:
        name = getattr(node.target, "__name__", "")
        call = self._pick(src, loc, ast.Call, lambda c: _callee(c) == name and any(k.arg == "out" for k in c.keywords),
                          f"{name}(..., out=...)")
        out = next(k for k in call.keywords if k.arg == "out")
        return [_remove_argument(src, call, out), *self._rebind(src, call, out.value, node, loc, always=True)]

    def _augmented(self, src: _Source, node: torch.fx.Node, loc: SourceLocation) -> list[_Span]:
        assert callable(node.target)
        plain = ops.AUGMENTED[node.target][0]
        symbol = ops.INFIX.get(plain)
        stmt = self._pick(src, loc, ast.AugAssign, lambda s: _AUG_SYMBOL.get(type(s.op)) == symbol,
                          f"{symbol}=")
        target = stmt.target
        if isinstance(target, ast.Name):
            self._guard_view(self._written(node), node, target.id, loc)
            value = src.segment(stmt.value)
            if not isinstance(stmt.value, _ATOMS):
                value = f"({value})"
            n = target.id
            text = f"{n} = {n} {symbol} {value}"
            if node.name in self.cast_back:  # `h16 += x32` kept float16
                text = f"{n} = ({n} {symbol} {value}).to({n}.dtype)"
            return [src.span(src.start(stmt), src.end(stmt), text)]
        return self._clone_base(src, stmt, target, loc)

    def _setitem(self, src: _Source, node: torch.fx.Node, loc: SourceLocation) -> list[_Span]:
        # `x[i] = v`, or the write-back of `x[i] += v`
        stmt = self._pick(src, loc, ast.stmt, lambda s: isinstance(_item_target(s), ast.Subscript), "[...] =")
        target = _item_target(stmt)
        assert isinstance(target, ast.Subscript)
        if isinstance(target.value, ast.Name):
            self._guard_view(self._written(node), node, target.value.id, loc)
        return self._clone_base(src, stmt, target, loc)

    # -- how the written tensor gets its name back -----------------------------------------------------------------

    def _clone_base(self, src: _Source, stmt: ast.stmt, target: ast.expr, loc: SourceLocation) -> list[_Span]:
        """``x[i] = v`` -> ``x = x.clone(); x[i] = v``: the write goes into a fresh copy that takes the name."""
        base = target
        while isinstance(base, ast.Subscript):
            base = base.value
        if not isinstance(base, ast.Name):
            raise _Decline(f"it writes into `{src.segment(target)}`, which is not a local variable (module state or "
                           "an expression): fxgrad cannot give the result a name; change it by hand", loc)
        at = src.start(stmt)
        return [src.span(at, at, f"{base.id} = {base.id}.clone(); ")]

    def _rebind(self, src: _Source, call: ast.Call, written: ast.expr, node: torch.fx.Node, loc: SourceLocation,
                always: bool = False) -> list[_Span]:
        """Spans that give the out-of-place result the written tensor's name, where the code relies on it.

        A statement (``t.mul_(2)``) exists for its write: ``t = t.mul(2)``. An expression (``y = t.mul_(2)``,
        ``return t.sigmoid_()``) already passes the result on; it also rebinds ``t`` only when the graph reads
        the written tensor after the op (``y = t = t.mul(2)``, or ``(t := t.mul(2))`` inside an expression).
        """
        parent = src.parents.get(call)
        statement = isinstance(parent, ast.Expr)
        if isinstance(written, ast.Name):
            self._guard_view(self._written(node), node, written.id, loc)
        if not (statement or always or self._read_later(node)):
            return []
        if not isinstance(written, ast.Name):
            raise _Decline(f"it writes `{src.segment(written)}`, which is not a local variable (module state or an "
                           "expression): fxgrad cannot give the out-of-place result a name; change it by hand", loc)
        name = written.id
        if statement:
            at = src.start(call)
            return [src.span(at, at, f"{name} = ")]
        if isinstance(parent, ast.Assign) and parent.value is call:
            at = src.start(call)
            return [src.span(at, at, f"{name} = ")]
        if isinstance(parent, ast.Return):
            return []  # nothing in this function reads it after the return
        if isinstance(parent, ast.Call) and any(a is call for a in parent.args):
            return [src.span(src.start(call), src.start(call), f"{name} := ")]  # f(e := e.mul(2)) needs no parentheses
        return [src.span(src.start(call), src.start(call), f"({name} := "), src.span(src.end(call), src.end(call), ")")]

    def _cast(self, src: _Source, call: ast.Call, written: ast.expr, node: torch.fx.Node, loc: SourceLocation
              ) -> list[_Span]:
        """``.to(t.dtype)`` after the out-of-place call, where ``fix`` cast its result back (after the rebinding
        spans in the list: at the same position, the cast goes inside a closing walrus parenthesis)."""
        if node.name not in self.cast_back:
            return []
        if not isinstance(written, ast.Name):
            raise _Decline("fix cast the out-of-place result back to the in-place op's dtype, and the written tensor "
                           "has no name to take the dtype from; add `.to(<the old dtype>)` by hand", loc)
        return [src.span(src.end(call), src.end(call), f".to({written.id}.dtype)")]

    @staticmethod
    def _written(node: torch.fx.Node) -> torch.fx.Node | None:
        """The graph value an in-place node writes: its ``out=`` or its first argument."""
        out = node.kwargs.get("out") if node.op == "call_function" else None
        first = out if isinstance(out, torch.fx.Node) else (node.args[0] if node.args else None)
        return first if isinstance(first, torch.fx.Node) else None

    def _guard_view(self, named: torch.fx.Node | None, node: torch.fx.Node, name: str, loc: SourceLocation) -> None:
        """Decline when the variable the edit rebinds is a view whose base (or another view of it) is read after
        the write: the write must reach them, and rebinding or cloning the view alone does not."""
        if named is None:
            return
        base = named
        while _is_view(base):
            base = base.args[0]  # type: ignore[assignment]
        if base is named:
            return
        at = self.index[node]
        aliases, stack = [], [base]
        while stack:
            a = stack.pop()
            if a is named:
                continue
            aliases.append(a)
            stack += [u for u in a.users if _is_view(u) and self.index.get(u, at + 1) < at]
        if any(self.index.get(u, -1) > at for a in aliases for u in a.users):
            made = node_origin(base).location
            what = f"the tensor of line {made.line} (`{made.code}`)" if made is not None else f"`{base.name}`"
            raise _Decline(f"`{name}` is a view of {what}, which is read after the write: the write must reach it, "
                           "and an edit of this line alone does not do that. Change it by hand (take the view from a "
                           "`.clone()` of that tensor and use the clone from there on), or use the fixed GraphModule",
                           loc)

    def _read_later(self, node: torch.fx.Node) -> bool:
        """Whether a node after ``node`` reads the tensor it wrote through another name than its result."""
        members = []
        t = node.args[0] if node.args else None
        if node.op == "call_function" and isinstance(node.kwargs.get("out"), torch.fx.Node):
            t = node.kwargs["out"]
        while isinstance(t, torch.fx.Node):
            members.append(t)
            # an earlier in-place result is the same tensor as what it wrote
            t = t.args[0] if t.args and self._writes(t) else None
        at = self.index[node]
        return any(self.index.get(u, -1) > at for m in members for u in m.users if u is not node)

    @staticmethod
    def _writes(node: torch.fx.Node) -> bool:
        if node.op == "call_method":
            return str(node.target).endswith("_") and not str(node.target).endswith("__")
        if node.op == "call_function":
            name = getattr(node.target, "__name__", "")
            return node.target in ops.AUGMENTED or (name.endswith("_") and not name.endswith("__"))
        return False

    # -- in-place modules: the line that built them ----------------------------------------------------------------

    def _module(self, node: torch.fx.Node) -> list[_Span]:
        path = str(node.target)
        try:
            module = self.model.get_submodule(path)
        except AttributeError as e:
            raise _Decline(f"`{path}` is not a submodule of the model") from e
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path)
        lib = library_owner(_class_file(type(parent)))
        if lib not in (None, "torch"):
            # a library class built it: the decline names the line that builds it, or else the class
            try:
                self._assignments(parent, attr, path)
            except _Decline as d:
                if d.library:
                    raise
            cls = type(parent)
            where = None
            try:
                lines, first = inspect.getsourcelines(cls)
                where = SourceLocation(_class_file(cls), first, "", lines[0].strip())
            except (OSError, TypeError):
                pass
            raise _Decline(_library_reason(str(lib), f"the module `{path}`, built by {cls.__name__},", module=True),
                           where)
        sites = self._construction(path)
        spans = []
        for src, expr in sites:
            calls = [c for c in ast.walk(expr) if isinstance(c, ast.Call) and _builds(c, type(module))]
            position = _inplace_position(type(module).__init__)
            position = None if position is None else position - 1  # `self`
            calls = [c for c in calls if _inplace_arg(c, position) is not None]
            for c in calls:
                spans.append(_remove_argument(src, c, _inplace_arg(c, position)))
        if not spans:
            src, expr = sites[0]
            raise _Decline(f"`{path}` ({type(module).__name__}) is built by `{src.segment(expr)}`, where fxgrad finds "
                           "no `inplace=True` to remove; change it by hand",
                           _loc(src, expr))
        return spans

    def _construction(self, path: str) -> list[tuple[_Source, ast.expr]]:
        """The expressions that built the module at ``path``: walk the path down, one owner ``__init__`` at a time."""
        owner: nn.Module = self.model
        built: tuple[_Source, ast.expr] | None = None  # the expression that built `owner`, when a parent built it
        sites: list[tuple[_Source, ast.expr]] = []
        for part in path.split("."):
            child = owner.get_submodule(part)
            sites = []
            if built is not None and part.isdigit():
                element = _element(built[1], int(part))
                if element is not None:
                    sites = [(built[0], element)]
            if not sites and built is not None and isinstance(owner, (nn.Sequential, nn.ModuleList)):
                src, expr = built
                raise _Decline(f"`{path}` is built inside `{_shorten(src.segment(expr))}`, which fxgrad does not "
                               "follow (a helper function, a loop or *args); remove `inplace=True` where that module "
                               "is made", _loc(src, expr))
            if not sites:
                sites = self._assignments(owner, part, path)
            built = sites[0]
            owner = child
        return sites

    def _assignments(self, owner: nn.Module, attr: str, path: str) -> list[tuple[_Source, ast.expr]]:
        """``self.<attr> = <expr>`` (or ``self.add_module("<attr>", <expr>)``) in the ``__init__`` of ``owner``'s
        class or the first base class that has one."""
        for cls in type(owner).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None or not inspect.isfunction(init):
                continue
            file = init.__code__.co_filename
            if file.startswith(_TORCH_DIR):
                continue  # torch.nn's own classes build no user submodules
            src = self._owner_source(init, path)
            fn = src.functions.get(("__init__", init.__code__.co_firstlineno))
            if fn is None:
                continue
            found = [e for e in _assigned(fn, attr)]
            if not found:
                continue
            owner_lib = library_owner(file)
            if owner_lib is not None:
                first = found[0]
                what = f"the module `{path}`, built by `{_shorten(src.segment(first))}`,"
                raise _Decline(_library_reason(owner_lib, what, module=True), _loc(src, first), library=True)
            return [(src, e) for e in found]
        raise _Decline(f"fxgrad cannot find where `{path}` is built: no `self.{attr} = ...` in the `__init__` of "
                       f"{type(owner).__name__} or its base classes (a helper function or a loop builds it); remove "
                       "`inplace=True` where it is built")

    def _owner_source(self, init: Any, path: str) -> _Source:
        file = init.__code__.co_filename
        owner = library_owner(file)
        if owner is not None:
            # parse it only to name the line in the decline
            try:
                return _Source(file)
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
                raise _Decline(_library_reason(owner, f"the module `{path}`", module=True)) from e
        return self.source(file)


def _item_target(stmt: ast.AST) -> ast.expr | None:
    """The target of ``x[i] = v`` or ``x[i] += v``."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        return stmt.targets[0]
    return stmt.target if isinstance(stmt, ast.AugAssign) else None


def _is_view(node: torch.fx.Node) -> bool:
    """``node`` may share memory with its first argument: a view op, or ``t[...]`` with a basic index."""
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    if node.op == "call_function" and node.target is operator.getitem:
        index = node.args[1] if len(node.args) > 1 else None
        items = index if isinstance(index, tuple) else (index,)
        return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)
    if node.op == "call_method":
        return ops.is_view_op(str(node.target))
    if node.op == "call_function":
        return ops.is_view_op(getattr(node.target, "__name__", ""))
    return False


def _class_file(cls: type) -> str:
    try:
        return inspect.getsourcefile(cls) or "<unknown>"
    except TypeError:
        return "<builtin>"


def _loc(src: _Source, node: ast.AST) -> SourceLocation:
    line = node.lineno  # type: ignore[attr-defined]
    return SourceLocation(src.file, line, "", src.lines[line - 1].strip())


def _shorten(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _builds(call: ast.Call, cls: type) -> bool:
    """``nn.ReLU(...)``, ``ReLU(...)``, ``torch.nn.ReLU(...)`` for a module of class ``cls`` (or a subclass)."""
    return _callee(call) in {c.__name__ for c in cls.__mro__ if c not in (nn.Module, object)}


def _inplace_arg(call: ast.Call, position: int | None) -> ast.AST | None:
    """The ``inplace=`` keyword or the positional argument at ``inplace``'s position, when it is not ``False``."""
    for k in call.keywords:
        if k.arg == "inplace":
            return None if isinstance(k.value, ast.Constant) and k.value.value is False else k
    if position is not None and position < len(call.args) and not any(
            isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        a = call.args[position]
        return None if isinstance(a, ast.Constant) and a.value is False else a
    return None


def _remove_argument(src: _Source, call: ast.Call, arg: ast.AST | None) -> _Span:
    """Remove one argument with the comma before it; a positional one followed by others becomes ``False``."""
    assert arg is not None
    arguments: list[ast.AST] = [*call.args, *call.keywords]
    arguments.sort(key=lambda a: (a.lineno, a.col_offset))  # type: ignore[attr-defined]
    i = arguments.index(arg)
    if isinstance(arg, ast.expr) and i + 1 < len(arguments):
        return src.span(src.start(arg), src.end(arg), "False")
    if i == 0:
        nxt = arguments[1] if len(arguments) > 1 else None
        end = src.start(nxt) if nxt is not None else src.end(arg)
        return src.span(src.start(arg), end, "")
    return src.span(src.end(arguments[i - 1]), src.end(arg), "")


def _element(expr: ast.expr, index: int) -> ast.expr | None:
    """The expression that built child ``index`` of ``nn.Sequential(a, b)`` / ``nn.ModuleList([a, b])`` /
    ``[a, b]`` / ``[Block() for _ in range(n)]``."""
    items: list[ast.expr] = []
    if isinstance(expr, ast.Call) and _callee(expr) in _CONTAINERS and not expr.keywords:
        args = expr.args
        if len(args) == 1 and isinstance(args[0], ast.Starred):
            return _element(args[0].value, index)
        if len(args) == 1 and isinstance(args[0], (ast.List, ast.Tuple, ast.ListComp, ast.GeneratorExp)):
            return _element(args[0], index)
        if any(isinstance(a, ast.Starred) for a in args):
            return None
        items = list(args)
    elif isinstance(expr, (ast.List, ast.Tuple)):
        if any(isinstance(a, ast.Starred) for a in expr.elts):
            return None
        items = list(expr.elts)
    elif isinstance(expr, (ast.ListComp, ast.GeneratorExp)):
        return expr.elt
    return items[index] if index < len(items) else None


def _assigned(fn: ast.FunctionDef, attr: str) -> Iterator[ast.expr]:
    """The values ``fn`` assigns to ``self.<attr>`` (also via ``self.add_module("<attr>", value)``)."""
    self_name = fn.args.args[0].arg if fn.args.args else "self"
    for n in ast.walk(fn):
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            if any(isinstance(t, ast.Attribute) and t.attr == attr and isinstance(t.value, ast.Name)
                   and t.value.id == self_name for t in targets):
                yield n.value
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and \
                n.func.attr in ("add_module", "register_module") and len(n.args) == 2 and \
                isinstance(n.args[0], ast.Constant) and n.args[0].value == attr:
            yield n.args[1]


# --------------------------------------------------------------------------------------------------------------
# plan.
# --------------------------------------------------------------------------------------------------------------


def plan(model: nn.Module, traced: torch.fx.GraphModule, rewrites: Sequence[Rewrite], *, verified: bool,
         cast_back: Collection[str] = ()) -> tuple[tuple[SourceEdit, ...], tuple[SourceDecline, ...]]:
    """The source edits that make ``model``'s own code do what the verified rewrites do, and the declines.

    ``cast_back``: the rewritten nodes whose out-of-place result ``fix`` cast back to the in-place op's dtype
    (``h16 += x32``); their edits cast too (``h16 = (h16 + x32).to(h16.dtype)``).
    """
    # Step 1: verified rewrites only.
    if not verified:
        reason = ("the fix was not verified (pass example inputs with values, and verify=True): fxgrad edits source "
                  "only where it proved the rewrite")
        return (), tuple(SourceDecline(r.node, r.location, reason) for r in rewrites)
    planner = _Planner(model, traced, frozenset(cast_back))
    spans: dict[str, list[_Span]] = {}
    declined: list[SourceDecline] = []
    for r in rewrites:
        # Steps 2-4: where, whose, and the span.
        try:
            found = planner.spans(r)
        except _Decline as d:
            declined.append(SourceDecline(r.node, d.location or r.location, d.reason))
            continue
        except Exception as e:  # a bug here must not cost the user the verified GraphModule
            log.debug("source edit of %s failed", r.node, exc_info=True)
            declined.append(SourceDecline(r.node, r.location, f"fxgrad failed to work out the source edit "
                                          f"({type(e).__name__}: {e}); please report it as an fxgrad bug"))
            continue
        taken = spans.setdefault(found[0].file, [])
        clash = [s for s in found for t in taken if s != t and _overlap(s, t)]
        if clash:
            declined.append(SourceDecline(r.node, r.location, "its edit overlaps another edit of the same code; "
                                                              "change it by hand"))
            continue
        taken += [s for s in found if s not in taken]
    # Step 5: whole-line edits per file.
    edits: list[SourceEdit] = []
    for file, file_spans in spans.items():
        edits += _group(planner.sources[file], file_spans)
    log.debug("source fix: %d edits, %d declined", len(edits), len(declined))
    return tuple(edits), tuple(declined)


def _overlap(a: _Span, b: _Span) -> bool:
    return (a.line, a.col) < (b.end_line, b.end_col) and (b.line, b.col) < (a.end_line, a.end_col)


def _group(src: _Source, spans: list[_Span]) -> list[SourceEdit]:
    """Spans on overlapping line ranges become one edit of whole lines."""
    out: list[SourceEdit] = []
    ordered = sorted(spans, key=lambda s: (s.line, s.col))
    groups: list[list[_Span]] = []
    for s in ordered:
        if groups and s.line <= max(g.end_line for g in groups[-1]):
            groups[-1].append(s)
        else:
            groups.append([s])
    for g in groups:
        first, last = g[0].line, max(s.end_line for s in g)
        chunk = _Source.__new__(_Source)
        chunk.file, chunk.lines = src.file, src.lines[first - 1:last]
        chunk.text = "".join(chunk.lines)
        shifted = [_Span(s.file, s.line - first + 1, s.col, s.end_line - first + 1, s.end_col, s.text) for s in g]
        new = _apply_spans(chunk, shifted)
        out.append(SourceEdit(src.file, first, chunk.text.rstrip("\r\n"), new.rstrip("\r\n")))
    return out


# --------------------------------------------------------------------------------------------------------------
# Edited text, diffs, writing.
# --------------------------------------------------------------------------------------------------------------


def edited_texts(edits: Sequence[SourceEdit]) -> dict[str, tuple[str, str]]:
    """``file -> (old text, new text)``; raises :class:`InputError` when a file changed since the fix."""
    out: dict[str, tuple[str, str]] = {}
    by_file: dict[str, list[SourceEdit]] = {}
    for e in edits:
        by_file.setdefault(e.file, []).append(e)
    for file, file_edits in by_file.items():
        old = Path(file).read_text(encoding="utf-8")
        lines = old.splitlines(keepends=True)
        for e in sorted(file_edits, key=lambda e: e.line, reverse=True):
            n = e.old.count("\n") + 1
            have = "".join(lines[e.line - 1:e.line - 1 + n])
            ending = have[len(have.rstrip("\r\n")):]
            if have.rstrip("\r\n") != e.old:
                raise InputError(f"{_display(file)} changed since fxgrad read it: line {e.line} no longer reads "
                                 f"`{e.old.strip()}`. Hint: run fxgrad fix again.")
            lines[e.line - 1:e.line - 1 + n] = [e.new + ending]
        out[file] = (old, "".join(lines))
    return out


def unified_diff(edits: Sequence[SourceEdit], cwd: str | None = None) -> str:
    """A unified diff of the edits with ``a/`` and ``b/`` paths relative to ``cwd``: ``patch -p1`` applies it there."""
    base = cwd or os.getcwd()
    chunks: list[str] = []
    for file, (old, new) in edited_texts(edits).items():
        rel = os.path.relpath(file, base).replace(os.sep, "/")
        chunks += difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                       f"a/{rel}", f"b/{rel}")
    return "".join(c if c.endswith("\n") else c + "\n\\ No newline at end of file\n" for c in chunks)


def apply(edits: Sequence[SourceEdit], verify_edited: Callable[[dict[str, str]], Verification]) -> Verification:
    """Write the edits, then run ``verify_edited`` (``file -> file``: what to import); roll back if it fails.

    ``verify_edited`` is typically ``functools.partial(check, gm, inputs, build, model)``. On a mismatch or an
    error the files get their old text back and :class:`~fxgrad.errors.VerificationError` says why.
    """
    texts = edited_texts(edits)
    written: list[str] = []
    try:
        for file, (_, new) in texts.items():
            Path(file).write_text(new, encoding="utf-8")
            written.append(file)
        result = verify_edited({f: f for f in texts})
    except BaseException as e:
        _roll_back(texts, written)
        shown = ", ".join(_display(f) for f in texts)
        reason = _reason(e)
        raise VerificationError(f"The edited source does not behave as the verified fix, so fxgrad rolled back "
                                f"{shown}: {reason}. Hint: use the fixed GraphModule (`fxgrad fix --out FILE`), or "
                                "make the change by hand from `fxgrad fix --diff` (two names for one tensor, such as "
                                "`identity = out` before `out += x`, need it)."
                                ) from e
    return result


def _reason(e: BaseException) -> str:
    """An fxgrad error's sentence without its hint and final period; other errors with their type."""
    if isinstance(e, (VerificationError, InputError)):
        return str(e).split(" Hint:")[0].strip().rstrip(".")
    return f"{type(e).__name__}: {e}"


def _roll_back(texts: dict[str, tuple[str, str]], written: list[str]) -> None:
    for file in written:
        Path(file).write_text(texts[file][0], encoding="utf-8")
        linecache.checkcache(file)


def check_copies(edits: Sequence[SourceEdit], verify_edited: Callable[[dict[str, str]], Verification]
                 ) -> Verification:
    """``verify_edited`` on edited copies in a temporary directory: the user's files stay as they are."""
    texts = edited_texts(edits)
    with tempfile.TemporaryDirectory(prefix="fxgrad-sourcefix-") as tmp:
        mapping = {}
        for i, (file, (_, new)) in enumerate(texts.items()):
            copy = Path(tmp) / str(i) / os.path.basename(file)
            copy.parent.mkdir()
            copy.write_text(new, encoding="utf-8")
            mapping[file] = str(copy)
        return verify_edited(mapping)


# --------------------------------------------------------------------------------------------------------------
# check: the edited source against the verified GraphModule.
# --------------------------------------------------------------------------------------------------------------

_counter = itertools.count()


def _exec_file(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{_display(path)} cannot be imported. Hint: it must be a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def fresh_imports(model_file: str, mapping: dict[str, str]) -> Iterator[ModuleType]:
    """Step 1: the edited ``model_file`` imported fresh under a new name (the module of the model's class), with
    the other edited files in ``sys.modules`` under their own names for the duration."""
    saved = dict(sys.modules)
    model_file = os.path.abspath(model_file)
    try:
        by_file: dict[str, list[str]] = {}
        for name, module in saved.items():
            f = getattr(module, "__file__", None)
            if isinstance(f, str) and os.path.abspath(f) in mapping and not name.startswith("_fxgrad_"):
                by_file.setdefault(os.path.abspath(f), []).append(name)
        with torch.random.fork_rng(devices=[]):
            for file, path in mapping.items():
                if os.path.abspath(file) == model_file:
                    continue
                for name in by_file.get(os.path.abspath(file), []):
                    _exec_file(name, path)
            owner = next((n for n in by_file.get(model_file, []) if "." in n), "")
            package = owner.rpartition(".")[0]
            stem = re.sub(r"\W", "_", Path(model_file).stem)
            name = f"{package + '.' if package else ''}_fxgrad_edited_{stem}_{next(_counter)}"
            yield _exec_file(name, mapping.get(model_file, model_file))
    finally:
        for name in [n for n in sys.modules if n not in saved]:
            del sys.modules[name]
        for name, module in saved.items():
            if sys.modules.get(name) is not module:
                sys.modules[name] = module


def check(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], build: Callable[[ModuleType], nn.Module],
          model: nn.Module, model_file: str, mapping: dict[str, str]) -> Verification:
    """Steps 1-3 of :func:`check`: rebuild the model from the edited source and compare it with the verified ``gm``.

    ``build`` makes the model from the freshly imported module of ``model_file`` (the CLI: ``NAME()`` as its loader
    does); the original ``model``'s ``state_dict`` and train/eval flags are loaded into it.
    """
    with fresh_imports(model_file, mapping) as module:
        # Step 2: rebuild.
        with torch.random.fork_rng(devices=[]):
            rebuilt = build(module)
        state = model.state_dict()
        missing, unexpected = rebuilt.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise VerificationError(f"the model rebuilt from the edited source has other parameters or buffers "
                                    f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
        flags = {n: m.training for n, m in model.named_modules()}
        for n, m in rebuilt.named_modules():
            if n in flags:
                m.training = flags[n]
        ref_params = {n for n, p in gm.named_parameters(remove_duplicate=False) if p.requires_grad}
        new_params = {n for n, p in rebuilt.named_parameters(remove_duplicate=False) if p.requires_grad}
        if not ref_params <= new_params:
            raise VerificationError(f"the rebuilt model lacks the parameters {sorted(ref_params - new_params)[:3]} "
                                    "of the fixed module")
        # Step 3: the verified GraphModule is the reference.
        try:
            return verify(gm, rebuilt, tuple(example_inputs), model_name=type(model).__name__)
        except VerificationError as e:
            # verify's words are "fixed" (here: the edited source) and "original" (here: the verified fix)
            text = str(e).split(" Rewrites involved:")[0].split(" Hint:")[0]
            detail = text.split("computes: ", 1)[1] if "computes: " in text else text
            raise VerificationError(f"the model rebuilt from the edited source differs from the verified fix: "
                                    f"{detail}") from e


# --------------------------------------------------------------------------------------------------------------
# The command line's --diff / --write.
# --------------------------------------------------------------------------------------------------------------


def target_builder(target: str) -> tuple[str, Callable[[ModuleType], nn.Module]]:
    """The file that defines ``TARGET``'s ``NAME``, and how the CLI's loader builds the model from that module."""
    from .loader import _call, _is_path, _split

    where, name = _split(target, "TARGET")
    if _is_path(where):
        file = os.path.abspath(where)
    else:
        module = sys.modules.get(where)
        file = getattr(module, "__file__", None) or ""
        if not file:
            raise InputError(f"fxgrad cannot find the file of {where}. Hint: give TARGET as path/to/file.py:NAME.")

    def build(module: ModuleType) -> nn.Module:
        obj: Any = module
        for part in name.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, nn.Module):
            return obj
        model = _call(obj, name, factory_hint=isinstance(obj, type))
        if not isinstance(model, nn.Module):
            raise InputError(f"{name}() returned {type(model).__name__}, not an nn.Module. Hint: TARGET's factory "
                             "must return the model.")
        return model

    return file, build


def run_command(gm: torch.fx.GraphModule, model: nn.Module, inputs: Sequence[Any] | None, target: str, *,
                write: bool, out: Any, err: Any) -> bool:
    """``fxgrad fix --diff`` (``write=False``) and ``--write``: the diff on ``out``, what was not edited on ``err``.

    Both check the edited source against the verified GraphModule (``--diff`` on copies of the files); ``--write``
    rolls the files back when the check fails. Returns False when the check failed (nothing shown or written).
    """
    record = gm.meta["fxgrad"]
    for d in record.source_declined:
        print(f"fxgrad: not edited: {d}", file=err)
    edits = record.source_edits
    if not edits:
        why = "no verified rewrite" if not record.rewrites else "no rewrite fxgrad can make in your source"
        print(f"fxgrad: nothing to change in the source ({why}).", file=err)
        return True
    assert inputs is not None  # verified, so there were example inputs
    if record.source_declined:
        # the source would do only part of the fix: nothing to check it against
        partial = (f"fxgrad: the edits cover {len(record.rewrites) - len(record.source_declined)} of the "
                   f"{len(record.rewrites)} rewrites; the ones listed above must be changed by hand")
        if write:
            print(f"{partial}, so fxgrad wrote nothing. Hint: use --diff for the partial patch, or the fixed "
                  "GraphModule (`fxgrad fix --out FILE`).", file=err)
        else:
            print(unified_diff(edits), end="", file=out)
            print(f"{partial}; this partial patch alone does not make backward run and was not checked.", file=err)
        return False
    model_file, build = target_builder(target)

    def verify_edited(mapping: dict[str, str]) -> Verification:
        return check(gm, inputs, build, model, model_file, mapping)

    if not write:
        try:
            check_copies(edits, verify_edited)
        except (VerificationError, InputError) as e:
            print(f"fxgrad: the edited source does not behave as the verified fix, so no diff is shown: "
                  f"{_reason(e)}. Hint: use the fixed GraphModule (`fxgrad fix --out FILE`).", file=err)
            return False
        print(unified_diff(edits), end="", file=out)
        return True
    try:
        apply(edits, verify_edited)
    except VerificationError as e:
        print(f"fxgrad: {e}", file=err)
        return False
    files = sorted({e.file for e in edits})
    print(f"fxgrad: edited {', '.join(_display(f) for f in files)} ({len(edits)} change(s)); the edited source "
          "computes the verified fix's outputs and gradients.", file=err)
    return True
