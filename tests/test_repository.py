"""The repository stands alone and stays readable: nothing cites a file outside it, and the
package keeps files under 400 lines and functions under 60."""

import ast
import subprocess

from tests.conftest import ROOT

MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_nothing_cites_the_design_notes_outside_the_repository():
    this = "tests/test_repository.py"
    hits = [
        name
        for name in _tracked()
        if name != this
        and (ROOT / name).is_file()
        and "DESIGN.md" in (ROOT / name).read_text(errors="replace")
    ]
    assert not hits, hits


def test_package_files_and_functions_stay_small():
    too_long = []
    for path in sorted((ROOT / "hpc_bliss").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, too_long
