"""Imports go one way: the lower rooms (aggregation, data, attacks, models) know nothing of the
simulator, the simulator nothing of reports, benchmarks, integrations or the CLI; and no two modules
import each other, directly or round a longer loop, even inside a function."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "robustlr"

LAYER = {
    "errors": 0, "_version": 0,
    "_optional": 0.5,  # names the extra to install when an optional package is missing
    "_plugins": 0.5,  # finds a user's model or dataset: import strings, entry points
    "aggregation": 1, "data": 1, "attacks": 1, "models": 1,
    "sim": 2,
    "experiments": 3, "analysis": 3, "integrations": 3,
    "reports": 4,  # they summarise experiments (the results store)
    "bench": 4,  # it measures every engine, the Flower integration's included
    "cli": 5,
}


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            continue  # relative: same room
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "robustlr" or m.startswith("robustlr.")}


def test_every_room_is_known():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert rooms == set(LAYER)


def test_imports_go_one_way():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel == Path("__init__.py"):
            continue  # the top level re-exports run and load_config (lazily)
        room = rel.parts[0].removesuffix(".py")
        for module in _imports(path):
            target = "top" if module == "robustlr" else _room(module)
            allowed = target == room or (target in LAYER and LAYER[target] < LAYER[room])
            if not allowed:
                bad.append(f"{rel} imports {module}")
    assert not bad, "\n".join(sorted(bad))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the robustlr modules it imports anywhere in its text (function bodies included).
    A package's ``__init__`` only re-exports its children: edges into it and out of it are left out."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    graph = {}
    for name, path in modules.items():
        if name in packages:
            continue
        here = name.split(".")
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative to this module's package
                    base = ".".join(here[: len(here) - node.level] + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    out.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        graph[name] = {m for m in out if m in modules and m not in packages and m != name}
    return graph


def test_no_import_cycles():
    graph = _module_graph()
    assert "robustlr.sim.loop" in graph and "robustlr.sim.server" in graph["robustlr.sim.loop"]
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_lazy_import(tmp_path):
    """The check finds a cycle closed by an import inside a function (as sim.pretrain -> sim.loop was)."""
    pkg = tmp_path / "robustlr"
    (pkg / "sim").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sim" / "__init__.py").write_text("from robustlr.sim.a import f\n")
    (pkg / "sim" / "a.py").write_text("from robustlr.sim.b import g\n")
    (pkg / "sim" / "b.py").write_text("def g():\n    from robustlr.sim import a\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        graph = _module_graph()
    finally:
        PACKAGE = saved
    assert graph == {"robustlr.sim.a": {"robustlr.sim.b"}, "robustlr.sim.b": {"robustlr.sim.a"}}
