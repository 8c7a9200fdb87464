"""The package's layering, checked: see docs/architecture.md."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = ("compassd.tracker.scheduler", "compassd.tracker.fairqueue")
"""The scheduling core: decisions only, importable without Twisted."""


@pytest.mark.parametrize("module", CORE)
def test_core_imports_without_twisted(module: str) -> None:
    """Importing a core module in a fresh interpreter loads no Twisted module at all."""
    check = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'twisted')\n"
        "print(' '.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == [], f"importing {module} loaded {done.stdout.strip()}"
