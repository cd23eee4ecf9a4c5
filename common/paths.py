"""Where the repository is: REPO_ROOT, computed here once for every tool, test and benchmark that runs from a checkout."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # common/ sits at the top of the checkout
