"""The package's import rules (docs/development.md), checked on the source tree.

Stages import only earlier stages: a module may import its own stage folder and any stage of a lower layer,
never a later one, so that, say, a network can be read without knowing how it is trained. Only the command
line imports mmhvae modules inside functions (to keep `mmhvae --help` fast); elsewhere an import inside a
function hides a dependency, which is how import cycles used to hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mmhvae"

# Layer of each stage; a module imports its own stage and lower layers only.
LAYERS = {
    "mmhvae": 0, "mmhvae.errors": 0, "mmhvae.modalities": 0, "mmhvae.methods": 0, "mmhvae.allocator": 0,
    "mmhvae.io": 1,
    "mmhvae.model": 2, "mmhvae.preprocessing": 2,
    "mmhvae.phantom": 3, "mmhvae.config": 3,
    "mmhvae.model_file": 4,
    "mmhvae.training": 5, "mmhvae.inference": 5,
    "mmhvae.evaluation": 6,
    "mmhvae.performance": 7, "mmhvae.viewer": 7,
    "mmhvae.experiments": 8,
    "mmhvae.cli": 9,
}
# Stricter than the layers: the networks are built from plain values.
ONLY = {"mmhvae.model": ("mmhvae.model", "mmhvae.errors", "mmhvae.modalities", "mmhvae.methods")}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    """The longest key of LAYERS that `module` is, or lies in."""
    matches = [s for s in LAYERS if module == s or module.startswith(s + ".")]
    if not matches:
        raise AssertionError(f"{module} belongs to no stage of the layout; add it to LAYERS")
    return max(matches, key=len)


def mmhvae_imports(tree: ast.AST) -> list[tuple[ast.ImportFrom | ast.Import, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmhvae":
            found += [(node, node.module)]
        elif isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.split(".")[0] == "mmhvae"]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_its_own_stage_and_earlier_ones(path):
    here = stage_of(module_name(path))
    tree = ast.parse(path.read_text())
    for node, imported in mmhvae_imports(tree):
        there = stage_of(imported)
        allowed = there == here or LAYERS[there] < LAYERS[here] or LAYERS[there] == LAYERS[here] == 0
        if here in ONLY:
            allowed = any(imported == s or imported.startswith(s + ".") for s in ONLY[here])
        assert allowed, f"{path.name}:{node.lineno}: {here} (layer {LAYERS[here]}) imports {imported} " \
                        f"(layer {LAYERS[there]})"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_command_line_imports_mmhvae_inside_functions(path):
    if stage_of(module_name(path)) == "mmhvae.cli":
        return
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    inner = [node.lineno for node, _ in mmhvae_imports(tree) if id(node) not in top_level]
    assert not inner, f"{path.name}: mmhvae imported inside a function at lines {inner}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_short(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {text.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: {', '.join(long)}"


def test_the_rules_can_fail(tmp_path):
    # The checks above are only worth their green if a violation turns them red.
    tree = ast.parse("def f():\n    from mmhvae.training.trainer import train\n")
    (node, imported), = mmhvae_imports(tree)
    assert stage_of(imported) == "mmhvae.training" and LAYERS["mmhvae.training"] > LAYERS["mmhvae.model"]
    assert id(node) not in {id(n) for n in tree.body}
