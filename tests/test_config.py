from pathlib import Path

import pytest
import yaml

from fedvl.config import load_config
from fedvl.schema import ConfigError, ExperimentConfig, dump_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_are_the_embedded_default_experiment():
    cfg = load_config()
    assert cfg.model.name == "default" and cfg.model.peft == "adapter"
    assert cfg.algorithm.name == "fedavg" and cfg.data.benchmark == "domain" and cfg.data.num_clients >= 4


def test_shipped_default_yaml_equals_embedded_default():
    assert yaml.safe_load((ROOT / "configs" / "default.yaml").read_text()) == ExperimentConfig().to_dict()


def test_the_algorithm_section_is_composed_of_each_plugins_options():
    """Each plugin's options are defined beside its name (fedvl/options/) and the section keeps one flat set
    of keys, in the parts' order, with every part's ranges and the algorithm-owned options merged."""
    import dataclasses

    from fedvl.options.feddat import FedDATOptions
    from fedvl.options.fedprox import FedProxOptions
    from fedvl.options.server_opt import ServerOptOptions
    from fedvl.schema import _ALGORITHM_PARTS, AlgorithmConfig

    names = [f.name for f in dataclasses.fields(AlgorithmConfig)]
    assert names == [f.name for part in _ALGORITHM_PARTS for f in dataclasses.fields(part)]
    assert names[11:18] == ["prox_mu", "dat_weight", "kd_weight", "kd_temperature", "feddat_teacher",
                            "feddat_mutual", "feddat_shared_pass"]
    assert {f.name for f in dataclasses.fields(FedDATOptions)} < set(names)
    assert AlgorithmConfig.RANGES["server_beta2"] == ServerOptOptions.RANGES["server_beta2"] == "[0, 1)"
    assert AlgorithmConfig.RANGES["rounds"] == "1..1000000"
    assert AlgorithmConfig.OWNED == FedProxOptions.OWNED | FedDATOptions.OWNED == {
        "prox_mu", "dat_weight", "kd_weight", "kd_temperature"}
    # a plugin's range is checked on load (server_lr), an owned one only when its algorithm runs (prox_mu)
    with pytest.raises(ConfigError, match=r"^algorithm\.server_lr must be > 0, got 0\.0$"):
        load_config(None, ["algorithm.server_lr=0"])
    assert load_config(None, ["algorithm.prox_mu=-1"]).algorithm.prox_mu == -1.0
    with pytest.raises(ConfigError, match=r"^algorithm\.prox_mu must be >= 0, got -1\.0$"):
        load_config(None, ["algorithm.prox_mu=-1", "algorithm.name=fedprox"])


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.algorithm.rounds >= 1


def test_overrides_are_typed():
    cfg = load_config(None, ["algorithm.rounds=3", "algorithm.lr=0.01", "data.domains=photo,sketch,night,cartoon",
                             "algorithm.name=local"])
    assert cfg.algorithm.rounds == 3 and isinstance(cfg.algorithm.rounds, int)
    assert cfg.algorithm.lr == 0.01
    assert cfg.data.domains == ["photo", "sketch", "night", "cartoon"]


@pytest.mark.parametrize("override,message", [
    (["algorithm.roundz=3"], "unknown config key 'algorithm.roundz'"),
    (["nosuch.key=1"], "unknown config key 'nosuch'"),
    (["algorithm.rounds=three"], "algorithm.rounds: expected an integer"),
    (["algorithm.lr=fast"], "algorithm.lr: expected a number"),
    (["model.peft=prefix"], "model.peft: 'prefix' is not one of"),
    (["algorithm.name=fedsgd"], "unknown algorithm 'fedsgd'"),
    (["algorithm.fraction_fit=0"], "fraction_fit"),
    (["data.num_clients=9"], "data.domains lists 4 domains for 9 clients"),
    (["data.domains=photo,mars,night,sketch"], "unknown domain 'mars'"),
    (["rounds"], "not of the form key=value"),
    (["algorithm=3"], "algorithm: expected a mapping"),
])
def test_bad_values_raise_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, override)


def test_yaml_type_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algorithm:\n  rounds: 2.5\n")
    with pytest.raises(ConfigError, match="algorithm.rounds: expected an integer"):
        load_config(p)
    p.write_text("algorithm: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["algorithm.rounds=5", "model.peft=lora"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize("overrides, present, absent", [
    ([], {"model", "data", "algorithm", "run", "attack", "privacy"}, {"t2i", "fedmmkt"}),
    (["algorithm.name=fedmmkt"], {"algorithm", "run", "t2i", "fedmmkt"}, {"model", "data", "attack", "privacy"}),
    # a section the run does not read stays when it was set, so the file loads back to the same config
    (["t2i.lr=0.5"], {"model", "data", "algorithm", "run", "attack", "privacy", "t2i"}, {"fedmmkt"}),
])
def test_a_runs_config_yaml_holds_the_sections_it_uses_and_round_trips(overrides, present, absent, tmp_path):
    from fedvl.config import run_config_text

    cfg = load_config(None, overrides)
    text = run_config_text(cfg)
    sections = set(yaml.safe_load(text))
    assert present <= sections and not absent & sections
    (tmp_path / "config.yaml").write_text(text)
    again = load_config(tmp_path / "config.yaml", [])
    assert dump_config(again) == dump_config(cfg) and run_config_text(again) == text
