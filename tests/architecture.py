"""The shape of `orchestrator/`, measured from its source: the import graph (cycles, upward imports, imports hidden
in functions), module and function sizes, and blocks of lines repeated between places.

`python tests/architecture.py` prints the table; tests/test_architecture.py holds the code to the targets.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "orchestrator"
# Units from the bottom up: a module imports only from units below its own, or from its own unit. Each command
# (`python -m orchestrator.<name>`) is a unit of its own on the top layer, so no command imports another.
LAYERS = {"console": 0, "store": 1, "spec": 2, "runtime": 3, "stage1": 4, "results": 4, "stage2": 5}
COMMAND_LAYER = 6
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
REPEAT_LINES = 6  # a block this long standing in two places is a repeat


@dataclass
class Module:
    name: str  # orchestrator.store.tables
    path: Path
    lines: int
    imports: set[str] = field(default_factory=set)  # project modules imported anywhere in the file
    hidden: list[tuple[int, str]] = field(default_factory=list)  # (line, module) imported inside a function

    @property
    def unit(self) -> str:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else "__init__"

    @property
    def layer(self) -> int:
        return LAYERS.get(self.unit, COMMAND_LAYER)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported(node: ast.AST, known: set[str], package: str) -> list[str]:
    """The project modules an import statement loads (`from a.b import c` is a.b.c when that is a module);
    `package` resolves relative imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    out = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    return out or ([base] if base in known else [])


def modules(package: str = PACKAGE) -> dict[str, Module]:
    paths = sorted((ROOT / package).rglob("*.py"))
    found = {module_name(p): Module(module_name(p), p, len(p.read_text().splitlines())) for p in paths}
    known = set(found)
    for mod in found.values():
        tree = ast.parse(mod.path.read_text())
        package = mod.name if mod.path.name == "__init__.py" else mod.name.rsplit(".", 1)[0]
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    mod.hidden += [(node.lineno, m) for m in _imported(node, known, package)]
        for node in ast.walk(tree):
            mod.imports |= {m for m in _imported(node, known, package) if m != mod.name}
    return found


def cycles(graph: dict[str, Module]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v].imports:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward(graph: dict[str, Module]) -> list[str]:
    """Imports of a module of another unit on the same or a higher layer (the package itself, the Python API's
    front door, may name any)."""
    out = []
    for mod in graph.values():
        if mod.name == PACKAGE:
            continue
        for target in sorted(mod.imports):
            other = graph[target]
            if other.unit == "__init__" or other.unit == mod.unit:
                continue
            if other.layer >= mod.layer:
                out.append(f"{mod.name} (layer {mod.layer}) imports {target} (layer {other.layer})")
    return out


def long_functions(folders=("orchestrator", "pdiff", "benchmarks"), limit: int = MAX_FUNCTION_LINES):
    """(lines, 'file:line name') of every function longer than `limit` lines, longest first."""
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        out.append((length, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


_SKIP = re.compile(r"^(#|import |from \S+ import |[\])}]+[,:]?$|\"\"\"$|else:$|try:$|return$|pass$|continue$|break$)")


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that carry code: no blanks, comments, imports or lone punctuation."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        text = " ".join(line.split())
        if text and not _SKIP.match(text):
            out.append((i, text))
    return out


def repeated_blocks(package: str = PACKAGE, size: int = REPEAT_LINES) -> list[str]:
    """Places where `size` or more consecutive code lines stand again, identical, elsewhere in the package:
    one entry per repeated run (its first window), naming every place it stands."""
    windows: dict[str, list[tuple[Path, int]]] = defaultdict(list)
    files = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        lines = files[path] = _code_lines(path)
        for k in range(len(lines) - size + 1):
            digest = hashlib.sha1("\n".join(t for _, t in lines[k:k + size]).encode()).hexdigest()
            windows[digest].append((path, k))
    repeated = {place for places in windows.values() if len(places) > 1 for place in places}
    out = []
    for places in windows.values():
        starts = [(p, k) for p, k in places if (p, k - 1) not in repeated]
        if len(places) > 1 and starts == places:
            out.append(" ~ ".join(f"{p.relative_to(ROOT)}:{files[p][k][0]}" for p, k in places))
    return sorted(out)


def table() -> str:
    graph = modules()
    rows = [f"modules: {len(graph)}  lines: {sum(m.lines for m in graph.values())}",
            f"largest modules: " + ", ".join(f"{m.name} {m.lines}" for m in
                                             sorted(graph.values(), key=lambda m: -m.lines)[:5]),
            f"modules over {MAX_MODULE_LINES} lines: {sum(m.lines > MAX_MODULE_LINES for m in graph.values())}",
            f"import cycles: {len(cycles(graph))} {cycles(graph)}",
            f"upward imports: {len(upward(graph))}", *[f"  {u}" for u in upward(graph)],
            f"imports inside functions: {sum(len(m.hidden) for m in graph.values())}"]
    longest = long_functions(limit=0)[:5]
    rows.append("longest functions: " + ", ".join(f"{where} {n}" for n, where in longest))
    rows.append(f"functions over {MAX_FUNCTION_LINES} lines: {len(long_functions())}")
    blocks = repeated_blocks()
    rows.append(f"repeated blocks of {REPEAT_LINES}+ code lines: {len(blocks)}")
    rows += [f"  {b}" for b in blocks]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(print(table()))
