"""Hugging Face vision-language checkpoints behind the model interface the algorithms use.

``model.name``:

* ``vilt`` - ViLT (Kim et al. 2021, https://arxiv.org/abs/2102.03334), the
  backbone of FedDAT's experiments. A ``ViltForQuestionAnswering`` (or
  ``ViltModel``) checkpoint loads into ``ViltModel``; its 3129-answer
  classifier is not used, each client has its own answer head. The frozen
  part is the visual embedding (patch projection + position + [CLS]), so its
  output is what the feature cache stores; adapters sit after the
  feed-forward block of every layer (FedDAT's sites).
* ``clip`` - CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020): the
  frozen vision tower's patch tokens are cached; the text tower carries the
  adapters / LoRA; a connector projects the patch tokens to the text width and
  the answer head attends over question and patch tokens (late fusion: CLIP
  has no fusion layers of its own).
* ``blip`` - BLIP (Li et al. 2022, https://arxiv.org/abs/2201.12086): the frozen
  ViT's tokens are cached; the image-grounded text encoder (cross-attention to
  them) carries the adapters / LoRA; its decoder is not used.

Every wrapper exposes ``vision`` (frozen), ``text``, ``connector``, ``head``
(one answer head per task), ``adapter_mix`` / ``set_adapter_mix``,
``image_features`` and ``forward(input_ids, attention_mask, features, task)``,
like :class:`fedvl.models.backbones.VisionLanguageModel`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from fedvl.models.adapters import inject_adapters, inject_lora
from fedvl.models.parts import AnswerHead, ModelUnavailableError, VisionSpec
from fedvl.schema import ModelConfig

DEFAULT_CHECKPOINTS = {"vilt": "dandelin/vilt-b32-finetuned-vqa", "clip": "openai/clip-vit-base-patch32",
                       "blip": "Salesforce/blip-vqa-base"}
# Pixel statistics when the checkpoint has no preprocessor_config.json.
_DEFAULT_NORM = {"vilt": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                 "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                 "blip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}
# model.lora_targets are written with BERT's names; CLIP calls the same projections q/k/v_proj.
LORA_ALIASES = {"clip": {"query": "q_proj", "key": "k_proj", "value": "v_proj"}}
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_checkpoint(cfg: ModelConfig) -> Path:
    """The checkpoint directory: ``cfg.checkpoint`` as a local directory, or a repo id
    found in the local Hugging Face cache. Never downloads."""

    if not cfg.checkpoint and cfg.name not in DEFAULT_CHECKPOINTS:
        raise ModelUnavailableError(f"model.name={cfg.name} needs model.checkpoint (a local directory or a repo id "
                                    "in the local Hugging Face cache)")
    ref = cfg.checkpoint or DEFAULT_CHECKPOINTS[cfg.name]
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(f"model.checkpoint={ref}: no config.json in that directory "
                                        "(save a model there with save_pretrained or huggingface-cli download)")
        return path
    if _REPO_ID.match(ref):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(ref, local_files_only=True))
        except Exception:  # not in the cache (or the cache is unreadable): say how to get it below
            pass
    repo = ref if _REPO_ID.match(ref) else DEFAULT_CHECKPOINTS.get(cfg.name, "<repo id>")
    raise ModelUnavailableError(
        f"model.name={cfg.name}: checkpoint {ref!r} is neither a local directory nor in the Hugging Face cache; "
        f"get it with `huggingface-cli download {repo} --local-dir <dir>` and set model.checkpoint=<dir>"
    )


def _pixel_norm(path: Path, kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        doc = json.loads(pre.read_text())
        if "image_mean" in doc and "image_std" in doc:
            return tuple(doc["image_mean"]), tuple(doc["image_std"])
    return _DEFAULT_NORM[kind]


def _digest(module: nn.Module) -> str:
    """Hash of the frozen vision weights: part of the feature-cache key, so another checkpoint misses it."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class _ViltVisual(nn.Module):
    """The parameters of ViLT's visual embedding, registered under ``vision.`` (frozen).

    They are the same tensors as in ``text.embeddings``; registering them here
    first gives them the ``vision.`` names (named_parameters lists a shared
    tensor once, under its first name), so they fall in the frozen group.
    """

    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.patch_embeddings = embeddings.patch_embeddings
        self.pos = nn.ParameterDict({"cls_token": embeddings.cls_token,
                                     "position_embeddings": embeddings.position_embeddings})


class HFVisionLanguageModel(nn.Module):
    def __init__(self, kind: str, text: nn.Module, vision: nn.Module, vision_spec, vision_width: int,
                 vision_size: int | None, heads: dict[str, int], head_hidden: int,
                 pixel_norm: tuple[tuple[float, ...], tuple[float, ...]]):

        super().__init__()
        self.kind = kind
        self.vision = vision.eval().requires_grad_(False)  # registered first: see _ViltVisual
        self.text = text
        self.vision_spec = vision_spec
        self.vision_size = vision_size  # CLIP / BLIP: the ViT's input size; ViLT: any (positions interpolate)
        self.feature_channels = vision_width
        hidden = text.config.hidden_size
        # CLIP's towers have different widths and no fusion: project the patch tokens. ViLT and BLIP
        # read the frozen tokens with their own pretrained layers, so they need no new connector.
        self.connector = nn.ModuleDict()
        if kind == "clip":
            self.connector.update({"norm": nn.LayerNorm(vision_width), "proj": nn.Linear(vision_width, hidden)})
        self.head = nn.ModuleDict({t: AnswerHead(hidden, head_hidden, n) for t, n in heads.items()})
        self.adapter_mix = None
        self.prompt = nn.ParameterDict()  # prompt tuning: default model only (config rejects it here)
        mean, std = pixel_norm
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "HFVisionLanguageModel":
        super().train(mode)
        self.vision.eval()
        return self

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> frozen tokens (B, T, C): ViLT's visual embeddings
        (with [CLS] and positions), or the last hidden state of CLIP's / BLIP's ViT."""
        x = images.to(self._mean.device).permute(0, 3, 1, 2).float().div_(255.0)  # on the model's device
        if self.vision_size and x.shape[-1] != self.vision_size:
            x = nn.functional.interpolate(x, size=(self.vision_size, self.vision_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        x = (x - self._mean) / self._std
        if self.kind == "vilt":
            emb = self.text.embeddings
            was = emb.training
            emb.eval()  # no dropout in what gets cached
            mask = torch.ones(x.shape[0], x.shape[2], x.shape[3], dtype=torch.long, device=x.device)
            # max_image_length=-1: keep every patch (ViLT samples at most 200 when training on large images)
            tokens, _, _ = emb.visual_embed(x, mask, max_image_length=-1)
            emb.train(was)
            return tokens
        return self.vision(pixel_values=x).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor,
                task: str = "vqa") -> torch.Tensor:
        if task not in self.head:
            raise KeyError(f"this model has no {task!r} head (heads: {', '.join(self.head)})")
        vis = features.float()
        vis_mask = attention_mask.new_ones(vis.shape[0], vis.shape[1])
        if self.kind == "vilt":
            h = self.text(input_ids=input_ids, attention_mask=attention_mask, image_embeds=vis,
                          pixel_mask=vis_mask).last_hidden_state
            mask = torch.cat([attention_mask, vis_mask], dim=1)
        elif self.kind == "blip":
            h = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=vis,
                          encoder_attention_mask=vis_mask).last_hidden_state
            mask = attention_mask
        else:
            text_h = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            h = torch.cat([text_h, self.connector.proj(self.connector.norm(vis))], dim=1)
            mask = torch.cat([attention_mask, vis_mask], dim=1)
        return self.head[task](h, mask, text_len=input_ids.shape[1])

    def set_adapter_mix(self, weights: dict[str, float]) -> None:
        if self.adapter_mix is None:
            raise RuntimeError("this model has no bottleneck adapters")
        self.adapter_mix.set(weights)


def _load(kind: str, path: Path) -> tuple[nn.Module, nn.Module, int, int | None, nn.Module, str]:
    """(text module, vision module, vision width, ViT input size, encoder layers, adapter family)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # unused heads / decoders in a checkpoint are expected
    hf_logging.disable_progress_bar()
    kw = {"local_files_only": True}
    if kind == "vilt":
        from transformers import ViltModel

        vilt = ViltModel.from_pretrained(str(path), add_pooling_layer=False, **kw)
        return vilt, _ViltVisual(vilt.embeddings), vilt.config.hidden_size, None, vilt.encoder.layer, "vilt"
    if kind == "clip":
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(str(path), **kw)
        vc = clip.config.vision_config
        return clip.text_model, clip.vision_model, vc.hidden_size, vc.image_size, clip.text_model.encoder.layers, "clip"
    from transformers import AutoConfig, BlipForImageTextRetrieval, BlipForQuestionAnswering

    arch = (AutoConfig.from_pretrained(str(path), **kw).architectures or [""])[0]
    cls = BlipForImageTextRetrieval if arch == "BlipForImageTextRetrieval" else BlipForQuestionAnswering
    blip = cls.from_pretrained(str(path), **kw)
    vc = blip.config.vision_config
    return blip.text_encoder, blip.vision_model, vc.hidden_size, vc.image_size, blip.text_encoder.encoder.layer, "bert"


def build_hf_model(cfg: ModelConfig, heads: dict[str, int], image_size: int, seed: int,
                   roles: tuple[str, ...]) -> HFVisionLanguageModel:
    """Load ``cfg.name``'s checkpoint and attach the PEFT modules ``cfg.peft`` asks for.

    Pretrained weights come from the checkpoint; new modules (head, connector,
    adapters, LoRA) are initialised from ``seed``.
    """

    path = resolve_checkpoint(cfg)
    text, vision, width, vit_size, layers, family = _load(cfg.name, path)
    torch.manual_seed(seed)
    spec = VisionSpec(f"{cfg.name}-{_digest(vision)}", vit_size or image_size, cfg.name, version=1)
    model = HFVisionLanguageModel(cfg.name, text, vision, spec, width, vit_size, heads, cfg.head_hidden,
                                  _pixel_norm(path, cfg.name))
    torch.manual_seed(seed + 1)
    if cfg.peft == "adapter":
        model.adapter_mix = inject_adapters(layers, list(roles), cfg.adapter_reduction, family)
    elif cfg.peft == "lora":
        alias = LORA_ALIASES.get(cfg.name, {})
        targets = [alias.get(t, t) for t in cfg.lora_targets]
        encoder = text.encoder
        for role in roles:
            inject_lora(encoder, role, cfg.lora_rank, cfg.lora_alpha, targets)
    return model


def load_hf_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_checkpoint(cfg)), local_files_only=True)
