"""Generative vision-language models (``model.name=hf-vlm``): LLaVA, Qwen2-VL / Qwen2.5-VL,
SmolVLM / Idefics3, Gemma 3 and any other image-text-to-text family transformers loads with
``AutoModelForImageTextToText`` and ``AutoProcessor``.

The answer is generated, not classified: training is next-token cross-entropy on the answer
tokens of the checkpoint's own chat template (:mod:`fedvl.data.vlm_encode` renders it), evaluation
decodes greedily and scores the text (:mod:`fedvl.engine.generate`).

Parameter groups (:mod:`fedvl.models.params`) by the names registered here: ``connector.`` (the
multimodal projector: frozen unless ``model.train_connector``), ``vision.`` (the vision tower, always
frozen) and ``lm.`` (everything else of the checkpoint: the language model, its PEFT modules and the
LM head). The projector and tower are registered before the whole checkpoint, so their parameters get
those names (``named_parameters`` lists a shared tensor once, under its first name).

With the projector frozen, what the vision side computes for an image is a constant: the encoder
caches it (the projector's output, one ``(tokens, hidden)`` tensor per image) and the language model
reads it through transformers' ``mm_encoder_outputs``. With ``model.train_connector`` the projector
trains, so the pixels are kept and the frozen tower runs in every step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from fedvl.models.adapters import inject_adapters, inject_lora
from fedvl.models.parts import ModelUnavailableError, VisionSpec
from fedvl.schema import ConfigError, ModelConfig

# Where each family keeps its tower, projector and language model (attribute paths under the checkpoint).
_TOWERS = ("model.vision_tower", "model.visual", "model.vision_model")
_PROJECTORS = ("model.multi_modal_projector", "model.visual.merger", "model.connector")
_LANGUAGE = ("model.language_model", "model.text_model")
# model.lora_targets may use the encoder names the other models use; decoders call them *_proj.
LORA_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"}
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _attr(root: nn.Module, paths: tuple[str, ...]) -> nn.Module | None:
    for path in paths:
        obj = root
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.Module):
            return obj
    return None


class _InertVideo:
    """Stands in for the video processor transformers builds with torchvision, which has no build beside
    the CPU torch wheel; fedvl never passes videos. Only used when the real one cannot be built."""

    merge_size = 2
    model_input_names: list[str] = []
    _auto_class = None

    def to_dict(self) -> dict:
        return {}


def _allow_inert_video() -> None:
    import transformers
    from transformers import processing_utils

    for mod in (transformers, processing_utils.transformers_module):
        try:
            getattr(mod, "VideoProcessorMixin")
        except Exception:  # transformers' placeholder raises: torchvision is missing
            setattr(mod, "VideoProcessorMixin", _InertVideo)


def load_processor(path: Path):
    """The checkpoint's processor (chat template, tokenizer, image processor). Qwen-VL's processors also
    build a video processor, which needs torchvision; without it the processor is assembled from its
    parts with an inert video processor."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except ImportError:
        pass
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    cls = getattr(transformers, PROCESSOR_MAPPING_NAMES.get(model_type, ""), None)
    if cls is None:
        raise ModelUnavailableError(f"model.checkpoint={path}: no processor for model type {model_type!r}")
    template = None
    for name in ("chat_template.jinja", "chat_template.json"):
        f = path / name
        if f.is_file():
            text = f.read_text()
            template = json.loads(text)["chat_template"] if name.endswith(".json") else text
            break
    _allow_inert_video()
    return cls(image_processor=AutoImageProcessor.from_pretrained(str(path), local_files_only=True),
               tokenizer=AutoTokenizer.from_pretrained(str(path), local_files_only=True),
               video_processor=_InertVideo(), chat_template=template)


class GenerativeVLM(nn.Module):
    """A transformers image-text-to-text checkpoint behind fedvl's model interface (see the module doc)."""

    generative = True

    def __init__(self, hf: nn.Module, vision_spec: VisionSpec):
        super().__init__()
        projector, tower = _attr(hf, _PROJECTORS), _attr(hf, _TOWERS)
        if projector is None or tower is None:
            raise ModelUnavailableError(f"{type(hf).__name__}: fedvl does not know where its vision tower and "
                                        "multimodal projector are")
        self.connector = projector  # registered first: its parameters are ``connector.*`` (see module doc)
        self.vision = tower.eval().requires_grad_(False)
        self.lm = hf
        self.vision_spec = vision_spec
        self.language = _attr(hf, _LANGUAGE)
        self.adapter_mix = None
        # how the family hands image tokens to its language model (learnt from get_image_features)
        self.stacked_image_tokens = False
        self.frozen_groups: tuple[str, ...] = ("connector",)
        self.base_report: dict = {}

    @property
    def cache_vision(self) -> bool:
        """The projector is frozen, so the vision side's output per image is a constant (cached)."""
        return "connector" in self.frozen_groups

    def train(self, mode: bool = True) -> "GenerativeVLM":
        super().train(mode)
        self.vision.eval()
        return self

    @torch.no_grad()
    def image_features(self, pixels: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The language model's image tokens for a batch of images: one (tokens, hidden) tensor each."""
        was = self.connector.training
        self.connector.eval()
        out = self.lm.get_image_features(**_to(pixels, self.device), return_dict=True).pooler_output
        self.connector.train(was)
        self.stacked_image_tokens = isinstance(out, torch.Tensor) and out.dim() == 3
        return [t.reshape(-1, t.shape[-1]) for t in out]

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict:
        """Keyword arguments for the checkpoint: text tensors, and the cached image tokens or the pixels."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        kw = {k[len("text."):]: v for k, v in batch.items() if k.startswith("text.")}
        pix = {k[len("pixel."):]: v for k, v in batch.items() if k.startswith("pixel.")}
        if "image_tokens" in batch:
            counts = batch["image_token_counts"].tolist()
            tokens = batch["image_tokens"]
            # (images, tokens, hidden) as the fixed-size families return it; a list where sizes differ (Qwen)
            if self.stacked_image_tokens:  # a (images, tokens, hidden) tensor, as the family returns it (Gemma 3)
                tokens = tokens.view(len(counts), counts[0], -1)
            else:  # one tensor per image (LLaVA, Qwen, Idefics3)
                tokens = list(tokens.split(counts))
            kw["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tokens)}
            # the language model still reads the image grid (Qwen's multimodal rotary positions)
            kw.update({k: v for k, v in pix.items() if k != "pixel_values"})
        else:
            kw.update(pix)
        return kw

    def forward_batch(self, batch: dict[str, torch.Tensor], task: str = "vqa") -> torch.Tensor:
        """Next-token logits at the positions that predict an answer token, (answer tokens, vocab),
        in (sample, position) order: the order of ``batch["labels"]``. The LM head runs on those
        positions only (a full (batch, length, vocab) tensor would dominate memory)."""
        kw = self._inputs(batch)
        out = self.lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                            **kw)
        hidden = out.last_hidden_state[:, :-1][batch["target_mask"][:, 1:]]
        logits = self.lm.lm_head(hidden)
        cap = getattr(self.lm.config.get_text_config(), "final_logit_softcapping", None)
        if cap:  # Gemma's logits are soft-capped in its own forward: the same here
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(self, *args, **kwargs):
        raise TypeError("a generative model is called with forward_batch(batch) (see fedvl.engine.loops.forward_logits)")

    def set_adapter_mix(self, weights: dict[str, float]) -> None:
        if self.adapter_mix is None:
            raise RuntimeError("this model has no bottleneck adapters")
        self.adapter_mix.set(weights)


def _to(d: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in d.items()}


def lora_targets(cfg: ModelConfig) -> list[str]:
    """The decoder's projection names ``model.lora_targets`` asks for (``query`` -> ``q_proj``, ...)."""
    out = []
    for t in cfg.lora_targets:
        name = LORA_ALIASES.get(t, t)
        if name not in DECODER_LINEARS:
            raise ConfigError(f"model.lora_targets: {t!r} is not a projection of a decoder layer "
                              f"(known: {', '.join(DECODER_LINEARS)}, or query/key/value/output)")
        out.append(name)
    return out


def _digest(path: Path) -> str:
    """The checkpoint's identity for the vision cache: its config and weight files' sizes and times would
    miss an in-place rewrite, so the weights' safetensors headers (names, shapes, offsets) are hashed
    along with the config."""
    import hashlib

    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(n, 1 << 24)))
        h.update(str(f.stat().st_size).encode())
    return h.hexdigest()[:16]


def _quantised(path: Path, device) -> dict:
    """from_pretrained arguments for QLoRA: NF4 with double quantisation, bf16 compute (Dettmers et al.
    2023, https://arxiv.org/abs/2305.14314), on ``device``; the vision side and the LM head unquantised
    (the tower's output is cached and the projector may train; 4-bit logits lose the answer's margin)."""
    from transformers import BitsAndBytesConfig

    if device is None or torch.device(device).type != "cuda":
        raise ConfigError("model.quantize=4bit (QLoRA) needs a CUDA device")
    skip = ["vision_tower", "visual", "vision_model", "multi_modal_projector", "connector", "merger", "lm_head"]
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=skip)
    return {"quantization_config": q, "device_map": {"": str(torch.device(device))}}


def build_vlm(cfg: ModelConfig, seed: int, roles: tuple[str, ...], device=None) -> GenerativeVLM:
    """Load ``model.checkpoint`` and attach the PEFT modules ``model.peft`` asks for to its language model.
    New modules (adapters, LoRA) are initialised from ``seed``; ``device``: where a 4-bit base is loaded
    (``model.quantize=4bit``; otherwise the model is built on the CPU and moved by the caller)."""
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    from fedvl.models.hf import resolve_checkpoint

    path = resolve_checkpoint(cfg)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    extra = _quantised(path, device) if cfg.quantize == "4bit" else {}
    try:
        hf = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True, dtype=torch.float32,
                                                         **extra)
    except (OSError, ValueError, KeyError) as e:
        raise ModelUnavailableError(f"model.checkpoint={cfg.checkpoint}: not a loadable image-text-to-text "
                                    f"checkpoint ({' '.join(str(e).split())[:200]})") from None
    spec = VisionSpec(f"vlm-{hf.config.model_type}-{_digest(path)}", 0, "vlm", version=1)
    model = GenerativeVLM(hf, spec)
    model.processor = load_processor(path)  # a plain attribute: chat template, tokenizer, image processor
    if cfg.train_connector:
        model.frozen_groups = ()
    if model.language is None:
        raise ModelUnavailableError(f"{type(hf).__name__}: fedvl does not know where its language model is")
    torch.manual_seed(seed + 1)
    if cfg.peft == "adapter":
        model.adapter_mix = inject_adapters(model.language.layers, list(roles), cfg.adapter_reduction, "decoder")
    elif cfg.peft == "lora":
        targets = lora_targets(cfg)
        for role in roles:
            inject_lora(model.language, role, cfg.lora_rank, cfg.lora_alpha, targets)
    if cfg.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def check_options(cfg) -> None:
    """model.name=hf-vlm: what a generative checkpoint can do (fedvl.models.vlm)."""
    m = cfg.model
    if not m.checkpoint:
        raise ConfigError("model.name=hf-vlm needs model.checkpoint (a local checkpoint directory, or a repo id in "
                          "the local Hugging Face cache)")
    if m.peft not in ("lora", "adapter", "full", "bitfit", "layernorm"):
        raise ConfigError(f"model.peft={m.peft} is not available with model.name=hf-vlm "
                          "(lora, adapter, full, bitfit, layernorm): a generative model has no answer head")
    lora_targets(m)
    if m.quantize == "4bit":
        _check_qlora(cfg)
    if len(set(m.lora_targets)) != len(m.lora_targets):
        raise ConfigError(f"model.lora_targets names a layer twice: {','.join(m.lora_targets)}")
    if cfg.data.benchmark == "task":
        raise ConfigError("data.benchmark=task needs one answer head per task; use it with a classifier model "
                          "(model.name=default, tiny, vilt, clip, blip)")


def _check_qlora(cfg) -> None:
    import importlib.util

    from fedvl.engine.device import DeviceError, resolve_device

    if cfg.model.peft != "lora":
        raise ConfigError(f"model.quantize=4bit (QLoRA) trains LoRA on the 4-bit base: use model.peft=lora, "
                          f"not {cfg.model.peft}")
    try:
        device = resolve_device(cfg.run.device)
    except DeviceError as e:
        raise ConfigError(str(e)) from None
    if device.type != "cuda" and cfg.run.runtime != "flower-deploy":
        raise ConfigError(f"model.quantize=4bit (QLoRA) needs a CUDA device (bitsandbytes' 4-bit kernels); "
                          f"run.device={cfg.run.device} is {device.type} here: use model.quantize=none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.quantize=4bit needs bitsandbytes: pip install 'fedvl[qlora]'")
