"""The layout rules of DESIGN.md that a reader can check mechanically: coremltools' private APIs
only in `milcompress/_coremltools.py`, and `config.py` (which `ops/` imports) importing nothing
of coremltools itself."""

import ast
from pathlib import Path

import milcompress

PACKAGE = Path(milcompress.__file__).parent
PRIVATE_MODULE = PACKAGE / "_coremltools.py"


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PRIVATE_MODULE)


def _private_uses(path: Path):
    """Private coremltools names a module reaches for: `from coremltools..._x import ...`,
    `from coremltools... import _x`, and `_x` attributes or getattr strings on anything."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("coremltools"):
            if any(part.startswith("_") for part in node.module.split(".")) or any(a.name.startswith("_") for a in node.names):
                found.append(f"line {node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("coremltools") and "._" in a.name]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not _ours(node):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value) and not name.value.startswith("_milcompress"):
                found.append(f"line {node.lineno}: getattr(..., {name.value!r})")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _ours(node: ast.Attribute) -> bool:
    """`self._x`, `cls._x`, our own module's `_x`, and attributes we set (`_milcompress_...`)."""
    base = node.value
    return (isinstance(base, ast.Name) and base.id in ("self", "cls", "ct_private", "private", "_coremltools")) or node.attr.startswith("_milcompress")


def test_private_coremltools_apis_are_reached_only_through_one_module():
    offenders = {str(p.relative_to(PACKAGE)): uses for p in _modules() if (uses := _private_uses(p))}
    assert offenders == {}


def test_config_imports_nothing_of_coremltools():
    tree = ast.parse((PACKAGE / "config.py").read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("coremltools")]
