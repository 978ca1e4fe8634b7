"""What an op's name alone decides, worked out once per name (:class:`_OpTraits`): the edges of its inputs
(differentiable, the cut it makes, a plain-value result, zero gradient), how its result aliases its first input
(:func:`fxgrad.aliasing.alias_kind`), and what the static tables say it saves for backward.

Reads the op tables (:mod:`fxgrad.ops`, :mod:`fxgrad._saved_table`); writes nothing but its own cache.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.autograd import grad_mode

from .. import ops
from .._saved_table import SAVED
from ..aliasing import VIEW_ATTRS, AliasKind, alias_kind
from .records import Cut

#: (differentiable, cut kind, result is a plain value, zero gradient) of a node's input edges
Edge = tuple[bool, Cut | None, bool, bool]
_METADATA_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "is_leaf", "layout",
                             "names", "grad_fn"})
#: ops whose input edges are fixed by their name: (differentiable, cut kind, result is a plain value, zero grad)
_EDGES: dict[str, Edge] = {
    **{n: (False, "detach", False, False) for n in ops.DETACH},
    "getattr.data": (False, "data", False, False),
    **{n: (False, "leaves", True, False) for n in ops.LEAVES_AUTOGRAD},
    **{n: (False, "rebuild", False, False) for n in ops.REBUILDS},
    **{n: (False, None, True, False) for n in ops.METADATA},
    **{n: (False, "integer", False, False) for n in ops.INTEGER_RESULT},
    **{n: (False, None, False, False) for n in ops.FRESH},
    **{n: (True, None, False, True) for n in ops.ZERO_GRADIENT},
}


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


_DIFFERENTIABLE: Edge = (True, None, False, False)
_INTEGER: Edge = (False, "integer", False, False)
#: what an op saved, in the generated table's format: (argument names, {input: names saved for its gradient})
SavedEntry = tuple[tuple[str, ...], dict[str, tuple[str, ...]]]
#: roles whose in-place writes the rules tell apart from writes into activations
_DATA_ROLES = frozenset({"input", "buffer", "constant", "param"})
#: the horizon of a storage any later write may reach (a writable parameter's)
_ANY_TIME = sys.maxsize
#: call targets that read or change grad mode (the faithful tracer keeps them as nodes)
_GRAD_MODE_TARGETS = frozenset({torch.is_grad_enabled, torch._C._set_grad_enabled, grad_mode._enter_inference_mode,
                                grad_mode._exit_inference_mode})


def _name_edge(name: str) -> Edge | None:
    """The input edges of an op whose name alone decides them; ``None`` where the arguments do (``getitem``,
    ``requires_grad_``, casts)."""
    fixed = _EDGES.get(name)
    if fixed is not None:
        return fixed
    if name == "getitem" or name == "requires_grad_" or name in ops.CASTS:
        return None
    if name.startswith("getattr."):
        attr = name[8:]
        if attr == "indices":
            return _INTEGER
        if attr in ops.DIFFERENTIABLE_FIELDS or attr in VIEW_ATTRS:
            return _DIFFERENTIABLE
        return (False, None, attr in _METADATA_ATTRS, False)
    return _DIFFERENTIABLE




@functools.cache
def _table_entry(name: str, inplace: bool) -> SavedEntry | None:
    """What the op saves, from the static tables (cached: they never change)."""
    entry = ((SAVED.get(name + "_") if inplace else None) or SAVED.get(name) or ops.REFLECTED_SAVED.get(name)
             or ops.COMPOSITE_SAVED.get(name))
    if entry is None and name.endswith("_"):
        entry = SAVED.get(name[:-1])
    return entry


def _possible_saves(name: str, entry: SavedEntry) -> frozenset[str]:
    """Every name the op may save, whichever inputs need grad."""
    tables = [entry[1]]
    override = ops.SCALAR_OVERLOADS.get(name)
    if override is not None:
        tables.append(override[1])
    return frozenset(n for table in tables for names in table.values() for n in names)


def _inplace_phases(name: str) -> tuple[bool, bool]:
    """Whether recording what the in-place form of ``name`` saves can find anything (before the write, after it).

    Before the write only inputs other than ``self`` count (autograd clones ``self``); an op that saves nothing for
    any input records nothing after it either. An op without a table entry is noted after the write as an unknown
    saver. Skipping a phase that cannot find anything skips no state: its reads repeat reads the node already made.
    """
    entry = _table_entry(name, True)
    if entry is None:
        return False, True
    saved = _possible_saves(name, entry)
    return any(n != "self" and not n.startswith("result") for n in saved), bool(saved)


@dataclass(frozen=True)
class _OpTraits:
    """What an op's name alone decides: one record per name, made on first sight (a graph repeats a few names many
    times, and some answers ask the schemas)."""

    #: the input edges (see :func:`_name_edge`); ``None`` where the arguments decide
    edge: Edge | None
    #: how the result of an op that does not write aliases its first argument (see :func:`fxgrad.aliasing.alias_kind`)
    alias: AliasKind | None
    #: ``detach_`` / ``requires_grad_``: a write of autograd metadata, not data
    meta_write: bool
    no_derivative: bool
    #: recording what the in-place form saves can find something, before the write and after it
    saves_before_write: bool
    saves_after_write: bool
    #: what the op (not in place) saves, from the tables, and every name it may save
    entry: SavedEntry | None
    may_save: frozenset[str]
    #: what its in-place form saves
    inplace_entry: SavedEntry | None


_TRAITS: dict[str, _OpTraits] = {}


def _traits(name: str) -> _OpTraits:
    """The traits of ``name`` (callers on a hot path try ``_TRAITS.get(name)`` first: a call costs more)."""
    traits = _TRAITS.get(name)
    if traits is None:
        before, after = _inplace_phases(name)
        entry = _table_entry(name, False)
        traits = _TRAITS[name] = _OpTraits(_name_edge(name), alias_kind(name), name in ops.META_WRITES,
                                           name in ops.NO_DERIVATIVE or name in ops.NO_DERIVATIVE_FOR, before,
                                           after, entry,
                                           _possible_saves(name, entry) if entry is not None else frozenset(),
                                           _table_entry(name, True))
    return traits

