"""The package's shape: models import nothing else of fastbark, and no module imports itself back."""

import ast
from pathlib import Path

import fastbark

PACKAGE = Path(fastbark.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The fastbark modules `path` imports, anywhere in it (function-level imports too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fastbark")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("fastbark"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {t for t in imports(path) if t in modules and t != name} for name, path in modules.items()}


def test_models_import_nothing_else_of_fastbark():
    for name, targets in graph().items():
        if name.startswith("fastbark.models"):
            assert all(t.startswith("fastbark.models") for t in targets), (name, targets)


def test_no_import_cycles():
    """Depth-first over the import graph. Importing one's own ancestor package is left out: Python runs a
    package's __init__ before any of its modules anyway."""
    edges = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph().items()}
    done, path = set(), []

    def visit(node: str) -> None:
        path.append(node)
        for nxt in sorted(edges[node]):
            assert nxt not in path, f"import cycle: {' -> '.join(path[path.index(nxt):] + [nxt])}"
            if nxt not in done:
                visit(nxt)
        path.pop()
        done.add(node)

    for name in sorted(edges):
        if name not in done:
            visit(name)


def test_every_file_is_small():
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path
