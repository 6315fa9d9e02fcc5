"""Parameter and MAC counts measured from a built module (one forward pass with hooks)."""
from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int) -> int:
    """Multiply-accumulates of convolutions and linear layers for one image at ``resolution``.

    Counted the usual way (as the TinyNet/EfficientNet papers' "FLOPs"): each conv output element
    costs (in_channels / groups) * kh * kw MACs, each linear output in_features MACs; squeeze-excite
    convs count on their 1x1 pooled input. Element-wise ops (BN, activations, adds) are not counted.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, resolution, resolution, device=device))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total
