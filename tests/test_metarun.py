"""The dry-run's meta substrate on its own: its op memo must give what eager gives."""

from __future__ import annotations

import pytest
import torch

from fxgrad.metarun import MetaMode


def test_memo_keys_python_scalars_by_type() -> None:
    """`1`, `1.0` and `True` are equal and hash alike; the ops they fill or add are not."""
    eager = [torch.full((4,), v).dtype for v in (1, 1.0, True)]
    assert eager == [torch.int64, torch.float32, torch.bool]
    with MetaMode():
        meta = [torch.full((4,), v, device="meta").dtype for v in (1, 1.0, True)]
        lists = [torch.ones(2, device="meta").new_full([2], v).dtype for v in (1, 1.0)]
    assert meta == eager
    assert lists == [torch.ones(2).new_full([2], 1).dtype, torch.ones(2).new_full([2], 1.0).dtype]


def test_an_int_tensors_float_add_raises_as_in_eager() -> None:
    with pytest.raises(RuntimeError) as eager:
        torch.zeros(4, dtype=torch.int64).add_(1.0)
    with MetaMode():
        torch.zeros(4, dtype=torch.int64, device="meta").add_(1)  # memoised with an int
        with pytest.raises(RuntimeError) as meta:
            torch.zeros(4, dtype=torch.int64, device="meta").add_(1.0)
    assert eager.value is not None and meta.value is not None  # the meta kernel words it its own way
