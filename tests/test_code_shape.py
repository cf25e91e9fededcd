"""The shape rules of the code (CONTRIBUTING.md, "Tests, lint and style"), read with `ast`: no
function or lambda in drdet/ or tools/ longer than 60 lines, and no tool or test that edits
sys.path (tools import the installed drdet package; tests load tools through tool_loader)."""

import ast
import os
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 60
# Functions over the limit in code that another change is reworking, by "path:qualified name".
# An entry that is no longer over the limit fails the test too, so that the list only shrinks.
PENDING: dict[str, str] = {}


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines) of every def and lambda of `source` longer than
    `limit` lines, decorators not counted; a lambda is named "<lambda>" under its scope."""
    found = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{scope}.{child.name}" if scope else child.name
            elif isinstance(child, ast.Lambda):
                name = f"{scope}.<lambda>" if scope else "<lambda>"
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    found.append((name, child.lineno, length))
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def sys_path_edits(source: str) -> list[int]:
    """Lines of `source` that change sys.path: a call of one of its methods (insert, append,
    extend...), an assignment to it or to a slice of it, site.addsitedir."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func.value)
            if target == "sys.path" or ast.unparse(node.func) == "site.addsitedir":
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                base = target.value if isinstance(target, ast.Subscript) else target
                if ast.unparse(base) == "sys.path":
                    lines.append(node.lineno)
    return sorted(lines)


def _python_files(*folders: str) -> Iterator[str]:
    for folder in folders:
        for parent, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(parent, name), ROOT)


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def test_no_function_is_longer_than_60_lines():
    found = {
        f"{rel}:{name}": f"line {line}, {length} lines"
        for rel in _python_files("drdet", "tools")
        for name, line, length in long_functions(_read(rel))
    }
    assert {key: where for key, where in found.items() if key not in PENDING} == {}
    assert set(PENDING) - set(found) == set(), f"no longer over {MAX_LINES}: remove from PENDING"


def test_no_tool_or_test_edits_sys_path():
    edits = {rel: sys_path_edits(_read(rel)) for rel in _python_files("tools", "tests")}
    assert {rel: lines for rel, lines in edits.items() if lines} == {}
    noqa = [rel for rel in _python_files("tools") if "noqa: E402" in _read(rel)]
    assert noqa == []  # imports at the top: nothing has to run before them


def _function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{k} = {k}\n" for k in range(body_lines - 3))
    return f"{indent}def {name}(a):\n{indent}    '''doc'''\n{body}{indent}    return a\n"


def test_the_length_check_finds_long_defs_methods_and_lambdas():
    source = (
        _function("fits", 60)
        + _function("too_long", 61)
        + "class Box:\n"
        + "    @staticmethod\n"  # decorators do not count
        + _function("method", 62, indent="    ")
        + "f = (lambda a:\n"
        + "".join("     a +\n" for _ in range(60))
        + "     1)\n"
    )
    assert long_functions(source) == [
        ("too_long", 61, 61),
        ("Box.method", 124, 62),
        ("<lambda>", 186, 62),
    ]
    assert long_functions(_function("outer", 61)) == [("outer", 1, 61)]
    assert long_functions(_function("outer", 61), limit=61) == []


@pytest.mark.parametrize(
    "line",
    [
        "sys.path.insert(0, os.path.dirname(__file__))",
        "sys.path.append('tools')",
        "sys.path.extend(['a', 'b'])",
        "sys.path = ['tools'] + sys.path",
        "sys.path[0:0] = ['tools']",
        "sys.path += ['tools']",
        "site.addsitedir('tools')",
    ],
)
def test_the_sys_path_check_finds_each_kind_of_edit(line):
    source = f"import os\nimport site\nimport sys\n\n\ndef main():\n    {line}\n"
    assert sys_path_edits(source) == [7]


def test_the_sys_path_check_passes_reading_it():
    assert sys_path_edits("import sys\nprint(sys.path[0], len(sys.path))\nx = sys.argv\n") == []


def test_the_lint_gate_reads_drdet_data_datasets():
    """pyproject.toml excludes the top-level datasets/ folder only: ruff's file list holds the
    package's drdet/data/datasets/ (a bare "datasets" pattern used to drop it too)."""
    import subprocess
    import sys

    files = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {os.path.relpath(line.strip(), ROOT) for line in files.splitlines() if line.strip()}
    package = set(_python_files(os.path.join("drdet", "data", "datasets")))
    assert package and package <= listed
    assert not any(path.startswith("datasets" + os.sep) for path in listed)
