"""The server's text-to-image model: a ``diffusers`` UNet2DConditionModel conditioned on a
frozen text encoder (the real MiniLM-L6 by default), trained with the DDPM objective and
sampled with a few-step DDIM scheduler and classifier-free guidance.

Two sources, one code path (:func:`build_generator`):

* ``t2i.source=fedvl``: our small pixel-space UNet (32 px), its text encoder MiniLM
  (``t2i.text=minilm``) or a tiny random BERT for tests (``t2i.text=tiny``). The pooled
  prompt embedding also enters the time embedding (``class_embed_type="projection"``),
  which is what made content (shape, colour) learnable at this size on a CPU.
* ``t2i.source=<folder>``: a Stable Diffusion style pipeline folder (``unet/``,
  ``text_encoder/``, ``tokenizer/``, optional ``vae/``), loaded from disk only; with a VAE
  the model works in latent space.

What trains in federation is chosen by name: peft LoRA on the UNet's attention
projections (role ``server``) plus a small residual adapter on the text side
(``cond.side``), both zero at the start so the federated model starts exactly at the
pretrained one. The base weights stay frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class TextConditioner(nn.Module):
    """Frozen text encoder with a cache per prompt, and a trainable residual ``side`` adapter
    (low rank, zero-initialised) on its token states: the generator's text-side embedding
    that FedMMKT's alignment loss shapes."""

    def __init__(self, tokenizer, encoder: nn.Module, max_len: int = 12, side_rank: int = 16):
        super().__init__()
        self.tokenizer, self.encoder, self.max_len = tokenizer, encoder, max_len
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        dim = encoder.config.hidden_size
        self.dim = dim
        self.side = nn.Sequential(nn.Linear(dim, side_rank, bias=False), nn.Linear(side_rank, dim, bias=False))
        nn.init.zeros_(self.side[1].weight)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def _base(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt not in self._cache:
            tok = self.tokenizer([prompt], padding="max_length", truncation=True, max_length=self.max_len,
                                 return_tensors="pt").to(self.side[0].weight.device)
            self.encoder.eval()
            out = self.encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            self._cache[prompt] = (out.last_hidden_state[0].float(), tok["attention_mask"][0].float())
        return self._cache[prompt]

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> token states (B, L, D) with the side adapter, attention mask (B, L), pooled (B, D)."""
        base = [self._base(p) for p in prompts]
        dev = self.side[0].weight.device  # the cache may predate a move to another device
        h = torch.stack([b[0] for b in base]).to(dev)
        mask = torch.stack([b[1] for b in base]).to(dev)
        h = h + self.side(h)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return h, mask, pooled


@dataclass
class Sampling:
    steps: int = 10
    guidance: float = 2.0
    batch_size: int = 64


class T2IGenerator(nn.Module):
    """UNet + text conditioner (+ optional VAE). ``loss`` is the (per-sample weighted) DDPM
    denoising objective; ``sample`` runs DDIM with classifier-free guidance."""

    def __init__(self, unet: nn.Module, cond: TextConditioner, prediction: str = "epsilon", vae=None,
                 image_size: int = 32, train_timesteps: int = 1000):
        super().__init__()
        from diffusers import DDIMScheduler, DDPMScheduler

        self.unet, self.cond, self.vae, self.image_size = unet, cond, vae, image_size
        kw = dict(num_train_timesteps=train_timesteps, beta_schedule="squaredcos_cap_v2", prediction_type=prediction)
        self.train_sched = DDPMScheduler(**kw)
        self.sample_sched = DDIMScheduler(**kw, clip_sample=vae is None, set_alpha_to_one=True)
        if vae is not None:
            for p in vae.parameters():
                p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- pixels <-> model space
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return images
        with torch.no_grad():
            return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x.clamp(-1, 1)
        with torch.no_grad():
            return self.vae.decode(x / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        h, mask, pooled = self.cond(prompts)
        extra = {"class_labels": pooled} if self.unet.config.class_embed_type == "projection" else {}
        return self.unet(x, t, encoder_hidden_states=h, encoder_attention_mask=mask, **extra).sample

    def loss(self, images: torch.Tensor, prompts: list[str], weights: torch.Tensor | None = None,
             cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Weighted mean over samples of the denoising MSE at a random timestep. With
        ``cond_dropout`` a share of prompts is replaced by "" (learns the unconditional
        model that classifier-free guidance needs)."""
        dev = self.device
        x0 = self._encode(images.to(dev))
        b = x0.shape[0]
        # noise and timesteps are drawn on the CPU from the seeded generator (the same draws on
        # every device), then moved
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        t = torch.randint(0, self.train_sched.config.num_train_timesteps, (b,), generator=generator).to(dev)
        if cond_dropout > 0:
            drop = torch.rand(b, generator=generator) < cond_dropout
            prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        xt = self.train_sched.add_noise(x0, noise, t)
        target = noise if self.train_sched.config.prediction_type == "epsilon" else \
            self.train_sched.get_velocity(x0, noise, t)
        per = (self._unet(xt, t, prompts) - target).pow(2).flatten(1).mean(1)
        if weights is None:
            return per.mean()
        weights = weights.to(dev)
        return (per * weights).sum() / weights.sum().clamp_min(1e-8)

    @torch.no_grad()
    def sample(self, prompts: list[str], sampling: Sampling, generator: torch.Generator,
               on_batch: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Images in [-1, 1], one per prompt, generated in batches."""
        was = self.training
        self.eval()
        out = []
        for start in range(0, len(prompts), sampling.batch_size):
            batch = prompts[start:start + sampling.batch_size]
            out.append(self._sample_batch(batch, sampling, generator))
            if on_batch:
                on_batch(start + len(batch), len(prompts))
        self.train(was)
        return torch.cat(out).float().cpu()  # images live on the CPU (judge, clients, plots)

    def _sample_batch(self, prompts: list[str], s: Sampling, generator: torch.Generator) -> torch.Tensor:
        sched = self.sample_sched
        sched.set_timesteps(s.steps)
        ch = self.unet.config.in_channels
        size = self.unet.config.sample_size
        x = torch.randn((len(prompts), ch, size, size), generator=generator).to(self.device)
        guided = s.guidance != 1.0
        for t in sched.timesteps:
            tt = t.expand(len(prompts) * (2 if guided else 1)).to(x.device)
            if guided:  # one batched pass for the conditional and the unconditional prediction
                both = self._unet(torch.cat([x, x]), tt, list(prompts) + [""] * len(prompts))
                cond, uncond = both.chunk(2)
                pred = uncond + s.guidance * (cond - uncond)
            else:
                pred = self._unet(x, tt, list(prompts))
            x = sched.step(pred, t, x).prev_sample
        return self._decode(x)

    # -- what trains in federation, by name
    def add_lora(self, rank: int, targets: list[str]) -> None:
        """LoRA on the UNet's ``targets``; a refusal by peft or diffusers is one ConfigError line."""
        from peft import LoraConfig

        from fedvl.schema import ConfigError

        try:
            self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True),
                                  adapter_name="server")
        except ValueError as e:
            raise ConfigError(f"t2i.lora_targets: peft refused {','.join(targets)}: "
                              f"{' '.join(str(e).split())[:300]}") from None

    def federated_names(self) -> list[str]:
        """The generator's federated parameters: the UNet's LoRA and the text-side adapter."""
        return [n for n, _ in self.named_parameters() if "lora_" in n or n.startswith("cond.side.")]

    def set_trainable(self, names: list[str]) -> None:
        keep = set(names)
        for n, p in self.named_parameters():
            p.requires_grad_(n in keep)


def tiny_unet_config(image_size: int, channels: list[int], cond_dim: int, in_channels: int = 3,
                     pooled: bool = True) -> dict:
    """Our pixel-space UNet: cross-attention only at the lowest resolution (the cost of
    attention at 16x16 and above was 2.5-4x per step here), one resnet per level."""
    n = len(channels)
    return dict(sample_size=image_size, in_channels=in_channels, out_channels=in_channels,
                block_out_channels=tuple(channels), layers_per_block=1,
                down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
                up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
                cross_attention_dim=cond_dim, attention_head_dim=8, norm_num_groups=8,
                class_embed_type="projection" if pooled else None,
                projection_class_embeddings_input_dim=cond_dim if pooled else None)


def _tiny_text():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertModel(cfg, add_pooling_layer=False)


def build_generator(t2i, seed: int = 0) -> T2IGenerator:
    """The generator ``t2i`` (a :class:`fedvl.fedmmkt.options.T2IConfig`) describes, base weights
    freshly initialised from ``seed`` (``fedvl``) or read from a pipeline folder."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer

    from fedvl.models.backbones import minilm_dir

    torch.manual_seed(seed)
    if t2i.source == "fedvl":
        if t2i.text == "minilm":
            from transformers import BertModel
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
            hf_logging.disable_progress_bar()
            encoder = BertModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False)
        else:
            encoder = _tiny_text()
        tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
        cond = TextConditioner(tokenizer, encoder, t2i.max_text_len, t2i.side_rank)
        unet = UNet2DConditionModel(**tiny_unet_config(t2i.image_size, t2i.channels, cond.dim))
        return T2IGenerator(unet, cond, t2i.prediction, image_size=t2i.image_size)
    return load_pipeline_folder(Path(t2i.source), t2i)


def load_pipeline_folder(root: Path, t2i) -> T2IGenerator:
    """A Stable Diffusion style folder from disk (never the hub): unet/, text_encoder/,
    tokenizer/ and, if present, vae/ (latent diffusion)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    for sub in ("unet", "text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"t2i.source={root}: no {sub}/ folder (expected a diffusers pipeline folder "
                                    "with unet/, text_encoder/, tokenizer/ and optionally vae/)")
    unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True)
    encoder = AutoModel.from_pretrained(str(root / "text_encoder"), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", local_files_only=True) \
        if (root / "vae").is_dir() else None
    cond = TextConditioner(tokenizer, encoder, t2i.max_text_len, t2i.side_rank)
    if unet.config.cross_attention_dim != cond.dim:
        raise ValueError(f"t2i.source={root}: the UNet attends to {unet.config.cross_attention_dim}-d text, "
                         f"the text encoder gives {cond.dim}-d")
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return T2IGenerator(unet, cond, unet_prediction(root, t2i.prediction), vae=vae,
                        image_size=unet.config.sample_size * factor)


def unet_prediction(root: Path, default: str) -> str:
    """The prediction type a pipeline's scheduler config names (SD 2.x uses v), else ``default``."""
    import json

    f = root / "scheduler" / "scheduler_config.json"
    if f.is_file():
        return json.loads(f.read_text()).get("prediction_type", default)
    return default
