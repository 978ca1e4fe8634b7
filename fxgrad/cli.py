"""The ``fxgrad`` command line: ``check``, ``fix`` and ``demo``.

Exit status, like a linter's: 0 when nothing at or above ``--fail-on`` was found, 1 when something was, 2 for
everything that kept fxgrad from giving a verdict (a usage error, a model that cannot be imported, built or
traced, inputs that do not fit). A failure prints one line on stderr, ``fxgrad: error: ...`` ending in a
``Hint:``; ``--verbose`` adds the Python traceback and fxgrad's debug log.

Three promises about the process itself:

* **Shapes, not tensors.** ``--input 8x3x224x224`` is a shape (:func:`fxgrad.spec`): capture and dry-run need no
  values. Real values are built only where a run needs them (forward reads tensor values, or ``fix`` verifies),
  with a note on stderr, and never above ``--max-input-memory``.
* **stdout is the report.** What the user's model prints or logs while fxgrad imports, captures, dry-runs or
  verifies it goes to stderr, so ``--format json``/``sarif`` stay parseable.
* **A fast start.** torch is imported by the commands, not by this module: ``--help``, ``--version`` and usage
  errors answer at once.

Settings come from the command line first, then from ``[tool.fxgrad]`` in the nearest ``pyproject.toml``
(:mod:`fxgrad.config`).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import logging
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from tabulate import tabulate

from . import __version__
from .config import CAPTURES, FAIL_ON, Config, find_config, load_config
from .errors import FxgradError, InputError, TraceError, VerificationError
from .timing import collect
from .timing import phase as _phase

if TYPE_CHECKING:
    from .capture import SourceLocation
    from .report import Finding, Report

__all__ = ["main"]

#: when this module was imported: the start of fxgrad's own work, for --timings
_IMPORTED_AT = time.perf_counter()

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class _UsageError(Exception):
    """A command-line mistake argparse found; printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if "Hint:" in message:
            raise _UsageError(message)
        raise _UsageError(f"{message}. Hint: see `{self.prog} --help`.")


# --------------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------------


def _codes(text: str) -> list[str]:
    return [c.strip().upper() for c in text.split(",") if c.strip()]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Python tracebacks and fxgrad's debug log")


_SIZE = re.compile(r"^(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def _size(text: str) -> int:
    """``512M``, ``1GiB``, ``2g``, ``1000000`` (bytes): binary units."""
    m = _SIZE.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size. Hint: write e.g. 512M, 2GiB or 4g (binary units)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _concrete_arg(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with a Python literal value: ``return_dict=False``, ``mode='train'``, ``sizes=(2, 3)``."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE. Hint: e.g. --concrete-arg return_dict=False")
    try:
        return name, ast.literal_eval(value.strip())
    except (ValueError, SyntaxError) as e:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {value.strip()!r} is not a Python literal. Hint: write True, 3, (2, 3), None or a quoted "
            f"string: --concrete-arg \"{name}='{value.strip()}'\"") from e


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _add_model_args(p: argparse.ArgumentParser, *, static: bool = True) -> None:
    p.add_argument("target", metavar="TARGET",
                   help="path/to/file.py:NAME or package.module:NAME; NAME is an nn.Module subclass with a "
                        "no-argument constructor, a factory function returning a module, or a module instance")
    p.add_argument("--input", dest="input_specs", action="append", default=[], metavar="SHAPE[:DTYPE]",
                   help="an example input's shape, e.g. 8x3x32x32 or 2x16:int64 (dtype default float32); repeat "
                        "for several positional inputs. A shape costs no memory: real values are made only where a "
                        "run needs them (see --max-input-memory)")
    p.add_argument("--inputs", dest="inputs_factory", metavar="FILE.py:FUNC",
                   help="a function returning the example inputs (a tuple of positional arguments, or the one "
                        "argument), for models that take integers, dicts or several tensors; fxgrad.spec(...) "
                        "shapes are accepted in place of tensors")
    p.add_argument("--capture", choices=CAPTURES, default=None,
                   help="how the model becomes a graph: trace (symbolic, every branch, no inputs needed), run (by "
                        "running it on the example inputs: any Python control flow, the branches these inputs "
                        "take), auto (default: trace, and run when tracing fails)")
    p.add_argument("--concrete-arg", dest="concrete_args", action="append", default=[], type=_concrete_arg,
                   metavar="NAME=VALUE",
                   help="trace with forward()'s argument NAME fixed to VALUE, a Python literal (e.g. "
                        "return_dict=False), so the branch it decides is traced; repeatable")
    p.add_argument("--leaf-module", dest="leaf_modules", action="append", default=[], metavar="dotted.Class",
                   help="keep these modules as one opaque call instead of tracing into them: a class "
                        "(torch.nn.LSTM, package.module.Class, file.py:Class) or a submodule's name in the model "
                        "(encoder.layers.0); repeatable")
    p.add_argument("--max-input-memory", type=_size, default=_size("1GiB"), metavar="SIZE",
                   help="the most memory fxgrad may spend on real values for --input shapes, when a run needs them "
                        "(forward reads tensor values, or fix verifies): e.g. 512M, 4G (default: 1GiB); above it, "
                        "fxgrad stops with exit status 2")
    if static:
        p.add_argument("--static", action="store_true",
                       help="skip the dry-run on the example inputs: static verdicts from fxgrad's op tables only")


def _parser() -> _Parser:
    parser = _Parser(prog="fxgrad", description="Find, before training, why PyTorch gradients go wrong, with the "
                     "line of your code that causes it.")
    parser.add_argument("--version", action="version", version=f"fxgrad {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="show Python tracebacks and fxgrad's debug log")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    check = sub.add_parser("check", help="report gradient cuts, breaking in-place ops and parameters without "
                           "gradient", description="Analyse a model and report its findings.")
    _add_model_args(check)
    check.add_argument("--loss", metavar="FILE.py:FUNC",
                       help="analyse the training step: FUNC(output, *targets) is the loss (parameters it does not "
                            "reach get no gradient)")
    check.add_argument("--targets", metavar="FILE.py:FUNC", help="the targets passed to --loss (like --inputs)")
    check.add_argument("--optimizer", metavar="FILE.py:FUNC",
                       help="FUNC(model) returns the optimizer: trainable parameters in no group, parameters in a "
                            "group that get no gradient, frozen ones in a group")
    check.add_argument("--format", choices=("table", "json", "sarif", "html"), default="table",
                       help="table (default, for people), json (Report.to_dict(), versioned), sarif (SARIF "
                            "2.1.0, for GitHub code scanning) or html (one self-contained page: the module tree "
                            "with the gradient flow marked, and the findings)")
    check.add_argument("--select", action="append", type=_codes, metavar="CODES",
                       help="only these codes or prefixes, comma-separated (FXG1 = the in-place family)")
    check.add_argument("--ignore", action="append", type=_codes, metavar="CODES",
                       help="silence these codes or prefixes everywhere, comma-separated")
    check.add_argument("--fail-on", choices=FAIL_ON, default=None,
                       help="exit 1 when a finding of this severity or worse is reported (default: error)")
    check.add_argument("--baseline", type=Path, metavar="FILE",
                       help="if FILE does not exist, record today's findings in it and exit 0; if it exists, "
                            "report only findings that are not in it")
    check.add_argument("--root", type=Path, metavar="DIR",
                       help="directory that SARIF file URIs are relative to (%%SRCROOT%%; default: the current "
                            "directory)")
    cfg = check.add_mutually_exclusive_group()
    cfg.add_argument("--config", type=Path, metavar="PYPROJECT",
                     help="read [tool.fxgrad] from this file instead of the nearest pyproject.toml")
    cfg.add_argument("--isolated", action="store_true", help="ignore every pyproject.toml")
    check.add_argument("--timings", action="store_true",
                       help="print on stderr where the time went: start-up, import torch, import fxgrad, load "
                            "the model, capture, facts and rules, dry-run, render")
    _add_common(check)

    fix = sub.add_parser("fix", help="rewrite in-place ops out of place and verify the result",
                         description="Rewrite the model's in-place ops out of place, verify outputs and gradients, "
                         "and print each rewrite.")
    _add_model_args(fix, static=False)
    fix.add_argument("--only", choices=("breaking", "all"), default=None,
                     help="breaking (the default with example inputs): only in-place ops that make forward or "
                          "backward raise; all (the default without): every in-place op that can be rewritten safely")
    fix.add_argument("--unsafe", action="store_true",
                     help="also rewrite in-place writes to graph inputs that break nothing (the caller sees the "
                          "change), and say what changes; input writes that make the model raise are rewritten "
                          "without it")
    fix.add_argument("--rtol", type=float, default=None, metavar="TOL",
                     help="relative tolerance of the verification (default: torch.testing.assert_close's per dtype)")
    fix.add_argument("--atol", type=float, default=None, metavar="TOL", help="absolute tolerance of the verification")
    fix.add_argument("--no-verify", dest="verify", action="store_false",
                     help="do not run the fixed module against the original")
    fix.add_argument("--out", type=Path, metavar="FILE", help="write the fixed GraphModule's Python code here")
    source = fix.add_mutually_exclusive_group()
    source.add_argument("--diff", action="store_true",
                        help="print the verified fix as a unified diff of your own source files (apply it with "
                             "patch -p1 from this directory); the report goes to stderr")
    source.add_argument("--write", action="store_true",
                        help="edit your source files in place, then re-import them and check they compute the "
                             "verified fix's outputs and gradients (rolled back if not)")
    _add_common(fix)

    demo = sub.add_parser("demo", help="analyse the bundled example models", description="Analyse (and fix) the "
                          "bundled example models: every kind of finding, on models small enough to read.")
    demo.add_argument("names", nargs="*", metavar="EXAMPLE", help="show the full report of these examples")
    demo.add_argument("--all", action="store_true", help="show the full report of every example")
    _add_common(demo)
    return parser


# --------------------------------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------------------------------


def _check_codes(codes: Sequence[str], flag: str) -> None:
    from .rules import RULES_BY_CODE

    unknown = [c for c in codes if not any(code.startswith(c) for code in RULES_BY_CODE)]
    if unknown:
        raise InputError(f"{flag} names unknown code {', '.join(unknown)}. Hint: the codes are {_code_ranges()}; a "
                         "prefix like FXG1 selects a family.")


def _code_ranges() -> str:
    from .rules import RULES_BY_CODE

    families: dict[str, list[str]] = {}
    for code in RULES_BY_CODE:
        families.setdefault(code[:4], []).append(code)
    return ", ".join(f"{c[0]}–{c[-1]}" if len(c) > 1 else c[0] for c in families.values())


def _load(args: argparse.Namespace) -> tuple[Any, tuple[Any, ...] | None]:
    """The model and its example inputs: ``--input`` shapes as :class:`~fxgrad.inputs.Spec` (no memory), or what
    the ``--inputs`` factory returns."""
    from .inputs import bind_keywords
    from .loader import check_arity, load_inputs, load_model, parse_input_spec

    if args.input_specs and args.inputs_factory:
        raise InputError("--input and --inputs cannot be combined. Hint: build every input in the --inputs "
                         "function.")
    specs = [parse_input_spec(s) for s in args.input_specs]  # bad shapes fail before the model is imported
    with _phase("load the model"):
        model = load_model(args.target)
    inputs: tuple[Any, ...] | None = None
    if specs:
        inputs = tuple(s.spec() for s in specs)
    elif args.inputs_factory:
        inputs = load_inputs(args.inputs_factory)
        if len(inputs) == 1:  # a dict of forward's parameter names is a keyword call
            bound = bind_keywords(model, inputs[0])
            inputs = bound if isinstance(bound, tuple) else inputs
    if inputs is not None:
        check_arity(model, inputs)
    return model, inputs


def _tracing_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """``--concrete-arg`` and ``--leaf-module`` as :func:`fxgrad.analyze`'s ``concrete_args`` and
    ``leaf_modules``, checked against the model so a misspelt name is an error, not an option silently unused."""
    out: dict[str, Any] = {}
    if args.concrete_args:
        names = _forward_parameters(model)
        for name, _ in args.concrete_args:
            if names is not None and name not in names:
                raise InputError(f"--concrete-arg {name}: {type(model).__name__}.forward has no parameter {name!r}. "
                                 f"Hint: its parameters are {', '.join(names) or 'none'}.")
        out["concrete_args"] = dict(args.concrete_args)
    if args.leaf_modules:
        out["leaf_modules"] = [_leaf_module(text, model) for text in args.leaf_modules]
    return out


def _forward_parameters(model: Any) -> list[str] | None:
    try:
        return list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return None


def _leaf_module(text: str, model: Any) -> Any:
    """A submodule's qualified name in ``model`` (kept as the string), or the ``nn.Module`` class ``text`` names."""
    from torch import nn

    from .loader import resolve_target

    if ":" in text:  # file.py:Class or package.module:Class
        obj = _model_class(model, text) or resolve_target(text, what="--leaf-module")[0]
    else:
        try:
            model.get_submodule(text)
            return text
        except AttributeError:
            pass
        where, _, name = text.rpartition(".")
        if not where:
            raise InputError(f"--leaf-module {text} is neither a submodule of {type(model).__name__} nor a dotted "
                             "class name. Hint: write package.module.Class, file.py:Class, or a submodule's name "
                             "as model.named_modules() spells it.")
        obj = resolve_target(f"{where}:{name}", what="--leaf-module")[0]
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        kind = f"the class {obj.__name__}" if isinstance(obj, type) else f"a value of type {type(obj).__name__}"
        raise InputError(f"--leaf-module {text} is {kind}, not an nn.Module class. Hint: name a module class, e.g. "
                         "torch.nn.LSTM, or a submodule's name.")
    return obj


def _model_class(model: Any, text: str) -> Any:
    """``file.py:Class`` as the class the model's modules are made of: importing the file again would make a new
    class object, which none of them is an instance of."""
    where, _, name = text.rpartition(":")
    if not where.endswith(".py"):
        return None
    path = os.path.abspath(where)
    for m in model.modules():
        cls = type(m)
        try:
            file = inspect.getsourcefile(cls)
        except (TypeError, OSError):
            continue
        if cls.__qualname__ == name and file is not None and os.path.abspath(file) == path:
            return cls
    return None


def _real_inputs(args: argparse.Namespace, inputs: tuple[Any, ...] | None, why: str
                 ) -> tuple[tuple[Any, ...] | None, str]:
    """``inputs`` with random values in place of shapes, within ``--max-input-memory``, and the note that says so
    (printed once the run succeeded: a failure is one line on stderr, the error)."""
    from .inputs import has_specs, random_values, spec_bytes

    if inputs is None or not has_specs(inputs):
        return inputs, ""
    need, cap = spec_bytes(inputs), args.max_input_memory
    if need > cap:
        raise InputError(f"{why}, so it needs real example values, and these inputs take {_bytes(need)}, more than "
                         f"--max-input-memory {_bytes(cap)}. Hint: give smaller --input shapes (a batch of 2 shows the "
                         "same gradient flow), or raise --max-input-memory.")
    values: tuple[Any, ...] = random_values(inputs)
    return values, f"fxgrad: note: {why}: ran it on random example inputs of these shapes ({_bytes(need)})."


def _analyze(model: Any, inputs: tuple[Any, ...] | None, args: argparse.Namespace | None = None, *,
             static: bool = False, **kwargs: Any) -> Report:
    """:func:`fxgrad.analyze` on shapes; again on random values when the run on shapes could not do without them
    (forward reads tensor values, or an op has no meta kernel)."""
    from .analysis import analyze
    from .inputs import has_specs, spec_bytes

    if args is None or inputs is None or not has_specs(inputs):
        return analyze(model, inputs, dryrun=not static, **kwargs)
    try:
        report = analyze(model, inputs, dryrun=not static, **kwargs)
    except FxgradError as e:
        meta_kernel = getattr(e, "meta_kernel", False)
        # a meta kernel rejected the inputs, or forward raised on shapes: say it in eager's words where values are
        # affordable, and else as the run on shapes said it (only a forward that reads values needs them)
        if not (getattr(e, "shapes_only", False) or meta_kernel) or (
                (meta_kernel or isinstance(e, TraceError)) and spec_bytes(inputs) > args.max_input_memory):
            raise
        why = _first_sentence(str(e)).rstrip(".")
        if meta_kernel:
            why = f"the dry-run on shapes raised ({why})"
    else:
        if static or report.mode == "dry-run":
            return report
        why = next((n for n in report.notes if n.startswith("no dry-run")), "the dry-run on shapes could not run")
        why = why.split(";")[0].removeprefix("no dry-run: ")
    values, note = _real_inputs(args, inputs, why)
    report = analyze(model, values, dryrun=not static, **kwargs)
    _err(note)
    return report


def _model_location(model: Any) -> SourceLocation | None:
    """Where the model's class is defined: the line SARIF shows for findings without a line of their own."""
    from .capture import SourceLocation

    cls = type(model)
    try:
        file = inspect.getsourcefile(cls)
        lines, line = inspect.getsourcelines(cls)
    except (TypeError, OSError):
        return None
    if file is None:
        return None
    return SourceLocation(os.path.abspath(file), line, cls.__name__, lines[0].strip() if lines else "")


def _colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


_STYLES = {"ERRORS": "\033[1;31m", "WARNINGS": "\033[1;33m", "No findings.": "\033[1;32m", "PARAMETERS": "\033[1m"}


def _paint(text: str) -> str:
    out = []
    for line in text.splitlines():
        style = next((s for key, s in _STYLES.items() if line.startswith(key)), None)
        out.append(f"{style}{line}\033[0m" if style else line)
    return "\n".join(out)


def _silence_hints(findings: Sequence[Finding]) -> str:
    """How to accept each kind of finding once: the comment on its line (where it has one), or --ignore."""
    rows = []
    for code in sorted({f.code for f in findings}):
        has_line = any(f.location is not None and f.code == code for f in findings)
        rows.append([code, f"# fxgrad: ignore[{code}]" if has_line else "(no line)", f"--ignore {code}"])
    return tabulate(rows, headers=["code", "on the line", "everywhere"], tablefmt="plain")


def _table(report: Report, stream: TextIO, *, status: int | None = None, why: str = "") -> str:
    """The report's table, how to silence each kind of finding, and (with ``status``) the exit status line."""
    text = report.render()
    if _colour(stream):
        text = _paint(text)
    lines = [text]
    if report.findings:
        lines += ["", "To accept a finding on purpose, silence it on its line, or everywhere with --ignore (or "
                  "ignore = [...] in [tool.fxgrad]):", _silence_hints(report.findings)]
    if status is None:
        return "\n".join(lines)
    errors, warnings_ = len(report.errors), len(report.warnings)
    lines += ["", f"{errors} error(s), {warnings_} warning(s); exit status {status} ({why})."]
    return "\n".join(lines)


def _exit_status(report: Report, fail_on: str) -> int:
    if fail_on == "never":
        return EXIT_OK
    bad = report.errors if fail_on == "error" else report.errors + report.warnings
    return EXIT_FINDINGS if bad else EXIT_OK


def _config(args: argparse.Namespace) -> Config:
    if getattr(args, "isolated", False):
        return Config()
    path = getattr(args, "config", None) or find_config()
    if path is None:
        return Config()
    if not path.is_file():
        raise InputError(f"--config {path} does not exist. Hint: name a pyproject.toml with a [tool.fxgrad] table.")
    cfg = load_config(path)
    log.debug("settings from %s: %s", path, cfg)
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    with _phase("import torch"):
        import torch  # noqa: F401  # timed apart from fxgrad's own modules
    with _phase("import fxgrad"):
        from . import dryrun  # noqa: F401  # imported by the first dry-run otherwise, inside its phase
        from .analysis import analyze  # noqa: F401
        from .loader import load_step
    cfg = _config(args)
    select = [c for group in args.select for c in group] if args.select is not None else list(cfg.select)
    ignore = [c for group in args.ignore for c in group] if args.ignore is not None else list(cfg.ignore)
    fail_on = args.fail_on or cfg.fail_on or "error"
    _check_codes(select, "--select")
    _check_codes(ignore, "--ignore")
    if args.root is not None and not args.root.is_dir():
        raise InputError(f"--root {args.root} is not a directory. Hint: give the repository's checkout directory.")

    model, inputs = _load(args)
    step = load_step(args.loss or cfg.loss, args.targets or cfg.targets, args.optimizer or cfg.optimizer, model)
    report = _analyze(model, inputs, args, static=args.static, select=select, ignore=ignore,
                      capture=args.capture or cfg.capture or "auto", **_tracing_options(args, model), **step)

    recorded = None
    if args.baseline is not None:
        from .baseline import apply_baseline, load_baseline, write_baseline

        if args.baseline.exists():
            report = apply_baseline(report, load_baseline(args.baseline), args.baseline)
        else:
            recorded = write_baseline(args.baseline, report)
    if recorded is not None:
        status, why = EXIT_OK, f"findings recorded in the new baseline {args.baseline}"
    else:
        status, why = _exit_status(report, fail_on), f"--fail-on {fail_on}"

    with _phase("render"):
        _render_check(report, args, model, status, why)
    if recorded is not None:
        _err(f"fxgrad: recorded {recorded} finding(s) in the baseline {args.baseline}; later runs report only new "
             "ones.")
    return status


def _render_check(report: Report, args: argparse.Namespace, model: Any, status: int, why: str) -> None:
    if args.format == "json":
        _say(json.dumps(report.to_dict(), indent=2))
    elif args.format == "sarif":
        from .sarif import to_sarif

        _say(json.dumps(to_sarif(report, root=args.root, fallback=_model_location(model)), indent=2))
    elif args.format == "html":
        _say(report.to_html(), end="")
    else:
        _say(_table(report, _out(), status=status, why=why))


def _fixer() -> Any:
    try:
        from .fixing import fix
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.fixing":
            raise
        raise InputError("`fxgrad fix` is not available in this version of fxgrad. Hint: run `fxgrad check` and "
                         "rewrite the reported in-place ops by hand.") from e
    return fix


def _first_sentence(text: str) -> str:
    text = _one_line(text)
    cut = text.find(". ")
    return text if cut < 0 else text[: cut + 1]


def _render_fix(record: Any) -> str:
    """Each rewrite as a before/after pair at the user's line, the ops left and why, the verification figures."""
    unsafe = ", unsafe" if record.unsafe else ""
    out = [f"fxgrad fix for {record.model} (only={record.only}{unsafe})", ""]
    if record.rewrites:
        out.append(f"REWRITTEN ({len(record.rewrites)})")
        for r in record.rewrites:
            where = f"{r.location}  {r.location.code}" if r.location else "<model>"
            out.append(f"{where}" + (f"  [{', '.join(r.codes)}]" if r.codes else ""))
            out.append(f"    before: {r.before}")
            out.append(f"    after:  {r.after}")
            if r.unsafe_change:
                out.append(f"    changes for the caller: {r.unsafe_change}")
    elif record.only == "breaking":
        out.append("Nothing rewritten: no in-place op makes forward or backward raise.")
    else:
        out.append("Nothing rewritten: no in-place op can be rewritten safely.")
    if record.left:
        out += ["", f"LEFT IN PLACE ({len(record.left)})"]
        for lf in record.left:
            where = f"{lf.location}  {lf.location.code}" if lf.location else "<model>"
            out.append(f"{where}" + (f"  [{lf.code}]" if lf.code else ""))
            out.append(f"    `{lf.spelling}`: {lf.reason}")
    out.append("")
    v = record.verification
    if v is None:
        out.append("NOT VERIFIED")
    else:
        why = f" (the original raises {_first_sentence(v.original_error)})" if v.original_error else ""
        out.append(f"VERIFIED against {v.reference}{why}: {'ok' if v.ok else 'MISMATCH'}")
        rows = [[c.kind, c.name, "x".join(map(str, c.shape)) or "scalar", c.dtype.removeprefix("torch."),
                 f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", ("ok" if c.ok else "MISMATCH") + (f" ({c.note})" if c.note
                                                                                         else "")]
                for c in v.checks]
        if rows:
            out.append(tabulate(rows, headers=["value", "name", "shape", "dtype", "max abs err", "max rel err", ""],
                                tablefmt="simple"))
        out += [f"change: {c}" for c in v.changes]
    out += [f"note: {n}" for n in record.notes]
    return "\n".join(out)


def _global_line(name: str, obj: Any) -> str:
    """An import or assignment that binds ``name`` as the generated code's globals bind it."""
    if isinstance(obj, str):
        return f"{name} = {obj}"  # annotations are kept as source text, e.g. 'torch.Tensor'
    if isinstance(obj, float):
        return f"{name} = float({str(obj)!r})"  # inf, nan
    if obj is type(None):
        return f"{name} = type(None)"
    if inspect.ismodule(obj):
        return f"import {obj.__name__} as {name}"
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        head, _, rest = qualname.partition(".")
        line = f"from {module} import {head}" + (f" as {name}" if not rest and head != name else "")
        return line + (f"\n{name} = {head}.{rest}" if rest else "")
    return f"# {name}: {obj!r} has no import; define it before use"


def _gm_source(gm: Any, args: argparse.Namespace) -> str:
    """The fixed GraphModule as a self-contained module: imports, and a class whose forward() is the graph's."""
    code = gm.graph.python_code("self")
    used = [n for n in code.globals if n != "torch" and re.search(rf"\b{re.escape(n)}\b", code.src)]
    command = " ".join(["fxgrad fix", args.target, *(f"--input {s}" for s in args.input_specs),
                        *([f"--inputs {args.inputs_factory}"] if args.inputs_factory else []),
                        *([f"--only {args.only}"] if args.only else []), *(["--unsafe"] if args.unsafe else [])])
    body = "\n".join(f"    {line}" if line.strip() else "" for line in code.src.strip("\n").splitlines())
    return "\n".join([
        f"# Written by `{command}`.",
        "# The fixed model: forward() computes what the original computes, with the rewritten in-place ops out of",
        "# place. Port the changed lines to your own forward(), or get this module in code with",
        "# fxgrad.fix(model, example_inputs). Its submodules and parameters are the original model's.",
        "import torch",
        *(_global_line(n, code.globals[n]) for n in used),
        "",
        "",
        f"class {type(gm).__name__}(torch.nn.Module):",
        body.rstrip(),
        "",
    ])


def _cmd_fix(args: argparse.Namespace) -> int:
    fix = _fixer()
    if args.out is not None and not args.out.parent.is_dir():  # before the work, not after it
        raise InputError(f"Cannot write --out {args.out} (no directory {args.out.parent}). Hint: check that its "
                         "directory exists.")
    model, inputs = _load(args)
    what = "verifies the fix by running the model" if args.verify else "runs the model to keep its dtypes"
    inputs, note = _real_inputs(args, inputs, f"fxgrad fix {what}")
    try:
        gm = fix(model, inputs, only=args.only, unsafe=args.unsafe, rtol=args.rtol, atol=args.atol,
                 verify=args.verify, capture=args.capture or _config(args).capture or "auto",
                 **_tracing_options(args, model))
    except VerificationError as e:  # a verdict, not a failure to give one: the fix is wrong or incomplete
        _err(note)
        _say(f"fxgrad fix for {type(model).__name__}: NOT FIXED\n\n{_for_cli(_one_line(str(e)))}")
        return EXIT_FINDINGS
    _err(note)
    record = gm.meta["fxgrad"]
    err = _stderr[-1] if _stderr else sys.stderr
    report = err if args.diff else _out()  # --diff: stdout is the patch
    print(_render_fix(record), file=report)
    if args.out is not None:
        try:
            args.out.write_text(_gm_source(gm, args))
        except OSError as e:
            raise InputError(f"Cannot write --out {args.out} ({e.strerror}). Hint: check that its directory "
                             "exists.") from e
        print(f"\nwrote the fixed module's code to {args.out}", file=report)
    if args.diff or args.write:
        from .sourcefix import run_command

        if not run_command(gm, model, inputs, args.target, write=args.write, out=_out(), err=err):
            return EXIT_FINDINGS
    # what is left: the fixed graph, analysed like the original
    after = _analyze(gm, inputs, args)
    if after.errors:
        print(f"\nstill failing after the fix: {', '.join(sorted({f.code for f in after.errors}))} "
              f"(`fxgrad check {args.target}` shows where)", file=report)
        return EXIT_FINDINGS
    return EXIT_OK if record.verification is None or record.verification.ok else EXIT_FINDINGS


def _cmd_demo(args: argparse.Namespace) -> int:
    from .examples import EXAMPLES, get
    from .rules import RULES_BY_CODE

    try:
        chosen = [get(n) for n in args.names] if args.names else list(EXAMPLES)
    except KeyError as e:
        raise InputError(f"{e.args[0]}. Hint: run `fxgrad demo` to list them.") from None
    full = bool(args.names) or args.all
    try:
        fix = _fixer()
    except InputError:
        fix = None
    rows, surprises = [], []
    every = [code for code in RULES_BY_CODE]  # the demo shows every kind of finding, FXG101 included
    for ex in chosen:
        model, inputs = ex.model(), ex.inputs()
        report = _analyze(model, inputs, select=every, **ex.analyze_kwargs(model))
        found = {f.code for f in report.findings}
        silenced = {f.code for f in report.suppressed}
        if found != ex.codes or silenced != ex.suppressed:
            surprises.append(f"{ex.name} (expected {', '.join(sorted(ex.codes)) or 'nothing'}, got "
                             f"{', '.join(sorted(found)) or 'nothing'})")
        record: Any = None
        fix_error = ""
        if fix is not None and any(f.fixable for f in report.findings):
            try:
                record = fix(model, ex.inputs(), only="all").meta["fxgrad"]
            except FxgradError as e:
                fix_error = _first_sentence(str(e))
        if full:
            _print_example(ex, report, record, fix_error)
        else:
            rows.append(_demo_row(ex, report, record, fix_error))
    if not full:
        _say(f"fxgrad demo: {len(chosen)} small models, each with one pitfall (fxgrad/examples.py)\n")
        _say(tabulate(rows, headers=["example", "codes", "line", "fix", "what eager PyTorch does"],
                       tablefmt="simple"))
        _say("\n`fxgrad demo EXAMPLE` shows an example's full report; `fxgrad demo --all` shows every one.\n"
              "Each model is a TARGET too: fxgrad check fxgrad.examples:SigmoidMul --input 8x4\n"
              "The demo selects every code; `fxgrad check` does not show FXG101 (a legal in-place op: correct code) "
              "unless selected.")
    if surprises:  # the examples document what fxgrad finds; a difference is a bug worth reporting
        _err(f"fxgrad: warning: examples reported differently than documented: {'; '.join(surprises)}.")
    return EXIT_OK


def _fix_summary(record: Any, fix_error: str) -> str:
    if fix_error:
        return "fix failed"
    if record is None:
        return ""
    parts = []
    if record.rewrites:
        parts.append(f"rewrote {len(record.rewrites)}" + (", verified" if record.verified else ""))
    if record.left:
        parts.append(f"left {len(record.left)}")
    return "; ".join(parts)


def _demo_row(ex: Any, report: Report, record: Any, fix_error: str) -> list[str]:
    first = report.sorted_findings()[0] if report.findings else None
    codes = ", ".join(sorted({f.code for f in report.findings}))
    if report.suppressed and not report.findings:
        codes = ", ".join(sorted({f.code for f in report.suppressed})) + " silenced"
    line = first.location.code if first is not None and first.location is not None else ""
    if len(line) > 36:
        line = line[:35] + "…"
    return [ex.name, codes or "-", line, _fix_summary(record, fix_error), ex.eager.text]


def _print_example(ex: Any, report: Report, record: Any, fix_error: str) -> None:
    _say(f"=== {ex.name}: {ex.description}")
    _say(f"eager PyTorch: {ex.eager.text}")
    _say(f"check it yourself: fxgrad check {ex.target}" + "".join(
        f" --input {'x'.join(map(str, t.shape))}" for t in ex.inputs() if hasattr(t, "shape")))
    _say()
    _say(_table(report, _out()))
    if record is not None:
        _say()
        _say(_render_fix(record))
    elif fix_error:
        _say(f"\nfxgrad fix failed: {fix_error}")
    _say()


_COMMANDS = {"check": _cmd_check, "fix": _cmd_fix, "demo": _cmd_demo}


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: hints in the library name the API and, in parentheses, the flag (``concrete_args (--concrete-arg NAME=VALUE)``);
#: on the command line only the flag is shown. The other API spellings a message can reach the command line with:
_API_AND_FLAG = re.compile(r"[\w.]+(?:=\S+?)? \((--[^()]+)\)")
_FLAG_SPELLINGS = (
    ("call fxgrad.fix(..., only='breaking')", "run `fxgrad fix` with --only breaking"),
    ("pass unsafe=True", "pass --unsafe"),
    ("pass rtol/atol", "pass --rtol/--atol"),
    ("verify=False", "--no-verify"),
    ('use capture="trace"', "use --capture trace"),
    ("pass real example tensors", "pass --inputs FILE.py:FUNC returning real tensors"),
    ("(fxgrad.spec(...) or tensors)", "(--input, --inputs)"),
)


def _for_cli(message: str) -> str:
    """A library message as the command line's user reads it: hints name flags, not keyword arguments."""
    message = _API_AND_FLAG.sub(r"\1", message)
    for api, flag in _FLAG_SPELLINGS:
        message = message.replace(api, flag)
    return message


#: where the command line's own messages go: stderr and stdout as they were before the commands redirected them
_stderr: list[TextIO] = []
_stdout: list[TextIO] = []


def _err(message: str) -> None:
    if message:
        print(message, file=_stderr[-1] if _stderr else sys.stderr)


def _out() -> TextIO:
    """The report's stream: stdout as it was before the command started (see :func:`_streams`)."""
    return _stdout[-1] if _stdout else sys.stdout


def _say(*values: Any, end: str = "\n") -> None:
    print(*values, end=end, file=_out())


@contextmanager
def _streams(verbose: bool) -> Iterator[None]:
    """stdout is the report's: what the user's code prints while fxgrad imports, captures, dry-runs or verifies it
    goes to stderr, so ``--format json`` stays JSON. Warnings and stray stderr output (torch.fx prints a failing
    generated forward) are noise on the command line; ``--verbose`` keeps them."""
    _stdout.append(sys.stdout)
    _stderr.append(sys.stderr)
    try:
        with warnings.catch_warnings(), redirect_stdout(_stderr[-1]):
            if verbose:
                yield
                return
            warnings.simplefilter("ignore")
            with redirect_stderr(io.StringIO()):
                yield
    finally:
        _stdout.pop()
        _stderr.pop()


def _process_age() -> float | None:
    """Seconds since this process started (Linux), to time the interpreter's own start-up."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _print_timings(started: float, age_at_start: float | None, phases: list[tuple[str, float]]) -> None:
    """``--timings``: the command's phases, then what is left (Python's own start-up, fxgrad's CLI import)."""
    rows: list[tuple[str, float]] = []
    start_up = 0.0
    if age_at_start is not None:  # from the process's start to the import of this module
        start_up = age_at_start - (started - _IMPORTED_AT)
        rows.append(("start Python, import fxgrad's CLI", start_up))
    merged: dict[str, float] = {}
    for name, seconds in phases:
        merged[name] = merged.get(name, 0.0) + seconds
    total = time.perf_counter() - started
    rows.append(("other (arguments, settings, inputs)", total - sum(merged.values())))
    rows += list(merged.items())
    total += start_up
    width = max(len(name) for name, _ in rows)
    _err("fxgrad: timings (wall clock):")
    for name, seconds in rows:
        _err(f"  {name:<{width}}  {seconds * 1000:8.0f} ms")
    _err(f"  {'total':<{width}}  {total * 1000:8.0f} ms")


def main(argv: list[str] | None = None) -> int:
    """Run ``fxgrad`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    verbose = False
    package_log = logging.getLogger(__package__)
    level = package_log.level
    age, started = _process_age(), time.perf_counter()
    try:
        args = _parser().parse_args(argv)
        verbose = bool(getattr(args, "verbose", False))
        logging.basicConfig(format="fxgrad: %(levelname)s: %(name)s: %(message)s")
        if verbose:
            package_log.setLevel(logging.DEBUG)
        with _streams(verbose):
            if not getattr(args, "timings", False):
                return _COMMANDS[args.command](args)
            with collect() as phases:
                status = _COMMANDS[args.command](args)
            _print_timings(started, age, phases)
            return status
    except _UsageError as e:
        print(f"fxgrad: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except FxgradError as e:
        if verbose:
            traceback.print_exc()
        print(f"fxgrad: error: {_for_cli(_one_line(str(e)))}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `fxgrad check ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("fxgrad: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in fxgrad: still one line, the traceback on request
        if verbose:
            traceback.print_exc()
        print(f"fxgrad: internal error: {type(e).__name__}: {_one_line(str(e))}. Hint: run with --verbose for the "
              "traceback, and please report it.", file=sys.stderr)
        return EXIT_ERROR
    finally:
        package_log.setLevel(level)
