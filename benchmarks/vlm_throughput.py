"""The generative rows of the device benchmark: what training an ``hf-vlm`` model costs.

For a transformers image-text-to-text config it builds the model with random weights (throughput
needs no trained ones), puts peft LoRA (rank 16) on the language model's q/k/v/o projections, and
trains on random batches the way fedvl trains: the frozen vision tower and projector run once on
random pixels of the model's own input shape, their output is cached and handed to the language
model through ``mm_encoder_outputs`` (fedvl's vision cache), and the LM head runs on the answer
positions only (:meth:`fedvl.models.vlm.GenerativeVLM.forward_batch`). It reports training tokens/s
(every position the language model reads, image tokens included), the model FLOP utilisation on a
GPU, and peak GPU memory with and without gradient checkpointing and with a 4-bit NF4 base (QLoRA);
and the wall time of one FedAvg-LoRA and one FedDAT round run through fedvl itself.

GPU: the shipped real-size shapes (``configs/vlm/``: Qwen2-VL-2B and SmolVLM-256M, random weights)
in bf16. CPU: the five tiny families of ``tests/vlm_fixtures.py``, tokens/s only.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "vlm"
# shipped shape -> (the tiny family of tests/vlm_fixtures.py whose tokenizer and chat template its
# checkpoint folder borrows, the image side in pixels: Qwen-VL takes any multiple of 28, 448 px is
# 256 image tokens; Idefics3's SigLIP tower has a fixed 512 px input, 64 tokens after the 4x4 shuffle)
REAL = {"qwen2-vl-2b": ("qwen2_vl", 448), "smolvlm-256m": ("idefics3", 512)}
TINY_PX = 32  # the tiny fixtures' image side
ROUND_DATA = ("data.train_images=12", "data.test_images=8")  # a round's data: the domain benchmark's 4 clients
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_RANK, LORA_ALPHA = 16, 32
# dense bf16 tensor-core peak, FLOP/s (NVIDIA data sheets), the first name the GPU's contains wins
PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12))
MFU_DEFINITION = ("6 * N * tokens/s / peak bf16 FLOP/s, the standard estimate; N: the language model's non-embedding "
                  "parameters (the vision side runs once per image and is cached; the LM head runs on the answer "
                  "positions only), tokens: every position the language model reads, image tokens included. LoRA "
                  "skips the frozen weights' gradients, so the work done is nearer 4 * N per token")


def fixtures():
    """tests/vlm_fixtures.py (tests/ is not a package: its folder goes on the path, as pytest puts it)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import vlm_fixtures

    return vlm_fixtures


def load_shape(name: str, layers: int | None = None):
    """The transformers config of a shipped shape (``configs/vlm/<name>.json``); with ``layers``, cut to that many
    decoder layers and one vision layer (widths unchanged: what one layer costs is measured on such copies)."""
    from transformers import AutoConfig

    d = json.loads((CONFIGS / f"{name}.json").read_text())
    if layers is not None:  # before the config is built: it derives per-layer settings from the count
        d["text_config"]["num_hidden_layers"] = layers
        d["text_config"].pop("max_window_layers", None)
        d["vision_config"]["depth" if "depth" in d["vision_config"] else "num_hidden_layers"] = 1
    return AutoConfig.for_model(d.pop("model_type"), **d)


def _parts(hf) -> dict[str, int]:
    """Parameter counts: total; vision tower and projector (Qwen-VL's projector, which sits inside its tower,
    counted as the projector); language model (the rest: decoder, embeddings and LM head, a tied head counted
    once); the language model's non-embedding parameters (its decoder layers: without the input embedding
    table, a lookup, and the LM head, which fedvl runs on the answer positions only); and what QLoRA quantises
    (the weights of the decoder's linear layers)."""
    from fedvl.models.vlm import _LANGUAGE, _PROJECTORS, _TOWERS, _attr

    ids = lambda m: {id(p) for p in m.parameters()} if m is not None else set()  # noqa: E731
    p = ids(_attr(hf, _PROJECTORS))
    t = ids(_attr(hf, _TOWERS)) - p
    every = {id(q): q.numel() for q in hf.parameters()}
    count = lambda s: sum(every[i] for i in s)  # noqa: E731
    language = every.keys() - t - p
    decoder = language - ids(hf.get_input_embeddings()) - ids(hf.get_output_embeddings())
    linears = [m.weight for m in _attr(hf, _LANGUAGE).modules() if isinstance(m, torch.nn.Linear)]
    return {"total": count(every), "vision": count(t), "projector": count(p), "language": count(language),
            "language_non_embedding": count(decoder), "quantizable": sum(w.numel() for w in linears)}


def meta_params(name: str) -> dict[str, int]:
    """Parameter counts of a shipped shape, built on the ``meta`` device (nothing allocated)."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        hf = AutoModelForImageTextToText.from_config(load_shape(name))
    return _parts(hf)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    gpu = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_BF16 if key in gpu), None)


def _tokenizer(family: str):
    """The tiny fixture's byte-level tokenizer and chat template for ``family`` (271 tokens: any larger
    embedding is consistent with it), with the special tokens the family's processor names."""
    vf = fixtures()
    if family == "qwen2_vl":
        return vf.fast_tokenizer(vf.chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
                                 image_token="<|image_pad|>", video_token="<|video_pad|>")
    if family == "idefics3":
        return vf.fast_tokenizer(vf.chat_template("<image>"), image_token="<image>",
                                 end_of_utterance_token="<end_of_utterance>",
                                 fake_image_token="<fake_token_around_image>", global_image_token="<global-img>")
    raise ValueError(family)


def bench_config(name: str, layers: int | None = None):
    """A shipped shape (:func:`load_shape`) with its special token ids moved onto the tiny tokenizer's (shapes
    unchanged), so that a checkpoint folder of it can carry that tokenizer and processor."""
    family, _ = REAL[name]
    cfg, tok = load_shape(name, layers), _tokenizer(family)
    ids = tok.convert_tokens_to_ids
    text = cfg.get_text_config()
    text.bos_token_id, text.eos_token_id, text.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    if family == "qwen2_vl":
        cfg.image_token_id, cfg.video_token_id = ids("<|image_pad|>"), ids("<|video_pad|>")
        cfg.vision_start_token_id, cfg.vision_end_token_id = ids("<|vision_start|>"), ids("<|vision_end|>")
    else:
        cfg.image_token_id = ids("<image>")
    return cfg


def save_checkpoint(name: str, hf, out: Path) -> Path:
    """``hf`` (built from :func:`bench_config`) saved as a checkpoint fedvl loads: its weights, the tiny
    tokenizer and chat template, and an image processor of the real input size."""
    import transformers as tf
    from transformers.utils import logging

    family, px = REAL[name]
    tok = _tokenizer(family)
    logging.disable_progress_bar()  # "Writing model shards"
    hf.save_pretrained(out)
    if family == "qwen2_vl":  # as on the hub: image processor, tokenizer and template, no video processor
        v = hf.config.vision_config
        tf.Qwen2VLImageProcessorPil(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                                    temporal_patch_size=v.temporal_patch_size, min_pixels=px * px,
                                    max_pixels=px * px).save_pretrained(out)
        tok.save_pretrained(out)
        (out / "chat_template.jinja").write_text(tok.chat_template)
    else:
        v = hf.config.vision_config
        ip = tf.Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": px},
                                          max_image_size={"longest_edge": px})
        tokens = (v.image_size // v.patch_size) ** 2 // hf.config.scale_factor ** 2
        tf.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=tokens,
                             chat_template=tok.chat_template).save_pretrained(out)
    return out


def random_pixels(cfg, n: int, px: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Processor-free image inputs of the family's own shape for ``n`` images of ``px`` pixels (Qwen-VL;
    the other families take their tower's fixed input size)."""
    v = cfg.vision_config
    kind = cfg.model_type
    if kind in ("qwen2_vl", "qwen2_5_vl"):  # flattened patches, (images * t * h * w, C * T * P * P)
        side = px // (v.patch_size * v.spatial_merge_size) * v.spatial_merge_size
        ch = getattr(v, "in_channels", 3)
        return {"pixel_values": torch.randn(n * side * side, ch * v.temporal_patch_size * v.patch_size ** 2,
                                            generator=g),
                "image_grid_thw": torch.tensor([[1, side, side]] * n)}
    s = v.image_size
    if kind == "idefics3":  # (batch, images per sample, C, H, W)
        return {"pixel_values": torch.randn(n, 1, 3, s, s, generator=g)}
    if kind in ("llava", "gemma3"):
        return {"pixel_values": torch.randn(n, 3, s, s, generator=g)}
    raise ValueError(f"no processor-free image inputs for model type {kind!r}")


def random_batch(cfg, counts: list[int], image_tokens: torch.Tensor, grid: torch.Tensor | None, batch: int,
                 seq_len: int, answer_len: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """fedvl's training batch (:meth:`GenerativeSplit.batch`) of random tokens: per sample one image's tokens
    (Qwen-VL's between its vision start and end tokens, which its multimodal rotary positions look for),
    random text to ``seq_len`` positions, the last ``answer_len`` of them the answer."""
    text = cfg.get_text_config()
    image_id = getattr(cfg, "image_token_id", None) or getattr(cfg, "image_token_index", None)
    specials = {image_id} | {getattr(cfg, k, None) for k in ("video_token_id", "vision_start_token_id",
                                                             "vision_end_token_id", "boi_token_index",
                                                             "eoi_token_index")}
    qwen = cfg.model_type in ("qwen2_vl", "qwen2_5_vl")
    ids = torch.randint(0, text.vocab_size, (batch, seq_len), generator=g)
    ids[torch.isin(ids, torch.tensor([s for s in specials if s is not None]))] = 0  # no stray image tokens
    rows = [b % len(counts) for b in range(batch)]
    for b, r in enumerate(rows):
        at = 2
        if qwen:
            ids[b, at] = cfg.vision_start_token_id
            at += 1
        ids[b, at:at + counts[r]] = image_id
        if qwen:
            ids[b, at + counts[r]] = cfg.vision_end_token_id
        if at + counts[r] + 1 + answer_len > seq_len:
            raise ValueError(f"seq_len {seq_len} is too short for {counts[r]} image tokens and the answer")
    target = torch.zeros(batch, seq_len, dtype=torch.bool)
    target[:, -answer_len:] = True
    starts = [0, *torch.tensor(counts).cumsum(0).tolist()]
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "target_mask": target,
           "image_tokens": torch.cat([image_tokens[starts[r]:starts[r + 1]] for r in rows]),
           "image_token_counts": torch.tensor([counts[r] for r in rows])}
    if qwen:  # the language model still reads the image grid and where the images are (its multimodal rotary
        # positions), as the processor marks them
        out["pixel.image_grid_thw"] = grid[rows]
        out["text.mm_token_type_ids"] = (ids == image_id).long()
    if cfg.model_type == "gemma3":  # its processor marks the image positions (bidirectional attention there)
        out["text.token_type_ids"] = (ids == image_id).long()
    return out


def _wrap_with_lora(hf):
    """fedvl's wrapper with peft LoRA (fedvl's own injection, role ``shared``) on the language model's
    q/k/v/o projections; only the LoRA factors train, kept in float32 (their AdamW state too)."""
    from fedvl.models.adapters import inject_lora
    from fedvl.models.parts import VisionSpec
    from fedvl.models.vlm import GenerativeVLM

    model = GenerativeVLM(hf, VisionSpec("bench", 0, "vlm"))
    inject_lora(model.language, "shared", LORA_RANK, LORA_ALPHA, LORA_TARGETS)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
        if ".lora_" in n:
            p.data = p.data.float()
    return model


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a timer sees it (device.py too)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(model, cfg, device: torch.device, autocast: bool, batch: int, seq_len: int, answer_len: int,
               steps: int, warmup: int, px: int, seed: int = 0) -> dict:
    """Tokens/s of ``steps`` LoRA training steps (AdamW) of ``model`` (a LoRA-wrapped GenerativeVLM) on random
    batches, after ``warmup`` untimed ones; peak GPU memory over the timed steps (weights, optimizer state
    and activations: the peak counter is reset after the warm-up, with everything but activations held)."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.vision.parameters()).dtype  # (never quantised: the language model's may be 4-bit)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    pixels = random_pixels(cfg, min(batch, 4), px, g)
    pixels = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in pixels.items()}
    with ctx():
        feats = model.image_features(pixels)  # the vision cache: the tower and projector once per image
    counts = [len(f) for f in feats]
    grid = pixels["image_grid_thw"].cpu() if "image_grid_thw" in pixels else None
    cpu_batch = random_batch(cfg, counts, torch.cat(feats).cpu(), grid, batch, seq_len, answer_len, g)
    data = {k: v.to(device) for k, v in cpu_batch.items()}
    labels = data["input_ids"][:, 1:][data["target_mask"][:, 1:]]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    losses = []

    def step():
        with ctx():
            logits = model.forward_batch(data)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        losses.append(step().detach())
    sync(device)
    dt = time.perf_counter() - t0
    out = {"tokens_per_s": steps * batch * seq_len / dt, "step_s": dt / steps, "batch": batch, "seq_len": seq_len,
           "image_tokens_per_sample": counts[0], "answer_tokens_per_sample": answer_len, "steps": steps,
           "loss": float(torch.stack(losses).mean()),
           "trainable_params": sum(p.numel() for p in params)}
    if device.type == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    del opt
    return out


def _mfu(row: dict, n_language: int, peak: float | None) -> None:
    if peak and "tokens_per_s" in row:
        row["mfu"] = 6 * n_language * row["tokens_per_s"] / peak


def _guard(fn, *args, **kw) -> dict:
    """One measurement; its failure (out of memory, a missing kernel) is recorded, not fatal: a GPU session's
    time is scarce and the other rows still count."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fedvl_round(checkpoint: Path, algo: str, device: torch.device, work: Path, tag: str,
                precision: str = "fp32") -> dict:
    """One round of fedvl (``run_experiment``: the domain benchmark's 4 clients, ``ROUND_DATA`` images each) on
    ``checkpoint``: FedAvg with LoRA on q/k/v/o (rank 16), or FedDAT with its decoder adapters."""
    from rich.console import Console

    from fedvl.config import load_config
    from fedvl.experiment import run_experiment

    threads = 1 if device.type == "cpu" else min(8, os.cpu_count() or 1)  # on a GPU: the processor and loading
    peft = (["model.peft=lora", f"model.lora_targets={','.join(LORA_TARGETS)}", f"model.lora_rank={LORA_RANK}",
             f"model.lora_alpha={LORA_ALPHA}"] if algo == "fedavg" else ["model.peft=adapter"])
    cfg = load_config(None, ["model.name=hf-vlm", f"model.checkpoint={checkpoint}", f"algorithm.name={algo}",
                             *peft, "model.max_new_tokens=4", *ROUND_DATA,
                             f"data.image_size={TINY_PX}", "algorithm.rounds=1", "algorithm.batch_size=8",
                             f"run.device={device}", f"run.precision={precision}", f"run.threads={threads}",
                             f"run.output_dir={work / 'runs'}", f"run.cache_dir={work / ('cache-' + tag)}"])
    t0 = time.perf_counter()
    out = run_experiment(cfg, work / "runs" / f"{tag}-{algo}", console=Console(file=io.StringIO()),
                         progress_enabled=False)
    return {"round_s": out["wall_s"] - out["setup_s"], "setup_s": out["setup_s"], "total_s": time.perf_counter() - t0,
            "train_loss": out["final"]["train_loss"]}


def _rounds(checkpoint: Path, device: torch.device, work: Path, tag: str, precision: str) -> dict:
    return {"fedavg-lora": _guard(fedvl_round, checkpoint, "fedavg", device, work, tag, precision),
            "feddat": _guard(fedvl_round, checkpoint, "feddat", device, work, tag, precision)}


def real_size(name: str, device: torch.device, work: Path, steps: int, warmup: int, batch: int,
              seq_len: int, answer_len: int) -> dict:
    """One shipped shape on a GPU: bf16 LoRA training with and without gradient checkpointing, the same on a
    4-bit NF4 base, and one FedAvg-LoRA and one FedDAT round through fedvl."""
    from transformers import AutoModelForImageTextToText

    _, px = REAL[name]
    cfg = bench_config(name)
    row: dict = {"params": meta_params(name)}
    peak = peak_flops(device)
    n_lang = row["params"]["language_non_embedding"]
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    # the checkpoint folder the 4-bit load and fedvl's rounds read: the base weights as built, no LoRA
    ckpt = save_checkpoint(name, hf, work / f"{name}-random")
    model = _wrap_with_lora(hf)
    args = (batch, seq_len, answer_len, steps, warmup, px)
    row["bf16"] = _guard(train_rate, model, cfg, device, True, *args)
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    row["bf16+gradient_checkpointing"] = _guard(train_rate, model, cfg, device, True, *args)
    del model, hf
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if importlib.util.find_spec("bitsandbytes") is None:
        row["nf4"] = {"skipped": "bitsandbytes not installed (pip install 'fedvl[qlora]')"}
    else:
        row["nf4"] = _guard(_nf4_rate, ckpt, cfg, device, *args)
    for key in ("bf16", "bf16+gradient_checkpointing", "nf4"):
        _mfu(row[key], n_lang, peak)
    row["rounds"] = _rounds(ckpt, device, work, name, "bf16")
    return row


def _nf4_rate(ckpt: Path, cfg, device: torch.device, batch: int, seq_len: int, answer_len: int, steps: int,
              warmup: int, px: int) -> dict:
    """QLoRA as fedvl loads it (:func:`fedvl.models.vlm._quantised`: NF4, double quantisation, bf16 compute,
    vision side and LM head unquantised), with gradient checkpointing off and on."""
    from transformers import AutoModelForImageTextToText

    from fedvl.models.vlm import _quantised

    hf = AutoModelForImageTextToText.from_pretrained(str(ckpt), local_files_only=True, dtype=torch.bfloat16,
                                                     **_quantised(ckpt, device))
    model = _wrap_with_lora(hf)
    out = train_rate(model, cfg, device, True, batch, seq_len, answer_len, steps, warmup, px)
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ck = train_rate(model, cfg, device, True, batch, seq_len, answer_len, steps, warmup, px)
    out["with_gradient_checkpointing"] = {k: ck[k] for k in ("tokens_per_s", "step_s", "peak_gpu_gb")}
    return out


def tiny(family: str, work: Path, steps: int, warmup: int, batch: int, seq_len: int, answer_len: int) -> dict:
    """One tiny family of tests/vlm_fixtures.py on the CPU: LoRA tokens/s (fp32), and one FedAvg-LoRA and one
    FedDAT round through fedvl on its checkpoint."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    ckpt = fixtures().build(family, work / f"tiny-{family}")
    cfg = AutoConfig.from_pretrained(str(ckpt), local_files_only=True)
    torch.manual_seed(0)
    hf = AutoModelForImageTextToText.from_config(cfg)
    row: dict = {"params": _parts(hf)}
    model = _wrap_with_lora(hf)
    row["fp32"] = train_rate(model, cfg, torch.device("cpu"), False, batch, seq_len, answer_len, steps, warmup,
                             TINY_PX)
    row["rounds"] = {"fedavg-lora": fedvl_round(ckpt, "fedavg", torch.device("cpu"), work, family),
                     "feddat": fedvl_round(ckpt, "feddat", torch.device("cpu"), work, family)}
    return row


def run(device: torch.device, work: Path, steps: int | None = None, warmup: int | None = None,
        families: tuple[str, ...] | None = None, batch: int | None = None, seq_len: int | None = None) -> dict:
    """The ``generative`` section of benchmarks/device.py: real-size shapes on a GPU, tiny families on the CPU
    (both: the real shapes' parameter counts, built on the meta device)."""
    gpu = device.type == "cuda"
    out: dict = {"inputs": "random tokens; one image per sample, random pixels of the model's input shape run once "
                           "through the vision tower and projector and cached (as fedvl trains), LoRA rank 16 on "
                           "the language model's q/k/v/o projections, AdamW",
                 "real_size_params": {name: meta_params(name) for name in REAL}}
    if gpu:
        out["weights"] = "bf16 base, float32 LoRA, bf16 autocast"
        out["mfu_definition"] = MFU_DEFINITION
        out["peak_bf16_flops"] = peak_flops(device)
        steps, warmup = steps or 10, warmup if warmup is not None else 3
        out["models"] = {name: _guard(real_size, name, device, work, steps, warmup, batch or 8, seq_len or 512, 16)
                         for name in REAL}
    else:
        out["weights"] = "float32 (CPU: tokens/s only)"
        out["threads"] = 1
        steps, warmup = steps or 3, warmup if warmup is not None else 1
        fams = families or fixtures().FAMILIES
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the rounds run (run.threads=1)
        try:
            out["models"] = {f"tiny-{f}": tiny(f, work, steps, warmup, batch or 4, seq_len or 64, 8) for f in fams}
        finally:
            torch.set_num_threads(threads)
    return out


# the computed memory table of docs/generative.md ("Memory and speed")
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8  # 4 bits; an 8-bit absmax per 64 weights, an fp32 one per 256 of those
LORA_BYTES = 4 + 4 + 8  # a float32 LoRA parameter, its gradient and AdamW's two moments


def saved_bytes(name: str, layers: int, batch: int, seq_len: int, answer_len: int, weights: torch.dtype,
                checkpointing: bool) -> dict:
    """What autograd keeps for backward in one LoRA training forward (bf16 autocast, on the CPU) of ``name`` cut to
    ``layers`` decoder layers: the bytes of every saved tensor that is not a parameter (activations, and with
    float32 weights the bf16 copies autocast makes of the frozen weights, which the backward needs), and the
    LoRA parameters. The attention is PyTorch's memory-efficient kernel on the CPU too: no (seq x seq) term."""
    from transformers import AutoModelForImageTextToText

    _, px = REAL[name]
    cfg = bench_config(name, layers)
    torch.manual_seed(0)
    hf = AutoModelForImageTextToText.from_config(cfg, dtype=weights)
    model = _wrap_with_lora(hf)
    if checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    g = torch.Generator().manual_seed(0)
    pixels = {k: v.to(weights) if v.is_floating_point() else v for k, v in random_pixels(cfg, 1, px, g).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.image_features(pixels)
    data = random_batch(cfg, [len(feats[0])], feats[0], pixels.get("image_grid_thw"), batch, seq_len, answer_len, g)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            kept[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.forward_batch(data)
        torch.nn.functional.cross_entropy(logits.float(), data["input_ids"][:, 1:][data["target_mask"][:, 1:]])
    return {"saved": sum(kept.values()), "lora": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def memory_table(batch: int = 8, seq_len: int = 512, answer_len: int = 16) -> list[dict]:
    """Peak training memory by shape and method, computed (GB, 1e9 bytes): weights + LoRA state + activations.

    Weights: 2 bytes per parameter in bf16, 4 in float32, ``NF4_BYTES`` for QLoRA's quantised decoder linears (the
    rest in bf16). LoRA state: ``LORA_BYTES`` per LoRA parameter. Activations: :func:`saved_bytes` of 1- and
    2-layer copies, extrapolated linearly to every layer (what a layer keeps does not depend on the others);
    with gradient checkpointing, plus one layer's full activations (recomputed in its backward). QLoRA keeps
    what the bf16 base keeps (bitsandbytes dequantises the weights again in the backward). Not included: the
    CUDA context, allocator slack, and transients (the logits, the backward's gradients in flight)."""
    rows = []
    for name in REAL:
        p = meta_params(name)
        n_layers = load_shape(name).get_text_config().num_hidden_layers
        act = {}
        for weights in (torch.bfloat16, torch.float32):
            m = {ck: [saved_bytes(name, k, batch, seq_len, answer_len, weights, ck) for k in (1, 2)]
                 for ck in (False, True)}
            every = lambda r: r[0]["saved"] + (n_layers - 1) * (r[1]["saved"] - r[0]["saved"])  # noqa: E731
            act[weights, False] = every(m[False])
            act[weights, True] = every(m[True]) + m[False][1]["saved"] - m[False][0]["saved"]
            lora = n_layers * (m[False][1]["lora"] - m[False][0]["lora"])
        methods = {"LoRA, bf16 base": (2 * p["total"], act[torch.bfloat16, False]),
                   "LoRA, bf16 base, gradient checkpointing": (2 * p["total"], act[torch.bfloat16, True]),
                   "QLoRA (NF4 base)": (NF4_BYTES * p["quantizable"] + 2 * (p["total"] - p["quantizable"]),
                                        act[torch.bfloat16, False]),
                   "QLoRA (NF4 base), gradient checkpointing": (
                       NF4_BYTES * p["quantizable"] + 2 * (p["total"] - p["quantizable"]), act[torch.bfloat16, True]),
                   "LoRA, float32 base, bf16 autocast (fedvl's hf-vlm today)": (4 * p["total"],
                                                                               act[torch.float32, False]),
                   "LoRA, float32 base, bf16 autocast, gradient checkpointing": (4 * p["total"],
                                                                                 act[torch.float32, True])}
        for method, (w, a) in methods.items():
            rows.append({"model": name, "params": p["total"], "method": method, "weights_gb": w / 1e9,
                         "lora_state_gb": LORA_BYTES * lora / 1e9, "activations_gb": a / 1e9,
                         "total_gb": (w + LORA_BYTES * lora + a) / 1e9, "batch": batch, "seq_len": seq_len})
    return rows


def summary_rows(gen: dict) -> list[str]:
    """The printed rows: one per model and measurement, then the round times."""
    lines = []
    for name, row in gen["models"].items():
        if "error" in row:
            lines.append(f"{name:44s} {row['error']}")
            continue
        for key, m in row.items():
            if key in ("params", "rounds"):
                continue
            if "tokens_per_s" not in m:
                lines.append(f"{name + '/' + key:44s} {m.get('error') or m.get('skipped')}")
                continue
            extra = [f"{1000 * m['step_s']:.1f} ms/step"]
            if "peak_gpu_gb" in m:
                extra.append(f"peak {m['peak_gpu_gb']:.2f} GB")
            if m.get("mfu") is not None:
                extra.append(f"MFU {100 * m['mfu']:.1f}%")
            ck = m.get("with_gradient_checkpointing")
            if ck:
                extra.append(f"with checkpointing {ck['tokens_per_s']:.0f} tokens/s, peak {ck['peak_gpu_gb']:.2f} GB")
            lines.append(f"{name + '/' + key:44s} {m['tokens_per_s']:9.0f} tokens/s  ({', '.join(extra)})")
        for algo, r in row.get("rounds", {}).items():
            text = f"{r['round_s']:.1f} s (setup {r['setup_s']:.1f} s)" if "round_s" in r else r.get("error")
            lines.append(f"{name + '/' + algo + ' round':44s} {text}")
    for name, p in gen["real_size_params"].items():
        lines.append(f"{name:44s} {p['total'] / 1e9:.3f}B parameters (language {p['language'] / 1e9:.3f}B, "
                     f"vision {p['vision'] / 1e9:.3f}B, projector {p['projector'] / 1e9:.3f}B)")
    return lines



if __name__ == "__main__":  # the computed table of docs/generative.md (about 2 minutes on 2 CPU cores)
    if sys.argv[1:] != ["--memory-table"]:
        raise SystemExit("usage: python benchmarks/vlm_throughput.py --memory-table   (the rows: benchmarks/device.py)")
    print("| model | method | weights | LoRA + AdamW | activations | total |\n|---|---|---:|---:|---:|---:|")
    for r in memory_table():
        print(f"| {r['model']} ({r['params'] / 1e9:.2f}B) | {r['method']} | {r['weights_gb']:.2f} | "
              f"{r['lora_state_gb']:.2f} | {r['activations_gb']:.2f} | {r['total_gb']:.1f} |")
