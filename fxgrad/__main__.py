"""``python -m fxgrad``: the same as the ``fxgrad`` console script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
