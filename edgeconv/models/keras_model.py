"""The NHWC Keras twin of the PyTorch builder, for TFLite conversion.

Built from the same resolved :class:`~edgeconv.recipe.Architecture`, with batch norm folded into
the preceding convolution (conv + bias), so the converted graph is only CONV_2D / DEPTHWISE_CONV_2D
with bias and fused ReLU/ReLU6, plus LOGISTIC + MUL for swish and squeeze-excite, MEAN, ADD and
FULLY_CONNECTED. No transposes: the graph is channels-last end to end.

Padding. PyTorch-style "symmetric" recipes pad ``((s-1)+(k-1))//2`` on every side. That equals
Keras/TF 'same' for stride 1 and, for stride 2, whenever TF SAME happens to split its padding
evenly for the feature map at hand (odd sizes); otherwise (even sizes) the conv gets an explicit
ZeroPadding2D + 'valid'. The spatial size is static (fixed input resolution), so this is decided
per conv at build time. "same" recipes (EfficientNet-Lite, TF checkpoints) use Keras 'same'.

Layer names follow the PyTorch module paths: ``conv_stem``, ``blocks_3_1_conv_dw``,
``blocks_3_1_se_reduce``, ``conv_head``, ``classifier``; a folded conv carries its BN's weights.

Importing this module imports Keras (and TensorFlow); the rest of edgeconv does not.
"""
from __future__ import annotations

import math

from ..util import import_tensorflow

import_tensorflow()  # quietly, before Keras imports it loudly

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ..recipe import Architecture, BlockSpec  # noqa: E402

_KERAS_ACT = {"swish": "silu", "relu": "relu", "relu6": "relu6"}


def _pads(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) padding the PyTorch model applies along one spatial dimension."""
    if padding == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    p = ((stride - 1) + (kernel - 1)) // 2
    return p, p


def _out_size(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - kernel) // stride + 1


class _Builder:
    """Functional-API helper that tracks the static spatial size to pick each conv's padding."""

    def __init__(self, arch: Architecture, height: int, width: int, batch_size: int | None):
        self.arch = arch
        self.inputs = keras.Input((height, width, 3), batch_size=batch_size, name="input")
        self.hw = (height, width)

    def conv(self, x, name: str, filters: int, kernel: int, stride: int = 1, depthwise: bool = False):
        pads = [_pads(n, kernel, stride, self.arch.padding) for n in self.hw]
        same = [_pads(n, kernel, stride, "same") for n in self.hw]
        if pads == same:
            mode = "same"
        else:
            x = keras.layers.ZeroPadding2D(tuple(pads), name=f"{name}_pad")(x)
            mode = "valid"
        self.hw = tuple(_out_size(n, kernel, stride, p) for n, p in zip(self.hw, pads, strict=True))
        if depthwise:
            return keras.layers.DepthwiseConv2D(kernel, stride, mode, use_bias=True, name=name)(x)
        return keras.layers.Conv2D(filters, kernel, stride, mode, use_bias=True, name=name)(x)

    def act(self, x, name: str):
        return keras.layers.Activation(_KERAS_ACT[self.arch.activation], name=name)(x)

    def se(self, x, prefix: str, chs: int, rd_chs: int):
        s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_pool")(x)
        s = keras.layers.Conv2D(rd_chs, 1, name=f"{prefix}_se_conv_reduce")(s)
        s = self.act(s, f"{prefix}_se_act1")
        s = keras.layers.Conv2D(chs, 1, name=f"{prefix}_se_conv_expand")(s)
        s = keras.layers.Activation("sigmoid", name=f"{prefix}_se_gate")(s)
        return keras.layers.Multiply(name=f"{prefix}_se_mul")([x, s])

    def block(self, x, b: BlockSpec, prefix: str):
        shortcut = x
        if b.block == "ir":
            x = self.act(self.conv(x, f"{prefix}_conv_pw", b.mid_chs, 1), f"{prefix}_act1")
            x = self.conv(x, f"{prefix}_conv_dw", b.mid_chs, b.kernel, b.stride, depthwise=True)
            x = self.act(x, f"{prefix}_act2")
            if b.se_chs:
                x = self.se(x, prefix, b.mid_chs, b.se_chs)
            x = self.conv(x, f"{prefix}_conv_pwl", b.out_chs, 1)
        else:
            x = self.conv(x, f"{prefix}_conv_dw", b.in_chs, b.kernel, b.stride, depthwise=True)
            x = self.act(x, f"{prefix}_act1")
            if b.se_chs:
                x = self.se(x, prefix, b.in_chs, b.se_chs)
            x = self.conv(x, f"{prefix}_conv_pw", b.out_chs, 1)
        if b.skip:
            x = keras.layers.Add(name=f"{prefix}_add")([shortcut, x])
        return x


def build_keras_model(arch: Architecture, input_size: int | tuple[int, int] | None = None,
                      batch_size: int | None = 1, name: str = "edgeconv") -> keras.Model:
    """The NHWC twin of :class:`~edgeconv.models.torch_model.EfficientNet` (BN folded, Keras's own
    initial weights). Input (batch, H, W, 3) float32, H = W = the architecture's resolution unless
    ``input_size`` says otherwise; output logits (batch, num_classes)."""
    if input_size is None:
        input_size = arch.resolution
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    bld = _Builder(arch, h, w, batch_size)
    x = bld.act(bld.conv(bld.inputs, "conv_stem", arch.stem_chs, 3, 2), "act1")
    for s, stage in enumerate(arch.stages):
        for b, spec in enumerate(stage.blocks):
            x = bld.block(x, spec, f"blocks_{s}_{b}")
    x = bld.act(bld.conv(x, "conv_head", arch.head_chs, 1), "act2")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = keras.layers.Dense(arch.num_classes, name="classifier")(x)
    return keras.Model(bld.inputs, x, name=name)


# ----------------------------------------------------------------------------------------------
# Weight transfer from PyTorch
# ----------------------------------------------------------------------------------------------
def _numpy(t) -> np.ndarray:
    """A torch tensor or a NumPy array (see :class:`StateView`) as float64."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float64)
    return t.detach().cpu().double().numpy()


class StateView:
    """A PyTorch model's ``state_dict`` (NumPy arrays) seen as the model's modules, as far as
    :func:`copy_torch_weights` looks: ``view.blocks[1][0].conv_dw.weight``, a conv without bias has
    ``bias`` None, every BN has the architecture's ``eps``. Builds the twin without importing torch
    (which would add to the child process's start-up)."""

    def __init__(self, arch, state: dict[str, np.ndarray], prefix: str = ""):
        self.arch, self._state, self._prefix = arch, state, prefix

    def __getattr__(self, name: str):
        key = self._prefix + name
        if key in self._state:
            return self._state[key]
        if name == "eps":
            return self.arch.bn_eps
        if any(k.startswith(key + ".") for k in self._state):
            return StateView(self.arch, self._state, key + ".")
        if name == "bias":
            return None
        raise AttributeError(f"no tensor or module {key!r} in the state dict")

    def __getitem__(self, index: int):
        return getattr(self, str(index))


def fold_bn(conv, bn) -> tuple[np.ndarray, np.ndarray]:
    """(weight OIHW, bias) of ``conv`` followed by eval-mode ``bn``, in float64."""
    w = _numpy(conv.weight)
    b = _numpy(conv.bias) if conv.bias is not None else np.zeros(w.shape[0])
    if bn is None:
        return w, b
    scale = _numpy(bn.weight) / np.sqrt(_numpy(bn.running_var) + bn.eps)
    return w * scale[:, None, None, None], (b - _numpy(bn.running_mean)) * scale + _numpy(bn.bias)


def _set_conv(kmodel: keras.Model, name: str, conv, bn=None) -> None:
    w, b = fold_bn(conv, bn)
    layer = kmodel.get_layer(name)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = w.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    else:
        kernel = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    layer.set_weights([kernel.astype(np.float32), b.astype(np.float32)])


def copy_torch_weights(torch_model, kmodel: keras.Model) -> keras.Model:
    """Load ``torch_model``'s weights (eval-mode BN folded into the convs) into ``kmodel``, a
    :func:`build_keras_model` of the same architecture. Returns ``kmodel``."""
    m = torch_model
    _set_conv(kmodel, "conv_stem", m.conv_stem, m.bn1)
    # (module attribute, BN attribute, keras suffix) per block type, as in torch_model.py
    parts = {
        "ir": (("conv_pw", "bn1", "conv_pw"), ("conv_dw", "bn2", "conv_dw"), ("conv_pwl", "bn3", "conv_pwl")),
        "ds": (("conv_dw", "bn1", "conv_dw"), ("conv_pw", "bn2", "conv_pw")),
    }
    for s, stage in enumerate(m.arch.stages):
        for b, spec in enumerate(stage.blocks):
            blk, prefix = m.blocks[s][b], f"blocks_{s}_{b}"
            for conv, bn, suffix in parts[spec.block]:
                _set_conv(kmodel, f"{prefix}_{suffix}", getattr(blk, conv), getattr(blk, bn))
            if spec.se_chs:
                _set_conv(kmodel, f"{prefix}_se_conv_reduce", blk.se.conv_reduce)
                _set_conv(kmodel, f"{prefix}_se_conv_expand", blk.se.conv_expand)
    _set_conv(kmodel, "conv_head", m.conv_head, m.bn2)
    kmodel.get_layer("classifier").set_weights([
        _numpy(m.classifier.weight).T.astype(np.float32), _numpy(m.classifier.bias).astype(np.float32)])
    return kmodel


def keras_from_torch(torch_model, input_size: int | tuple[int, int] | None = None,
                     batch_size: int | None = 1) -> keras.Model:
    """The Keras twin of a built PyTorch :class:`EfficientNet`, carrying its weights (BN folded).
    The PyTorch model's BN statistics are used as they are (eval mode), whatever its mode."""
    kmodel = build_keras_model(torch_model.arch, input_size, batch_size)
    return copy_torch_weights(torch_model, kmodel)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """N x 3 x H x W (edgeconv.data's layout) -> N x H x W x 3, contiguous float32."""
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))
