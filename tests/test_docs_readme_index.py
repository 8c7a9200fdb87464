"""README.md points a newcomer at every page of ``docs/`` and says what the install needs.

Fast checks of README.md's text; ``tests/test_docs_readme.py`` runs its commands.
"""

from __future__ import annotations

import re

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def test_the_documentation_list_names_every_page_in_docs_and_no_other() -> None:
    listed = set(re.findall(r"`docs/([\w.-]+\.md)`", section("Documentation")))
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert pages - listed == set(), "docs/ pages the README's list leaves out"
    assert listed - pages == set(), "pages the README's list names that docs/ lacks"


def test_start_here_says_the_install_builds_a_c_extension_and_what_happens_without_one(
) -> None:
    text = " ".join(section("Start here").split())
    assert "compassd._aipu" in text and "C compiler" in text and "python3-dev" in text
    assert "Without them the install still succeeds" in text
    assert "--backend aipu" in text and "compass status" in text
