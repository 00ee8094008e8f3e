"""The generative rows of benchmarks/device.py (benchmarks/vlm_throughput.py): the shipped real-size
shapes in configs/vlm/, the checkpoint folder the GPU path builds of them, and the CPU path's rows."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    """benchmarks/vlm_throughput.py, imported as benchmarks/device.py imports it (from its folder)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import vlm_throughput

    return vlm_throughput


def _decoder(layers, hidden, kv, inter, qkv_bias):
    """A Qwen2 / Llama decoder's parameters by hand: q, k, v (with or without bias), o, gate/up/down, two RMS norms
    per layer, and the final norm."""
    attn = 2 * hidden * hidden + 2 * hidden * kv + (hidden + 2 * kv if qkv_bias else 0)
    return layers * (attn + 3 * hidden * inter + 2 * hidden) + hidden


def test_the_real_size_shapes_build_on_the_meta_device_with_their_public_sizes():
    vt = _bench()
    qwen, smol = vt.meta_params("qwen2-vl-2b"), vt.meta_params("smolvlm-256m")
    assert 2.0e9 <= qwen["total"] <= 2.5e9 and 0.2e9 <= smol["total"] <= 0.3e9
    assert qwen["total"] == 2_208_985_600 and smol["total"] == 256_484_928
    # Qwen2-VL-2B's text model: 28 layers of hidden 1536 (2 kv heads of 128: 256), MLP 8960, q/k/v biases
    assert qwen["language_non_embedding"] == _decoder(28, 1536, 256, 8960, True) == 1_310_340_608
    # its embedding is tied to the LM head: counted once
    assert qwen["language"] - qwen["language_non_embedding"] == 151936 * 1536
    # SmolVLM-256M: SmolLM2-135M's 30 layers of 576 (3 kv heads of 64), MLP 1536; untied head
    assert smol["language_non_embedding"] == _decoder(30, 576, 192, 1536, False) == 106_203_456
    assert smol["language"] - smol["language_non_embedding"] == 2 * 49280 * 576
    # SigLIP-base at 512 px (12 layers of 768), and the projector: 4x4 pixel shuffle of 768 -> 576, no bias
    assert smol["projector"] == 16 * 768 * 576
    assert smol["vision"] == 86_433_024 and qwen["vision"] + qwen["projector"] == 665_271_296
    assert sum(smol[k] for k in ("vision", "projector", "language")) == smol["total"]
    assert sum(qwen[k] for k in ("vision", "projector", "language")) == qwen["total"]


def test_a_real_size_checkpoint_folder_loads_in_fedvl_with_the_real_image_tokens(tmp_path):
    """What the GPU path saves and its fedvl rounds read: the shape (here one layer per side, widths and image
    size as shipped) with the tiny tokenizer; its processor gives SmolVLM's 64 tokens per 512 px image."""
    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from fedvl.models.vlm import build_vlm
    from fedvl.schema import ModelConfig

    vt = _bench()
    cfg = vt.bench_config("smolvlm-256m", layers=1)
    assert cfg.vision_config.num_hidden_layers == 1 and cfg.vision_config.image_size == 512
    torch.manual_seed(0)
    path = vt.save_checkpoint("smolvlm-256m", AutoModelForImageTextToText.from_config(cfg), tmp_path / "ck")
    model = build_vlm(ModelConfig(name="hf-vlm", checkpoint=str(path), peft="lora"), 0, ("shared",))
    assert model.lm.config.get_text_config().vocab_size == 49280 and len(model.processor.tokenizer) == 271
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    text = model.processor.apply_chat_template(chat, add_generation_prompt=True)
    enc = model.processor(images=[[Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))]], text=[text],
                          return_tensors="pt")
    assert tuple(enc["pixel_values"].shape) == (1, 1, 3, 512, 512)
    assert int((enc["input_ids"] == cfg.image_token_id).sum()) == 64
    feats = model.image_features({k: v for k, v in enc.items() if k.startswith("pixel")})
    assert [tuple(f.shape) for f in feats] == [(64, 576)]


def test_random_batches_put_each_image_where_the_family_expects_it():
    vt = _bench()
    cfg = vt.bench_config("qwen2-vl-2b")
    g = torch.Generator().manual_seed(0)
    pix = vt.random_pixels(cfg, 2, 448, g)
    # 448 px in 14 px patches: a 32 x 32 grid, each patch 3 channels x 2 frames x 14 x 14; 2x2 merged: 256 tokens
    assert tuple(pix["pixel_values"].shape) == (2 * 32 * 32, 3 * 2 * 14 * 14)
    assert pix["image_grid_thw"].tolist() == [[1, 32, 32]] * 2
    b = vt.random_batch(cfg, [256, 256], torch.zeros(512, 4), pix["image_grid_thw"], 3, 300, 16, g)
    ids = b["input_ids"]
    assert ids.shape == (3, 300) and b["target_mask"].sum(1).tolist() == [16, 16, 16]
    assert (ids == cfg.image_token_id).sum(1).tolist() == [256] * 3
    assert ids[:, 2].eq(cfg.vision_start_token_id).all() and ids[:, 3 + 256].eq(cfg.vision_end_token_id).all()
    assert b["text.mm_token_type_ids"].sum().item() == 3 * 256 and b["image_token_counts"].tolist() == [256] * 3
    assert b["pixel.image_grid_thw"].tolist() == [[1, 32, 32]] * 3 and b["image_tokens"].shape == (3 * 256, 4)
    with pytest.raises(ValueError, match="too short"):
        vt.random_batch(cfg, [256], torch.zeros(256, 4), pix["image_grid_thw"][:1], 1, 270, 16, g)


@pytest.mark.slow
def test_device_benchmark_times_a_tiny_generative_family_on_the_cpu(tmp_path):
    """benchmarks/device.py --generative-only on the CPU: a tiny family's LoRA tokens/s and one FedAvg-LoRA and one
    FedDAT round through fedvl, in the JSON's ``generative`` section and the printed rows."""
    env = dict(os.environ, FEDVL_BENCH_OUT=str(tmp_path / "device.json"))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device.py"), "--cpu", "--generative-only",
                        "--steps", "2", "--vlm-families", "idefics3"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "tiny-idefics3/fp32" in r.stdout and "tiny-idefics3/fedavg-lora round" in r.stdout
    gen = json.loads((tmp_path / "device.json").read_text())["generative"]
    assert set(gen["models"]) == {"tiny-idefics3"} and gen["threads"] == 1
    row = gen["models"]["tiny-idefics3"]
    m = row["fp32"]
    assert m["tokens_per_s"] > 0 and m["steps"] == 2 and (m["batch"], m["seq_len"]) == (4, 64)
    # 32 px in 8 px patches: 16, pixel-shuffled 2x2 -> 4 image tokens; LoRA rank 16 on q/k/v/o of 2 layers of
    # hidden 32 (k and v: one head of 16): 2 * (2 * 16 * (32 + 32) + 2 * 16 * (32 + 16)) parameters
    assert m["image_tokens_per_sample"] == 4 and m["trainable_params"] == 7168
    assert math.isfinite(m["loss"]) and m["loss"] > 0
    for algo in ("fedavg-lora", "feddat"):
        rnd = row["rounds"][algo]
        assert math.isfinite(rnd["round_s"]) and rnd["round_s"] > 0 and math.isfinite(rnd["train_loss"])
    assert gen["real_size_params"]["qwen2-vl-2b"]["total"] == 2_208_985_600
