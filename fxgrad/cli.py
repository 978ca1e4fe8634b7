"""The ``fxgrad`` command line: ``check``, ``fix`` and ``demo``.

Exit status, like a linter's: 0 when nothing at or above ``--fail-on`` was found, 1 when something was, 2 for
everything that kept fxgrad from giving a verdict (a usage error, a model that cannot be imported, built or
traced, inputs that do not fit). A failure prints one line on stderr, ``fxgrad: error: ...`` ending in a
``Hint:``; ``--verbose`` adds the Python traceback and fxgrad's debug log.

Settings come from the command line first, then from ``[tool.fxgrad]`` in the nearest ``pyproject.toml``
(:mod:`fxgrad.config`).
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any, NoReturn, TextIO

from tabulate import tabulate

from . import __version__
from .analysis import analyze
from .capture import SourceLocation
from .config import CAPTURES, FAIL_ON, Config, find_config, load_config
from .errors import FxgradError, InputError
from .inputs import bind_keywords
from .report import Finding, Report
from .rules import RULES_BY_CODE

__all__ = ["main"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
_PARAM_CODES = ("FXG201", "FXG202", "FXG203")


class _UsageError(Exception):
    """A command-line mistake argparse found; printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message}. Hint: see `{self.prog} --help`.")


# --------------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------------


def _codes(text: str) -> list[str]:
    return [c.strip().upper() for c in text.split(",") if c.strip()]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Python tracebacks and fxgrad's debug log")


def _add_model_args(p: argparse.ArgumentParser, *, static: bool = True) -> None:
    p.add_argument("target", metavar="TARGET",
                   help="path/to/file.py:NAME or package.module:NAME; NAME is an nn.Module subclass with a "
                        "no-argument constructor, a factory function returning a module, or a module instance")
    p.add_argument("--input", dest="input_specs", action="append", default=[], metavar="SHAPE[:DTYPE]",
                   help="an example input tensor, e.g. 8x3x32x32 or 2x16:int64 (dtype default float32); repeat "
                        "for several positional inputs")
    p.add_argument("--inputs", dest="inputs_factory", metavar="FILE.py:FUNC",
                   help="a function returning the example inputs (a tuple of positional arguments, or the one "
                        "argument), for models that take integers, dicts or several tensors")
    p.add_argument("--capture", choices=CAPTURES, default=None,
                   help="how the model becomes a graph: trace (symbolic, every branch, no inputs needed), run (by "
                        "running it on the example inputs: any Python control flow, the branches these inputs "
                        "take), auto (default: trace, and run when tracing fails)")
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
    _add_common(check)

    fix = sub.add_parser("fix", help="rewrite in-place ops out of place and verify the result",
                         description="Rewrite the model's in-place ops out of place, verify outputs and gradients, "
                         "and print each rewrite.")
    _add_model_args(fix, static=False)
    fix.add_argument("--only", choices=("breaking", "all"), default=None,
                     help="breaking (the default with example inputs): only in-place ops that make forward or "
                          "backward raise; all (the default without): every in-place op that can be rewritten safely")
    fix.add_argument("--unsafe", action="store_true",
                     help="also rewrite in-place writes the caller sees (graph inputs), and say what changes")
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
    unknown = [c for c in codes if not any(code.startswith(c) for code in RULES_BY_CODE)]
    if unknown:
        raise InputError(f"{flag} names unknown code {', '.join(unknown)}. Hint: the codes are {_code_ranges()}; a "
                         "prefix like FXG1 selects a family.")


def _code_ranges() -> str:
    families: dict[str, list[str]] = {}
    for code in RULES_BY_CODE:
        families.setdefault(code[:4], []).append(code)
    return ", ".join(f"{c[0]}–{c[-1]}" if len(c) > 1 else c[0] for c in families.values())


def _load(args: argparse.Namespace) -> tuple[Any, tuple[Any, ...] | None]:
    from .loader import build_inputs, check_arity, load_inputs, load_model, parse_input_spec

    if args.input_specs and args.inputs_factory:
        raise InputError("--input and --inputs cannot be combined. Hint: build every input in the --inputs "
                         "function.")
    specs = [parse_input_spec(s) for s in args.input_specs]  # bad shapes fail before the model is imported
    model = load_model(args.target)
    inputs: tuple[Any, ...] | None = None
    if specs:
        inputs = build_inputs(specs)
    elif args.inputs_factory:
        inputs = load_inputs(args.inputs_factory)
        if len(inputs) == 1:  # a dict of forward's parameter names is a keyword call
            bound = bind_keywords(model, inputs[0])
            inputs = bound if isinstance(bound, tuple) else inputs
    if inputs is not None:
        check_arity(model, inputs)
    return model, inputs


def _analyze(model: Any, inputs: tuple[Any, ...] | None, *, static: bool = False, **kwargs: Any) -> Report:
    return analyze(model, inputs, dryrun=not static, **kwargs)


def _model_location(model: Any) -> SourceLocation | None:
    """Where the model's class is defined: the line SARIF shows for findings without a line of their own."""
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
    cfg = _config(args)
    select = [c for group in args.select for c in group] if args.select is not None else list(cfg.select)
    ignore = [c for group in args.ignore for c in group] if args.ignore is not None else list(cfg.ignore)
    fail_on = args.fail_on or cfg.fail_on or "error"
    _check_codes(select, "--select")
    _check_codes(ignore, "--ignore")
    if args.root is not None and not args.root.is_dir():
        raise InputError(f"--root {args.root} is not a directory. Hint: give the repository's checkout directory.")

    model, inputs = _load(args)
    from .loader import load_step

    step = load_step(args.loss or cfg.loss, args.targets or cfg.targets, args.optimizer or cfg.optimizer, model)
    report = _analyze(model, inputs, static=args.static, select=select, ignore=ignore,
                      capture=args.capture or cfg.capture or "auto", **step)

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

    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.format == "sarif":
        from .sarif import to_sarif

        print(json.dumps(to_sarif(report, root=args.root, fallback=_model_location(model)), indent=2))
    elif args.format == "html":
        print(report.to_html(), end="")
    else:
        print(_table(report, sys.stdout, status=status, why=why))
    if recorded is not None:
        _err(f"fxgrad: recorded {recorded} finding(s) in the baseline {args.baseline}; later runs report only new "
             "ones.")
    return status


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
    else:
        out.append("Nothing rewritten.")
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
    model, inputs = _load(args)
    gm = fix(model, inputs, only=args.only, unsafe=args.unsafe,
             capture=args.capture or _config(args).capture or "auto")
    record = gm.meta["fxgrad"]
    err = _stderr[-1] if _stderr else sys.stderr
    report = err if args.diff else sys.stdout  # --diff: stdout is the patch
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

        if not run_command(gm, model, inputs, args.target, write=args.write, out=sys.stdout, err=err):
            return EXIT_FINDINGS
    # what is left: the fixed graph, analysed like the original
    after = _analyze(gm, inputs)
    if after.errors:
        print(f"\nstill failing after the fix: {', '.join(sorted({f.code for f in after.errors}))} "
              f"(`fxgrad check {args.target}` shows where)", file=report)
        return EXIT_FINDINGS
    return EXIT_OK if record.verification is None or record.verification.ok else EXIT_FINDINGS


def _cmd_demo(args: argparse.Namespace) -> int:
    from .examples import EXAMPLES, get

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
        print(f"fxgrad demo: {len(chosen)} small models, each with one pitfall (fxgrad/examples.py)\n")
        print(tabulate(rows, headers=["example", "codes", "line", "fix", "what eager PyTorch does"],
                       tablefmt="simple"))
        print("\n`fxgrad demo EXAMPLE` shows an example's full report; `fxgrad demo --all` shows every one.\n"
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
    print(f"=== {ex.name}: {ex.description}")
    print(f"eager PyTorch: {ex.eager.text}")
    print(f"check it yourself: fxgrad check {ex.target}" + "".join(
        f" --input {'x'.join(map(str, t.shape))}" for t in ex.inputs() if hasattr(t, "shape")))
    print()
    print(_table(report, sys.stdout))
    if record is not None:
        print()
        print(_render_fix(record))
    elif fix_error:
        print(f"\nfxgrad fix failed: {fix_error}")
    print()


_COMMANDS = {"check": _cmd_check, "fix": _cmd_fix, "demo": _cmd_demo}


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: where the command line's own messages go: stderr as it was before library output was silenced
_stderr: list[TextIO] = []


def _err(message: str) -> None:
    print(message, file=_stderr[-1] if _stderr else sys.stderr)


@contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Warnings and stray stderr output (torch.fx prints a failing generated forward) while fxgrad traces,
    dry-runs or verifies the model are noise on the command line; ``--verbose`` keeps them."""
    _stderr.append(sys.stderr)
    try:
        with warnings.catch_warnings():
            if verbose:
                yield
                return
            warnings.simplefilter("ignore")
            with redirect_stderr(io.StringIO()):
                yield
    finally:
        _stderr.pop()


def main(argv: list[str] | None = None) -> int:
    """Run ``fxgrad`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    verbose = False
    package_log = logging.getLogger(__package__)
    level = package_log.level
    try:
        args = _parser().parse_args(argv)
        verbose = bool(getattr(args, "verbose", False))
        logging.basicConfig(format="fxgrad: %(levelname)s: %(name)s: %(message)s")
        if verbose:
            package_log.setLevel(logging.DEBUG)
        with _quiet(verbose):
            return _COMMANDS[args.command](args)
    except _UsageError as e:
        print(f"fxgrad: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except FxgradError as e:
        if verbose:
            traceback.print_exc()
        print(f"fxgrad: error: {_one_line(str(e))}", file=sys.stderr)
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
