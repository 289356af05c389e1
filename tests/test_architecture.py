"""The shape of `orchestrator/` (docs/architecture.md): layered packages with no import cycle and no upward import,
project imports at the top of modules, short modules and functions, no repeated blocks."""

import textwrap

import architecture as arch


def test_no_import_cycle():
    assert arch.cycles(arch.modules()) == []


def test_no_upward_import():
    assert arch.upward(arch.modules()) == []


def test_project_imports_at_the_top():
    hidden = [f"{m.name}:{line} imports {target}" for m in arch.modules().values() for line, target in m.hidden]
    assert hidden == []


def test_modules_and_functions_are_short():
    long_modules = [f"{m.name} {m.lines}" for m in arch.modules().values() if m.lines > arch.MAX_MODULE_LINES]
    assert long_modules == []
    assert arch.long_functions() == []


def test_no_repeated_blocks():
    assert arch.repeated_blocks() == []


# The checker itself, on code made to break each rule.

def _package(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / "orchestrator" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_checker_sees_cycles_upward_and_hidden_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(arch, "ROOT", _package(tmp_path, {
        "__init__.py": "",
        "store/__init__.py": "",
        "store/a.py": "from orchestrator.store import b\n",
        "store/b.py": "from orchestrator.store import a\nfrom orchestrator.results import view\n",
        "results/__init__.py": "",
        "store/c.py": "",
        "results/view.py": "def f():\n    from orchestrator.store import c\n",
    }))
    graph = arch.modules()
    assert arch.cycles(graph) == [["orchestrator.store.a", "orchestrator.store.b"]]
    assert arch.upward(graph) == ["orchestrator.store.b (layer 1) imports orchestrator.results.view (layer 4)"]
    assert [(m.name, t) for m in graph.values() for _, t in m.hidden] == [("orchestrator.results.view",
                                                                            "orchestrator.store.c")]


def test_checker_sees_a_command_importing_a_command_and_repeats(tmp_path, monkeypatch):
    block = "".join(f"x{i} = compute({i}, 'same')\n" for i in range(6))
    monkeypatch.setattr(arch, "ROOT", _package(tmp_path, {
        "__init__.py": "", "sweep.py": "from orchestrator import explain\n" + block,
        "explain.py": block, "console.py": "def f():\n" + "    pass\n" * 90}))
    graph = arch.modules()
    assert arch.upward(graph) == ["orchestrator.sweep (layer 6) imports orchestrator.explain (layer 6)"]
    assert arch.repeated_blocks() == ["orchestrator/explain.py:1 ~ orchestrator/sweep.py:2"]
    assert [where for _, where in arch.long_functions(folders=("orchestrator",))] == ["orchestrator/console.py:1 f"]
