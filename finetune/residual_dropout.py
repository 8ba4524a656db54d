"""LIMA's residual dropout: drop each decoder layer's attention and MLP output before it joins the residual.

"Following Ouyang et al. (2022), we apply dropout over residual connections, starting at p = 0.0 at the
bottom layer and linearly raising the rate to p = 0.3 at the last layer (p = 0.2 for smaller models)."

Forward hooks on the two branch modules of every layer, so the model class is untouched: the hooks run in
train mode only, inside gradient checkpointing's recomputation (which replays the same RNG state, hence the
same mask) and inside FSDP-wrapped layers alike.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder layers of a causal LM (through PEFT and task-head wrappers)."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and hasattr(layers[0], "mlp"):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to add residual dropout to")


def residual_branches(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose outputs are added to the residual stream.

    Llama-style layers add `self_attn` and `mlp` outputs directly. Gemma 2/3 layers normalise each branch
    once more (`post_attention_layernorm`, `post_feedforward_layernorm`) before adding it, so dropout goes
    after those norms: dropping before a norm would be partly undone by it.
    """
    if hasattr(layer, "post_feedforward_layernorm") and hasattr(layer, "post_attention_layernorm"):
        return layer.post_attention_layernorm, layer.post_feedforward_layernorm
    return layer.self_attn, layer.mlp


def layer_rates(num_layers: int, top: float) -> list[float]:
    """0.0 at the bottom layer rising linearly to `top` at the last one."""
    if num_layers == 1:
        return [top]
    return [top * i / (num_layers - 1) for i in range(num_layers)]


def _dropout_hook(rate: float):
    def hook(module: nn.Module, args, output):
        if not module.training or rate == 0.0:
            return output
        if isinstance(output, tuple):  # attention modules return (hidden, weights, ...)
            return (F.dropout(output[0], rate, training=True), *output[1:])
        return F.dropout(output, rate, training=True)

    return hook


def add_residual_dropout(model: nn.Module, top: float) -> list[float]:
    """Install the hooks; returns the rate of each layer. Idempotent: a second call replaces the first."""
    layers = decoder_layers(model)
    rates = layer_rates(len(layers), top)
    for layer, rate in zip(layers, rates, strict=True):
        for branch in residual_branches(layer):
            for handle in getattr(branch, "_lima_dropout_handles", []):
                handle.remove()
            branch._lima_dropout_handles = [branch.register_forward_hook(_dropout_hook(rate))]
            branch.lima_residual_dropout = rate
    return rates


def installed_rates(model: nn.Module) -> list[tuple[float, float]]:
    """(attention, MLP) dropout rate of every layer, as installed: for tests and the run log."""
    return [
        tuple(getattr(branch, "lima_residual_dropout", 0.0) for branch in residual_branches(layer))
        for layer in decoder_layers(model)
    ]
