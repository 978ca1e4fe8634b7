"""The HTML picture of a report (``Report.to_html()``, ``fxgrad check --format html``).

The page is parsed, not grepped: it is well-formed XML, so :mod:`xml.etree.ElementTree` reads the whole document,
and the SVG's rows, parameter chips and finding marks are read back from it. Every claim about gradients (which
parameters are drawn red, grey or orange, which in-place op breaks backward) is checked against an eager forward
and backward of the same model (:func:`tests.oracle.eager_truth`).
"""

from __future__ import annotations

import inspect
import os
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import fxgrad
from fxgrad import examples
from fxgrad.capture import SourceLocation
from fxgrad.cli import main
from fxgrad.examples import EXAMPLES, Example
from fxgrad.report import Finding, ParamStatus, Related, Report

from .oracle import INPLACE_ERROR, Truth, eager_truth
from .test_cli import MODELS

REPO = str(Path(__file__).resolve().parent.parent)
SVG = "{http://www.w3.org/2000/svg}"
CHROMIUM = "/usr/bin/chromium"


# --------------------------------------------------------------------------------------------------------------
# Reading the page back
# --------------------------------------------------------------------------------------------------------------


class Page:
    """The parsed page: its rows (one per drawn module), chips (parameters by verdict) and marks (findings)."""

    def __init__(self, doc: str) -> None:
        assert doc.startswith("<!DOCTYPE html>")
        self.doc = doc
        self.root = ET.fromstring(doc)  # the whole document is well-formed XML
        svgs = [s for s in self.root.iter(f"{SVG}svg") if s.get("role") == "img"]
        assert len(svgs) == 1
        self.svg = svgs[0]
        self.rows = [g for g in self.svg.iter(f"{SVG}g") if g.get("class") == "row"]

    def row(self, module: str) -> ET.Element:
        found = [r for r in self.rows if r.get("data-module") == module]
        assert len(found) == 1, f"no row (or several) for module {module!r}"
        return found[0]

    def modules(self) -> list[str]:
        return [r.get("data-module", "") for r in self.rows]

    def counts(self, under: str) -> list[int]:
        """The "× N" of the rows directly under the module ``under`` (1 = drawn on its own)."""
        depth = int(self.row(under).get("data-depth", "0")) + 1
        prefix = f"{under}." if under else ""
        return [int(r.get("data-count", "1")) for r in self.rows
                if r.get("data-module", "").startswith(prefix) and int(r.get("data-depth", "0")) == depth]

    def params(self, status: str) -> set[str]:
        """Every parameter drawn on a chip of this verdict (a collapsed row's chip stands for all its members)."""
        out: set[str] = set()
        for g in self.svg.iter(f"{SVG}g"):
            if g.get("data-status") == status:
                out.update(g.get("data-params", "").split())
        return out

    def marks(self, row: ET.Element | None = None) -> list[ET.Element]:
        where = self.svg if row is None else row
        return [a for a in where.iter(f"{SVG}a") if (a.get("class") or "").startswith("mark ")]

    def by_id(self, ident: str) -> ET.Element:
        found = [e for e in self.root.iter() if e.get("id") == ident]
        assert len(found) == 1, ident
        return found[0]


def _text(el: ET.Element) -> str:
    """The visible text of an SVG element (its <text> elements; not the <title> tooltips)."""
    return " ".join("".join(t.itertext()) for t in el.iter(f"{SVG}text"))


def _all_text(el: ET.Element) -> str:
    return " ".join("".join(el.itertext()).split())


def _line_of(fn: Callable[..., object], text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _check_gradient_colours(page: Page, truth: Truth, report: Report) -> None:
    """The verdict colours are eager's: red = grad None (used), grey = never used, orange = only zeros."""
    assert page.params("no-grad") | page.params("unused") == truth.no_grad_params
    assert page.params("unused") == truth.unused_params
    assert page.params("zero-grad") == truth.zero_grad_params
    drawn = set().union(*(page.params(s) for s in ("ok", "no-grad", "zero-grad", "unused", "frozen")))
    assert drawn == set(report.params) == set(truth.grads)  # every trainable parameter, once


def _check_marks(page: Page, report: Report) -> None:
    """Each finding has a mark on its module's row that names its code and line and links to its table row."""
    for i, f in enumerate(report.sorted_findings(), 1):
        marks = [a for a in page.marks(page.row(f.module)) if a.get("href") == f"#finding-{i}"]
        assert len(marks) == 1, (f.code, f.module)
        assert f.code in _text(marks[0])
        row = page.by_id(f"finding-{i}")
        text = _all_text(row)
        assert f.code in text and f.severity in text
        if f.location is not None:
            assert marks[0].get("data-line") == str(f.location.line)
            assert f"{os.path.basename(f.location.file)}:{f.location.line}" in _text(marks[0])
            assert f"{f.location}" in text and " ".join(f.location.code.split()) in text
            links = {a.get("href") for a in row.iter("a")}
            assert Path(f.location.file).resolve().as_uri() in links


# --------------------------------------------------------------------------------------------------------------
# (a) The bundled examples
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda ex: ex.name)
def test_example_pages_are_well_formed_and_mark_every_finding(ex: Example) -> None:
    model = ex.model()
    inputs = ex.inputs()
    truth = eager_truth(model, inputs)
    report = fxgrad.analyze(model, inputs, **ex.analyze_kwargs(model))
    page = Page(report.to_html())

    assert page.modules() == [name for name, _ in report.modules]  # nothing to collapse in these small models
    _check_marks(page, report)
    assert len(page.marks()) == len(report.findings) + sum(f.code.startswith("FXG00") for f in report.accepted)
    header = _all_text(page.by_id("header"))
    assert report.model in header and f"capture: {report.capture}" in header and f"mode: {report.mode}" in header
    for note in report.notes:
        assert " ".join(note.split()) in header
    if truth.clean_run:
        _check_gradient_colours(page, truth, report)
    else:  # eager raises: the page shows an error-severity mark for it
        assert any(a.get("data-severity") == "error" for a in page.marks())


def test_detach_page_draws_the_cut_and_the_parameters_it_cuts_off() -> None:
    model, inputs = examples.Detach(), examples.get("detach").inputs()
    truth = eager_truth(model, inputs)
    assert truth.clean_run and truth.no_grad_params == {"encoder.weight", "encoder.bias"}
    report = fxgrad.analyze(model, inputs)
    page = Page(report.to_html())

    cuts = [a for a in page.marks(page.row("")) if a.get("class") == "mark mark-cut"]
    assert [a.get("data-code") for a in cuts] == ["FXG001"]
    line = _line_of(examples.Detach.forward, ".detach()")
    if report.by_code("FXG001")[0].location is not None:
        assert cuts[0].get("data-line") == str(line) and f"examples.py:{line}" in _text(cuts[0])
    # the encoder is drawn red, its chips link to the cut, and a bracket joins the cut to the encoder's row
    assert page.params("no-grad") == truth.no_grad_params
    encoder = page.row("encoder")
    assert {a.get("href") for a in encoder.iter(f"{SVG}a")} == {cuts[0].get("href")}
    assert page.params("ok") == {"head.weight", "head.bias"}
    assert len([g for g in page.svg.iter(f"{SVG}g") if g.get("class") == "lane"]) == 1


def test_sigmoid_mul_page_points_at_the_line_that_saved_the_overwritten_tensor() -> None:
    model, inputs = examples.SigmoidMul(), examples.get("sigmoid_mul").inputs()
    truth = eager_truth(model, inputs)
    assert truth.inplace_error  # eager backward raises: sigmoid's saved output was overwritten
    report = fxgrad.analyze(model, inputs)
    page = Page(report.to_html())

    (mark,) = [a for a in page.marks() if a.get("class") == "mark mark-inplace"]
    assert mark.get("data-code") == "FXG102" and mark.get("data-severity") == "error"
    saver = _line_of(examples.SigmoidMul.forward, "torch.sigmoid(")
    finding = report.by_code("FXG102")[0]
    assert [r.role for r in finding.related] == ["saved by"]
    if finding.location is not None:
        assert mark.get("data-line") == str(_line_of(examples.SigmoidMul.forward, "t.mul_(2.0)"))
        assert f"saved by sigmoid:{saver}" in _text(mark)
        row = _all_text(page.by_id(mark.get("href", "")[1:]))
        assert f"examples.py:{saver}" in row and "t = torch.sigmoid(self.encoder(x))" in row
    else:
        assert "saved by sigmoid" in _text(mark)


# --------------------------------------------------------------------------------------------------------------
# (b) Repeated blocks collapse; a block with a finding is drawn on its own
# --------------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, c: int, cut: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut:
            x = x.detach()
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResNetLike(nn.Module):
    def __init__(self, cut_at: int | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.Sequential(*[BasicBlock(4, cut=i == cut_at) for i in range(8)])
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class TransformerBlock(nn.Module):
    def __init__(self, d: int, inplace_bug: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.inplace_bug = inplace_bug

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        m = self.mlp(self.ln2(x))
        if self.inplace_bug:
            m = torch.sigmoid(m)
            m.mul_(2.0)
        return x + m


class GPT(nn.Module):
    def __init__(self, bug_at: int | None = None, n_layer: int = 12, d: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(32, d)
        self.wpe = nn.Embedding(8, d)
        self.h = nn.ModuleList(TransformerBlock(d, i == bug_at) for i in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, 32, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _resnet_inputs() -> tuple[torch.Tensor]:
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _gpt_inputs() -> tuple[torch.Tensor]:
    return (torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0)),)


def test_resnet_blocks_collapse_and_the_cut_block_stands_alone() -> None:
    clean = ResNetLike()
    truth = eager_truth(clean, _resnet_inputs())
    assert truth.clean_run and not truth.no_grad_params
    report = fxgrad.analyze(clean, _resnet_inputs())
    page = Page(report.to_html())
    assert page.counts("blocks") == [8]
    assert len(page.rows) == 1 + 4 + 1 + (1 + 5) + 1  # root, stem and its 3, blocks, one block and its 5, fc
    _check_gradient_colours(page, truth, report)
    assert page.params("ok") == set(truth.grads)  # the collapsed chips stand for all 8 blocks' parameters

    cut = ResNetLike(cut_at=3)
    truth = eager_truth(cut, _resnet_inputs())
    report = fxgrad.analyze(cut, _resnet_inputs())
    page = Page(report.to_html())
    # blocks 0-2 lose their gradient at block 3's detach: one red run, the block with the finding, one green run
    assert page.counts("blocks") == [3, 1, 4]
    assert "blocks.3" in page.modules() and "blocks.1" not in page.modules()
    assert [a.get("data-code") for a in page.marks(page.row("blocks.3"))] == ["FXG001", "FXG201"]
    assert len(page.rows) == 1 + 4 + 1 + 3 * (1 + 5) + 1
    _check_gradient_colours(page, truth, report)
    assert {p.split(".")[1] for p in page.params("no-grad") if p.startswith("blocks.")} == {"0", "1", "2"}
    assert page.row("blocks.0").get("data-count") == "3"


def test_transformer_layers_collapse_and_the_layer_with_an_inplace_bug_stands_alone() -> None:
    clean = GPT()
    truth = eager_truth(clean, _gpt_inputs())
    assert truth.clean_run and not truth.no_grad_params
    report = fxgrad.analyze(clean, _gpt_inputs())
    page = Page(report.to_html())
    assert page.counts("h") == [12]
    block_rows = 1 + 4 + (1 + 3)  # the block; ln1, attn, attn.out_proj, ln2; mlp and its 3
    assert len(page.rows) == 4 + block_rows + 2
    _check_gradient_colours(page, truth, report)

    buggy = GPT(bug_at=5)
    truth = eager_truth(buggy, _gpt_inputs())
    assert truth.inplace_error
    report = fxgrad.analyze(buggy, _gpt_inputs())
    page = Page(report.to_html())
    assert page.counts("h") == [5, 1, 6]
    (mark,) = page.marks(page.row("h.5"))
    assert mark.get("class") == "mark mark-inplace" and mark.get("data-code") == "FXG102"
    saver = _line_of(TransformerBlock.forward, "m = torch.sigmoid(m)")
    assert f"saved by sigmoid:{saver}" in _text(mark)
    assert len(page.rows) == 4 + 3 * block_rows + 2


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, mid * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, mid * 4, 1, stride, bias=False), nn.BatchNorm2d(mid * 4))
                           if downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    """torchvision's ResNet-50 module tree (3, 4, 6, 3 bottlenecks), 1/16 of its width."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, (n, mid) in enumerate(zip((3, 4, 6, 3), (width, 2 * width, 4 * width, 8 * width), strict=True)):
            blocks = [Bottleneck(cin, mid, 1 if i == 0 else 2, downsample=True)]
            cin = mid * 4
            blocks += [Bottleneck(cin, mid) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_resnet50_tree_stays_small() -> None:
    model = ResNet50()
    inputs = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
    truth = eager_truth(model, inputs)
    assert truth.clean_run and not truth.no_grad_params
    report = fxgrad.analyze(model, inputs)
    assert len(report.modules) == 151 and len(report.params) == 161
    doc = report.to_html()
    page = Page(doc)
    for layer, n in zip(("layer1", "layer2", "layer3", "layer4"), (3, 4, 6, 3), strict=True):
        assert page.counts(layer) == [1, n - 1]  # the block with the downsample, then the identical rest
    assert len(page.rows) == 87  # of 151 modules
    assert len(doc.encode()) < 120_000
    _check_gradient_colours(page, truth, report)


# --------------------------------------------------------------------------------------------------------------
# The renderer on its own: collapse rules, escaping, missing data, size
# --------------------------------------------------------------------------------------------------------------


def _report(modules: list[tuple[str, str]], params: dict[str, str], findings: list[Finding] | None = None, *,
            model: str = "M", notes: list[str] | None = None) -> Report:
    return Report(model=model, modules=modules, findings=findings or [], notes=notes or [],
                  params={n: ParamStatus(n, s) for n, s in params.items()})


def test_indexed_siblings_collapse_from_two_named_ones_from_four() -> None:
    indexed = _report([("", "M"), ("0", "Linear"), ("1", "Linear")], {"0.weight": "ok", "1.weight": "ok"})
    assert Page(indexed.to_html()).counts("") == [2]
    named = _report([("", "M"), ("a", "Linear"), ("b", "Linear"), ("c", "Linear")],
                    {f"{n}.weight": "ok" for n in "abc"})
    assert Page(named.to_html()).counts("") == [1, 1, 1]
    many = _report([("", "M")] + [(n, "Linear") for n in "abcd"], {f"{n}.weight": "ok" for n in "abcd"})
    assert Page(many.to_html()).counts("") == [4]
    # a different verdict, class or parameter set breaks a run
    mixed = _report([("", "M")] + [(str(i), "Linear") for i in range(4)] + [("4", "Conv2d")],
                    {"0.weight": "ok", "1.weight": "ok", "2.weight": "no-grad", "3.weight": "ok", "3.bias": "ok",
                     "4.weight": "ok"})
    assert Page(mixed.to_html()).counts("") == [2, 1, 1, 1]


def test_user_strings_are_escaped_and_missing_data_is_drawn_anyway() -> None:
    evil = "<script>alert('x')</script> & \"q\""
    loc = SourceLocation("/tmp/we ird/<net>.py", 7, "forward", f"y = x < 1 & {evil}")
    saver = Related("saved by", "sig<moid>", SourceLocation("<string>", 3, "f", "t = torch.sigmoid(h)"))
    findings = [Finding("FXG102", "error", "n", "t", f"msg {evil}", module="gone.module", location=loc,
                        related=(saver,)),
                Finding("FXG203", "warning", "", "", "unused", module="", params=("w",))]
    report = _report([], {"w": "unused", "odd.p": "mystery-verdict"}, findings, notes=[f"note {evil}"],
                     model=f"Net{evil}")
    doc = report.to_html()
    page = Page(doc)
    assert "<script>" not in doc
    assert evil in _all_text(page.root)  # shown, as text
    assert page.modules() == [""]  # no module tree in the report: the model alone, everything on it
    assert {a.get("data-code") for a in page.marks(page.row(""))} == {"FXG102", "FXG203"}
    assert page.params("mystery-verdict") == {"odd.p"}
    assert Path("/tmp/we ird/<net>.py").as_uri() in {a.get("href") for a in page.root.iter("a")}


def _lines_run_in_fxgrad(render: Callable[[], str]) -> tuple[str, int]:
    """How many lines of fxgrad's own code one call runs: a cost measure that does not depend on machine load.

    Wall time on a shared CI machine varied 3x between runs, so a timed bound either flaked or proved nothing.
    A quadratic loop in Python shows up here as 64x the lines for 8x the modules, on any machine.
    """
    package = str(Path(fxgrad.__file__).parent)
    count = 0

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal count
        if not frame.f_code.co_filename.startswith(package):
            return None
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        doc = render()
    finally:
        sys.settrace(previous)
    return doc, count


def test_rendering_is_linear_in_the_number_of_modules() -> None:
    def wide(n: int) -> Report:
        modules = [("", "M")] + [(f"m{i}", f"C{i}") for i in range(n)] + [(f"m{i}.x", "Linear") for i in range(n)]
        return _report(modules, {f"m{i}.x.weight": "ok" for i in range(n)})

    small_report, big_report = wide(250), wide(2000)
    small, lines_small = _lines_run_in_fxgrad(small_report.to_html)
    big, lines_big = _lines_run_in_fxgrad(big_report.to_html)
    assert len(Page(big).rows) == 4001  # nothing to collapse: every module has a class of its own
    assert len(big) < 9 * len(small)
    assert lines_small > 250  # the tracer saw the renderer's loops
    assert lines_big < 10 * lines_small  # 8x the modules: 8x the work, far from 64x


# --------------------------------------------------------------------------------------------------------------
# (c) The command line
# --------------------------------------------------------------------------------------------------------------

NETS = MODELS  # test_cli's models: Breaks (sigmoid then mul_) and Clean


def test_cli_format_html(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nets.py"
    path.write_text(textwrap.dedent(NETS))
    env = {**os.environ, "PYTHONPATH": REPO, "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fxgrad", "check", f"{path.name}:Breaks", "--input", "3x4",
                             "--format", "html"], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    # while the console script imports torch: the clean model, in-process, exits 0
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["check", f"{path}:Clean", "--input", "3x4", "--format", "html", "--isolated"]) == 0
    clean = Page(capsys.readouterr().out)
    assert not clean.marks() and clean.params("ok") == {"lin.weight", "lin.bias"}

    out, err = proc.communicate(timeout=120)
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    truth = eager_truth(namespace["Breaks"](), (torch.randn(3, 4),))  # type: ignore[operator]
    assert truth.backward_error is not None and INPLACE_ERROR in truth.backward_error
    assert proc.returncode == 1, err  # an error finding
    page = Page(out)
    (mark,) = page.marks()
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "t.mul_(2.0)" in text)
    assert mark.get("data-code") == "FXG102" and mark.get("data-line") == str(line)
    assert f"saved by sigmoid:{line - 1}" in _text(mark)
    assert path.resolve().as_uri() in {a.get("href") for a in page.root.iter("a")}


# --------------------------------------------------------------------------------------------------------------
# (d) A real browser renders it
# --------------------------------------------------------------------------------------------------------------


def _png_pixels(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and the unfiltered scanlines of an 8-bit RGB/RGBA PNG (stdlib only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + prev[i]) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
            elif kind == 4:
                up_left = prev[i - bpp] if i >= bpp else 0
                p = left + prev[i] - up_left
                pa, pb, pc = abs(p - left), abs(p - prev[i]), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else prev[i] if pb <= pc else up_left
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no headless browser: {CHROMIUM} is not installed "
                    "(on Debian: apt-get install chromium); the screenshot check needs a real browser")
def test_headless_chromium_renders_the_page(tmp_path: Path) -> None:
    model, inputs = examples.Detach(), examples.get("detach").inputs()
    assert eager_truth(model, inputs).no_grad_params == {"encoder.weight", "encoder.bias"}
    page = tmp_path / "detach.html"
    page.write_text(fxgrad.analyze(model, inputs).to_html())
    png = tmp_path / "detach.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,900",
                           page.as_uri()], capture_output=True, text=True, timeout=90, check=False)
    assert png.exists() and png.stat().st_size > 0, proc.stderr[-2000:]
    width, height, bpp, rows = _png_pixels(png.read_bytes())
    assert (width, height) == (1200, 900)
    pixels = {row[i:i + 3] for row in rows for i in range(0, len(row), bpp)}
    assert len(pixels) > 16  # not one colour: text, boxes and chips were drawn
    red = bytes.fromhex("c62828")  # the no-grad chips' fill
    assert red in pixels


def test_no_chromium_is_needed_elsewhere() -> None:
    """The page needs no browser, no network and nothing installed: no script, no external reference."""
    doc = fxgrad.analyze(examples.SigmoidMul(), examples.get("sigmoid_mul").inputs()).to_html()
    root = ET.fromstring(doc)
    assert not [e for e in root.iter() if e.tag in ("script", "link", "img", "iframe")]
    refs = [v for e in root.iter() for k, v in e.attrib.items() if k in ("src", "href") and "://" in v]
    assert all(v.startswith("file://") for v in refs)
