"""Memory savers for the transformer backbones (``model.gradient_checkpointing``).

Gradient checkpointing keeps only each transformer layer's input in the forward pass and
recomputes the layer in the backward pass: activation memory drops from one set per layer
to about one layer's worth, for roughly one more forward pass of compute. It applies to the
trainable text / fusion encoder only; the frozen vision tower runs once per image anyway
(its output is cached by :mod:`fedvl.data.features`) and never keeps activations.
"""

from __future__ import annotations

from functools import partial

from torch import nn


def enable_gradient_checkpointing(module: nn.Module) -> int:
    """Checkpoint every Hugging Face transformer layer inside ``module``; returns how many.

    Works on bare encoders too (CLIP's text transformer, BLIP's text encoder, the default
    model's MiniLM), which ``PreTrainedModel.gradient_checkpointing_enable`` does not reach.
    The non-reentrant variant is used: with a frozen backbone the layer inputs need no grad,
    which the reentrant one would require, and it replays dropout masks exactly.
    A layer is recomputed during backward with the adapter mix of that moment; FedDAT runs
    each backward right after its own forward, before the mix changes.
    """
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    fn = partial(checkpoint, use_reentrant=False)
    layers = 0
    for m in module.modules():
        if hasattr(m, "gradient_checkpointing"):
            m._gradient_checkpointing_func = fn
            m.gradient_checkpointing = True
            layers += isinstance(m, GradientCheckpointingLayer)
    if not layers:
        raise ValueError(f"{type(module).__name__} has no transformer layer that supports gradient checkpointing")
    return layers
