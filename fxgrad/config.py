"""Project-wide settings from ``[tool.fxgrad]`` in ``pyproject.toml``, read the way ruff reads ``[tool.ruff]``.

The nearest ``pyproject.toml`` that has a ``[tool.fxgrad]`` table, walking up from the current directory, is
the project's configuration; a ``pyproject.toml`` without the table is passed over. Command-line flags win
over it, flag by flag::

    [tool.fxgrad]
    select = ["FXG0", "FXG1", "FXG2"]   # codes or prefixes; default: every code
    ignore = ["FXG101"]                 # codes or prefixes silenced everywhere
    fail-on = "warning"                 # error (default) | warning | never
    capture = "auto"                    # auto (default) | trace | run
    loss = "train.py:loss_fn"           # the training step: loss_fn(output, *targets)
    targets = "train.py:make_targets"   # the targets passed to the loss
    optimizer = "train.py:make_optimizer"  # make_optimizer(model) -> the optimizer

Unknown keys and wrongly typed values are errors: a misspelt setting must not be silently ignored.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads the table only where tomli is installed
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

__all__ = ["CAPTURES", "FAIL_ON", "Config", "find_config", "load_config"]

FAIL_ON = ("error", "warning", "never")
_KEYS = ("select", "ignore", "fail-on", "capture", "loss", "targets", "optimizer")
#: how a model becomes a graph (fxgrad.capturing.CAPTURES; repeated here so reading settings imports no torch)
CAPTURES = ("auto", "trace", "run")


@dataclass(frozen=True)
class Config:
    """Settings of one ``[tool.fxgrad]`` table (``path`` is None when there is none)."""

    path: Path | None = None
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    fail_on: str | None = None
    capture: str | None = None
    loss: str | None = None
    targets: str | None = None
    optimizer: str | None = None


def find_config(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` with a ``[tool.fxgrad]`` table, from ``start`` (cwd) upwards."""
    if tomllib is None:  # pragma: no cover
        return None
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file() and "fxgrad" in _read(candidate).get("tool", {}):
            return candidate
    return None


def _shown(path: Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith(".." + os.sep + "..") else rel


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{_shown(path)} is not valid TOML ({e}). Hint: fix the file, or run fxgrad with --isolated "
                         "to ignore it.") from e


def _codes(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"[tool.fxgrad] {key} in {_shown(path)} must be a list of codes. Hint: e.g. {key} = "
                         "[\"FXG101\", \"FXG2\"].")
    return tuple(v.strip().upper() for v in value if v.strip())


def load_config(path: Path) -> Config:
    """Read and check the ``[tool.fxgrad]`` table of ``path``."""
    table = _read(path).get("tool", {}).get("fxgrad", {})
    if not isinstance(table, dict):
        raise InputError(f"[tool.fxgrad] in {_shown(path)} must be a table. Hint: write it as a [tool.fxgrad] section.")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise InputError(f"Unknown setting {', '.join(repr(k) for k in unknown)} in [tool.fxgrad] of {_shown(path)}. "
                         f"Hint: fxgrad reads {', '.join(_KEYS)}.")
    fail_on = table.get("fail-on")
    if fail_on is not None and fail_on not in FAIL_ON:
        raise InputError(f"[tool.fxgrad] fail-on in {_shown(path)} is {fail_on!r}. Hint: use one of "
                         f"{', '.join(FAIL_ON)}.")
    capture = table.get("capture")
    if capture is not None and capture not in CAPTURES:
        raise InputError(f"[tool.fxgrad] capture in {_shown(path)} is {capture!r}. Hint: use one of "
                         f"{', '.join(CAPTURES)}.")
    step = {key: table.get(key) for key in ("loss", "targets", "optimizer")}
    for key, value in step.items():
        if value is not None and (not isinstance(value, str) or ":" not in value):
            raise InputError(f"[tool.fxgrad] {key} in {_shown(path)} must name a function as \"file.py:NAME\" or "
                             f"\"package.module:NAME\", not {value!r}. Hint: e.g. {key} = \"train.py:{key}_fn\".")
    return Config(path=path, select=_codes(path, "select", table.get("select", [])),
                  ignore=_codes(path, "ignore", table.get("ignore", [])), fail_on=fail_on, capture=capture, **step)
