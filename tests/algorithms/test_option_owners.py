"""Each algorithm and each privacy / robustness component checks its own options:
the check lives next to the code, works on its own, and is what `load_config` runs."""

import pytest

from fedvl.algorithms import aggregate, attacks, get_algorithm, privacy
from fedvl.config import load_config
from fedvl.schema import ConfigError


@pytest.mark.parametrize("name, section, key, value, message", [
    ("feddat", "model", "peft", "lora", "feddat needs model.peft=adapter"),
    ("feddat", "algorithm", "kd_weight", 1.5, "kd_weight must be in"),
    ("feddat", "algorithm", "kd_temperature", 0.0, "kd_temperature must be > 0"),
    ("fedprox", "algorithm", "prox_mu", -0.1, "prox_mu must be >= 0"),
    ("centralized", "run", "runtime", "flower-sim", "pools every client's data"),
    ("centralized", "data", "benchmark", "task", "undefined on data.benchmark=task"),
])
def test_an_algorithms_own_check_refuses_its_bad_options(name, section, key, value, message):
    cfg = load_config(None, ["model.name=tiny", f"algorithm.name={name}"])
    get_algorithm(name).check(cfg)  # the defaults pass
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError, match=message):  # the algorithm's check alone says it ...
        get_algorithm(name).check(cfg)
    with pytest.raises(ConfigError, match=message):  # ... and loading a config runs it
        load_config(None, ["model.name=tiny", f"algorithm.name={name}", f"{section}.{key}={value}"])


def test_an_option_is_not_checked_by_an_algorithm_that_does_not_use_it():
    load_config(None, ["model.name=tiny", "algorithm.name=fedavg", "algorithm.kd_temperature=0"])
    load_config(None, ["model.name=tiny", "algorithm.name=fedavg", "algorithm.prox_mu=-1"])


@pytest.mark.parametrize("check, overrides, message", [
    (privacy.check_options, ["privacy.delta=1.5"], "privacy.delta must be in"),
    (privacy.check_options, ["algorithm.aggregator=median", "privacy.enabled=true"], "privacy.enabled needs"),
    (attacks.check_options, ["attack.kind=sign_flip", "attack.fraction=0.01"], "selects no attacker"),
    (lambda c: aggregate.check_options(c, pooled=False), ["algorithm.trim_ratio=0.5"], "trim_ratio must be in"),
    (lambda c: aggregate.check_options(c, pooled=False), ["algorithm.aggregator=krum", "data.num_clients=4",
                                                        "algorithm.krum_byzantine=2"],
     "needs at least 5 clients per round"),
])
def test_each_component_checks_its_own_section(check, overrides, message):
    check(load_config(None, ["model.name=tiny"]))  # the defaults pass
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name=tiny", *overrides])
