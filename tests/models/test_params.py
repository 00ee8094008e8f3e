"""What travels: exact key sets, chosen by name."""

import re

from fedvl.transport.inprocess import build_federation


CONNECTOR_HEAD = (
    {"connector.pos", "connector.proj.weight", "connector.proj.bias", "connector.norm.weight", "connector.norm.bias"}
    | {"head.vqa.query.weight", "head.vqa.query.bias", "head.vqa.attn.in_proj_weight", "head.vqa.attn.in_proj_bias",
       "head.vqa.attn.out_proj.weight", "head.vqa.attn.out_proj.bias"}
    | {f"head.vqa.mlp.{i}.{t}" for i in (0, 2, 3) for t in ("weight", "bias")}
)


def test_fedavg_adapter_travels_exactly_shared_adapters_connector_head(tiny_cfg):
    fed = build_federation(tiny_cfg(), status=lambda s: None)
    layers = fed.model.text.config.num_hidden_layers
    expected = set()
    for i in range(layers):
        for part in ("down", "up"):
            for t in ("weight", "bias"):
                expected.add(f"text.encoder.layer.{i}.output.adapters.shared.{part}.{t}")
    expected |= CONNECTOR_HEAD
    assert set(fed.travel) == expected
    assert fed.local == []


def test_fedavg_prompt_travels_exactly_shared_prompt_connector_head(tiny_cfg):
    fed = build_federation(tiny_cfg("model.peft=prompt", "model.prompt_length=4"), status=lambda s: None)
    assert set(fed.travel) == {"prompt.shared"} | CONNECTOR_HEAD
    assert fed.local == []
    assert dict(fed.model.named_parameters())["prompt.shared"].shape == (4, fed.model.text.config.hidden_size)


def test_local_only_travels_nothing(tiny_cfg):
    fed = build_federation(tiny_cfg("algorithm.name=local"), status=lambda s: None)
    assert fed.travel == [] and set(fed.local) == set(fed.trainable) and fed.trainable


def test_lora_travels_lora_and_head_only(tiny_cfg):
    fed = build_federation(tiny_cfg("model.peft=lora"), status=lambda s: None)
    body = [n for n in fed.travel if n.startswith("text.")]
    assert body and all(re.search(r"\.(query|value)\.lora_[AB]\.shared\.weight$", n) for n in body)


def test_param_fractions_reported(tiny_cfg):
    fed = build_federation(tiny_cfg(), status=lambda s: None)
    rep = fed.param_report()
    assert 0 < rep["travel_frac"] <= rep["trainable_frac"] < 0.1
    assert rep["bytes_up_per_client_round"] == 4 * rep["travel_params"]
    pooled = build_federation(tiny_cfg("algorithm.name=centralized"), status=lambda s: None).param_report()
    assert pooled["travel_params"] == pooled["bytes_up_per_client_round"] == 0 < pooled["trainable_params"]
