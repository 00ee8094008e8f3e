"""Exchange families (fedvl.rounds.family): both registered, every algorithm's resolves, each provides
every part of the protocol, and no module branches on a family's name any more."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedvl.algorithms import registry
from fedvl.rounds.family import Family, families, family_of, get_family, register_family

SRC = Path(__file__).resolve().parents[2] / "src" / "fedvl"


def test_both_families_are_registered_once():
    assert sorted(families()) == ["knowledge", "parameters"]
    assert all(f.name == name for name, f in families().items())
    with pytest.raises(ValueError, match="registered twice"):
        register_family(families()["knowledge"])
    with pytest.raises(KeyError, match="registered: knowledge, parameters"):
        get_family("weights")


def test_every_algorithm_resolves_to_a_registered_family():
    got = {name: family_of(name) for name in registry()}
    assert all(f is families()[registry()[n].family] for n, f in got.items())
    assert {n for n, f in got.items() if f is get_family("knowledge")} == \
        {"fedmmkt", "kt-distill", "kt-local", "kt-fedavg", "kt-centralized"}
    assert {n for n, f in got.items() if f is get_family("parameters")} == \
        {"fedavg", "fedprox", "feddat", "local", "centralized"}
    # a compare method names its algorithm first; a name no algorithm has is left to the config checks
    assert family_of("fedavg-lora") is get_family("parameters") and family_of("kt-fedavg") is get_family("knowledge")
    assert family_of("no-such-algorithm") is get_family("parameters")


def test_every_family_provides_the_whole_protocol():
    members = set(Family.__annotations__) | {k for k, v in vars(Family).items()
                                              if callable(v) and not k.startswith("_")}
    assert members >= {"name", "sections", "check", "round_seconds", "benchmark", "comparison_title", "build",
                       "build_node", "server", "node", "codec", "report"}
    for f in families().values():
        assert [m for m in sorted(members) if not hasattr(f, m)] == []


def test_family_parts_that_need_no_run(tiny_cfg):
    params, knowledge = get_family("parameters"), get_family("knowledge")
    assert params.sections == {"model", "data", "algorithm", "run", "attack", "privacy"}
    assert knowledge.sections == {"algorithm", "run", "t2i", "fedmmkt"}
    cfg = tiny_cfg("data.benchmark=scene", "data.num_clients=3")
    assert params.benchmark(lambda: cfg) == "scene" and params.comparison_title(cfg) == "scene benchmark"

    def never():
        raise AssertionError("the knowledge family's benchmark is its own: the config is not loaded")

    assert knowledge.benchmark(never) == "fedmmkt" and knowledge.comparison_title(cfg) == "FedMMKT"
    # the measured cost model: 3 clients x one epoch of 36 questions (12 images x 3), 24 test questions each
    seconds, parts = params.round_seconds(cfg)
    assert parts == "3 clients x 36 training samples, 3 clients evaluated"
    assert seconds == pytest.approx(3 * 36 * 0.0015 + 3 * 24 * 0.0015 / 3)
    assert knowledge.round_seconds(cfg) is None


def _family_switches(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines comparing something with a family's name, or a dict keyed by several family names."""
    def is_name(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_name(n) for n in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif isinstance(node, ast.Dict) and sum(is_name(k) for k in node.keys if k is not None) > 1:
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_branches_on_a_family_name():
    names = set(families())
    found = {str(p.relative_to(SRC)): lines for p in sorted(SRC.rglob("*.py"))
             if (lines := _family_switches(ast.parse(p.read_text()), names))}
    assert found == {}
    # the check itself sees the forms it looks for
    probe = ast.parse('a = x == "knowledge"\nb = "parameters" != y\nc = {"parameters": 1, "knowledge": 2}[z]\n'
                      'd = x == "knowledgeable"')
    assert _family_switches(probe, names) == [1, 2, 3]
