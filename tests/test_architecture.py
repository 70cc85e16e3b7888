"""The shape of the package (docs/architecture.md), read from the source with `ast`, nothing imported:

- no import cycle among normlab's modules, counting imports at module level AND inside functions (a deferred import
  hides a cycle from Python, not from the design);
- the training stack defers none of its package imports;
- no function over MAX_LINES lines unless the allow-list below says why.

The allow-lists name what is known and not yet fixed (issue 16); an entry that is no longer needed fails the test too,
so the lists only shrink.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "normlab"

# Import cycles known today, outside the training stack: {modules in the cycle: why it is still there}.
KNOWN_CYCLES: dict[frozenset[str], str] = {
    frozenset({"normlab.fast", "normlab.fast.ops"}):
        "issue 16 item 4: the kernels moved to the backend module fast/cpu.py (which imports nothing of normlab), but "
        "the custom ops still call the front's forward/backward/fits by module attribute, where tests/test_fast.py's "
        "spies patch them; to go when those spies patch the backend instead",
}

# Modules that import all of their package dependencies at module level (issue 16: 28 function-level imports hid
# cycles; these no longer have any).
NO_DEFERRED_IMPORTS = ("normlab.train", "normlab.loop", "normlab.hooks", "normlab.config", "normlab.distributed",
                       "normlab.checkpoint", "normlab.records", "normlab.util", "normlab.experiments.training",
                       "normlab.experiments.runner")

MAX_LINES = 60
# Functions longer than MAX_LINES ("path::qualified name", path relative to normlab/): why each is allowed.
LONG_FUNCTIONS: dict[str, str] = {
    "report/writer.py::_markdown": "issue 16 (lead, report/ being rewritten): one section of the report per block; "
                                   "to split by section",
    "report/writer.py::_html": "issue 16 (lead, report/ being rewritten): the HTML twin of _markdown; to split by "
                               "section",
}


# ------------------------------------------------------------------------------------------------------- the graph
def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root (a package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _package_of(name: str, path: Path) -> list[str]:
    parts = name.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def imports(name: str, path: Path, known: dict[str, Path], deferred_only: bool = False) -> set[str]:
    """The modules of `known` that module `name` imports anywhere in its file (deferred_only: inside functions).

    `from X import a` counts as an import of X.a when that is a module, else of X (the package's __init__)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = ast.walk(tree)
    if deferred_only:
        nodes = (n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f))
    pkg = _package_of(name, path)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [[a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[:len(pkg) - node.level + 1] if node.level else [])
            mod = ".".join(p for p in (base, node.module or "") if p)
            targets = [[f"{mod}.{a.name}", mod] for a in node.names]
        else:
            continue
        for candidates in targets:
            hit = next((c for c in candidates if c in known), None)
            if hit is not None and hit != name:
                found.add(hit)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.add(frozenset(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


# ------------------------------------------------------------------------------------------------------- the tests
def test_the_cycle_finder_sees_deferred_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n    return g\n")   # deferred: still an edge
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import pkg.a\nfrom ..d import x\n")
    (pkg / "d.py").write_text("x = 1\n")
    g = graph(pkg)
    assert g["pkg.b"] == {"pkg.sub.c"} and g["pkg.sub.c"] == {"pkg.a", "pkg.d"}
    assert cycles(g) == {frozenset({"pkg.a", "pkg.b", "pkg.sub.c"})}
    (pkg / "b.py").write_text("x = 2\n")
    assert cycles(graph(pkg)) == set()


def test_no_import_cycles_in_normlab():
    found = cycles(graph(PACKAGE))
    new = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert not new, f"import cycle(s) {new}: arrows go down the stack only (docs/architecture.md)"
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"{gone} no longer form a cycle: remove them from KNOWN_CYCLES"


def test_training_stack_defers_no_package_import():
    known = modules(PACKAGE)
    for name in NO_DEFERRED_IMPORTS:
        assert name in known, name
        deferred = imports(name, known[name], known, deferred_only=True)
        assert not deferred, f"{name} imports {sorted(deferred)} inside a function; import at module level"


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def test_no_function_over_60_lines_without_a_reason():
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, n in _functions(ast.parse(path.read_text())):
            if n > MAX_LINES:
                long[f"{path.relative_to(PACKAGE).as_posix()}::{name}"] = n
    new = {k: n for k, n in long.items() if k not in LONG_FUNCTIONS}
    assert not new, f"functions over {MAX_LINES} lines (split them, or add them to LONG_FUNCTIONS with a reason): {new}"
    assert all(reason.strip() for reason in LONG_FUNCTIONS.values())
    gone = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not gone, f"{gone} are {MAX_LINES} lines or shorter now: remove them from LONG_FUNCTIONS"
