"""ViLT, CLIP and BLIP from tiny random configs saved to disk: loading, adapter sites, LoRA names,
what trains, a 1-round FedAvg and FedDAT run. Nothing is downloaded."""

import pytest
import torch

from fedvl.models.adapters import BottleneckAdapter
from fedvl.models.backbones import ModelUnavailableError, build_model, check_available, load_tokenizer
from fedvl.models.params import param_group, set_trainable, trainable_names
from fedvl.schema import ModelConfig

KINDS = ("vilt", "clip", "blip")
LAYERS = 2


def _save(kind: str, path) -> None:
    from transformers import BlipConfig, BlipForQuestionAnswering, CLIPConfig, CLIPModel, ViltConfig, \
        ViltForQuestionAnswering

    small = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64)
    if kind == "vilt":
        model = ViltForQuestionAnswering(ViltConfig(**small, vocab_size=30522, max_position_embeddings=40,
                                                    image_size=64, patch_size=16, num_labels=7))
    elif kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=dict(small, vocab_size=30522, max_position_embeddings=40),
                                     vision_config=dict(small, hidden_size=48, image_size=32, patch_size=8),
                                     projection_dim=16))
    else:
        model = BlipForQuestionAnswering(BlipConfig(
            text_config=dict(small, vocab_size=30524, max_position_embeddings=40, encoder_hidden_size=48),
            vision_config=dict(small, hidden_size=48, image_size=32, patch_size=8), projection_dim=16))
    model.save_pretrained(path)
    load_tokenizer().save_pretrained(path)  # the MiniLM WordPiece tokenizer stands in for each checkpoint's own


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    for kind in KINDS:
        _save(kind, root / kind)
    return root


def _model(checkpoints, kind, peft="adapter", roles=("shared",)):
    cfg = ModelConfig(name=kind, checkpoint=str(checkpoints / kind), peft=peft, head_hidden=16, adapter_reduction=8)
    return build_model(cfg, num_answers=5, image_size=32, seed=0, roles=roles)


def _batch(model, n=3):
    feats = model.image_features(torch.randint(0, 255, (n, 32, 32, 3), dtype=torch.uint8))
    ids = torch.tensor([[101, 2054, 3609, 102]] * n)
    return ids, torch.ones_like(ids), feats


@pytest.mark.parametrize("kind", KINDS)
def test_adapters_one_site_per_layer_identity_at_init(checkpoints, kind):
    model = _model(checkpoints, kind, roles=("shared", "local", "teacher"))
    ids, mask, feats = _batch(model)
    assert feats.dim() == 3 and feats.shape[0] == 3
    sites = {n.split(".adapters.")[0] for n, _ in model.named_parameters() if ".adapters." in n}
    assert len(sites) == LAYERS  # one site per layer, after the feed-forward block
    site = {"vilt": "text.encoder.layer.0.output", "clip": "text.encoder.layers.0.mlp",
            "blip": "text.encoder.layer.0.output"}[kind]
    assert site in sites
    assert isinstance(dict(model.named_modules())[site + ".adapters.shared"], BottleneckAdapter)
    model.eval()
    base = model(ids, mask, feats)
    for mix in ({"local": 0.5, "teacher": 0.5}, {"shared": 1.0}):
        model.set_adapter_mix(mix)
        assert torch.allclose(model(ids, mask, feats), base)  # zero up-projection: identity at init
    with torch.no_grad():
        dict(model.named_modules())[site + ".adapters.local"].up.bias.normal_()  # not constant: LayerNorm removes a shift
    model.set_adapter_mix({"local": 1.0})
    assert not torch.allclose(model(ids, mask, feats), base)  # and the site is really in the path


@pytest.mark.parametrize("kind", KINDS)
def test_only_intended_parameters_train(checkpoints, kind):
    model = _model(checkpoints, kind)
    names = trainable_names(model, "adapter")
    set_trainable(model, names)
    assert {param_group(n) for n in names} <= {"adapter.shared", "head", "connector"}
    assert any(param_group(n) == "adapter.shared" for n in names)
    assert all(not p.requires_grad for n, p in model.named_parameters() if param_group(n) in ("vision", "backbone"))
    # the frozen vision part is named vision.* (ViLT: its patch projection, though it lives in the embeddings)
    assert any(n.startswith("vision.") and "patch" in n for n, _ in model.named_parameters())
    for method in ("layernorm", "bitfit"):  # every family's LayerNorms / biases are found by name
        backbone = [n for n in trainable_names(model, method) if param_group(n) == "backbone"]
        assert len(backbone) >= 2 * LAYERS
    ids, mask, feats = _batch(model)
    model(ids, mask, feats).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads <= set(names) and any(".adapters.shared." in n for n in grads)


@pytest.mark.parametrize("kind, module", [("vilt", "attention.attention.query"), ("clip", "self_attn.q_proj"),
                                          ("blip", "attention.self.query")])
def test_lora_on_the_right_modules(checkpoints, kind, module):
    model = _model(checkpoints, kind, peft="lora")
    lora = [n for n, _ in model.named_parameters() if param_group(n) == "lora.shared"]
    assert lora and all(not n.startswith("vision.") for n in lora)
    assert any(module + ".lora_A.shared" in n for n in lora)
    # the pretrained query weight is wrapped, not re-initialised
    from safetensors.torch import load_file

    ref = load_file(checkpoints / kind / "model.safetensors")
    key = next(k for k in ref if k.endswith(module.split(".")[-1] + ".weight") and ".0." in k
               and "vision" not in k and "decoder" not in k)
    wrapped = dict(model.named_parameters())
    mine = next(v for n, v in wrapped.items() if n.endswith(module + ".base_layer.weight") and ".0." in n)
    assert torch.equal(mine, ref[key])


def test_vision_features_are_keyed_by_weights(checkpoints):
    a = _model(checkpoints, "clip")
    b = _model(checkpoints, "clip")
    assert a.vision_spec.key == b.vision_spec.key
    with torch.no_grad():
        b.vision.embeddings.patch_embedding.weight.add_(1.0)
    from fedvl.models.hf import _digest

    assert _digest(a.vision) != _digest(b.vision)


def test_missing_checkpoint_says_how_to_get_it(tmp_path):
    with pytest.raises(ModelUnavailableError, match="huggingface-cli download dandelin/vilt-b32-finetuned-vqa"):
        check_available(ModelConfig(name="vilt", checkpoint=str(tmp_path / "nothing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        check_available(ModelConfig(name="blip", checkpoint=str(tmp_path / "empty")))


def test_cli_missing_checkpoint_one_line_exit_2(tmp_path, capsys):
    from fedvl.cli import main

    code = main(["run", "model.name=clip", f"model.checkpoint={tmp_path / 'x'}", f"run.output_dir={tmp_path / 'r'}",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "huggingface-cli download openai/clip-vit-base-patch32" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("algo", ["fedavg", "feddat"])
def test_one_round_on_real_fixture_data(checkpoints, kind, algo, tiny_cfg, real_root, tmp_path):
    from fedvl.report.history import History
    from fedvl.transport.inprocess import build_federation, simulate

    cfg = tiny_cfg(f"model.name={kind}", f"model.checkpoint={checkpoints / kind}", "data.benchmark=real",
                   f"data.root={real_root}", "data.clients=vqav2,gqa", "data.image_size=32", "algorithm.rounds=1",
                   f"algorithm.name={algo}", "model.head_hidden=16")
    fed = build_federation(cfg, status=lambda s: None)
    before = {n: p.detach().clone() for n, p in fed.model.named_parameters()}
    rec = simulate(fed, tmp_path / "run", History(tmp_path / "run"))
    assert set(rec["eval"]) == {"c0-vqav2", "c1-gqa"} and all(0 <= m["vqa_score"] <= 1 for m in rec["eval"].values())
    after = dict(fed.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and {param_group(n) for n in moved} <= {"adapter.shared", "adapter.local", "adapter.teacher",
                                                          "head", "connector"}
    assert any(param_group(n) == "adapter.shared" for n in moved)
    for n in moved:  # Â_S is never trained: it only ever holds a copy of A_S
        if param_group(n) == "adapter.teacher":
            assert torch.equal(after[n], after[n.replace(".teacher.", ".shared.")])


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_same_gradients_fewer_saved_activations(checkpoints, kind):
    from test_memory import check_same_numbers_less_memory

    models = []
    for ckpt in (False, True):
        cfg = ModelConfig(name=kind, checkpoint=str(checkpoints / kind), head_hidden=16, adapter_reduction=8,
                          gradient_checkpointing=ckpt)
        model = build_model(cfg, num_answers=5, image_size=32, seed=0)
        set_trainable(model, trainable_names(model, "adapter"))
        models.append(model)
    ids, mask, feats = _batch(models[0], n=4)
    check_same_numbers_less_memory(*models, (ids, mask, feats))
