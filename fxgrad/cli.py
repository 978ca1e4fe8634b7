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
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO

from tabulate import tabulate

from . import __version__
from .analysis import analyze
from .capture import SourceLocation
from .config import FAIL_ON, Config, find_config, load_config
from .errors import FxgradError, InputError
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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET",
                   help="path/to/file.py:NAME or package.module:NAME; NAME is an nn.Module subclass with a "
                        "no-argument constructor, a factory function returning a module, or a module instance")
    p.add_argument("--input", dest="input_specs", action="append", default=[], metavar="SHAPE[:DTYPE]",
                   help="an example input tensor, e.g. 8x3x32x32 or 2x16:int64 (dtype default float32); repeat "
                        "for several positional inputs")
    p.add_argument("--inputs", dest="inputs_factory", metavar="FILE.py:FUNC",
                   help="a function returning the example inputs (a tuple of positional arguments, or the one "
                        "argument), for models that take integers, dicts or several tensors")
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
    check.add_argument("--format", choices=("table", "json", "sarif"), default="table",
                       help="table (default, for people), json (Report.to_dict(), versioned) or sarif (SARIF "
                            "2.1.0, for GitHub code scanning)")
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
    _add_model_args(fix)
    fix.add_argument("--only", choices=("breaking", "all"), default="breaking",
                     help="breaking (default): only in-place ops that make backward fail or compute wrong "
                          "gradients; all: every rewritable in-place op")
    fix.add_argument("--out", type=Path, metavar="FILE", help="write the fixed GraphModule's Python code here")
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
        raise InputError(f"{flag} names unknown code {', '.join(unknown)}. Hint: codes look like FXG102; prefixes "
                         "like FXG1 select a family (see `fxgrad demo`).")


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


def _silence_hints(findings: Sequence[Finding]) -> list[str]:
    """How to accept each kind of finding once: the line comment where there is a line, else --ignore."""
    rows = []
    for code in sorted({f.code for f in findings}):
        has_line = any(f.location is not None and f.code == code for f in findings)
        how = f"`# fxgrad: ignore[{code}]` on the line, or " if has_line else ""
        rows.append(f"  {code}  silence with {how}--ignore {code} (or ignore = [\"{code}\"] in [tool.fxgrad])")
    return rows


def _table(report: Report, fail_on: str, stream: TextIO, *, status_line: bool = True) -> str:
    text = report.render()
    if _colour(stream):
        text = _paint(text)
    lines = [text]
    if report.findings:
        lines += ["", "To accept a finding on purpose:", *_silence_hints(report.findings)]
    if not status_line:
        return "\n".join(lines)
    errors, warnings_ = len(report.errors), len(report.warnings)
    lines += ["", f"{errors} error(s), {warnings_} warning(s); exit status {_exit_status(report, fail_on)} "
              f"(--fail-on {fail_on})."]
    return "\n".join(lines)


def _exit_status(report: Report, fail_on: str) -> int:
    if fail_on == "never":
        return EXIT_OK
    bad = report.errors if fail_on == "error" else report.errors + report.warnings
    return EXIT_FINDINGS if bad else EXIT_OK


def _config(args: argparse.Namespace) -> Config:
    if args.isolated:
        return Config()
    path = args.config if args.config is not None else find_config()
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
    report = _analyze(model, inputs, static=args.static, select=select, ignore=ignore)

    recorded = None
    if args.baseline is not None:
        from .baseline import apply_baseline, load_baseline, write_baseline

        if args.baseline.exists():
            report = apply_baseline(report, load_baseline(args.baseline), args.baseline)
        else:
            recorded = write_baseline(args.baseline, report)

    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.format == "sarif":
        from .sarif import to_sarif

        print(json.dumps(to_sarif(report, root=args.root, fallback=_model_location(model)), indent=2))
    else:
        print(_table(report, fail_on, sys.stdout))
    if recorded is not None:
        print(f"fxgrad: recorded {recorded} finding(s) in the baseline {args.baseline}; later runs report only new "
              "ones.", file=sys.stderr)
        return EXIT_OK
    return _exit_status(report, fail_on)


def _cmd_fix(args: argparse.Namespace) -> int:
    try:
        from .fixing import fix
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.fixing":
            raise
        raise InputError("`fxgrad fix` is not available in this version of fxgrad. Hint: run `fxgrad check` and "
                         "rewrite the reported in-place ops by hand.") from e
    model, inputs = _load(args)
    gm = fix(model, inputs, only=args.only)
    print(gm.code)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from .examples import EXAMPLES, get

    try:
        chosen = [get(n) for n in args.names] if args.names else list(EXAMPLES)
    except KeyError as e:
        raise InputError(f"{e.args[0]}. Hint: run `fxgrad demo` to list them.") from None
    full = bool(args.names) or args.all
    rows, status = [], EXIT_OK
    for ex in chosen:
        report = _analyze(ex.model(), ex.inputs())
        found = {f.code for f in report.findings}
        silenced = {f.code for f in report.suppressed}
        if found != ex.codes or silenced != ex.suppressed:
            status = EXIT_FINDINGS
            log.warning("example %s: expected %s, fxgrad reported %s", ex.name, sorted(ex.codes), sorted(found))
        if full:
            _print_example(ex, report)
        else:
            rows.append(_demo_row(ex, report))
    if not full:
        print(f"fxgrad demo: {len(chosen)} small models, each with one pitfall (fxgrad/examples.py)\n")
        print(tabulate(rows, headers=["example", "fxgrad reports", "line", "what eager PyTorch does"],
                       tablefmt="simple"))
        print("\n`fxgrad demo EXAMPLE` shows an example's full report; `fxgrad demo --all` shows every one.\n"
              "Each model is a TARGET too: fxgrad check fxgrad.examples:SigmoidMul --input 8x4")
    if status != EXIT_OK:
        print("fxgrad: some examples did not get the findings they document (see above).", file=sys.stderr)
    return status


def _demo_row(ex: Any, report: Report) -> list[str]:
    first = report.sorted_findings()[0] if report.findings else None
    codes = ", ".join(sorted({f.code for f in report.findings})) or "-"
    if report.suppressed and not report.findings:
        codes = "- (" + ", ".join(sorted({f.code for f in report.suppressed})) + " silenced)"
    line = first.location.code if first is not None and first.location is not None else ""
    if len(line) > 40:
        line = line[:39] + "…"
    return [ex.name, codes, line, ex.eager.text]


def _print_example(ex: Any, report: Report) -> None:
    print(f"=== {ex.name}: {ex.description}")
    print(f"eager PyTorch: {ex.eager.text}")
    print(f"check it yourself: fxgrad check {ex.target}" + "".join(
        f" --input {'x'.join(map(str, t.shape))}" for t in ex.inputs() if hasattr(t, "shape")))
    print()
    print(_table(report, "error", sys.stdout, status_line=False))
    print()


_COMMANDS = {"check": _cmd_check, "fix": _cmd_fix, "demo": _cmd_demo}


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def _quiet_warnings(verbose: bool) -> Iterator[None]:
    """Warnings that the model raises while fxgrad traces or dry-runs it are noise on the command line."""
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> int:
    """Run ``fxgrad`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    verbose = False
    try:
        args = _parser().parse_args(argv)
        verbose = bool(getattr(args, "verbose", False))
        logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                            format="fxgrad: %(levelname)s: %(name)s: %(message)s")
        with _quiet_warnings(verbose):
            return _COMMANDS[args.command](args)
    except _UsageError as e:
        print(f"fxgrad: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except FxgradError as e:
        if verbose:
            traceback.print_exc()
        print(f"fxgrad: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fxgrad: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in fxgrad: still one line, the traceback on request
        if verbose:
            traceback.print_exc()
        print(f"fxgrad: internal error: {type(e).__name__}: {_one_line(str(e))}. Hint: run with --verbose for the "
              "traceback, and please report it.", file=sys.stderr)
        return EXIT_ERROR
