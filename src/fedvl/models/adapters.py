"""Parameter-efficient modules, named by *role*.

Roles (FedDAT, https://arxiv.org/abs/2308.12305):
  ``shared``  - the global adapter A_S, the one that travels;
  ``local``   - the client-specific adapter A_C, never leaves its client;
  ``teacher`` - the frozen copy Â_S of A_S taken at the start of a round.
A plain FedAvg-Adapter run uses ``shared`` alone. Which roles are active, and
with which weight, is one shared :class:`AdapterMix` object read by every site,
so switching FedDAT between its student and teacher passes is one assignment.
LoRA goes through ``peft`` with the role as its adapter name, so LoRA tensors
carry the same role names (``lora_A.shared.weight``). Soft prompts are one
matrix per role in ``VisionLanguageModel.prompt`` (``prompt.shared``).
"""

from __future__ import annotations

import torch
from torch import nn


class BottleneckAdapter(nn.Module):
    """Linear(d, d/r) -> ReLU -> Linear(d/r, d); the residual is added by the site.

    ``up`` starts at zero so a fresh adapter is the identity and the pretrained
    model's function is unchanged at step 0 (Houlsby et al. 2019).
    """

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        bottleneck = max(1, dim // reduction)
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


class AdapterMix:
    """Which adapter roles are active at every site, and their weights.

    ``{"shared": 1.0}`` -> h + A_S(h); ``{"local": w, "teacher": 1 - w}`` -> the
    Dual-Adapter Teacher h + w·A_C(h) + (1-w)·Â_S(h).
    """

    def __init__(self, weights: dict[str, float] | None = None):
        self.weights: dict[str, float] = dict(weights or {})

    def set(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)


def with_adapters(h: torch.Tensor, adapters: nn.ModuleDict, mix: AdapterMix) -> torch.Tensor:
    """h + sum_role w_role * A_role(h): every active adapter reads the same block output h
    (parallel, not stacked), which is what the Dual-Adapter Teacher mix needs."""
    out = h
    for role, w in mix.weights.items():
        if w != 0.0:
            out = out + w * adapters[role](h)
    return out


class FFNOutputWithAdapters(nn.Module):
    """BERT's FFN output block with adapters after the feed-forward projection.

    Replaces ``BertOutput`` (dense -> dropout -> LayerNorm(h + residual)) and
    keeps its child names (``dense``, ``dropout``, ``LayerNorm``), so the
    pretrained parameter names do not change. The adapters act on the FFN
    output h before the residual sum: h + sum_r w_r·A_r(h) (Pfeiffer placement).
    """

    def __init__(self, original: nn.Module, roles: list[str], reduction: int, mix: AdapterMix):
        super().__init__()
        self.dense = original.dense
        self.dropout = original.dropout
        self.LayerNorm = original.LayerNorm
        dim = self.dense.out_features
        self.adapters = nn.ModuleDict({r: BottleneckAdapter(dim, reduction) for r in roles})
        self._mix = mix  # plain attribute: shared by all sites, not a submodule

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(hidden_states))
        return self.LayerNorm(with_adapters(h, self.adapters, self._mix) + input_tensor)


class ResidualFFNOutputWithAdapters(nn.Module):
    """ViLT's FFN output block (dense -> dropout -> + residual; pre-LayerNorm layers)
    with adapters on the FFN output before the residual sum, as FedDAT places them.
    Child names (``dense``, ``dropout``) are kept, so pretrained names do not change."""

    def __init__(self, original: nn.Module, roles: list[str], reduction: int, mix: AdapterMix):
        super().__init__()
        self.dense = original.dense
        self.dropout = original.dropout
        self.adapters = nn.ModuleDict({r: BottleneckAdapter(self.dense.out_features, reduction) for r in roles})
        self._mix = mix

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(hidden_states))
        return with_adapters(h, self.adapters, self._mix) + input_tensor


class MLPWithAdapters(nn.Module):
    """CLIP's MLP (fc1 -> activation -> fc2) followed by adapters on its output;
    the layer adds the residual. Child names (``fc1``, ``fc2``) are kept."""

    def __init__(self, original: nn.Module, roles: list[str], reduction: int, mix: AdapterMix):
        super().__init__()
        self.activation_fn = original.activation_fn
        self.fc1 = original.fc1
        self.fc2 = original.fc2
        self.adapters = nn.ModuleDict({r: BottleneckAdapter(self.fc2.out_features, reduction) for r in roles})
        self._mix = mix

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.fc2(self.activation_fn(self.fc1(hidden_states)))
        return with_adapters(h, self.adapters, self._mix)


class DecoderMLPWithAdapters(nn.Module):
    """A decoder layer's MLP (LLaMA / Qwen / Gemma: gate, up, down projections) followed by adapters
    on its output; the layer adds the residual (FedDAT's site: after the feed-forward block).

    The original MLP's children are registered here under their own names (``gate_proj``, ...), so the
    pretrained parameter names and peft's LoRA targets do not change, and its own ``forward`` runs
    unchanged (whatever activation or gating the family uses).
    """

    def __init__(self, original: nn.Module, roles: list[str], reduction: int, mix: AdapterMix):
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_original", original)  # not a submodule: its children are ours
        self.adapters = nn.ModuleDict({r: BottleneckAdapter(original.down_proj.out_features, reduction)
                                       for r in roles})
        self._mix = mix

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return with_adapters(self._original(hidden_states), self.adapters, self._mix)


# Where the FFN output lives in each layer family, and the block that replaces it.
ADAPTER_SITES: dict[str, tuple[str, type[nn.Module]]] = {
    "bert": ("output", FFNOutputWithAdapters),  # BERT / MiniLM / BLIP text: dense -> dropout -> LayerNorm(+res)
    "vilt": ("output", ResidualFFNOutputWithAdapters),  # ViLT: dense -> dropout -> + res
    "clip": ("mlp", MLPWithAdapters),  # CLIP text: mlp, residual added by the layer
    "decoder": ("mlp", DecoderMLPWithAdapters),  # generative VLMs' language models (fedvl.models.vlm)
}


def inject_adapters(encoder_layers: nn.ModuleList, roles: list[str], reduction: int,
                    family: str = "bert") -> AdapterMix:
    """Put bottleneck adapters of the given roles after the FFN of every layer.

    ``family`` names the layer type (a key of :data:`ADAPTER_SITES`). Returns the
    :class:`AdapterMix` all sites share; it starts with the first role fully on.
    """
    attr, block = ADAPTER_SITES[family]
    mix = AdapterMix({roles[0]: 1.0})
    for layer in encoder_layers:
        setattr(layer, attr, block(getattr(layer, attr), roles, reduction, mix))
    return mix


# The Linear layer names LoRA may target in each text encoder family: BERT's (the default and tiny models,
# ViLT, BLIP) and CLIP's, which also takes BERT's names for its q/k/v projections (hf.LORA_ALIASES).
LORA_LAYERS = {"bert": ("query", "key", "value", "dense"),
               "clip": ("query", "key", "value", "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")}


def check_lora_targets(option: str, targets: list[str], family: str) -> None:
    """``targets`` name at least one of ``family``'s layers, each once and each one it has: peft would
    fail deep in the model build, and a low-rank delta with no layer is silently nothing."""
    from fedvl.schema import ConfigError, _short

    known = LORA_LAYERS[family]
    if not targets:
        raise ConfigError(f"{option} must name at least one layer (known: {', '.join(known)})")
    for t in targets:
        if t not in known:
            raise ConfigError(f"{option}: {_short(t)} is not a layer of the text encoder (known: {', '.join(known)})")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"{option} names a layer twice: {_short(','.join(targets))}")


def inject_lora(module: nn.Module, role: str, rank: int, alpha: int, targets: list[str],
                option: str = "model.lora_targets") -> None:
    """LoRA through peft, wrapping the pretrained weights (never re-initialising them); peft's refusal
    of the settings is one ConfigError line naming ``option``."""
    from peft import LoraConfig, inject_adapter_in_model

    from fedvl.schema import ConfigError

    try:
        cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
        inject_adapter_in_model(cfg, module, adapter_name=role)
    except ValueError as e:
        raise ConfigError(f"{option}: peft refused {','.join(targets)}: {' '.join(str(e).split())[:300]}") from None


# Whole-word WordPiece ids of the MiniLM / BERT-uncased vocabulary start at 1996
# ("the") and run roughly by frequency; below are [PAD], [unusedN], [CLS], ...
# and single characters.
_COMMON_WORDS = (1996, 1996 + 5000)


@torch.no_grad()
def make_prompts(embeddings: nn.Module, roles: list[str], length: int) -> nn.ParameterDict:
    """One (length, hidden) soft prompt per role (prompt tuning, Lester et al. 2021).

    Each starts as the embedding-layer output of ``length`` random common words,
    i.e. on the scale and statistics the frozen encoder expects of its input
    tokens. Lester et al. found vocabulary initialisation clearly better than
    random for smaller models, and the BERT embedding LayerNorm puts real tokens
    at norm ~sqrt(hidden): a std-0.02 random prompt would start near zero and
    be all but invisible to the attention. Draws from the global RNG, so the
    prompt is fixed by the build seed.
    """
    vocab = embeddings.word_embeddings.num_embeddings
    lo, hi = _COMMON_WORDS if vocab >= _COMMON_WORDS[1] else (0, vocab)
    out = nn.ParameterDict()
    for role in roles:
        ids = torch.randint(lo, hi, (length,))
        words = embeddings.word_embeddings(ids) + embeddings.token_type_embeddings.weight[0]
        out[role] = nn.Parameter(embeddings.LayerNorm(words).detach().clone())
    return out
