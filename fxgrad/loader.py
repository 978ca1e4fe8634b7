"""What the command line names: ``TARGET`` (the model) and the example inputs.

``TARGET`` is ``path/to/file.py:NAME`` or ``package.module:NAME``, as ``uvicorn`` and ``gunicorn`` spell an
app. ``NAME`` (dotted names reach into classes and objects) is an ``nn.Module`` instance, an ``nn.Module``
subclass with a no-argument constructor, or a factory function that returns a module. Example inputs come
from ``--input SHAPE[:DTYPE]`` specs or from an inputs factory (``--inputs path.py:make_inputs``) for models
that take integers, dicts or several tensors.

Every mistake becomes an :class:`~fxgrad.errors.InputError` with one plain sentence, the user's line where one
is involved, and a ``Hint:``; the original exception is chained. An ``--input`` is a shape
(:meth:`InputSpec.spec`, a :class:`~fxgrad.inputs.Spec`): the command line gives fxgrad shapes, and real values
only where a run needs them (:func:`fxgrad.inputs.random_values`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import linecache
import os
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .inputs import Spec, random_values

__all__ = ["InputSpec", "build_inputs", "check_arity", "load_inputs", "load_model", "load_step", "parse_input_spec",
           "resolve_target"]

#: dtype spellings accepted after the colon of ``--input``; ``torch.<name>`` aliases included.
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float": torch.float32, "f32": torch.float32,
    "float64": torch.float64, "double": torch.float64, "f64": torch.float64,
    "float16": torch.float16, "half": torch.float16, "f16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "int64": torch.int64, "long": torch.int64,
    "int32": torch.int32, "int": torch.int32,
    "int16": torch.int16, "short": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = "float32, float64, float16, bfloat16, int64, int32, int16, int8, uint8, bool"
_SHAPE = re.compile(r"^\d+(?:[x×]\d+)*$")
_INPUT_SEED = 0
_FXGRAD_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


# --------------------------------------------------------------------------------------------------------------
# Input specs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One ``--input``: a shape and a dtype (float32 unless given)."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    def __str__(self) -> str:
        return "x".join(map(str, self.shape)) + ":" + str(self.dtype).removeprefix("torch.")

    def spec(self) -> Spec:
        """The shape-only input: it costs no memory, whatever its size."""
        return Spec(self.shape, self.dtype)


def parse_input_spec(text: str) -> InputSpec:
    """``8x3x32x32`` or ``8x3x32x32:float32`` or ``2x16:int64``."""
    shape_text, _, dtype_text = text.strip().partition(":")
    shape_text = shape_text.strip().lower()
    if not _SHAPE.match(shape_text):
        raise InputError(f"--input {text!r} is not a shape. Hint: write the sizes separated by x, with an optional "
                         "dtype, e.g. --input 8x3x32x32 or --input 2x16:int64.")
    shape = tuple(int(s) for s in re.split(r"[x×]", shape_text))
    dtype_name = dtype_text.strip().lower().removeprefix("torch.") or "float32"
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise InputError(f"--input {text!r} names an unknown dtype {dtype_text.strip()!r}. "
                         f"Hint: use one of {_DTYPE_NAMES}.")
    return InputSpec(shape, dtype)


def build_inputs(specs: Sequence[InputSpec]) -> tuple[torch.Tensor, ...]:
    """One real tensor per spec, from a fixed seed and a private generator: reproducible, global RNG untouched.
    Normal floats, and 0/1 integers (valid token ids and indices for any table)."""
    values: tuple[torch.Tensor, ...] = random_values(tuple(s.spec() for s in specs), seed=_INPUT_SEED)
    return values


# --------------------------------------------------------------------------------------------------------------
# TARGET resolution
# --------------------------------------------------------------------------------------------------------------


def _split(target: str, what: str) -> tuple[str, str]:
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise InputError(f"{what} {target!r} does not name an object. Hint: write path/to/file.py:NAME or "
                         "package.module:NAME, e.g. models.py:Net.")
    return where, name


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where or not all(
        part.isidentifier() for part in where.split("."))


def _user_line(exc: BaseException, file: str | None = None) -> str:
    """`` at file:line: `code` `` for the innermost frame of the user's code in ``exc``'s traceback."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        text = (exc.text or "").strip()
        return f" at {_display(exc.filename)}:{exc.lineno}" + (f": `{text}`" if text else "")
    def users(filename: str) -> bool:
        if file is not None:
            return os.path.abspath(filename) == os.path.abspath(file)
        return not filename.startswith(("<", _FXGRAD_DIR)) and "importlib" not in filename

    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if users(frame.filename):
            found = frame
    if found is None or found.lineno is None:
        return ""
    return f" at {_display(found.filename)}:{found.lineno}" + (f": `{found.line}`" if found.line else "")


def _display(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _import_file(path_text: str) -> ModuleType:
    path = Path(path_text)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"{path_text} {what}. Hint: TARGET is path/to/file.py:NAME (relative to the current "
                         "directory) or package.module:NAME.")
    path = path.resolve()
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_fxgrad_target_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path_text} cannot be imported as Python. Hint: TARGET must name a .py file.")
    module = importlib.util.module_from_spec(spec)
    # like `python path/to/file.py`: the file's directory comes first, so its sibling imports work
    parent = str(path.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    sys.modules[name] = module
    linecache.checkcache(str(path))  # the file may have changed since a previous load in this process
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise InputError(f"Importing {path_text} failed{_user_line(e, str(path))} ({type(e).__name__}: "
                         f"{_first_line(e)}). Hint: the file must import cleanly, e.g. `python {path_text}` "
                         "should run without errors.") from e
    return module


def _import_module(module_name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: packages in the current directory are importable
    linecache.checkcache()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise InputError(f"No module named {e.name!r} (from TARGET {module_name}). Hint: run fxgrad from the "
                             "directory that holds the package, set PYTHONPATH, or give a file path "
                             "(path/to/file.py:NAME).") from e
        raise InputError(f"Importing {module_name} failed{_user_line(e)} (ModuleNotFoundError: {e}). "
                         "Hint: install the missing package in the environment that runs fxgrad.") from e
    except Exception as e:
        raise InputError(f"Importing {module_name} failed{_user_line(e)} ({type(e).__name__}: {_first_line(e)}). "
                         f"Hint: the module must import cleanly, e.g. `python -c 'import {module_name}'`.") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _candidates(module: ModuleType) -> list[str]:
    """Names in ``module`` that TARGET could point at: module classes, module instances, functions."""
    out = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        defined_here = getattr(value, "__module__", None) == module.__name__
        if isinstance(value, nn.Module) or (defined_here and (
                (isinstance(value, type) and issubclass(value, nn.Module)) or inspect.isfunction(value))):
            out.append(key)
    return out


def resolve_target(target: str, *, what: str = "TARGET") -> tuple[Any, str]:
    """The object that ``target`` names, and its display name (``NAME`` as written)."""
    where, name = _split(target, what)
    module = _import_file(where) if _is_path(where) else _import_module(where)
    obj: Any = module
    for part in name.split("."):
        if not part.isidentifier() or not hasattr(obj, part):
            shown = where if obj is module else f"{where}:{name.rsplit('.', 1)[0]}"
            cands = _candidates(module)
            hint = f"names defined there: {', '.join(cands[:8])}" if cands else "is the name spelled right?"
            raise InputError(f"{shown} has no {part!r}. Hint: {hint}.")
        obj = getattr(obj, part)
    return obj, name


def _location(obj: Any) -> str:
    try:
        file = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
    except (TypeError, OSError):
        return ""
    return f" (defined at {_display(file)}:{line})" if file else ""


def load_model(target: str) -> nn.Module:
    """The ``nn.Module`` that ``target`` names: the instance, ``Class()``, or ``factory()``."""
    obj, name = resolve_target(target)
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return _call(obj, name, factory_hint=True)
    if callable(obj) and not isinstance(obj, type):
        model = _call(obj, name, factory_hint=False)
        if not isinstance(model, nn.Module):
            raise InputError(f"{name}() returned {type(model).__name__}, not an nn.Module{_location(obj)}. "
                             "Hint: TARGET's factory must return the model.")
        return model
    raise InputError(f"{name} is {_kind(obj)}, not an nn.Module{_location(obj)}. Hint: TARGET must name an "
                     "nn.Module subclass, a module instance, or a function that returns a module.")


def _kind(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__name__}"
    if isinstance(obj, ModuleType):
        return f"the Python module {obj.__name__}"
    return f"a value of type {type(obj).__name__}"


def _call(fn: Any, name: str, *, factory_hint: bool) -> Any:
    try:
        sig = inspect.signature(fn)
        sig.bind()
    except TypeError as e:
        needs = "its constructor needs arguments" if factory_hint else "it needs arguments"
        raise InputError(f"{name} cannot be called without arguments: {needs} ({e}){_location(fn)}. Hint: point "
                         "TARGET at a function that builds it, e.g. def make_model(): return "
                         f"{name}(...).") from e
    except ValueError:
        pass  # no signature (builtins): just call it
    try:
        return fn()
    except Exception as e:
        raise InputError(f"{name}() failed{_user_line(e)} ({type(e).__name__}: {_first_line(e)}). Hint: it must "
                         "build the model without arguments.") from e


def load_inputs(target: str) -> tuple[Any, ...]:
    """The positional arguments that an inputs factory returns.

    A tuple is the positional arguments; anything else (a tensor, a dict, a list) is the one argument (the CLI
    then reads a dict of ``forward``'s parameter names as keywords). A name that is not callable is taken as the
    value itself.
    """
    obj, name = resolve_target(target, what="--inputs")
    value = _call(obj, name, factory_hint=False) if callable(obj) else obj
    return value if isinstance(value, tuple) else (value,)


def load_step(loss: str | None, targets: str | None, optimizer: str | None, model: nn.Module
              ) -> dict[str, Any]:
    """``--loss FILE.py:FUNC`` (the loss function itself, called as ``FUNC(output, *targets)``), ``--targets
    FILE.py:FUNC`` (like ``--inputs``) and ``--optimizer FILE.py:FUNC`` (called as ``FUNC(model)``) as the keyword
    arguments of :func:`fxgrad.analyze`."""
    out: dict[str, Any] = {}
    if loss is not None:
        fn, _ = resolve_target(loss, what="--loss")
        if not callable(fn):
            raise InputError(f"--loss {loss} is a value of type {type(fn).__name__}, not a function. Hint: name a "
                             "function of the model's output, e.g. def loss(out, y): return F.cross_entropy(out, y).")
        out["loss"] = fn
    if targets is not None:
        if loss is None:
            raise InputError("--targets needs --loss. Hint: --loss names the function that takes the output and the "
                             "targets.")
        out["targets"] = load_inputs(targets)
    if optimizer is not None:
        make, _ = resolve_target(optimizer, what="--optimizer")
        try:
            out["optimizer"] = make(model) if callable(make) else make
        except Exception as e:
            raise InputError(f"--optimizer {optimizer} raised {type(e).__name__}: {e}. Hint: it is called with the "
                             "model, e.g. def make_optimizer(model): return torch.optim.AdamW(model.parameters())."
                             ) from e
    return out


def check_arity(model: nn.Module, inputs: Sequence[Any]) -> None:
    """Fail early, with the signature, when the inputs cannot even be passed to ``forward``."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*inputs)
    except TypeError as e:
        name = type(model).__name__
        raise InputError(f"{name}.forward{sig} cannot take {len(inputs)} example input(s): {e}. Hint: give one "
                         "--input per tensor argument, or --inputs path.py:make_inputs for other "
                         "arguments.") from e
