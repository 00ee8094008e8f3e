"""The generator: pretraining cache, weight files, and a Stable Diffusion style folder on the same code path."""

import json

import pytest
import torch

from fedvl.config import load_config
from fedvl.fedmmkt.generator.pretrain import load_or_pretrain, pretrain_key
from fedvl.fedmmkt.generator.t2i import Sampling, T2IGenerator, load_pipeline_folder
from fedvl.fedmmkt.data import class_names, make_set

TINY_T2I = ["t2i.text=tiny", "t2i.channels=8,16", "t2i.image_size=16", "t2i.pretrain_steps=3",
            "t2i.pretrain_per_class=2", "t2i.sample_steps=2", "fedmmkt.colors=red,blue",
            "fedmmkt.shapes=circle,square", "algorithm.name=fedmmkt"]


def _cfg(*extra):
    return load_config(None, TINY_T2I + list(extra))


def test_images_hold_one_centred_object_per_class():
    classes = class_names(["red", "blue"], ["circle", "square"])
    s = make_set(classes, "night", 3, 16, seed=1)
    assert s.images.shape == (12, 3, 16, 16) and s.images.min() >= -1 and s.images.max() <= 1
    assert s.labels.tolist() == [0, 1, 2, 3] * 3 and s.captions[0] == "a red circle"
    red = s.images[s.labels == 0][:, 0].mean()  # the red channel of red objects beats that of blue ones
    assert red > s.images[s.labels == 2][:, 0].mean()
    assert torch.equal(s.images, make_set(classes, "night", 3, 16, seed=1).images)


def test_pretraining_is_cached_by_key_and_a_corrupt_file_is_redone(tmp_path):
    cfg = _cfg()
    msgs = []
    gen, meta = load_or_pretrain(cfg.t2i, cfg.fedmmkt, tmp_path, msgs.append)
    key = pretrain_key(cfg.t2i, class_names(cfg.fedmmkt.colors, cfg.fedmmkt.shapes))
    path = tmp_path / "t2i" / f"{key}.safetensors"
    assert path.is_file() and meta["key"] == key and len(meta["loss"]) == 3
    assert json.loads(path.with_suffix(".json").read_text())["source_fidelity"]["judge_real_acc"] > 0.5
    again, _ = load_or_pretrain(cfg.t2i, cfg.fedmmkt, tmp_path, msgs.append)
    assert any("from" in m and key in m for m in msgs)
    assert all(torch.equal(a, b) for a, b in zip(gen.unet.state_dict().values(), again.unet.state_dict().values()))
    # another setting -> another key: stale weights are never picked up
    assert pretrain_key(_cfg("t2i.pretrain_steps=4").t2i, meta["classes"]) != key
    path.write_bytes(b"not a safetensors file")
    msgs.clear()
    load_or_pretrain(cfg.t2i, cfg.fedmmkt, tmp_path, msgs.append)
    assert any("ignoring" in m for m in msgs) and any("pretraining" in m for m in msgs)


def test_weights_file_of_another_shape_is_refused(tmp_path):
    cfg = _cfg()
    load_or_pretrain(cfg.t2i, cfg.fedmmkt, tmp_path, lambda m: None)
    f = next((tmp_path / "t2i").glob("*.safetensors"))
    other = _cfg("t2i.channels=8,24", f"t2i.weights={f}")
    with pytest.raises(ValueError, match="do not fit"):
        load_or_pretrain(other.t2i, other.fedmmkt, tmp_path, lambda m: None)


def _tiny_sd_folder(root):
    """A tiny Stable Diffusion style folder: UNet without pooled conditioning, a VAE, a BERT text encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from fedvl.models.backbones import minilm_dir

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=4, norm_num_groups=4).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  norm_num_groups=4, sample_size=16).save_pretrained(root / "vae")
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32), add_pooling_layer=False).save_pretrained(root / "text_encoder")
    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(root / "tokenizer")
    DDIMScheduler(prediction_type="v_prediction").save_pretrained(root / "scheduler")


def test_a_stable_diffusion_folder_goes_through_the_same_code_path(tmp_path):
    _tiny_sd_folder(tmp_path / "sd")
    cfg = _cfg(f"t2i.source={tmp_path / 'sd'}")
    gen, meta = load_or_pretrain(cfg.t2i, cfg.fedmmkt, tmp_path / "cache", lambda m: None)
    assert isinstance(gen, T2IGenerator) and gen.vae is not None and meta == {"source": str(tmp_path / "sd")}
    assert gen.train_sched.config.prediction_type == "v_prediction"  # read from the folder's scheduler
    imgs = gen.sample(["a red circle", "a blue square"], Sampling(2, 2.0, 8), torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 16, 16) and torch.isfinite(imgs).all()
    gen.add_lora(4, ["to_q", "to_v"])
    names = gen.federated_names()
    gen.set_trainable(names)
    vae_before = {k: v.clone() for k, v in gen.vae.state_dict().items()}
    opt = torch.optim.AdamW([p for p in gen.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = gen.loss(imgs, ["a red circle", "a blue square"], weights=torch.tensor([1.0, 0.5]),
                        generator=torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any("lora_B" in n for n in names)
    lora_b = [p for n, p in gen.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero and has moved
    assert all(torch.equal(vae_before[k], v) for k, v in gen.vae.state_dict().items())


def test_a_folder_without_a_unet_gives_one_clear_error(tmp_path):
    (tmp_path / "sd" / "text_encoder").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no unet/ folder"):
        load_pipeline_folder(tmp_path / "sd", _cfg().t2i)


def test_the_shipped_generator_matches_the_default_settings_and_passed_its_gate():
    """The artifact `fedvl pretrain t2i` reproduces is in the package, found by key, and was
    recorded above 80% source-domain judge accuracy when it was made."""
    from fedvl.fedmmkt.generator.pretrain import SHIPPED, load_weights
    from fedvl.fedmmkt.generator.t2i import build_generator

    cfg = load_config(None, ["algorithm.name=fedmmkt"])
    key = pretrain_key(cfg.t2i, class_names(cfg.fedmmkt.colors, cfg.fedmmkt.shapes))
    path = SHIPPED / f"{key}.safetensors"
    assert path.is_file(), f"no shipped generator for the default settings ({key}); run fedvl pretrain t2i --out"
    assert path.stat().st_size < 5_000_000
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["key"] == key and meta["source_fidelity"]["judge_acc"] > 0.8
    assert len(meta["loss"]) == cfg.t2i.pretrain_steps and meta["loss"][-1] < meta["loss"][0]
    gen = build_generator(cfg.t2i)
    load_weights(gen, path)  # loads strictly: same keys and shapes
