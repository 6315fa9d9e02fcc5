"""PyTorch builder: a resolved :class:`~edgeconv.recipe.Architecture` becomes an ``nn.Module``
whose state-dict keys equal timm's EfficientNet (``conv_stem``, ``bn1``, ``blocks.S.B.conv_pw``,
..., ``conv_head``, ``bn2``, ``classifier``), so released timm checkpoints load with strict=True.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..recipe import Architecture, BlockSpec, Recipe, resolve


def make_act(name: str) -> nn.Module:
    if name == "swish":
        return nn.SiLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}")


def same_pad_amounts(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric when needed), computed from the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = same_pad_amounts(x.shape[-2], self.kernel_size[0], self.stride[0])
        pw = same_pad_amounts(x.shape[-1], self.kernel_size[1], self.stride[1])
        if any(ph) or any(pw):
            x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv2d(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False,
           padding: str = "symmetric") -> nn.Conv2d:
    if padding == "same" and k > 1:
        return Conv2dSame(cin, cout, k, stride, padding=0, groups=groups, bias=bias)
    # PyTorch-style symmetric padding, as timm's default for non-TF models
    return nn.Conv2d(cin, cout, k, stride, padding=((stride - 1) + (k - 1)) // 2, groups=groups,
                     bias=bias)


class SqueezeExcite(nn.Module):
    def __init__(self, chs: int, rd_chs: int, act: str):
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act1 = make_act(act)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act1(self.conv_reduce(s)))
        return x * torch.sigmoid(s)


class DepthwiseSeparable(nn.Module):
    """dw conv -> BN -> act -> SE -> pw conv -> BN (+ skip)."""

    def __init__(self, b: BlockSpec, act: str, eps: float, padding: str):
        super().__init__()
        self.has_skip = b.skip
        self.conv_dw = conv2d(b.in_chs, b.in_chs, b.kernel, b.stride, groups=b.in_chs, padding=padding)
        self.bn1 = nn.BatchNorm2d(b.in_chs, eps=eps)
        self.act1 = make_act(act)
        self.se = SqueezeExcite(b.in_chs, b.se_chs, act) if b.se_chs else nn.Identity()
        self.conv_pw = nn.Conv2d(b.in_chs, b.out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(b.out_chs, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.se(y)))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """pw expand -> BN -> act -> dw conv -> BN -> act -> SE -> pw project -> BN (+ skip)."""

    def __init__(self, b: BlockSpec, act: str, eps: float, padding: str):
        super().__init__()
        self.has_skip = b.skip
        self.conv_pw = nn.Conv2d(b.in_chs, b.mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(b.mid_chs, eps=eps)
        self.act1 = make_act(act)
        self.conv_dw = conv2d(b.mid_chs, b.mid_chs, b.kernel, b.stride, groups=b.mid_chs, padding=padding)
        self.bn2 = nn.BatchNorm2d(b.mid_chs, eps=eps)
        self.act2 = make_act(act)
        self.se = SqueezeExcite(b.mid_chs, b.se_chs, act) if b.se_chs else nn.Identity()
        self.conv_pwl = nn.Conv2d(b.mid_chs, b.out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(b.out_chs, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return x + y if self.has_skip else y


BLOCKS = {"ds": DepthwiseSeparable, "ir": InvertedResidual}


class EfficientNet(nn.Module):
    """The EfficientNet/TinyNet family: stem, stages of MBConv blocks, 1x1 head, pool, classifier."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        act, eps, pad = arch.activation, arch.bn_eps, arch.padding
        self.conv_stem = conv2d(3, arch.stem_chs, 3, 2, padding=pad)
        self.bn1 = nn.BatchNorm2d(arch.stem_chs, eps=eps)
        self.act1 = make_act(act)
        self.blocks = nn.Sequential(*[
            nn.Sequential(*[BLOCKS[b.block](b, act, eps, pad) for b in stage.blocks])
            for stage in arch.stages
        ])
        last = arch.stages[-1].out_chs
        self.conv_head = nn.Conv2d(last, arch.head_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(arch.head_chs, eps=eps)
        self.act2 = make_act(act)
        self.drop_rate = arch.dropout
        self.classifier = nn.Linear(arch.head_chs, arch.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as the EfficientNet reference: fan-out normal for convs, uniform for the FC.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.weight.size(0))
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act2(self.bn2(self.conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((2, 3))
        if self.drop_rate and self.training:
            x = F.dropout(x, self.drop_rate, self.training)
        return self.classifier(x)


def build_model(recipe: Recipe, seed: int = 0, settle_inputs=None) -> EfficientNet:
    """Build the model described by ``recipe``, randomly initialised with a fixed seed, in eval mode.

    ``settle_inputs`` (N x 3 x H x W images) sets the BatchNorm statistics from those images, so a
    randomly initialised network has unit-scale activations on real photos and logits spread like a
    trained one's (with the default statistics activations shrink to ~1e-5 through the blocks, which
    makes int8 calibration and parity figures of random models meaningless)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = EfficientNet(resolve(recipe))
        if settle_inputs is not None:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = None  # cumulative average
            model.train()
            with torch.no_grad():
                model(torch.as_tensor(settle_inputs))
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = 0.1
                    m.num_batches_tracked.zero_()
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()


# (conv, BN) attribute pairs of each module class, in forward order
CONV_BN_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    EfficientNet: (("conv_stem", "bn1"), ("conv_head", "bn2")),
    DepthwiseSeparable: (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    InvertedResidual: (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


def fold_batchnorm(model: EfficientNet) -> EfficientNet:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the conv before it (the conv
    gets a bias, the BN becomes ``nn.Identity``); ``model`` is not changed. Same function up to
    float rounding. What exporters see: a graph with 31-81 fewer ops (a faster ONNX export; the ONNX optimizer
    folds them anyway, so the exported graph has the same ops)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        for conv, bn in CONV_BN_PAIRS.get(type(module), ()):
            if isinstance(getattr(module, bn), nn.BatchNorm2d):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
                setattr(module, bn, nn.Identity())
    return folded
