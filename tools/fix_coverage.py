"""How often ``fxgrad.fix`` repairs a program whose forward or backward raises, and why it declines the rest.

Two populations, both judged by eager PyTorch (a real forward and backward on a copy):

* ``forum``: the corpus cases drawn from forum threads (``tests/corpus_forum.py``);
* ``random``: programs from the generator of ``tests/fixgen.py`` (in-place ops, views, ``.detach()``/``.data``
  aliases, leaf writes), drawn with a seeded ``random.Random``.

A program counts when eager forward or backward raises. It is *repaired* when ``fxgrad.fix(model, inputs)``
returns (its own verification passed) and the fixed module's forward and backward run. Every decline is listed with
its reason (the ``VerificationError`` or the ops the record left). Run::

    PYTHONPATH=$PWD python tools/fix_coverage.py --random 1000 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import copy
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fxgrad.errors import FxgradError
from fxgrad.fixing import fix
from tests import corpus, fixgen
from tests.oracle import eager_truth, tensor_leaves


def _fails(model: nn.Module, inputs: tuple[Any, ...]) -> str | None:
    truth = eager_truth(model, inputs)
    return truth.forward_error or truth.backward_error


def _runs(gm: nn.Module, inputs: tuple[Any, ...]) -> str | None:
    m = copy.deepcopy(gm)
    ins = tuple(a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                for a in inputs)
    try:
        out = [t for t in tensor_leaves(m(*ins)) if t.requires_grad]
        if out:
            torch.autograd.backward(out, [torch.ones_like(t) for t in out])
    except RuntimeError as e:
        return str(e).splitlines()[0]
    return None


def judge(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[bool, str]:
    """``(repaired, why not)`` for a program whose eager run raises."""
    try:
        gm = fix(model, inputs)
    except FxgradError as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:110]}"
        try:
            left = sorted({lf.code for lf in fix(model, inputs, verify=False).meta["fxgrad"].left if lf.code})
        except FxgradError:
            left = []
        return False, why + (f" [left: {', '.join(left)}]" if left else "")
    error = _runs(gm, inputs)
    if error is not None:
        return False, f"fixed module raises: {error[:160]}"
    return True, ""


def forum() -> tuple[int, int, list[tuple[str, str]]]:
    failing = repaired = 0
    declines = []
    for name, c in corpus.CASES.items():
        if c.factory.__module__ != "tests.corpus_forum":
            continue
        model, inputs = corpus.build(c), corpus.build_inputs(c)
        if _fails(model, inputs) is None:
            continue
        failing += 1
        ok, why = judge(model, inputs)
        repaired += ok
        if not ok:
            declines.append((name, why))
    return failing, repaired, declines


def random_programs(n: int, seed: int) -> tuple[int, int, list[tuple[str, str]]]:
    rng = random.Random(seed)
    failing = repaired = drawn = 0
    declines = []
    while failing < n:
        drawn += 1
        case = fixgen.draw_case(lambda a, b: rng.randint(a, b))
        model, x = fixgen.build(case)
        if _fails(model, (x,)) is None:
            continue
        failing += 1
        ok, why = judge(model, (x,))
        repaired += ok
        if not ok:
            declines.append((fixgen.describe(case), why))
    return failing, repaired, declines


def _report(title: str, failing: int, repaired: int, declines: list[tuple[str, str]]) -> None:
    share = 100.0 * repaired / failing if failing else 100.0
    print(f"{title}: {repaired} of {failing} failing programs repaired ({share:.1f} %)")
    reasons = collections.Counter(why for _, why in declines)
    for why, count in reasons.most_common():
        example = next(name for name, w in declines if w == why)
        print(f"  {count} x {why}\n      e.g. {example}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=1000, help="failing random programs to judge (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-forum", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if not args.no_forum:
        _report("forum corpus", *forum())
    if args.random:
        _report(f"random programs (seed {args.seed})", *random_programs(args.random, args.seed))


if __name__ == "__main__":
    main()
