"""Hostile options and config files, through the real CLI: every refusal is one line on stderr, exit 2,
before any results folder exists. YAML that expands to billions of values, repeated keys, numbers out
of range, LoRA targets that name no layer, list slips (empty items, repeats)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from conftest import TINY
from test_hostile import fedvl, one_line, snapshot

from fedvl.config import load_config
from fedvl.models.vlbase import VLPretrainConfig
from fedvl.schema import MAX_CONFIG_BYTES, ConfigError, ExperimentConfig, _check_numbers, _within


def refused(work: Path, *argv: str, text: str, command: str = "run") -> str:
    """``fedvl <command> argv`` is one line with ``text``, exit 2, and nothing under ``work`` changed."""
    before = snapshot(work)
    extra = [*TINY, f"run.output_dir={work / 'results'}", f"run.cache_dir={work / 'cache'}", "--quiet"] \
        if command == "run" else []
    files = [a for a in argv if "=" not in a]  # the config file first, the overrides last (they win over TINY)
    r = fedvl(*command.split(), *files, *extra, *[a for a in argv if "=" in a], cwd=work)
    line = one_line(r, 2, text)
    assert snapshot(work) == before and not (work / "results").exists() and not (work / "cache").exists()
    return line


@pytest.fixture
def work(tmp_path):
    return tmp_path


# -- YAML files ----------------------------------------------------------------------------------------

def billion_laughs(levels: int = 9) -> str:
    """~400 bytes of YAML standing for 9**9 values, under a real key (its message once formatted them all)."""
    lines = ["model:", "  name:", "    - &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for prev, cur in zip("abcdefghi", "bcdefghij"[:levels - 1]):
        lines.append(f"    - &{cur} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_expansion(work):
    (work / "bomb.yaml").write_text(billion_laughs())
    assert (work / "bomb.yaml").stat().st_size < 500
    line = refused(work, "bomb.yaml", text="its aliases expand to more than 10,000 values")
    assert len(line) < 200


def test_a_few_aliases_still_load(work):
    (work / "ok.yaml").write_text("model: &m {name: tiny}\nrun: {seed: &s 3, threads: *s}\n")
    cfg = load_config(work / "ok.yaml", [])
    assert cfg.run.threads == 3 and cfg.model.name == "tiny"


def test_recursive_alias_is_refused(work):
    (work / "loop.yaml").write_text("model:\n  lora_targets: &a [query, *a]\n")
    refused(work, "loop.yaml", text="an alias refers to itself")


def test_thousands_of_nested_levels_are_refused(work):
    (work / "deep.yaml").write_text("model:\n  name: " + "[" * 3000 + "]" * 3000 + "\n")
    refused(work, "deep.yaml", text="config file deep.yaml nests values thousands of levels deep")


def test_oversized_config_file_is_refused(work):
    (work / "big.yaml").write_text("# " + "x" * MAX_CONFIG_BYTES + "\nrun: {seed: 1}\n")
    refused(work, "big.yaml", text="a config file is at most 1,048,576")


@pytest.mark.parametrize("text, key", [
    ("algorithm:\n  name: fedprox\nrun:\n  seed: 1\nalgorithm:\n  rounds: 3\n", "'algorithm'"),
    ("algorithm:\n  rounds: 2\n  lr: 0.1\n  rounds: 3\n", "'rounds'"),
])
def test_duplicate_keys_are_refused_with_key_and_file(work, text, key):
    (work / "dup.yaml").write_text(text)
    line = refused(work, "dup.yaml", text=f"config file dup.yaml: key {key} is given twice")
    assert "line" in line


def test_merge_keys_are_not_duplicates(work):
    (work / "m.yaml").write_text("algorithm:\n  <<: {rounds: 2, lr: 0.1}\n  rounds: 3\n")
    assert load_config(work / "m.yaml", []).algorithm.rounds == 3


def test_a_huge_value_is_quoted_short(work):
    line = refused(work, "model.name=" + "x" * 100_000, text="model.name: 'xxxx")
    assert len(line) < 400


# -- numeric ranges ------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, text", [
    ("model.max_text_len=-1", "model.max_text_len must be in 4..512, got -1"),
    ("algorithm.weight_decay=-1", "algorithm.weight_decay must be >= 0, got -1.0"),
    (f"run.seed={2 ** 64}", f"run.seed must be in 0..4294967295, got {2 ** 64}"),
    ("run.seed=-1", "run.seed must be in 0..4294967295, got -1"),
    ("data.image_size=100000000", "data.image_size must be in 32..1024, got 100000000 (the upper bound"),
    ("data.num_clients=100000000", "data.num_clients must be in 1..100000, got 100000000"),
    ("model.head_hidden=0", "model.head_hidden must be in 1..65536, got 0"),
    ("algorithm.trim_ratio=0.5", "algorithm.trim_ratio must be in [0, 0.5), got 0.5"),
    ("privacy.delta=1", "privacy.delta must be in (0, 1), got 1.0"),
    ("t2i.channels=16,99999999", "t2i.channels[1] must be in 8..1024, got 99999999"),
    ("fedmmkt.eval_per_class=1", "fedmmkt.eval_per_class must be in 2..100000, got 1 (the feature distance"),
])
def test_numbers_out_of_range_are_one_line(work, override, text):
    refused(work, override, text=text)


@pytest.mark.parametrize("algorithm", ["fedmmkt", "kt-local", "fedavg"])
@pytest.mark.parametrize("keep", ["0", "-1"])
def test_keep_checkpoints_is_checked_for_every_family(work, algorithm, keep):
    refused(work, f"algorithm.name={algorithm}", f"run.keep_checkpoints={keep}",
            text=f"run.keep_checkpoints must be >= 1, got {keep}")


def _config_classes() -> list[type]:
    out, todo = [], [ExperimentConfig, VLPretrainConfig]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += [tp for tp in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(tp)]
        todo += [b for b in cls.__bases__ if dataclasses.is_dataclass(b)]  # a plugin's options, e.g. FedDATOptions
    return out


def _numeric(tp) -> bool:
    args = typing.get_args(tp)
    return tp in (int, float) or any(_numeric(a) for a in args if a is not type(None))


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_numeric_option_declares_a_range_its_default_meets(cls):
    hints = typing.get_type_hints(cls)
    ranges = getattr(cls, "RANGES", {})
    numeric = {f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name])}
    assert numeric == set(ranges), f"{cls.__name__}: no range {numeric - set(ranges)}, stray {set(ranges) - numeric}"
    _check_numbers(cls(), "")  # the defaults are inside their own ranges


def test_range_grammar():
    assert _within(0, ">= 0") and not _within(0, "> 0") and _within(4, "1..4") and not _within(5, "1..4")
    assert _within(0, "[0, 0.5)") and not _within(0.5, "[0, 0.5)") and not _within(0, "(0, 1]")
    assert _within(3, "1..4 (a reason)")
    with pytest.raises(ValueError, match="malformed range"):
        _within(1, "positive")


# -- LoRA targets and lists ----------------------------------------------------------------------------

@pytest.mark.parametrize("override, text", [
    ("model.lora_targets=nonexistent", "model.lora_targets: 'nonexistent' is not a layer of the text encoder"),
    ("model.lora_targets=", "model.lora_targets must name at least one layer"),
    ("model.lora_targets=query,query", "model.lora_targets names a layer twice"),
    ("model.lora_targets=query,,value", "model.lora_targets: item 2 is empty"),
    ("model.lora_targets=query,", "model.lora_targets: item 2 is empty"),
    ("algorithm.keep_local=head,head", "algorithm.keep_local names head twice"),
    ("run.trackers=tensorboard,tensorboard", "run.trackers names tensorboard twice"),
    ("t2i.lora_targets=", "t2i.lora_targets must name at least one UNet module"),
])
def test_lora_targets_and_list_slips(work, override, text):
    extra = ["algorithm.name=fedmmkt"] if override.startswith("t2i.") else ["model.peft=lora"]
    refused(work, *extra, override, text=text)


def test_empty_list_is_still_how_to_give_none(tiny_cfg):
    assert tiny_cfg("algorithm.keep_local=").algorithm.keep_local == []


def test_pretrain_vl_refuses_lora_targets_that_name_no_layer(work):
    # it shipped a base without its low-rank delta, exit 0
    refused(work, "model=tiny", "steps=1", f"cache_dir={work / 'cache'}", "lora_targets=nonexistent",
            command="pretrain vl", text="lora_targets: 'nonexistent' is not a layer of the text encoder")
    refused(work, "model=tiny", "seed=-3", f"cache_dir={work / 'cache'}", command="pretrain vl",
            text="seed must be in 0..4294967295, got -3")
    refused(work, "model=tiny", "mlm_grounded_prob=2", f"cache_dir={work / 'cache'}", command="pretrain vl",
            text="mlm_grounded_prob must be in (0, 1), got 2.0")


def test_peft_refusal_names_the_option():
    from torch import nn

    from fedvl.models.adapters import inject_lora

    with pytest.raises(ConfigError, match=r"^model\.lora_targets: peft refused nowhere: .*not found"):
        inject_lora(nn.Sequential(nn.Linear(2, 2)), "shared", 2, 2, ["nowhere"])


def test_generator_lora_refusal_names_the_option():
    from fedvl.fedmmkt.generator.t2i import build_generator
    from fedvl.fedmmkt.options import T2IConfig

    gen = build_generator(T2IConfig(text="tiny", channels=[8, 16], image_size=16))
    with pytest.raises(ConfigError, match=r"^t2i\.lora_targets: peft refused nowhere: "):
        gen.add_lora(4, ["nowhere"])
