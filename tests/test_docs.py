"""The generated docs are what their scripts write now, and the docs' relative links resolve.

docs/results.md and the README's targets table come from benchmarks/results/*.json
(scripts/results_doc.py); docs/configuration.md from the config dataclasses and the
environment reads in the code (scripts/config_doc.py). A change to either source without
rerunning the script fails here, with the command to run.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _script(name: str):
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"objectcache_docs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_docs_results_md_is_what_results_doc_writes_from_the_json_files():
    doc = _script("results_doc")
    doc.classify()
    assert doc.OUT.read_text() == doc.results_page(), \
        "docs/results.md is out of date: run .venv/bin/python scripts/results_doc.py"


def test_the_readme_targets_table_is_what_results_doc_writes():
    doc = _script("results_doc")
    readme = doc.README.read_text()
    assert readme == doc.readme_with_table(readme), \
        "README.md's targets table is out of date: run .venv/bin/python scripts/results_doc.py"


def test_docs_configuration_md_is_what_config_doc_writes_from_config_py():
    doc = _script("config_doc")
    assert doc.OUT.read_text() == doc.render(), \
        "docs/configuration.md is out of date: run .venv/bin/python scripts/config_doc.py"


def test_the_readme_is_a_landing_page_of_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(page):
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"
