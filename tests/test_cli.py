"""The ``fxgrad`` command line: exit codes, output formats, bad input, suppressions, baselines, pyproject settings.

The console script itself runs in a subprocess (``python -m fxgrad``) for what only a real process shows: exit
status, one line on stderr, no traceback. Everything else calls :func:`fxgrad.cli.main` in-process, which is
the same code without the ~2 s of importing torch again. Every claim about gradients is checked against an
eager backward of the same model.
"""

from __future__ import annotations

import importlib.util
import json
import os
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
from fxgrad.loader import build_inputs, load_model, parse_input_spec

from .oracle import INPLACE_ERROR, eager_truth, grads_differ

REPO = str(Path(__file__).resolve().parent.parent)

MODELS = '''
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


def make_clean():
    return Clean()


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
}
RUNS = {
    "clean": ["check", "nets.py:Clean", "--input", "3x4"],
    "breaks": ["check", "nets.py:Breaks", "--input", "3x4"],
    "branchy": ["check", "nets.py:Branchy", "--input", "3x4"],
    **{case: args for case, (args, _) in MISTAKES.items()},
}


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, _Run]]:
    """Every console-script run of this module, started at once: each one spends seconds importing torch."""
    tmp = tmp_path_factory.mktemp("console")
    _write(tmp)
    env = {**os.environ, "PYTHONPATH": REPO, "NO_COLOR": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "fxgrad", *args], cwd=tmp, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, args in RUNS.items()}
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        runs[name] = _Run(proc.returncode, out, err)
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
