"""docs/design.md describes the contract as it is: every module of contract/ and every file of an artifact."""

from __future__ import annotations

import re

from common.paths import REPO_ROOT

DESIGN = (REPO_ROOT / "docs" / "design.md").read_text()


def test_the_design_page_names_every_contract_module():
    modules = sorted(p.name for p in (REPO_ROOT / "contract").glob("*.py") if p.name != "__init__.py")
    assert len(modules) >= 7
    missing = [m for m in modules if f"`contract/{m}`" not in DESIGN]
    assert not missing, f"docs/design.md does not describe {missing}"


def test_the_design_page_names_every_file_of_an_artifact():
    """The files of the committed artifact, each a row of the artifact table."""
    files = sorted(p.name for p in (REPO_ROOT / "artifacts" / "default").iterdir())
    assert "manifest.json" in files and "golden.npy" in files
    rows = set(re.findall(r"^\| `([^`]+)` \|", DESIGN, re.M))
    missing = [f for f in files if f not in rows]
    assert not missing, f"docs/design.md's artifact table has no row for {missing}"
