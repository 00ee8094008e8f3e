"""Adapter injection: what trains, what stays frozen, and the adapter mix algebra."""

import pytest
import torch

from fedvl.engine.loops import cross_entropy_step
from fedvl.models.adapters import BottleneckAdapter
from fedvl.models.backbones import build_model
from fedvl.models.params import param_group, set_trainable, trainable_names
from fedvl.schema import ModelConfig


def tiny(peft="adapter", roles=("shared",)):
    return build_model(ModelConfig(name="tiny", peft=peft), num_answers=7, image_size=64, seed=0, roles=roles)


def batch(model, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, model.feature_channels, 2, 2, generator=g)
    return {"input_ids": torch.randint(1000, 2000, (n, 5), generator=g),
            "attention_mask": torch.ones(n, 5, dtype=torch.long), "features": feats,
            "labels": torch.randint(0, 7, (n,), generator=g)}


def train_steps(model, names, steps=3):
    set_trainable(model, names)
    named = dict(model.named_parameters())
    opt = torch.optim.AdamW([named[n] for n in names], lr=1e-2)
    step = cross_entropy_step(model, opt)
    b = batch(model)
    for _ in range(steps):
        step(b, 1e-2)


EXPECTED_GROUPS = {
    "adapter": {"adapter.shared", "connector", "head"},
    "lora": {"lora.shared", "connector", "head"},
    "bitfit": {"backbone", "connector", "head"},
    "layernorm": {"backbone", "connector", "head"},
    "head": {"connector", "head"},
    "full": {"backbone", "connector", "head"},
    "prompt": {"prompt.shared", "connector", "head"},
}


@pytest.mark.parametrize("peft", list(EXPECTED_GROUPS))
def test_only_intended_parameters_change(peft):
    model = tiny(peft)
    names = trainable_names(model, peft)
    assert {param_group(n) for n in names} == EXPECTED_GROUPS[peft]
    if peft == "bitfit":
        assert all(n.endswith(".bias") for n in names if param_group(n) == "backbone")
    if peft == "layernorm":
        assert all("LayerNorm" in n for n in names if param_group(n) == "backbone")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    train_steps(model, names)
    after = dict(model.named_parameters())
    frozen = [n for n in before if n not in set(names)]
    assert frozen, "something must stay frozen"
    for n in frozen:  # bit-identical backbone and vision tower
        assert torch.equal(before[n], after[n]), n
    for n, b in model.named_buffers():  # BatchNorm statistics of the frozen tower never move
        assert torch.equal(buffers[n], b), n
    changed = [n for n in names if not torch.equal(before[n], after[n])]
    assert len(changed) >= len(names) // 2  # training actually moved the trainable parameters


def test_adapter_sites_one_per_layer_with_expected_width():
    model = build_model(ModelConfig(name="tiny", adapter_reduction=4), 7, 64, roles=("shared", "local", "teacher"))
    layers = model.text.encoder.layer
    for layer in layers:
        assert set(layer.output.adapters) == {"shared", "local", "teacher"}
        assert layer.output.adapters["shared"].down.out_features == 32 // 4
    # pretrained parameter names are unchanged by injection
    assert "text.encoder.layer.0.output.dense.weight" in dict(model.named_parameters())


def test_fresh_adapter_is_identity():
    model_plain = build_model(ModelConfig(name="tiny", peft="head"), 7, 64, seed=0)
    model_adapt = tiny("adapter")
    # same seed -> same backbone/connector/head; zero-initialised up-projection -> same function
    model_adapt.load_state_dict(model_plain.state_dict(), strict=False)
    b = batch(model_plain)
    model_plain.eval(), model_adapt.eval()
    out_plain = model_plain(b["input_ids"], b["attention_mask"], b["features"])
    out_adapt = model_adapt(b["input_ids"], b["attention_mask"], b["features"])
    assert torch.allclose(out_plain, out_adapt, atol=1e-6)


def test_mix_is_weighted_sum_of_parallel_adapters():
    """h + w·A_C(h) + (1-w)·Â_S(h), computed by hand at one site."""
    model = tiny("adapter", roles=("shared", "local", "teacher"))
    site = model.text.encoder.layer[0].output
    for ad in site.adapters.values():
        torch.nn.init.normal_(ad.up.weight, std=0.5)
    x = torch.randn(2, 3, site.dense.in_features)
    res = torch.randn(2, 3, site.dense.out_features)
    model.eval()
    model.set_adapter_mix({"local": 0.3, "teacher": 0.7})
    got = site(x, res)
    h = site.dense(x)
    want = site.LayerNorm(h + 0.3 * site.adapters["local"](h) + 0.7 * site.adapters["teacher"](h) + res)
    assert torch.allclose(got, want, atol=1e-6)
    model.set_adapter_mix({"shared": 1.0})
    want_s = site.LayerNorm(h + site.adapters["shared"](h) + res)
    assert torch.allclose(site(x, res), want_s, atol=1e-6)


def test_bottleneck_adapter_shapes():
    ad = BottleneckAdapter(384, 16)
    assert ad.down.weight.shape == (24, 384) and ad.up.weight.shape == (384, 24)


def test_lora_wraps_pretrained_weights_without_reinitialising():
    plain = build_model(ModelConfig(name="tiny", peft="head"), 7, 64, seed=0)
    lora = tiny("lora")
    named = dict(lora.named_parameters())
    w = plain.text.encoder.layer[0].attention.self.query.weight
    assert torch.equal(named["text.encoder.layer.0.attention.self.query.base_layer.weight"], w)
    assert any(".lora_A.shared." in n for n in named)


def test_prompt_is_one_matrix_per_role_and_changes_the_output():
    model = build_model(ModelConfig(name="tiny", peft="prompt", prompt_length=5), 7, 64, seed=0,
                        roles=("shared", "local"))
    named = dict(model.named_parameters())
    assert named["prompt.shared"].shape == (5, 32) and named["prompt.local"].shape == (5, 32)
    assert [n for n in named if n.startswith("prompt.")] == ["prompt.shared", "prompt.local"]
    assert model.prompt_role == "shared"
    model.eval()
    b = batch(model)
    with torch.no_grad():
        out = model(b["input_ids"], b["attention_mask"], b["features"])
        model.prompt["local"].add_(1.0)  # the inactive role's prompt is not read
        assert torch.equal(model(b["input_ids"], b["attention_mask"], b["features"]), out)
        model.prompt["shared"].add_(1.0)
        assert not torch.allclose(model(b["input_ids"], b["attention_mask"], b["features"]), out, atol=1e-4)
    # and with the plain head-only model of the same seed it differs: the prompt is read at all
    plain = build_model(ModelConfig(name="tiny", peft="head"), 7, 64, seed=0).eval()
    assert not torch.allclose(plain(b["input_ids"], b["attention_mask"], b["features"]), out, atol=1e-4)


def test_prompt_head_pools_exactly_the_question_tokens():
    """Sequence is [prompt, text, visual]; the head's question slice starts after the prompt."""
    model = tiny("prompt").eval()
    b = batch(model)
    b["attention_mask"][:, 3:] = 0
    seen = {}
    model.head["vqa"].register_forward_pre_hook(lambda m, args, kwargs: seen.update(args=args, kwargs=kwargs),
                                        with_kwargs=True)
    with torch.no_grad():
        model(b["input_ids"], b["attention_mask"], b["features"])
    h, mask = seen["args"]
    p, text_len, vis = 8, b["input_ids"].shape[1], 2 * 2
    assert h.shape[1] == mask.shape[1] == p + text_len + vis
    assert seen["kwargs"] == {"text_len": text_len, "text_start": p}
    assert torch.equal(mask[:, :p], torch.ones(len(mask), p, dtype=mask.dtype))  # the prompt is attended
    assert torch.equal(mask[:, p:p + text_len], b["attention_mask"])  # question padding still masked
    assert torch.equal(mask[:, p + text_len:], torch.ones(len(mask), vis, dtype=mask.dtype))


def test_prompt_question_padding_is_still_masked():
    """Two batches that differ only in padded positions' token ids give identical logits."""
    model = tiny("prompt").eval()
    b = batch(model)
    b["attention_mask"][:3, 3:] = 0
    ids = b["input_ids"].clone()
    ids[:3, 3:] = torch.randint(2000, 3000, (3, 2))
    with torch.no_grad():
        a = model(b["input_ids"], b["attention_mask"], b["features"])
        c = model(ids, b["attention_mask"], b["features"])
        assert torch.equal(a, c)
        # control: the same change at unpadded positions does move the logits
        ids[3:, 3:] = torch.randint(2000, 3000, (3, 2))
        assert not torch.allclose(model(ids, b["attention_mask"], b["features"])[3:], a[3:], atol=1e-5)
