"""Make `tests.support` importable however pytest was started (the package itself is
installed editable, but the tests directory is not a package on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
