"""The reliability tier reuses the end-to-end peers and the kernel tests' program loaders."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS / "e2e", TESTS / "kernel"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
