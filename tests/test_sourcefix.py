"""``fxgrad fix --diff`` / ``--write`` and ``FixRecord.source_edits``: the verified fix as edits of the user's files.

Every claim is checked against eager PyTorch in the same test: the original file's backward raises (the real
error is caught), the edited file, imported fresh, runs backward, and its output and gradients equal those of the
GraphModule that ``fxgrad.fix`` verified.
"""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import fxgrad
from fxgrad import sourcefix
from fxgrad.capture import node_origin
from fxgrad.cli import main
from fxgrad.errors import VerificationError
from fxgrad.examples import EXAMPLES, Example
from fxgrad.rewrite import Rewrite
from fxgrad.sourcefix import SourceEdit

from .oracle import INPLACE_ERROR

MODELS = Path(__file__).with_name("sourcefix_models.py")
EXAMPLES_FILE = Path(fxgrad.__file__).with_name("examples.py")
_count = itertools.count()

#: model -> its example input shape
BROKEN = {
    "TanhReluBlock": (2, 4, 6, 6),
    "SequentialHead": (3, 4),
    "GateStack": (3, 4),
    "Functional": (3, 4),
    "Augmented": (3, 4),
    "Expressions": (3, 4),
    "Spellings": (3, 4),
    "Promotes": (3, 4),
}
#: models whose test runs `fix --only all` (every safe in-place op, so that every spelling in them is edited)
ONLY_ALL = {"Spellings"}


@pytest.fixture(autouse=True)
def _restore_sys(monkeypatch: pytest.MonkeyPatch) -> None:
    # loading a TARGET puts its directory on sys.path and its module in sys.modules; keep those out of other tests
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_test_sourcefix_{path.stem}_{next(_count)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up (the fixture restores sys.modules)
    spec.loader.exec_module(module)
    return module


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Eager forward and backward with a fixed RNG (dropout) and cotangent; the output and every parameter's grad."""
    for p in model.parameters():
        p.grad = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        out = model(x.clone())
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(cot)
    return out.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _assert_trains_like(gm: torch.fx.GraphModule, edited: nn.Module, x: torch.Tensor) -> None:
    want_out, want = _run(gm, x)
    got_out, got = _run(edited, x)
    torch.testing.assert_close(got_out, want_out)
    assert set(got) == set(want) and want
    for name, g in want.items():
        assert g is not None and got[name] is not None, name
        torch.testing.assert_close(got[name], g, msg=name)


def _original_raises(model: nn.Module, x: torch.Tensor) -> None:
    # a saved tensor overwritten, or an in-place op whose own backward refuses (FXG108, FXG109)
    with pytest.raises(RuntimeError, match=f"{INPLACE_ERROR}|negative slope|inplace version of"):
        _run(model, x)


def _check_edited(edited_file: Path, name: str, original: nn.Module, gm: torch.fx.GraphModule,
                  x: torch.Tensor, build: Any = None) -> None:
    """The edited file, imported fresh, trains with the verified GraphModule's outputs and gradients."""
    module = _import(edited_file)
    edited = build(module) if build is not None else getattr(module, name)()
    edited.load_state_dict(original.state_dict())
    edited.train(original.training)
    _assert_trains_like(gm, edited, x)


def _patch(diff: str, root: Path) -> None:
    """``patch -p1`` from ``root``, as a user applies the printed diff."""
    result = subprocess.run(["patch", "-p1", "--batch"], input=diff, text=True, cwd=root, capture_output=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------------------
# --diff and --write on the user's own models
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs the patch program")
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_diff_applies_with_patch_and_the_file_trains(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    shutil.copy(MODELS, work / "src" / "models.py")
    monkeypatch.chdir(work)
    x = torch.randn(*BROKEN[name], generator=torch.Generator().manual_seed(0))
    original = getattr(_import(work / "src" / "models.py"), name)()
    _original_raises(original, x)

    only = ["--only", "all"] if name in ONLY_ALL else []
    assert main(["fix", f"src/models.py:{name}", "--input", _shape(BROKEN[name]), *only, "--diff"]) == 0
    captured = capsys.readouterr()
    diff = captured.out
    assert diff.startswith("--- a/src/models.py\n+++ b/src/models.py\n"), diff
    assert "REWRITTEN" in captured.err and "REWRITTEN" not in diff  # the report goes to stderr
    assert (work / "src" / "models.py").read_text() == MODELS.read_text()  # --diff changes nothing

    applied = tmp_path / "applied"
    (applied / "src").mkdir(parents=True)
    shutil.copy(MODELS, applied / "src" / "models.py")
    _patch(diff, applied)
    gm = fxgrad.fix(original, (x,), only="all" if only else None)
    assert gm.meta["fxgrad"].verified
    _check_edited(applied / "src" / "models.py", name, original, gm, x)


def test_write_edits_in_place_and_the_file_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    original = _import(path).Functional()
    _original_raises(original, x)

    assert main(["fix", "models.py:Functional", "--input", "3x4", "--write"]) == 0
    captured = capsys.readouterr()
    assert "REWRITTEN" in captured.out
    assert "fxgrad: edited models.py (3 change(s))" in captured.err
    text = path.read_text()
    assert "h = F.relu(h)\n" in text and "g = torch.relu(g)  # clamp the gate\n" in text
    assert "y = e = e.mul(0.5)\n" in text
    gm = fxgrad.fix(original, (x,))
    _check_edited(path, "Functional", original, gm, x)
    # a second run finds nothing left to change
    assert main(["fix", "models.py:Functional", "--input", "3x4", "--diff"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "nothing to change in the source" in captured.err


def test_only_all_edits_every_safe_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    original = _import(path).Expressions()
    gm = fxgrad.fix(original, (x,), only="all")
    assert main(["fix", "models.py:Expressions", "--input", "3x4", "--only", "all", "--write"]) == 0
    text = path.read_text()
    assert "z = self.head(e := e.mul(2.0)) + e.sum()\n" in text  # e is read again after the write
    assert "return t.sigmoid()\n" in text
    _check_edited(path, "Expressions", original, gm, x)


def test_every_spelling_is_edited_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    before = path.read_text().splitlines()
    assert main(["fix", "models.py:Spellings", "--input", "3x4", "--only", "all", "--write"]) == 0
    after = path.read_text().splitlines()
    changed = sorted((b.strip(), a.strip()) for b, a in zip(before, after, strict=True) if b != a)
    assert changed == sorted([
        ('self.add_module("act", nn.Hardtanh(-1.0, 1.0, True))', 'self.add_module("act", nn.Hardtanh(-1.0, 1.0))'),
        ("a.fill_(0.5)", "a = a.clone().fill_(0.5)"),
        ("F.relu_(b)", "b = F.relu(b)"),
        ("c *= b + 1.0", "c = c * (b + 1.0)"),
        ("s[:, 0] += 1.0", "s = s.clone(); s[:, 0] += 1.0"),
        ("torch.sin(s, out=o)", "o = torch.sin(s)"),
    ])


def test_a_result_fix_cast_back_is_cast_in_the_source_too(tmp_path: Path) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    record = fxgrad.fix(_import(path).Promotes(), (torch.randn(3, 4),)).meta["fxgrad"]
    assert len([n for n in record.notes if "cast back to torch.float16" in n]) == 2
    assert [e.new.strip() for e in record.source_edits] == ["t = (t + x).to(t.dtype)", "u = u.add(x).to(u.dtype)"]


def test_comments_and_formatting_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    before = path.read_text().splitlines()
    assert main(["fix", "models.py:Expressions", "--input", "3x4", "--write"]) == 0
    after = path.read_text().splitlines()
    assert len(after) == len(before)
    changed = {(b, a) for b, a in zip(before, after, strict=True) if b != a}
    assert changed == {
        ("        z = self.head(e.mul_(2.0)) + e.sum()", "        z = self.head(e := e.mul(2.0)) + e.sum()"),
        ("        t.mul_(", "        t = t.mul("),
        # the next write into the version counter the rewritten write bumped is rewritten too (fxgrad.rewrite)
        ("        return t.sigmoid_()", "        return t.sigmoid()"),
    }
    assert "            3.0,  # a call over several lines, comment inside" in after


def test_constructor_edits_keep_the_rest_of_the_line(tmp_path: Path) -> None:
    """``nn.ReLU(inplace=True)  # comment``, ``nn.LeakyReLU(0.1, True)`` and ``nn.Dropout(p=.., inplace=True)``."""
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    module = _import(path)
    want = {
        "TanhReluBlock": ("        self.act = nn.ReLU(inplace=True)  # memory-saving, as torchvision writes it",
                          "        self.act = nn.ReLU()  # memory-saving, as torchvision writes it"),
        "SequentialHead": ("            nn.LeakyReLU(0.1, True),  # slope, inplace",
                           "            nn.LeakyReLU(0.1),  # slope, inplace"),
        "GateStack": ("        self.drop = nn.Dropout(p=0.25, inplace=True)", "        self.drop = nn.Dropout(p=0.25)"),
    }
    for name, (old, new) in want.items():
        x = torch.randn(*BROKEN[name], generator=torch.Generator().manual_seed(0))
        record = fxgrad.fix(getattr(module, name)(), (x,)).meta["fxgrad"]
        line = path.read_text().splitlines().index(old) + 1
        assert record.source_edits == (SourceEdit(str(path), line, old, new),), name
        assert record.source_declined == ()


# --------------------------------------------------------------------------------------------------------------
# The bundled examples
# --------------------------------------------------------------------------------------------------------------


def _fix_flags(ex: Example) -> list[str] | None:
    """The fewest flags with which ``fix`` verifies a rewrite of the example, or None: fix repairs nothing."""
    for flags in ([], ["--only", "all"], ["--only", "all", "--unsafe"]):
        kwargs: dict[str, Any] = {"only": "all" if flags else None, "unsafe": "--unsafe" in flags}
        try:
            record = fxgrad.fix(ex.model(), ex.inputs(), **kwargs).meta["fxgrad"]
        except fxgrad.FxgradError:
            continue
        if record.rewrites and record.verified:
            return flags
    return None


def _source_declined(ex: Example) -> tuple[str, ...]:
    flags = _fix_flags(ex)
    kwargs: dict[str, Any] = {"only": "all" if flags else None, "unsafe": "--unsafe" in (flags or [])}
    return tuple(d.reason for d in fxgrad.fix(ex.model(), ex.inputs(), **kwargs).meta["fxgrad"].source_declined)


REPAIRED = [ex for ex in EXAMPLES if _fix_flags(ex) is not None and ex.name != "view_write"]


def test_a_named_view_write_is_declined_in_source_with_its_reason() -> None:
    # `first = h[:, 0]; first.mul_(2.0)`, then `h` is read: the GraphModule replays the write into `h`; an edit of the
    # line alone cannot, so the source fix declines it and says why
    ex = next(ex for ex in EXAMPLES if ex.name == "view_write")
    reasons = _source_declined(ex)
    assert reasons and all(r for r in reasons)


def test_the_examples_that_fix_repairs() -> None:
    # the examples the diff test below covers: the in-place ones fix rewrites (a new one joins automatically)
    assert {"sigmoid_mul", "article3", "resnet_block", "input_mutation"} <= {ex.name for ex in REPAIRED}


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs the patch program")
@pytest.mark.parametrize("ex", REPAIRED, ids=lambda ex: ex.name)
def test_example_diff_applies_and_trains(ex: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    flags = _fix_flags(ex)
    assert flags is not None
    inputs = ex.inputs()
    monkeypatch.chdir(EXAMPLES_FILE.parent.parent)  # the package's parent: the diff names fxgrad/examples.py
    assert main(["fix", ex.target, "--input", _shape(tuple(inputs[0].shape)), *flags, "--diff"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith("--- a/fxgrad/examples.py\n"), diff

    (tmp_path / "fxgrad").mkdir()
    shutil.copy(EXAMPLES_FILE, tmp_path / "fxgrad" / "examples.py")
    _patch(diff, tmp_path)
    model = ex.model()
    x = inputs[0].detach().clone().requires_grad_(inputs[0].requires_grad)
    if ex.eager.raises == "backward":
        _original_raises(model, x)
    gm = fxgrad.fix(model, (x,), only="all" if flags else None, unsafe="--unsafe" in flags)
    edited_class = type(model).__name__
    _check_edited(tmp_path / "fxgrad" / "examples.py", edited_class, model, gm, x)


# --------------------------------------------------------------------------------------------------------------
# What is not edited, and why
# --------------------------------------------------------------------------------------------------------------

_LIBRARY = '''
import torch
from torch import nn


class LibBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = torch.sigmoid(self.lin(x))
        h += 1.0
        return self.act(torch.tanh(h))
'''

_USER = '''
import torch
from torch import nn
from fakelib.blocks import LibBlock


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = LibBlock()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        t = torch.sigmoid(self.block(x))
        t.mul_(2.0)
        return self.head(t)
'''


def test_library_code_is_never_edited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "site-packages" / "fakelib"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "blocks.py").write_text(_LIBRARY)
    (tmp_path / "net.py").write_text(_USER)
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))
    monkeypatch.chdir(tmp_path)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    model = _import(tmp_path / "net.py").Net()
    _original_raises(model, x)

    record = fxgrad.fix(model, (x,)).meta["fxgrad"]
    assert record.verified and len(record.rewrites) == 3
    files = {Path(e.file).name for e in record.source_edits}
    assert files == {"net.py"}
    declined = {d.location.line: d.reason for d in record.source_declined if d.location is not None}
    lines = _LIBRARY.splitlines()
    built = lines.index("        self.act = nn.ReLU(inplace=True)") + 1
    assert set(declined) == {lines.index("        h += 1.0") + 1, built}
    assert all("is in fakelib, which fxgrad never edits" in r and "fxgrad fix --out" in r for r in declined.values())
    assert all(Path(d.location.file) == lib / "blocks.py" for d in record.source_declined if d.location)

    # the user's own line alone does not make backward run: --write writes nothing, --diff shows the partial patch
    assert main(["fix", "net.py:Net", "--input", "3x4", "--write"]) == 1
    err = capsys.readouterr().err
    assert "not edited" in err and "blocks.py:14" in err and "is in fakelib" in err
    assert "the edits cover 1 of the 3 rewrites" in err and "fxgrad wrote nothing" in err
    assert (lib / "blocks.py").read_text() == _LIBRARY and (tmp_path / "net.py").read_text() == _USER
    assert main(["fix", "net.py:Net", "--input", "3x4", "--diff"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("--- a/net.py\n") and "+        t = t.mul(2.0)\n" in captured.out
    assert "blocks.py" not in captured.out and "partial patch alone does not make backward run" in captured.err


def test_a_module_built_by_a_helper_is_declined_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    x = torch.randn(3, 4)
    _original_raises(_import(path).HelperBuilt(), x)
    assert main(["fix", "models.py:HelperBuilt", "--input", "3x4", "--diff"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "`act` (ReLU) is built by `make_act()`, where fxgrad finds no `inplace=True` to remove" in captured.err
    assert "nothing to change in the source" in captured.err


def test_diff_without_changes_prints_nothing_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    assert main(["fix", "models.py:Clean", "--input", "3x4", "--diff"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "fxgrad: nothing to change in the source (no verified rewrite)." in captured.err
    assert path.read_text() == MODELS.read_text()


def test_unverified_fix_gives_no_edits(tmp_path: Path) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    record = fxgrad.fix(_import(path).Functional()).meta["fxgrad"]  # no inputs: not verified
    assert record.rewrites and not record.verified
    assert record.source_edits == ()
    assert {d.node for d in record.source_declined} == {r.node for r in record.rewrites}
    assert all("not verified" in d.reason for d in record.source_declined)


# --------------------------------------------------------------------------------------------------------------
# The check after writing, and the roll-back
# --------------------------------------------------------------------------------------------------------------


def _perturbing_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the rebuilt model really differ: its first parameter moves before the (real) comparison."""
    real = sourcefix.verify

    def perturbed(original: nn.Module, fixed: nn.Module, inputs: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            next(fixed.parameters()).add_(1.0)
        return real(original, fixed, inputs, **kwargs)

    monkeypatch.setattr(sourcefix, "verify", perturbed)


def test_write_rolls_back_when_the_edited_source_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    _perturbing_verify(monkeypatch)
    assert main(["fix", "models.py:Augmented", "--input", "3x4", "--write"]) == 1
    err = capsys.readouterr().err
    assert "The edited source does not behave as the verified fix, so fxgrad rolled back models.py" in err
    assert "the model rebuilt from the edited source differs from the verified fix: " in err and "Hint:" in err
    assert path.read_text() == MODELS.read_text()
    assert not any(name.startswith("_fxgrad_edited_") for name in sys.modules)


def test_two_names_for_one_tensor_are_caught_by_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    x = torch.randn(3, 4)
    model = _import(path).TwoNames()
    _original_raises(model, x)
    assert fxgrad.fix(model, (x,)).meta["fxgrad"].source_edits  # planned: `out = out + x` ...
    assert main(["fix", "models.py:TwoNames", "--input", "3x4", "--write"]) == 1  # ... which changes `identity`
    err = capsys.readouterr().err
    assert "rolled back models.py: the model rebuilt from the edited source differs from the verified fix: " \
           "output" in err
    assert path.read_text() == MODELS.read_text()


def test_diff_shows_nothing_when_the_edited_copy_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    monkeypatch.chdir(tmp_path)
    _perturbing_verify(monkeypatch)
    assert main(["fix", "models.py:Augmented", "--input", "3x4", "--diff"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "the edited source does not behave as the verified fix, so no diff is shown" in captured.err


def test_apply_rolls_back_on_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("a = 1\nb = 2  # keep\n")
    edits = (SourceEdit(str(path), 2, "b = 2  # keep", "b = 3  # keep"),)

    def failing(mapping: dict[str, str]) -> Any:
        assert Path(mapping[str(path)]).read_text() == "a = 1\nb = 3  # keep\n"
        raise VerificationError("outputs differ")

    with pytest.raises(VerificationError, match=r"rolled back \S*m.py: outputs differ\. Hint:"):
        sourcefix.apply(edits, failing)
    assert path.read_text() == "a = 1\nb = 2  # keep\n"


# --------------------------------------------------------------------------------------------------------------
# Writes through views (the rewrite that makes them out of place is being added to fix; the planner is ready)
# --------------------------------------------------------------------------------------------------------------


def _plan_mul_(model: nn.Module) -> tuple[tuple[SourceEdit, ...], tuple[sourcefix.SourceDecline, ...]]:
    """Plan the source edit of the model's ``mul_`` as if ``fix`` had rewritten and verified it."""
    traced = fxgrad.trace(model)
    node = next(n for n in traced.graph.nodes if n.target == "mul_")
    rewrite = Rewrite(node.name, "mul", "method", "", "", node_origin(node).location)
    return sourcefix.plan(model, traced, [rewrite], verified=True)


def test_a_write_through_a_named_view_whose_base_is_read_later_is_declined(tmp_path: Path) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    model = _import(path).ViewThenBase()
    x = torch.randn(3, 4)
    _original_raises(model, x)
    edits, declined = _plan_mul_(model)
    assert edits == ()
    (d,) = declined
    assert d.location is not None and d.location.code == "first.mul_(2.0)"
    assert d.reason.startswith("`first` is a view of the tensor of line ")
    assert "(`h = torch.sigmoid(self.lin(x))`), which is read after the write" in d.reason


def test_a_write_into_a_view_expression_clones_the_base(tmp_path: Path) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)
    model = _import(path).ViewStatement()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    _original_raises(model, x)
    edits, declined = _plan_mul_(model)
    assert declined == ()
    want = ("        h[:, 0].mul_(2.0)", "        h = h.clone(); h[:, 0].mul_(2.0)")
    assert [(e.old, e.new) for e in edits] == [want]
    path.write_text(sourcefix.edited_texts(edits)[str(path)][1])
    edited = _import(path).ViewStatement()
    edited.load_state_dict(model.state_dict())

    class Reference(nn.Module):  # what the original means, out of place
        def __init__(self) -> None:
            super().__init__()
            self.lin = model.lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = torch.ones(4)
            scale[0] = 2.0
            return torch.sigmoid(self.lin(x)) * scale

    want_out, want = _run(Reference(), x)
    got_out, got = _run(edited, x)  # the edited file trains
    torch.testing.assert_close(got_out, want_out)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, msg=name)


def test_a_failure_in_the_planner_is_a_decline_not_a_lost_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.py"
    shutil.copy(MODELS, path)

    def broken(self: Any, rewrite: Rewrite) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(sourcefix._Planner, "spans", broken)
    x = torch.randn(3, 4)
    gm = fxgrad.fix(_import(path).Augmented(), (x,))
    record = gm.meta["fxgrad"]
    assert record.verified and record.source_edits == ()
    assert [d.reason for d in record.source_declined] == [
        "fxgrad failed to work out the source edit (RuntimeError: boom); please report it as an fxgrad bug"] * 2
    gm(x).sum().backward()  # the GraphModule is still the verified fix
