"""The ``fxgrad`` command line: exit codes, output formats, bad input, suppressions, baselines, pyproject settings.

The console script itself runs in a subprocess (``python -m fxgrad``) for what only a real process shows: exit
status, one line on stderr, no traceback. Everything else calls :func:`fxgrad.cli.main` in-process, which is
the same code without the ~2 s of importing torch again. Every claim about gradients is checked against an
eager backward of the same model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fxgrad
from fxgrad.cli import main
from fxgrad.errors import InputError
from fxgrad.examples import get as get_example
from fxgrad.loader import build_inputs, load_model, parse_input_spec

from .oracle import INPLACE_ERROR, eager_truth, grads_differ

REPO = str(Path(__file__).resolve().parent.parent)

MODELS = '''
import logging

import torch
from torch import nn


class Clean(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x)


class Breaks(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        t = torch.sigmoid(self.enc(x))
        t.mul_(2.0)
        return self.head(t)


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.enc(x).detach()
        return self.head(h)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 1)

    def forward(self, ids, batch):
        return self.lin(self.emb(ids) * batch["scale"])


def make_token_inputs():
    return torch.randint(0, 10, (2, 3)), {"scale": torch.randn(2, 3, 4)}


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Printer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        print("building Printer")

    def forward(self, x):
        print("forward sees", tuple(x.shape))
        logging.getLogger("user").warning("forward logs")
        return self.lin(x)


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        h = self.lin(x)
        raise ValueError(f"boom, {h.shape[-1]} features")


class Checks(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        assert isinstance(x, torch.Tensor)
        return self.lin(x)


class Cut(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x, cut=False):
        h = self.enc(x)
        if cut:
            h = h.detach()
        return self.head(h)


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.gate = Gate()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.gate(self.enc(x)))


def make_clean():
    return Clean()


def make_broken():
    raise RuntimeError("no weights")


def make_shapes():
    import fxgrad

    return (fxgrad.spec((3, 4)),)


clean = Clean()
answer = 42
'''


def _write(tmp_path: Path, name: str = "nets.py", text: str = MODELS) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_test_cli_{path.stem}_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _line(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # loading a TARGET puts its directory on sys.path, as `python file.py` does; keep that out of other tests
    monkeypatch.setattr(sys, "path", list(sys.path))


# --------------------------------------------------------------------------------------------------------------
# The console script, in a subprocess
# --------------------------------------------------------------------------------------------------------------

MISTAKES = {
    "missing file": (["check", "missing.py:Net"], "missing.py does not exist"),
    "bad NAME": (["check", "nets.py:Nope"], "nets.py has no 'Nope'"),
    "not a module": (["check", "nets.py:answer"], "answer is a value of type int, not an nn.Module"),
    "bad shape": (["check", "nets.py:Clean", "--input", "3by4"], "--input '3by4' is not a shape"),
    "untraceable": (["check", "nets.py:Branchy", "--input", "3x4", "--capture", "trace"],
                    "could not trace Branchy at nets.py:"),
    "untraceable without inputs": (["check", "nets.py:Branchy"], "Hint: pass example inputs"),
    "inputs do not fit": (["check", "nets.py:Clean", "--input", "3x5"], "mat1 and mat2 shapes cannot be multiplied"),
    "forward raises": (["check", "nets.py:Raises", "--input", "3x4"], "Raises.forward raised ValueError at nets.py:"),
}
RUNS = {
    "clean": ["check", "nets.py:Clean", "--input", "3x4"],
    "breaks": ["check", "nets.py:Breaks", "--input", "3x4"],
    "branchy": ["check", "nets.py:Branchy", "--input", "3x4"],
    "huge": ["check", "nets.py:Conv", "--input", "100000x3x224x224"],
    "prints json": ["check", "nets.py:Printer", "--input", "3x4", "--format", "json"],
    "fix still failing": ["fix", "nets.py:Frozen", "--input", "3x4"],
    "demo": ["demo", "sigmoid_mul"],
    **{case: args for case, (args, _) in MISTAKES.items()},
}


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str
    #: the process's peak resident memory in bytes (Linux: ru_maxrss of the child)
    max_rss: int = 0


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, _Run]]:
    """Every console-script run of this module, started at once: each one spends seconds importing torch. Output
    goes to files and each child is reaped with ``os.wait4``, which also gives its peak memory."""
    if not hasattr(os, "wait4"):
        pytest.skip("os.wait4 (peak memory of a child) is POSIX-only")
    tmp = tmp_path_factory.mktemp("console")
    _write(tmp)
    env = {**os.environ, "PYTHONPATH": REPO, "NO_COLOR": "1"}
    procs = {}
    runs = {}
    with contextlib.ExitStack() as files:
        for name, args in RUNS.items():
            out, err = (files.enter_context(open(tmp / f"{name}.{kind}", "w+")) for kind in ("out", "err"))
            procs[name] = (subprocess.Popen([sys.executable, "-m", "fxgrad", *args], cwd=tmp, env=env, text=True,
                                            stdout=out, stderr=err), out, err)
        for name, (proc, out, err) in procs.items():
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            texts = []
            for f in (out, err):
                f.seek(0)
                texts.append(f.read())
            runs[name] = _Run(proc.returncode, texts[0], texts[1], usage.ru_maxrss * 1024)
    return tmp, runs


def test_console_script_clean_model_exits_0(console: tuple[Path, dict[str, _Run]]) -> None:
    tmp, runs = console
    truth = eager_truth(_import(tmp / "nets.py").Clean(), (torch.randn(3, 4),))
    assert truth.clean_run and not truth.no_grad_params
    proc = runs["clean"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "No findings." in proc.stdout and "PARAMETERS: 2 of 2 get a gradient" in proc.stdout
    assert "\033[" not in proc.stdout  # no colour when stdout is not a terminal


def test_console_script_breaking_inplace_exits_1(console: tuple[Path, dict[str, _Run]]) -> None:
    tmp, runs = console
    path = tmp / "nets.py"
    truth = eager_truth(_import(path).Breaks(), (torch.randn(3, 4),))
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    proc = runs["breaks"]
    assert proc.returncode == 1, proc.stderr
    assert f"nets.py:{_line(path, 't.mul_(2.0)')}" in proc.stdout
    assert "FXG102" in proc.stdout and "ERRORS (1)" in proc.stdout
    assert "# fxgrad: ignore[FXG102]" in proc.stdout  # how to accept it, once per kind of finding
    assert "exit status 1" in proc.stdout


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_console_script_bad_input_exits_2_with_one_line(console: tuple[Path, dict[str, _Run]], case: str) -> None:
    proc = console[1][case]
    message = MISTAKES[case][1]
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("fxgrad: error: "), proc.stderr
    assert message in proc.stderr and "Hint:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_control_flow_on_values_is_captured_by_running_and_says_so(console: tuple[Path, dict[str, _Run]]) -> None:
    """`if x.sum() > 0:` cannot be traced; with inputs the model is run instead, and the report says which capture
    ran and that the verdicts hold for the branch taken. Eager: lin gets a gradient on this branch."""
    proc = console[1]["branchy"]
    assert proc.returncode == 0, proc.stderr
    assert "captured by running it on the inputs" in proc.stdout.splitlines()[0]
    assert "the verdicts hold for the branches these inputs took" in proc.stdout
    truth = eager_truth(_import(console[0] / "nets.py").Branchy(), (torch.ones(3, 4),))
    assert truth.clean_run and not truth.no_grad_params and "(captured" in proc.stdout
    assert "0 error(s)" in proc.stdout


def test_a_shape_costs_no_memory(console: tuple[Path, dict[str, _Run]]) -> None:
    """`--input 100000x3x224x224` is 56 GiB as values: the whole process stays under 1 GiB, about what a 3x4 input
    costs, and the dry-run proves the verdicts (eager on a small batch: every parameter gets a gradient)."""
    tmp, runs = console
    huge, clean = runs["huge"], runs["clean"]
    assert huge.returncode == 0, huge.stderr
    assert huge.stderr == ""  # no values were made, so nothing to say
    assert "proved by a dry-run on meta tensors" in huge.stdout and "PARAMETERS: 4 of 4 get a gradient" in huge.stdout
    truth = eager_truth(_import(tmp / "nets.py").Conv(), (torch.randn(2, 3, 8, 8),))
    assert truth.clean_run and not truth.no_grad_params
    assert huge.max_rss < 2**30, huge.max_rss
    assert huge.max_rss < clean.max_rss + 200 * 2**20, (huge.max_rss, clean.max_rss)


def test_what_the_model_prints_goes_to_stderr(console: tuple[Path, dict[str, _Run]]) -> None:
    proc = console[1]["prints json"]
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]  # stdout is the report alone
    assert "building Printer" in proc.stderr and "forward sees (3, 4)" in proc.stderr
    assert "forward logs" in proc.stderr


def test_what_the_model_prints_goes_to_stderr_in_sarif_too(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Printer", "--input", "3x4", "--format", "sarif"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["version"] == "2.1.0"
    assert "building Printer" in err and "forward sees (3, 4)" in err


def test_values_are_made_only_when_forward_reads_them_and_it_says_so(
        console: tuple[Path, dict[str, _Run]]) -> None:
    proc = console[1]["branchy"]
    assert proc.stderr.startswith("fxgrad: note: Branchy reads tensor values at nets.py:"), proc.stderr
    assert "ran it on random example inputs of these shapes (48 bytes)" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_fix_still_failing_exits_1(console: tuple[Path, dict[str, _Run]]) -> None:
    """fix rewrites in-place ops; a `.detach()` is left, and eager says the encoder gets no gradient: exit 1."""
    tmp, runs = console
    truth = eager_truth(_import(tmp / "nets.py").Frozen(), (torch.randn(3, 4),))
    assert truth.clean_run and truth.no_grad_params == {"enc.weight", "enc.bias"}
    proc = runs["fix still failing"]
    assert proc.returncode == 1, proc.stderr
    assert "Nothing rewritten: no in-place op makes forward or backward raise." in proc.stdout
    assert "by hand" not in proc.stdout
    assert "still failing after the fix: FXG201" in proc.stdout
    assert "fxgrad fix verifies the fix by running the model" in proc.stderr  # values were made: said so


def test_demo_exits_0(console: tuple[Path, dict[str, _Run]]) -> None:
    proc = console[1]["demo"]
    assert proc.returncode == 0, proc.stderr
    assert "=== sigmoid_mul" in proc.stdout and "FXG102" in proc.stdout
    example = get_example("sigmoid_mul")
    truth = eager_truth(example.model(), example.inputs())
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error


def test_a_forward_that_raises_is_the_users_error_at_their_line(console: tuple[Path, dict[str, _Run]]) -> None:
    tmp, runs = console
    line = _line(tmp / "nets.py", 'raise ValueError(f"boom')
    with pytest.raises(ValueError, match="boom, 2 features"):  # eager raises it too
        _import(tmp / "nets.py").Raises()(torch.randn(3, 4))
    err = runs["forward raises"].stderr
    assert f'at nets.py:{line}: `raise ValueError(f"boom, {{h.shape[-1]}} features")` (boom, 2 features)' in err, err
    assert "not a tracing problem" in err and not any(word in err for word in ("concrete", "leaf", "--capture"))


def test_a_raise_statement_reached_by_the_tracer_is_the_users_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing only (no inputs to run it on): the `raise` line formats a traced value, yet it is the user's."""
    path = _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--capture", "trace"]):
        assert main(["check", "nets.py:Raises", *extra]) == 2
        err = capsys.readouterr().err
        assert f"Raises.forward raised ValueError at nets.py:{_line(path, 'raise ValueError(f')}" in err, err
        assert "not a tracing problem" in err and "--" not in err


def test_import_of_torch_is_left_to_the_commands(tmp_path: Path) -> None:
    """--help, a command's --help, --version and usage errors answer without importing torch; `import fxgrad`
    alone neither, while `fxgrad.analyze` is still there."""
    code = textwrap.dedent("""
        import sys
        import fxgrad
        from fxgrad.cli import main
        for argv in (["--help"], ["check", "--help"], ["fix", "--help"], ["--version"], ["check"],
                     ["check", "x.py:Net", "--format", "yaml"], ["check", "x.py:Net", "--concrete-arg", "a=b c"]):
            try:
                main(argv)
            except SystemExit:
                pass
        print("torch" in sys.modules, "fxgrad.analysis" in sys.modules)
        fxgrad.analyze
        print("torch" in sys.modules, callable(fxgrad.analyze), "analyze" in dir(fxgrad))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO},
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[-3:] == ["False False", "True True True", ""], proc.stdout + proc.stderr
    # the console entry point itself: python -X importtime lists every module imported
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "fxgrad", "check", "--help"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--concrete-arg" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "fxgrad.cli" in imported and not {m for m in imported if m.split(".")[0] == "torch"}


def test_usage_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "nets.py:Clean", "--format", "xml"]) == 2
    assert main(["check"]) == 2
    assert main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("fxgrad: error: ") and "Hint:" in line for line in err)
    assert "invalid choice: 'xml'" in err[0] and "TARGET" in err[1]


def test_verbose_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Branchy", "--input", "3x4", "--capture", "trace", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("fxgrad: error: fxgrad could not trace Branchy")


# --------------------------------------------------------------------------------------------------------------
# TARGET and inputs
# --------------------------------------------------------------------------------------------------------------


def test_target_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _write(pkg, "models.py")
    monkeypatch.chdir(tmp_path)
    for target in ("nets.py:Clean", "nets.py:make_clean", "nets.py:clean", "mypkg.models:Clean",
                   "mypkg/models.py:Clean"):
        assert type(load_model(target)).__name__ == "Clean", target
    assert load_model("mypkg.models:clean") is sys.modules["mypkg.models"].clean  # an instance is used as it is


def test_target_mistakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    (tmp_path / "broken.py").write_text("import torch\nraise ValueError('boom')\n")
    (tmp_path / "needs.py").write_text("from torch import nn\nclass Net(nn.Module):\n    def __init__(self, n):\n"
                                       "        super().__init__()\n")
    monkeypatch.chdir(tmp_path)
    cases = {
        "nets.py": "does not name an object",
        "nomodule.sub:Net": "No module named 'nomodule'",
        "broken.py:Net": "Importing broken.py failed at broken.py:2: `raise ValueError('boom')`",
        "needs.py:Net": "Net cannot be called without arguments",
        "nets.py:make_token_inputs": "make_token_inputs() returned tuple, not an nn.Module",
        ".:Net": "is a directory",
    }
    for target, message in cases.items():
        with pytest.raises(InputError, match="Hint:") as err:
            load_model(target)
        assert message in str(err.value), (target, str(err.value))


def test_input_specs() -> None:
    assert parse_input_spec("8x3x32x32") == parse_input_spec("8x3x32x32:float32")
    spec = parse_input_spec("2x16:int64")
    assert spec.shape == (2, 16) and spec.dtype == torch.int64
    x, ids = build_inputs([parse_input_spec("8x3:bfloat16"), spec])
    assert x.shape == (8, 3) and x.dtype == torch.bfloat16
    assert ids.dtype == torch.int64 and set(ids.unique().tolist()) <= {0, 1}  # valid indices for any table
    again = build_inputs([parse_input_spec("8x3:bfloat16"), spec])
    assert torch.equal(x, again[0])  # reproducible, from a private generator
    for bad in ("", "8x", "x3", "8,3", "8x3:float33", "-1x3"):
        with pytest.raises(InputError, match="Hint:"):
            parse_input_spec(bad)


def test_inputs_factory_for_ints_and_dicts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    module = _import(path)
    truth = eager_truth(module.Tokens(), module.make_token_inputs())
    assert truth.clean_run and not truth.no_grad_params
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Tokens", "--inputs", "nets.py:make_token_inputs"]) == 0
    assert "PARAMETERS: 3 of 3 get a gradient" in capsys.readouterr().out
    # one tensor for a model with two arguments: said before anything runs
    assert main(["check", "nets.py:Tokens", "--input", "2x3:int64"]) == 2
    err = capsys.readouterr().err
    assert "Tokens.forward(ids, batch) cannot take 1 example input(s)" in err


# --------------------------------------------------------------------------------------------------------------
# Formats, selection, suppression
# --------------------------------------------------------------------------------------------------------------


def test_json_is_exactly_report_to_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    module = _import(path)
    inputs = build_inputs([parse_input_spec("3x4")])
    truth = eager_truth(module.Frozen(), inputs)
    assert truth.no_grad_params == {"enc.weight", "enc.bias"}
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Frozen", "--input", "3x4", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    expected = fxgrad.analyze(load_model("nets.py:Frozen"), inputs).to_dict()
    assert data == json.loads(json.dumps(expected))
    assert data["schema_version"] == 1
    assert {n for n, p in data["params"].items() if p["status"] == "no-grad"} == truth.no_grad_params


def test_select_ignore_and_fail_on(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    truth = eager_truth(_import(path).Frozen(), (torch.randn(3, 4),))
    assert truth.no_grad_params == {"enc.weight", "enc.bias"}
    monkeypatch.chdir(tmp_path)

    def codes(*args: str) -> tuple[int, set[str]]:
        status = main(["check", "nets.py:Frozen", "--input", "3x4", "--format", "json", *args])
        return status, {f["code"] for f in json.loads(capsys.readouterr().out)["findings"]}

    assert codes() == (1, {"FXG001", "FXG201"})
    assert codes("--ignore", "FXG2") == (0, {"FXG001"})  # a prefix is a family
    assert codes("--ignore", "FXG2", "--fail-on", "warning") == (1, {"FXG001"})
    assert codes("--select", "FXG0,FXG1") == (0, {"FXG001"})
    # ignoring the cut accepts it, and with it its consequence: the encoder is frozen on purpose
    assert codes("--select", "FXG201", "--ignore", "FXG001") == (0, set())
    assert codes("--fail-on", "never") == (0, {"FXG001", "FXG201"})
    assert main(["check", "nets.py:Frozen", "--ignore", "FXG9"]) == 2
    assert "unknown code FXG9" in capsys.readouterr().err


def test_suppression_comment_accepts_a_deliberate_detach(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    text = MODELS.replace("h = self.enc(x).detach()", "h = self.enc(x).detach()  # fxgrad: ignore[FXG001, FXG201]")
    path = _write(tmp_path, text=text)
    truth = eager_truth(_import(path).Frozen(), (torch.randn(3, 4),))
    assert truth.no_grad_params == {"enc.weight", "enc.bias"}  # deliberate: the encoder is frozen
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Frozen", "--input", "3x4"]) == 0
    out = capsys.readouterr().out
    assert "No findings." in out and "(2 finding(s) suppressed)" in out
    assert main(["check", "nets.py:Frozen", "--input", "3x4", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {f["code"] for f in data["suppressed"]} == {"FXG001", "FXG201"}
    assert {n: p["status"] for n, p in data["params"].items()} == {"enc.weight": "frozen", "enc.bias": "frozen",
                                                                   "head.weight": "ok", "head.bias": "ok"}


def test_an_accepted_teacher_cut_exits_0_and_lists_the_teacher_as_frozen(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`# fxgrad: ignore[FXG001]` on the teacher's detach accepts the cut and what it cuts off."""
    text = MODELS.replace("h = self.enc(x).detach()", "h = self.enc(x).detach()  # fxgrad: ignore[FXG001]")
    path = _write(tmp_path, text=text)
    truth = eager_truth(_import(path).Frozen(), (torch.randn(3, 4),))
    assert truth.clean_run and truth.no_grad_params == {"enc.weight", "enc.bias"}
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Frozen", "--input", "3x4"]) == 0
    out = capsys.readouterr().out
    assert "No findings." in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("enc.")}
    assert rows == {"enc.weight": "frozen", "enc.bias": "frozen"} and "frozen on purpose" in out


# --------------------------------------------------------------------------------------------------------------
# Baseline and pyproject settings
# --------------------------------------------------------------------------------------------------------------


def test_baseline_records_then_reports_only_new_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    baseline = tmp_path / "fxgrad-baseline.json"
    args = ["check", "nets.py:Frozen", "--input", "3x4", "--format", "json", "--baseline", str(baseline)]
    truth = eager_truth(_import(path).Frozen(), (torch.randn(3, 4),))
    assert truth.no_grad_params == {"enc.weight", "enc.bias"}

    assert main(args) == 0  # no baseline yet: today's findings are recorded
    assert "recorded 2 finding(s)" in capsys.readouterr().err
    recorded = json.loads(baseline.read_text())
    assert recorded["baseline_version"] == 1 and {e["code"] for e in recorded["findings"]} == {"FXG001", "FXG201"}

    # lines move: the baseline still matches (source text, not line numbers)
    path.write_text(MODELS.replace("import torch\n", "import torch\n\n# a comment\n\n\n", 1))
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["findings"] == [] and any("baseline" in n for n in data["notes"])

    # a new problem elsewhere is reported, and only it
    path.write_text(MODELS.replace("        return self.head(h)\n", "        out = torch.sigmoid(self.head(h))\n"
                                   "        out.mul_(2.0)\n        return out\n"))
    truth = eager_truth(_import(path).Frozen(), (torch.randn(3, 4),))
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    assert main(args) == 1
    data = json.loads(capsys.readouterr().out)
    assert [f["code"] for f in data["findings"]] == ["FXG102"]
    assert data["findings"][0]["location"]["line"] == _line(path, "out.mul_(2.0)")


def test_pyproject_settings_and_flags_win(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    truth = eager_truth(_import(path).Frozen(), (torch.randn(3, 4),))
    assert truth.no_grad_params == {"enc.weight", "enc.bias"}
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.fxgrad]\nignore = ["FXG2"]\n'
                                            'fail-on = "warning"\n')
    sub = tmp_path / "src" / "deeper"
    sub.mkdir(parents=True)
    (sub / "pyproject.toml").write_text('[project]\nname = "inner"\n')  # no [tool.fxgrad]: passed over
    monkeypatch.chdir(sub)
    target = f"{path}:Frozen"

    def run(*args: str) -> tuple[int, set[str]]:
        status = main(["check", target, "--input", "3x4", "--format", "json", *args])
        return status, {f["code"] for f in json.loads(capsys.readouterr().out)["findings"]}

    assert run() == (1, {"FXG001"})  # ignore FXG2, and fail on the warning that is left
    assert run("--fail-on", "error") == (0, {"FXG001"})  # a flag wins over the file
    # --ignore replaces the file's list; ignoring the cut accepts its consequence (the encoder is frozen on purpose)
    assert run("--ignore", "FXG001") == (0, set())
    assert run("--isolated") == (1, {"FXG001", "FXG201"})

    (tmp_path / "pyproject.toml").write_text('[tool.fxgrad]\nfail_on = "warning"\n')
    assert main(["check", target]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Unknown setting 'fail_on' in [tool.fxgrad]" in err


# --------------------------------------------------------------------------------------------------------------
# fix
# --------------------------------------------------------------------------------------------------------------


class _OutOfPlaceBreaks(torch.nn.Module):
    """What `Breaks` means, written out of place, on the same submodules."""

    def __init__(self, enc: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.enc, self.head = enc, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sigmoid(self.enc(x)) * 2.0)


def test_fix_prints_rewrites_and_writes_working_code(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    model = _import(path).Breaks()
    x = (torch.randn(3, 4),)
    truth = eager_truth(model, x)
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    monkeypatch.chdir(tmp_path)

    assert main(["fix", "nets.py:Breaks", "--input", "3x4", "--out", "fixed.py"]) == 0
    out = capsys.readouterr().out
    assert f"nets.py:{_line(path, 't.mul_(2.0)')}  t.mul_(2.0)  [FXG102]" in out
    assert "before: mul_ = sigmoid.mul_(2.0)" in out and "after:  mul = sigmoid.mul(2.0)" in out
    assert "VERIFIED against" in out and "gradient  enc.weight" in out

    # the written code is the fixed model: eager backward now runs and gives the out-of-place gradients
    namespace: dict[str, object] = {}
    exec(compile((tmp_path / "fixed.py").read_text(), "fixed.py", "exec"), namespace)
    fixed = namespace["Breaks"]()  # type: ignore[operator]
    fixed.enc, fixed.head = model.enc, model.head
    after = eager_truth(fixed, x)
    reference = eager_truth(_OutOfPlaceBreaks(model.enc, model.head), x)
    assert after.clean_run and not grads_differ(after.grads, reference.grads)


def test_fix_without_the_fixer_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "fxgrad.fixing", None)  # as if fxgrad.fixing did not exist
    assert main(["fix", "nets.py:Breaks", "--input", "3x4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not available" in err


# --------------------------------------------------------------------------------------------------------------
# Every error the command line reports, flags that exist, tracing options, exit statuses of fix
# --------------------------------------------------------------------------------------------------------------

ERRORS = {
    "root": (["check", "nets.py:Clean", "--root", "nowhere"], "--root nowhere is not a directory"),
    "input and inputs": (["check", "nets.py:Clean", "--input", "3x4", "--inputs", "nets.py:make_token_inputs"],
                         "--input and --inputs cannot be combined"),
    "unknown dtype": (["check", "nets.py:Clean", "--input", "3x4:float33"], "names an unknown dtype 'float33'"),
    "unknown code": (["check", "nets.py:Clean", "--select", "FXG9"], "--select names unknown code FXG9"),
    "config": (["check", "nets.py:Clean", "--config", "missing.toml"], "--config missing.toml does not exist"),
    "python module": (["check", "nets.py:logging"], "logging is the Python module logging, not an nn.Module"),
    "factory fails": (["check", "nets.py:make_broken"], "make_broken() failed at nets.py:"),
    "inputs factory": (["check", "nets.py:Clean", "--inputs", "nets.py:Nope"], "nets.py has no 'Nope'"),
    "loss": (["check", "nets.py:Clean", "--loss", "nets.py:answer"], "--loss nets.py:answer is a value of type int"),
    "targets": (["check", "nets.py:Clean", "--targets", "nets.py:make_token_inputs"], "--targets needs --loss"),
    "optimizer": (["check", "nets.py:Clean", "--optimizer", "nets.py:make_clean"],
                  "--optimizer nets.py:make_clean raised TypeError"),
    "concrete-arg name": (["check", "nets.py:Cut", "--concrete-arg", "cutt=True"],
                          "--concrete-arg cutt: Cut.forward has no parameter 'cutt'"),
    "concrete-arg form": (["check", "nets.py:Cut", "--concrete-arg", "cut"], "'cut' is not NAME=VALUE"),
    "concrete-arg literal": (["check", "nets.py:Cut", "--concrete-arg", "cut=yes please"],
                             "'yes please' is not a Python literal"),
    "leaf-module name": (["check", "nets.py:Gated", "--leaf-module", "Gatee"],
                         "--leaf-module Gatee is neither a submodule of Gated nor a dotted class name"),
    "leaf-module kind": (["check", "nets.py:Gated", "--leaf-module", "nets.py:answer"],
                         "--leaf-module nets.py:answer is a value of type int, not an nn.Module class"),
    "leaf-module missing": (["check", "nets.py:Gated", "--leaf-module", "torch.nn.NoSuchLayer"],
                            "torch.nn has no 'NoSuchLayer'"),
    "memory size": (["check", "nets.py:Clean", "--max-input-memory", "lots"], "'lots' is not a size"),
    "over the memory cap": (["check", "nets.py:Branchy", "--input", "3000x4", "--max-input-memory", "10K"],
                            "these inputs take 46.9 KiB, more than --max-input-memory 10 KiB"),
    "fix over the memory cap": (["fix", "nets.py:Conv", "--input", "100000x3x224x224"],
                                "fxgrad fix verifies the fix by running the model, so it needs real example values, "
                                "and these inputs take 56.1 GiB"),
    "fix out": (["fix", "nets.py:Breaks", "--input", "3x4", "--out", "nodir/fixed.py"],
                "Cannot write --out nodir/fixed.py"),
    "fix target": (["fix", "nets.py:Nope"], "nets.py has no 'Nope'"),
    "forward raises, traced": (["check", "nets.py:Raises", "--capture", "trace"],
                               "Raises.forward raised ValueError at nets.py:"),
    "untraceable submodule": (["check", "nets.py:Gated", "--capture", "trace"], "could not trace Gated at nets.py:"),
    "forward raises on a huge input": (["check", "nets.py:Raises", "--input", "100000x4", "--max-input-memory", "1K"],
                                       "Raises.forward raised ValueError at nets.py:"),
    "unknown example": (["demo", "no_such_example"], "no example 'no_such_example'"),
    "usage": (["check", "nets.py:Clean", "--format", "yaml"], "invalid choice: 'yaml'"),
}


def _options(command: str) -> set[str]:
    from fxgrad.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices[command]._option_string_actions)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_every_error_is_one_line_with_a_hint_that_names_real_flags(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv, message = ERRORS[case]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("fxgrad: error: "), err
    assert message in err and "Hint:" in err, err
    flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", err))
    assert flags <= _options(argv[0]) | {"--help"}, flags - _options(argv[0])
    assert not re.search(r"\b(concrete_args|leaf_modules|unsafe=|only=|verify=)", err)  # API spellings


def test_trace_hints_name_flags_that_fix_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint for `if cut:` names --concrete-arg; following it traces the branch it picks, with eager's
    verdicts for that branch: cut=True cuts the encoder off, cut=False does not."""
    path = _write(tmp_path)
    module = _import(path)
    x = (torch.randn(3, 4),)
    cut = eager_truth(_Call(module.Cut(), cut=True), x)
    kept = eager_truth(_Call(module.Cut(), cut=False), x)
    assert cut.no_grad_params == {"model.enc.weight", "model.enc.bias"} and not kept.no_grad_params
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Cut", "--capture", "trace"]) == 2
    err = capsys.readouterr().err
    assert f"nets.py:{_line(path, 'if cut:')}" in err and "--concrete-arg NAME=VALUE" in err
    assert main(["check", "nets.py:Cut", "--capture", "trace", "--concrete-arg", "cut=True", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["capture"] == "trace"
    assert {n for n, p in data["params"].items() if p["status"] == "no-grad"} == {"enc.weight", "enc.bias"}
    assert main(["check", "nets.py:Cut", "--capture", "trace", "--concrete-arg", "cut=False"]) == 0
    assert "PARAMETERS: 4 of 4 get a gradient" in capsys.readouterr().out


class _Call(torch.nn.Module):
    """``model(x, **kwargs)``: eager's answer for a concrete argument."""

    def __init__(self, model: torch.nn.Module, **kwargs: object) -> None:
        super().__init__()
        self.model, self.kwargs = model, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x, **self.kwargs)
        return out


@pytest.mark.parametrize("leaf", ["gate", "nets.py:Gate"])
def test_leaf_module_keeps_an_untraceable_submodule_opaque(leaf: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    truth = eager_truth(_import(path).Gated(), (torch.randn(3, 4),))
    assert truth.clean_run and not truth.no_grad_params
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Gated", "--capture", "trace", "--leaf-module", leaf, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["capture"] == "trace" and data["ok"]
    assert {p["status"] for p in data["params"].values()} == {"ok"}


def test_a_tracer_only_failure_is_not_called_the_users_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`assert isinstance(x, torch.Tensor)` fails only on a proxy: tracing advice, and with inputs the run capture
    follows it (eager runs it, every parameter gets a gradient)."""
    path = _write(tmp_path)
    truth = eager_truth(_import(path).Checks(), (torch.randn(3, 4),))
    assert truth.clean_run and not truth.no_grad_params
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Checks", "--capture", "trace"]) == 2
    err = capsys.readouterr().err
    assert "could not trace Checks" in err and "--capture run" in err and "model's own code" not in err
    assert main(["check", "nets.py:Checks", "--input", "3x4"]) == 0
    out = capsys.readouterr().out
    assert "captured by running" in out and "PARAMETERS: 2 of 2 get a gradient" in out


def test_fix_exits_1_when_the_verification_fails_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A missed FXG102 (simulated: the analysis fix relies on reports nothing): nothing is rewritten, eager backward
    of the 'fixed' module still raises, fix says so without pointing at a list that is empty, and exits 1."""
    import fxgrad.fixing
    import fxgrad.rewrite

    path = _write(tmp_path)
    truth = eager_truth(_import(path).Breaks(), (torch.randn(3, 4),))
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    found = fxgrad.fixing._findings

    def missed(*args: object) -> fxgrad.Report:
        report = found(*args)  # type: ignore[arg-type]
        report.findings = []
        return report

    monkeypatch.setattr(fxgrad.fixing, "_findings", missed)
    monkeypatch.setattr(fxgrad.rewrite, "_breaks", lambda nf, facts: False)  # the rewrite's own view of the facts
    monkeypatch.chdir(tmp_path)
    assert main(["fix", "nets.py:Breaks", "--input", "3x4"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("fxgrad fix for Breaks: NOT FIXED")
    assert "backward() of the fixed Breaks still raises" in out and "fxgrad found no in-place op" in out
    assert "listed above" not in out and "Hint:" in out


def test_fix_on_a_model_with_nothing_breaking_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    truth = eager_truth(_import(path).Clean(), (torch.randn(3, 4),))
    assert truth.clean_run and not truth.no_grad_params
    monkeypatch.chdir(tmp_path)
    assert main(["fix", "nets.py:Clean", "--input", "3x4"]) == 0
    out, err = capsys.readouterr()
    assert "Nothing rewritten: no in-place op makes forward or backward raise." in out
    assert "VERIFIED against eager: ok" in out and "by hand" not in out
    assert "ran it on random example inputs of these shapes (48 bytes)" in err


def test_timings_split_the_run_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Clean", "--input", "3x4", "--format", "json", "--timings"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"]
    rows = [line.split() for line in err.splitlines()[1:]]
    names = [" ".join(r[:-2]) for r in rows]
    for phase in ("import torch", "import fxgrad", "load the model", "capture", "facts and rules", "dry-run",
                  "render", "total"):
        assert phase in names, names
    assert all(r[-1] == "ms" and float(r[-2]) >= 0 for r in rows)
    assert abs(sum(float(r[-2]) for r in rows[:-1]) - float(rows[-1][-2])) <= len(rows)  # rounding


def test_sizes_and_literals() -> None:
    from fxgrad.cli import _concrete_arg, _size

    assert _size("1GiB") == _size("1g") == 2**30 and _size("512M") == 2**29 and _size("100") == 100
    assert _size("1.5k") == 1536
    assert _concrete_arg("sizes=(2, 3)") == ("sizes", (2, 3)) and _concrete_arg("mode='x'") == ("mode", "x")
    assert _concrete_arg("flag = None") == ("flag", None)


def test_an_inputs_factory_may_return_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    truth = eager_truth(_import(path).Branchy(), (torch.ones(3, 4),))
    assert truth.clean_run and not truth.no_grad_params
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Clean", "--inputs", "nets.py:make_shapes"]) == 0
    out, err = capsys.readouterr()
    assert "proved by a dry-run" in out and err == ""
    assert main(["check", "nets.py:Branchy", "--inputs", "nets.py:make_shapes"]) == 0  # reads values: made real
    out, err = capsys.readouterr()
    assert "captured by running" in out and "ran it on random example inputs of these shapes (48 bytes)" in err


@pytest.mark.parametrize("error", ["Could not run 'aten::foo' with arguments from the 'Meta' backend",
                                   "aten::nonzero has a data-dependent output shape"])
def test_an_op_without_a_meta_kernel_gets_real_values(error: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The meta dry-run cannot run (simulated: every meta run raises as an op without a meta kernel does); on
    shapes that leaves static verdicts, so the command line runs the dry-run on real values instead and proves
    eager's verdict: backward raises at `t.mul_(2.0)`."""
    import fxgrad.dryrun

    path = _write(tmp_path)
    truth = eager_truth(_import(path).Breaks(), (torch.randn(3, 4),))
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    run = fxgrad.dryrun.run_dryrun

    def no_meta(*args: object, real: bool) -> object:
        if not real:
            raise NotImplementedError(error)
        return run(*args, real=real)  # type: ignore[arg-type]

    monkeypatch.setattr(fxgrad.dryrun, "run_dryrun", no_meta)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nets.py:Breaks", "--input", "3x4", "--format", "json"]) == 1
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["mode"] == "dry-run" and [f["code"] for f in data["findings"]] == ["FXG102"]
    assert data["findings"][0]["location"]["line"] == _line(path, "t.mul_(2.0)")
    assert err.startswith("fxgrad: note: the ") and err.count("\n") == 1 and "NotImplementedError" in err
    assert "ran it on random example inputs of these shapes (48 bytes)" in err
