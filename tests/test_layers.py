"""The import graph of fedvl: no circles, and no import that runs back up the layers.

Read from the source with ``ast`` (nothing is imported), so the test sees imports inside
functions too. Circles count module-level imports (what runs when a module loads); the
layer order counts every import, wherever it stands: a late import that runs back up is
still a dependency on a layer above.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fedvl"

# Lowest first; a module belongs to the layer of its longest matching prefix and may import its
# own layer and the layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation: options, files, seeds, devices",
     ("fedvl", "fedvl.io", "fedvl.seeding", "fedvl.schema", "fedvl.options", "fedvl.fedmmkt", "fedvl.fedmmkt.options",
      "fedvl.engine", "fedvl.engine.device")),
    ("data and models", ("fedvl.data", "fedvl.fedmmkt.data", "fedvl.models", "fedvl.fedmmkt.task_models",
                         "fedvl.fedmmkt.generator")),
    # the pretraining programs that make a shipped base (models.vlbase loads it) train without the round
    ("the training loop", ("fedvl.engine.loops", "fedvl.engine.generate", "fedvl.pretrain")),
    ("algorithms", ("fedvl.algorithms", "fedvl.fedmmkt.validate", "fedvl.fedmmkt.algorithms")),
    # a whole config is checked by its exchange family (fedvl.rounds.family), so it sits with the families
    ("a whole config, the round, the exchange families, transports, results",
     ("fedvl.config", "fedvl.rounds", "fedvl.finetune", "fedvl.fedmmkt.exchange", "fedvl.fedmmkt.federation",
      "fedvl.fedmmkt.family", "fedvl.fedmmkt.codec", "fedvl.transport", "fedvl.deploy", "fedvl.report",
      "fedvl.runfolder", "fedvl.fedmmkt.experiment")),
    # serve runs the experiment in its own process (fedvl.deploy.server_task), so it stands with the entry points
    ("entry points", ("fedvl.experiment", "fedvl.sweep", "fedvl.estimate", "fedvl.deploy.server_app",
                      "fedvl.deploy.server_task", "fedvl.deploy.serve", "fedvl.commands", "fedvl.cli",
                      "fedvl.__main__")),
]

# (importer, imported): imports allowed to run up a layer because they register a plugin.
PLUGIN_REGISTRATION: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(mods: dict[str, Path]) -> list[tuple[str, str, bool, int]]:
    """(importer, imported module, at module level, line) for every fedvl import."""

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                    ast.ClassDef))
               for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from fedvl.transport import secagg` imports the submodule secagg
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            for t in targets:
                if t.split(".")[0] == "fedvl" and resolve(t) != mod:
                    edges.append((mod, resolve(t), id(node) in top, node.lineno))
    return edges


def layer_of(mod: str) -> int:
    best, depth = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    return best


def circles(edges: list[tuple[str, str, bool, int]]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b, top, _ in edges:
        if top:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) < 0] == []


def test_no_import_circles():
    assert circles(imports(modules())) == []


def test_no_import_runs_back_up_the_layers():
    upward = [f"{a} (line {line}, {LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, b, _, line in imports(modules())
              if layer_of(b) > layer_of(a) and (a, b) not in PLUGIN_REGISTRATION]
    assert upward == []


def test_the_checks_see_a_circle_and_an_upward_import():
    """The checks themselves: a made-up circle and a made-up upward import are found."""
    edges = [("fedvl.a", "fedvl.b", True, 1), ("fedvl.b", "fedvl.a", True, 1), ("fedvl.c", "fedvl.a", False, 1)]
    assert circles(edges) == [["fedvl.a", "fedvl.b"]]
    assert circles([e for e in edges if e[0] != "fedvl.b"] + [("fedvl.b", "fedvl.a", False, 1)]) == []
    assert layer_of("fedvl.models.backbones") < layer_of("fedvl.algorithms.base") < layer_of("fedvl.fedmmkt.federation")
    assert layer_of("fedvl.engine.loops") > layer_of("fedvl.engine.device")
