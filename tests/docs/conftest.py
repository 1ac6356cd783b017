"""The documentation tests reuse the end-to-end peers (the rotel collector)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "e2e") not in sys.path:
    sys.path.insert(0, str(TESTS / "e2e"))
