"""Real models from transformers, torchvision and timm, built from small configs with random weights.

Each verdict is checked against a real eager forward and backward in the same test (:func:`oracle.eager_truth`),
and each library model also carries two injected bugs in user code around it: a ``sigmoid`` then ``mul_`` (backward
raises) and a ``.detach()`` on the backbone (its parameters get no gradient), which must be reported at the user's
line. These libraries need torch 2.14 with torchvision 0.29 (torchvision does not import beside torch 2.13+cpu),
so ``.ci/run`` runs this module in a second environment; where a library is missing its tests are skipped, and
say so.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxgrad

from .oracle import INPLACE_ERROR, eager_truth
from .test_rules import mismatches

HERE = str(Path(__file__).resolve())


def _hidden(out: Any) -> torch.Tensor:
    """The main tensor of a library model's output (``last_hidden_state``, ``logits``, a feature map)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("last_hidden_state", "logits"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, dict):
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    return out[0]


class SigmoidMulHead(nn.Module):
    """User code on top of a library backbone: the in-place bug."""

    def __init__(self, backbone: nn.Module, width: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(width, 4)

    def forward(self, *args: Any) -> torch.Tensor:
        gate = torch.sigmoid(self.head(_hidden(self.backbone(*args))))
        gate.mul_(2.0)  # BUG: overwrites sigmoid's saved output
        return gate


class DetachedBackbone(nn.Module):
    """User code on top of a library backbone: the cut."""

    def __init__(self, backbone: nn.Module, width: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(width, 4)

    def forward(self, *args: Any) -> torch.Tensor:
        features = _hidden(self.backbone(*args)).detach()  # BUG: cuts the backbone
        return self.head(features)


def _check(model: nn.Module, inputs: tuple[Any, ...], *, capture: str | None = None) -> fxgrad.Report:
    """fxgrad's verdicts equal eager's; the model is untouched."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    truth = eager_truth(model, inputs)
    report = fxgrad.analyze(model, inputs)
    if capture is not None:
        assert report.capture == capture, report.notes
    problems = mismatches(report, truth, None, decidable=True)
    assert not problems, "\n".join(problems) + f"\n{report}"
    assert report.ok == (truth.clean_run and not truth.no_grad_params - truth.unused_params)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    return report


def _check_bugs(backbone: Callable[[], nn.Module], width: int, inputs: tuple[Any, ...]) -> None:
    """Both injected bugs are found at the user's line, and eager confirms each."""
    broken = SigmoidMulHead(backbone(), width)
    assert INPLACE_ERROR in (eager_truth(broken, inputs).backward_error or "")
    report = fxgrad.analyze(broken, inputs)
    (finding,) = report.by_code("FXG102")
    assert finding.location is not None and finding.location.file == HERE and "# BUG" in finding.location.code

    cut = DetachedBackbone(backbone(), width)
    truth = eager_truth(cut, inputs)
    lost = {f"backbone.{n}" for n, p in cut.backbone.named_parameters() if p.requires_grad}
    assert truth.clean_run and lost <= truth.no_grad_params
    report = fxgrad.analyze(cut, inputs)
    assert {n for n, p in report.params.items() if p.status == "no-grad"} == set(truth.no_grad_params)
    (finding,) = report.by_code("FXG001")
    assert finding.location is not None and finding.location.file == HERE and "# BUG" in finding.location.code
    assert report.by_code("FXG201")


# ----------------------------------------------------------------------------------------------------------------
# transformers (4.57 has an fx tracer that fails on these; 5.x has none)
# ----------------------------------------------------------------------------------------------------------------


def _transformers() -> Any:
    return pytest.importorskip("transformers", reason="transformers is not installed (.ci/run installs it in the "
                                                      "real-model stage)")


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build().train()

    return make


def _ids() -> torch.Tensor:
    return torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))


def _gpt2() -> nn.Module:
    t = _transformers()
    return t.GPT2LMHeadModel(t.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=32,
                                          bos_token_id=0, eos_token_id=0, use_cache=False))


def _llama(checkpointing: bool = False) -> nn.Module:
    t = _transformers()
    model = t.LlamaModel(t.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=96, use_cache=False,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0))
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _vit() -> nn.Module:
    t = _transformers()
    return t.ViTModel(t.ViTConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                  image_size=32, patch_size=8))


def _t5() -> nn.Module:
    t = _transformers()
    return t.T5Model(t.T5Config(num_layers=2, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=96,
                                use_cache=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


TRANSFORMERS: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[Any, ...]], int]] = {
    "gpt2": (_gpt2, lambda: (_ids(),), 96),
    "llama": (_llama, lambda: (_ids(),), 32),
    "llama-gradient-checkpointing": (lambda: _llama(checkpointing=True), lambda: (_ids(),), 32),
    "vit": (_vit, lambda: (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),), 32),
    "t5": (_t5, lambda: (_ids(), None, _ids()), 32),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformers_model_verdicts_equal_eager(name: str) -> None:
    build, inputs, _ = TRANSFORMERS[name]
    report = _check(_seeded(build)(), inputs(), capture="run")
    assert report.ok and report.findings == [], report  # correct code reports nothing by default


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformers_model_injected_bugs_are_found_at_the_users_line(name: str) -> None:
    build, inputs, width = TRANSFORMERS[name]
    _check_bugs(_seeded(build), width, inputs())


# ----------------------------------------------------------------------------------------------------------------
# torchvision: detection in train mode with targets; DenseNet with activation checkpointing
# ----------------------------------------------------------------------------------------------------------------


def _torchvision() -> Any:
    return pytest.importorskip("torchvision", reason="torchvision is not installed (it needs torch 2.14.1 + "
                                                     "torchvision 0.29.1: .ci/run's real-model stage)")


def _detection_inputs() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 128, generator=g), torch.rand(3, 112, 128, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 30.0, 90.0, 100.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([2])}]
    return images, targets


def test_faster_rcnn_in_train_mode_with_targets_equals_eager() -> None:
    tv = _torchvision()
    torch.manual_seed(0)
    model = tv.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128).train()
    report = _check(model, _detection_inputs(), capture="run")
    assert any("branches these inputs took" in n for n in report.notes)


def test_retinanet_in_train_mode_reports_nothing() -> None:
    """Correct detection code: `batch_images` fills a fresh buffer through views (no alias warning), the losses
    reach every trainable parameter."""
    tv = _torchvision()
    torch.manual_seed(0)
    model = tv.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=96).train()
    images, targets = _detection_inputs()
    report = _check(model, ([i[:, :96, :96] for i in images], targets), capture="run")
    assert report.findings == [] and report.ok, report


class DetectorWithBugs(nn.Module):
    """A user's detector: torchvision's model plus a gated auxiliary loss, with the bug asked for."""

    def __init__(self, bug: str) -> None:
        super().__init__()
        tv = _torchvision()
        self.detector = tv.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
            weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128)
        self.neck = nn.Linear(256, 256)
        self.aux = nn.Linear(256, 1)
        self.bug = bug

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        losses = self.detector(images, targets)
        feature = self.neck(self.detector.backbone(torch.stack([i[:, :96, :96] for i in images]))["0"].mean((2, 3)))
        if self.bug == "detach":
            feature = feature.detach()  # BUG: cuts the neck (and the backbone) from the auxiliary loss
        gate = torch.sigmoid(self.aux(feature))
        if self.bug == "inplace":
            gate.mul_(2.0)  # BUG: overwrites sigmoid's saved output
        return {**losses, "aux": gate.sum()}


@pytest.mark.parametrize("bug", ["inplace", "detach"])
def test_faster_rcnn_injected_bugs_are_found_at_the_users_line(bug: str) -> None:
    torch.manual_seed(0)
    model, inputs = DetectorWithBugs(bug).train(), _detection_inputs()
    truth = eager_truth(model, inputs)
    report = fxgrad.analyze(model, inputs)
    assert report.capture == "run"
    code = "FXG102" if bug == "inplace" else "FXG001"
    (finding,) = report.by_code(code)
    assert finding.location is not None and finding.location.file == HERE and "# BUG" in finding.location.code
    if bug == "inplace":
        assert INPLACE_ERROR in (truth.backward_error or "")
    else:  # the neck loses its gradient; the backbone still learns from the detection losses
        assert truth.clean_run and truth.no_grad_params == {"neck.weight", "neck.bias"}
        (lost,) = report.by_code("FXG201")
        assert set(lost.params) == {"neck.weight", "neck.bias"} and not report.ok
        assert not mismatches(report, truth, None, decidable=True)


def test_densenet_memory_efficient_equals_eager() -> None:
    """`densenet121(memory_efficient=True)` checkpoints every bottleneck: no cut, no false `.data` alarm."""
    tv = _torchvision()
    torch.manual_seed(0)
    model = tv.models.densenet121(weights=None, memory_efficient=True, num_classes=10).train()
    inputs = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)
    report = _check(model, inputs, capture="run")
    assert report.ok and report.findings == [], report


def test_densenet_injected_bugs_are_found_at_the_users_line() -> None:
    tv = _torchvision()
    inputs = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)
    _check_bugs(_seeded(lambda: tv.models.densenet121(weights=None, memory_efficient=True, num_classes=10)), 10,
                inputs)


TORCHVISION_CLASSIFIERS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "densenet121")


@pytest.mark.parametrize("name", TORCHVISION_CLASSIFIERS)
def test_healthy_torchvision_classifiers_report_nothing_by_default(name: str) -> None:
    """Correct code reports nothing (their legal `inplace=True` ReLUs and `+=` are FXG101, off by default), and the
    injected sigmoid-then-mul_ is still found."""
    tv = _torchvision()
    build = _seeded(lambda: getattr(tv.models, name)(weights=None, num_classes=10))
    inputs = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)
    model = build()
    truth = eager_truth(model, inputs)
    assert truth.clean_run and not truth.no_grad_params
    report = fxgrad.analyze(model, inputs)
    assert report.findings == [] and report.ok, report
    # every parameter gets a gradient; fxgrad does not claim more: in MobileNetV2 a few BatchNorm biases get an
    # exactly zero gradient in train mode, because the next BatchNorm subtracts the batch mean of every constant
    # shift -- a zero that fxgrad's op-level zero-gradient rule (round, floor, sign) does not know
    assert {n for n, p in report.params.items() if p.status != "ok"} == set()
    broken = SigmoidMulHead(build(), 10)
    assert INPLACE_ERROR in (eager_truth(broken, inputs).backward_error or "")
    assert [f.code for f in fxgrad.analyze(broken, inputs).findings] == ["FXG102"]


_TV_USER = """
import torch
from torch import nn
from torchvision.models import resnet18


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = resnet18(weights=None, num_classes=16)
        self.squash = nn.Tanh()
        self.act = nn.ReLU(inplace=True)  # after tanh: backward raises
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.act(self.squash(self.backbone(x))))
"""


def test_source_fix_edits_the_users_file_and_declines_torchvision(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`fxgrad fix --write` on a user's model around a torchvision backbone: the user's `nn.ReLU(inplace=True)` is
    edited where it is built and the file then trains with the verified fix's gradients; a bug inside torchvision's
    own code is declined with torchvision's line, and no torchvision file changes."""
    tv = _torchvision()
    import importlib.util
    import sys

    from fxgrad.cli import main

    path = tmp_path / "net.py"
    path.write_text(_TV_USER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))

    def load() -> Any:
        spec = importlib.util.spec_from_file_location(f"_tv_user_{len(sys.modules)}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    torch.manual_seed(0)
    model = load().Classifier()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert INPLACE_ERROR in (eager_truth(model, (x,)).backward_error or "")
    gm = fxgrad.fix(model, (x,))
    assert main(["fix", "net.py:Classifier", "--input", "2x3x32x32", "--write"]) == 0
    assert "        self.act = nn.ReLU()  # after tanh: backward raises\n" in path.read_text()
    edited = load().Classifier()
    edited.load_state_dict(model.state_dict())
    cot = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    for m in (gm, edited):
        for p in m.parameters():
            p.grad = None
    want_out, got_out = gm(x), edited(x)
    want_out.backward(cot)
    got_out.backward(cot)  # the edited file trains
    torch.testing.assert_close(got_out, want_out)
    want = dict(gm.named_parameters())
    for name, p in edited.named_parameters():
        torch.testing.assert_close(p.grad, want[name].grad, msg=name)

    # a bug inside torchvision: tanh before the block's in-place ReLU and before `out += identity`
    block = tv.models.resnet18(weights=None, num_classes=4)
    first = block.layer1[0]
    first.bn1 = nn.Sequential(first.bn1, nn.Tanh())
    first.bn2 = nn.Sequential(first.bn2, nn.Tanh())
    assert INPLACE_ERROR in (eager_truth(block, (x,)).backward_error or "")
    record = fxgrad.fix(block, (x,)).meta["fxgrad"]
    assert record.verified and record.rewrites and record.source_edits == ()
    resnet = inspect.getsourcefile(tv.models.resnet)
    assert resnet is not None
    lines = Path(resnet).read_text().splitlines()
    declined = {(d.location.file, d.location.line) for d in record.source_declined if d.location is not None}
    assert (resnet, lines.index("        self.relu = nn.ReLU(inplace=True)") + 1) in declined
    assert (resnet, lines.index("        out += identity") + 1) in declined
    assert all("is in torchvision, which fxgrad never edits" in d.reason for d in record.source_declined)
    # modules that torchvision's own classes build (Conv2dNormActivation's activation) are library code too
    mnv3 = tv.models.mobilenet_v3_small(weights=None, num_classes=4)
    record = fxgrad.fix(mnv3, (x,), only="all").meta["fxgrad"]
    assert record.verified and len(record.source_declined) == len(record.rewrites) > 0
    assert record.source_edits == ()
    assert all("is in torchvision, which fxgrad never edits" in d.reason for d in record.source_declined)
    assert any("built by Conv2dNormActivation" in d.reason for d in record.source_declined)


# ----------------------------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------------------------


def _timm() -> Any:
    return pytest.importorskip("timm", reason="timm is not installed (.ci/run's real-model stage installs it)")


#: timm zero-initialises each residual block's last BatchNorm (``zero_init_last``): the block's other parameters
#: then get an exactly zero gradient on the first step -- a fact of these values, not of the program
TIMM = {
    "resnet18": dict(num_classes=10, zero_init_last=False),
    "vit_tiny_patch16_224": dict(num_classes=10, img_size=32, patch_size=8),
    "mobilenetv3_small_050": dict(num_classes=10),
}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_model_verdicts_equal_eager(name: str) -> None:
    timm = _timm()
    model = _seeded(lambda: timm.create_model(name, pretrained=False, **TIMM[name]))()
    report = _check(model, (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),))
    assert report.findings == [] and report.ok, report  # correct code reports nothing by default


def test_timm_injected_bugs_are_found_at_the_users_line() -> None:
    timm = _timm()
    _check_bugs(_seeded(lambda: timm.create_model("resnet18", pretrained=False, **TIMM["resnet18"])), 10,
                (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),))


def test_transformers_tracer_gives_the_same_answer_every_time() -> None:
    """T5 through HFTracer used to fail on the first trace of a process and succeed on the second. Why:
    transformers' meta override for `torch.arange` makes `arange(0, n)` float32 (eager: int64), so T5's metadata
    breaks and `if hidden_states.dtype == torch.float16:` cannot be decided; and HFTracer does not undo its
    patches when tracing raises, so its wrapper stayed as `torch.arange`, which the override no longer matched.
    fxgrad now puts back whatever the tracer patched: the outcome is the same every time, and `auto` runs it."""
    transformers = _transformers()
    fx = pytest.importorskip("transformers.utils.fx", reason="this transformers has no fx tracer (5.x)")
    model = _seeded(_t5)()
    names = ("input_ids", "attention_mask", "decoder_input_ids")
    concrete = {p: None for p in inspect.signature(model.forward).parameters if p not in names}
    arange, cache_classes = torch.arange, transformers.DynamicCache
    outcomes = []
    for _ in range(3):
        try:
            fxgrad.trace(model, concrete, tracer=fx.HFTracer)
            outcomes.append("traced")
        except fxgrad.TraceError as e:
            outcomes.append(str(e))
        assert torch.arange is arange and transformers.DynamicCache is cache_classes
    assert len(set(outcomes)) == 1, outcomes
    ids = _ids()
    assert fxgrad.analyze(model, (ids, None, ids)).capture == "run"


def test_transformers_models_take_keyword_inputs() -> None:
    """Hugging Face models are called with keywords: a dict of forward's parameter names is that call."""
    ids = _ids()
    for build, inputs in ((_gpt2, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}),
                          (_t5, {"input_ids": ids, "decoder_input_ids": ids}),
                          # Llama's mask runs a custom Function under vmap: nothing of it may enter the graph
                          (_llama, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})):
        model = _seeded(build)()
        positional = fxgrad.inputs.bind_keywords(model, inputs)
        assert isinstance(positional, tuple) and positional[0] is ids
        truth = eager_truth(model, positional)
        report = fxgrad.analyze(model, inputs)
        assert report.capture == "run" and not mismatches(report, truth, None, decidable=True)
        gm = fxgrad.fix(model, inputs, only="all")
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # train mode: the same dropout masks
            torch.manual_seed(3)
            fixed = _hidden(gm(*positional))
            torch.manual_seed(3)
            torch.testing.assert_close(fixed, _hidden(model(**inputs)))


def test_fix_on_a_decoder_that_returns_its_cache() -> None:
    """GPT2 with its default `use_cache=True` returns a DynamicCache beside the logits: the run capture keeps the
    tensors (the cache is no gradient path), and `fix` is verified against the captured program."""
    t = _transformers()
    model = _seeded(lambda: t.GPT2LMHeadModel(t.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96,
                                                           n_positions=32, bos_token_id=0, eos_token_id=0)))()
    inputs = {"input_ids": _ids(), "labels": _ids()}
    assert model(**inputs).past_key_values is not None  # eager returns the cache
    truth = eager_truth(model, fxgrad.inputs.bind_keywords(model, inputs))
    report = fxgrad.analyze(model, inputs)
    assert report.capture == "run" and report.findings == [] and not mismatches(report, truth, None, decidable=True)
    record = fxgrad.fix(model, inputs, only="all").meta["fxgrad"]
    assert record.capture == "run" and record.verified
