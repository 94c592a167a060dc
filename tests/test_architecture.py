"""Imports go one way: the lower rooms (aggregation, data, attacks, models) know nothing of the
simulator, the simulator nothing of reports, benchmarks, integrations or the CLI."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "robustlr"

LAYER = {
    "errors": 0,
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
            allowed = target == room or (target in LAYER and LAYER[target] < LAYER[room]) or (
                room == "sim" and target == "top")  # sim.records reads robustlr.__version__
            if not allowed:
                bad.append(f"{rel} imports {module}")
    assert not bad, "\n".join(sorted(bad))
