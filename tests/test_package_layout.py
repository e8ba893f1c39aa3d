"""The package's shape: imports form no circle (lazy ones inside functions included), the
package root holds entry points only, the layers import in the documented direction, no
source file is over 600 lines, and the tree speaks about the software, not its history."""
from __future__ import annotations

import ast
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "audiochat_jax")


def _modules() -> dict[str, str]:
    out = {}
    for path in glob.glob(os.path.join(PKG, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(path: str, name: str, modules) -> set[str]:
    """Every audiochat_jax module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative
                base = ".".join(name.split(".")[:-node.level] + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def test_imports_form_no_circle():
    modules = _modules()
    graph = {m: _imports(p, m, modules) - {"audiochat_jax"} for m, p in modules.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_package_root_holds_entry_points_only():
    for path in glob.glob(os.path.join(PKG, "*.py")):
        if os.path.basename(path) == "__init__.py":
            continue
        assert 'if __name__ == "__main__":' in open(path).read(), f"{path}: a library module at the package root"


@pytest.mark.parametrize("layer,forbidden", [
    ("models", ("train", "data", "eval", "inference", "serving", "workflow")),
    ("audio", ("models", "train", "eval")),
    ("text", ("models", "train", "eval", "audio")),
    ("train", ("eval", "inference", "serving", "workflow")),
])
def test_layers_import_in_the_documented_direction(layer, forbidden):
    modules = _modules()
    for m, path in modules.items():
        if m.startswith(f"audiochat_jax.{layer}."):
            bad = [i for i in _imports(path, m, modules) if i.split(".")[1] in forbidden]
            assert not bad, f"{m} imports {bad}"


def _tree_files(*exts):
    for ext in exts:
        for path in glob.glob(os.path.join(REPO, "**", f"*.{ext}"), recursive=True):
            rel = os.path.relpath(path, REPO)
            if not rel.startswith((".venv", "work", "build")) and "egg-info" not in rel:
                yield path


def test_no_source_file_is_over_600_lines():
    long = {os.path.relpath(p, REPO): n for p in _tree_files("py") if (n := sum(1 for _ in open(p))) > 600}
    assert not long, long


HISTORY = re.compile(r"\bstops? [0-9]+|dev tree|\.\./shared|\bissue #?[0-9]+|\bsession [0-9]+", re.I)


def test_the_tree_describes_the_software_not_its_history():
    hits = [f"{os.path.relpath(p, REPO)}:{i}: {line.strip()[:80]}" for p in _tree_files("py", "md", "sh")
            for i, line in enumerate(open(p, errors="replace"), 1)
            if HISTORY.search(line) and os.path.basename(p) != "test_package_layout.py"]
    assert not hits, "\n".join(hits[:20])
