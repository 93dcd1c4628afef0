"""The benchmarks package keeps its shape, and every committed result can be made again.

- No file under benchmarks/ or scripts/ edits sys.path; only benchmarks/plot.py imports
  matplotlib; no benchmark imports from tests/ or a private name of sglang_objectcache.
- Every runnable benchmark module has `parser()` and `main()`.
- Every benchmarks/results/*.json with a `command` names a benchmark module that exists,
  and that module's parser accepts the recorded arguments (nothing is run). A result whose
  script is gone says so in `retired` (the commit that has it).
- Every result's `plot` names a kind that benchmarks.plot can draw.
"""

from __future__ import annotations

import ast
import importlib
import json
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every import in the file; name is "" for `import module`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out += [(node.module or "", a.name) for a in node.names]
    return out


def test_no_file_under_benchmarks_or_scripts_edits_sys_path():
    assert [rel(p) for p in SOURCES if "sys.path" in p.read_text()] == []


def test_only_benchmarks_plot_imports_matplotlib():
    users = [rel(p) for p in SOURCES if any(m.split(".")[0] == "matplotlib" for m, _ in imports(p))]
    assert users == ["benchmarks/plot.py"]


def test_no_benchmark_imports_tests_or_a_private_name_of_the_runtime_package():
    bad = []
    for p in SOURCES:
        for module, name in imports(p):
            parts = module.split(".")
            private = parts[0] == "sglang_objectcache" and (
                any(x.startswith("_") for x in parts[1:]) or name.startswith("_"))
            if parts[0] in ("tests", "support", "e2e_support") or private:
                bad.append(f"{rel(p)}: {module} {name}".strip())
    assert bad == []


def runnable_modules() -> list[Path]:
    return [p for p in sorted((ROOT / "benchmarks").glob("*.py")) if 'if __name__ == "__main__"' in p.read_text()]


@pytest.mark.parametrize("path", runnable_modules(), ids=lambda p: p.stem)
def test_every_runnable_benchmark_module_has_parser_and_main(path):
    tree = ast.parse(path.read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"parser", "main"} <= defined


def recorded(path: Path) -> dict:
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def module_and_args(command: str) -> tuple[str, list[str]]:
    """`[nice -n N] <python> -m benchmarks.<name> args...` -> ("benchmarks.<name>", args)."""
    words = shlex.split(command)
    if "-m" not in words:
        raise AssertionError(f"not `python -m benchmarks.<name> ...`: {command!r}")
    i = words.index("-m")
    return words[i + 1], words[i + 2:]


@pytest.mark.parametrize("path", [p for p in RESULTS if recorded(p).get("command")], ids=lambda p: p.stem)
def test_every_recorded_command_names_a_benchmark_whose_parser_accepts_its_arguments(path):
    result = recorded(path)
    if result.get("retired"):  # says which commit has the script, and what measures it now
        return
    module, args = module_and_args(result["command"])
    assert module.startswith("benchmarks."), result["command"]
    parser = importlib.import_module(module).parser()
    try:
        parser.parse_args(args)
    except SystemExit as e:  # argparse reports the bad argument on stderr
        raise AssertionError(f"{module} rejects the arguments recorded in {path.name}: {args}") from e


@pytest.mark.parametrize("path", [p for p in RESULTS if "plot" in recorded(p)], ids=lambda p: p.stem)
def test_every_plot_kind_in_the_results_can_be_drawn(path):
    from benchmarks import plot

    kind = recorded(path)["plot"]["kind"]
    if kind not in (*plot.LINE_KINDS, "bars", "panels"):
        assert callable(getattr(importlib.import_module(f"benchmarks.{kind}"), "draw", None)), kind
