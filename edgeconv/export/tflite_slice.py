"""Cut a .tflite model at the recipe's block boundaries: one small model per block.

Why cut the flatbuffer rather than convert slices of the Keras twin: a slice of the built artifact
is, op for op, tensor for tensor, the same computation as that part of the whole model: the same
kernels, the same weights and, for int8, exactly the same scales and zero points (a slice
converted on its own would be calibrated on its own and quantized differently). Fed the whole
model's tensor at a boundary, a slice reproduces the whole model's tensor at the next boundary bit
for bit (checked in tests/test_profile.py), so its timing is that block's share of the model.

Which op belongs to which block. The Keras twin names its layers after the PyTorch modules
(``conv_stem``, ``blocks_3_1_conv_dw``, ``conv_head``, ``classifier``; see
:mod:`edgeconv.models.keras_model`) and the converter keeps those names in its tensor names
(``edgeconv_1/blocks_3_1_conv_dw_1/depthwise;...``). An op is assigned by the name of the tensor it
writes: ``blocks_S_B_*`` -> ``blocks.S.B``; ``conv_stem``/``act1`` -> ``stem``; ``conv_head``/``act2``/
``global_pool``/``classifier`` -> ``head``. Ops without such a name are placed by the graph: one that
reads only constants (fp16 weight DEQUANTIZE) goes with the op that reads its output, any other
(int8 QUANTIZE of the input, DEQUANTIZE of the logits) with the op that wrote its input, or with
the stem when it reads the model input.

A boundary is one tensor: everything a block reads from outside it must be the previous block's
output (skip connections stay inside their block). Anything else is refused with the tensors
involved, rather than cut wrongly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_BLOCK = re.compile(r"(?:^|/)blocks_(\d+)_(\d+)_[a-z]")
_STEM = re.compile(r"(?:^|/)(?:conv_stem|act1)(?:_pad)?(?:_\d+)?/")
_HEAD = re.compile(r"(?:^|/)(?:conv_head|act2|global_pool|classifier)(?:_\d+)?/")


class SliceError(ValueError):
    """The model cannot be cut at block boundaries (unknown names, or a boundary of two tensors)."""


def block_of(tensor_name: str) -> str | None:
    """``stem``, ``blocks.S.B``, ``head`` or None, from a tensor name written by the Keras twin.
    A fused op lists all its parts (``act1/Relu6;conv_stem/BiasAdd``): the first part decides."""
    for part in tensor_name.split(";"):
        part += "/"
        m = _BLOCK.search(part)
        if m:
            return f"blocks.{m.group(1)}.{m.group(2)}"
        if _STEM.search(part):
            return "stem"
        if _HEAD.search(part):
            return "head"
    return None


def _order(name: str) -> tuple[int, int, int]:
    if name == "stem":
        return (0, 0, 0)
    if name == "head":
        return (2, 0, 0)
    _, s, b = name.split(".")
    return (1, int(s), int(b))


@dataclass
class Segment:
    """One block of the model: its ops (indices into the main subgraph, in graph order) and the
    single tensor it reads from the previous block and writes for the next."""

    name: str
    ops: list[int]
    input: int
    output: int
    tensors: list[int] = field(default_factory=list)  # every tensor its ops touch


def _schema():
    from .tflite_int8 import tflite_schema

    return tflite_schema()


def _is_const(model, t) -> bool:
    return 0 < t.buffer < len(model.buffers) and model.buffers[t.buffer].data is not None \
        and len(model.buffers[t.buffer].data) > 0


def segments(model) -> list[Segment]:
    """The blocks of ``model`` (a ``schema.ModelT``), in network order."""
    sg = model.subgraphs[0]
    tensors = sg.tensors
    const = [_is_const(model, t) for t in tensors]
    producer: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(sg.operators):
        for t in (op.outputs if op.outputs is not None else []):
            producer[int(t)] = i
        for t in (op.inputs if op.inputs is not None else []):
            if t >= 0:
                consumers.setdefault(int(t), []).append(i)
    graph_in = {int(t) for t in sg.inputs}
    # ops that read only constants (fp16 weights' DEQUANTIZE): their outputs count as constants,
    # and every block that reads one gets its own copy of the op (the converter shares equal
    # constants between blocks, zero biases for instance)
    const_ops = set()
    for i, op in enumerate(sg.operators):
        if not [t for t in op.inputs if t >= 0 and not const[int(t)]]:
            const_ops.add(i)
            for t in op.outputs:
                const[int(t)] = True
    owner: dict[int, str] = {}
    for i, op in enumerate(sg.operators):
        if i in const_ops:
            continue
        names = [(tensors[int(t)].name or b"").decode("utf-8", "replace") for t in op.outputs]
        found = next((b for b in map(block_of, names) if b), None)
        if found:
            owner[i] = found
    # unnamed ops (QUANTIZE, DEQUANTIZE): with the op that wrote their input
    for i, op in enumerate(sg.operators):
        if i in owner or i in const_ops:
            continue
        live = [int(t) for t in op.inputs if t >= 0 and not const[int(t)]]
        if all(t in graph_in for t in live):
            owner[i] = "stem"
        elif producer.get(live[0]) in owner:
            owner[i] = owner[producer[live[0]]]
    unplaced = [i for i in range(len(sg.operators)) if i not in owner and i not in const_ops]
    if unplaced:
        names = [(tensors[int(sg.operators[i].outputs[0])].name or b"?").decode() for i in unplaced[:3]]
        raise SliceError(f"{len(unplaced)} op(s) belong to no recipe block (e.g. {', '.join(names)}): "
                         "not a model converted from edgeconv's Keras twin")
    groups: dict[str, list[int]] = {}
    for i in range(len(sg.operators)):
        if i not in const_ops:
            groups.setdefault(owner[i], []).append(i)
    for name, ops in groups.items():
        reads = {int(t) for i in ops for t in sg.operators[i].inputs if t >= 0}
        feeders = [c for c in sorted(const_ops) if any(int(t) in reads for t in sg.operators[c].outputs)]
        groups[name] = feeders + ops
    out = []
    graph_out = {int(t) for t in sg.outputs}
    for name in sorted(groups, key=_order):
        ops = groups[name]
        mine = set(ops)
        written = {int(t) for i in ops for t in sg.operators[i].outputs}
        read = {int(t) for i in ops for t in sg.operators[i].inputs if t >= 0 and not const[int(t)]}
        ins = sorted(read - written)
        outs = sorted(t for t in written if not const[t] and (
                      t in graph_out or any(c not in mine for c in consumers.get(t, []))))
        if len(ins) != 1 or len(outs) != 1:
            def show(ts):
                return ", ".join((tensors[t].name or b"?").decode()[:60] for t in ts) or "none"
            raise SliceError(f"{name}: a block boundary must be one tensor; it reads {len(ins)} "
                             f"({show(ins)}) and writes {len(outs)} ({show(outs)})")
        used = sorted({int(t) for i in ops for t in [*sg.operators[i].inputs, *sg.operators[i].outputs]
                       if t >= 0})
        out.append(Segment(name, ops, ins[0], outs[0], used))
    for a, b in zip(out, out[1:], strict=False):
        if a.output != b.input:
            raise SliceError(f"{b.name} does not read what {a.name} writes: the blocks are not a chain")
    return out


def load(data: bytes):
    """The object-API model (``schema.ModelT``) of a .tflite flatbuffer."""
    return _schema().ModelT.InitFromPackedBuf(data, 0)


def slice_bytes(model, seg: Segment) -> bytes:
    """A .tflite model of ``seg`` alone: input = the tensor it reads, output = the tensor it writes,
    holding only that block's tensors, buffers and operator codes."""
    import copy

    from .tflite_int8 import pack_tflite

    schema = _schema()
    sg = model.subgraphs[0]
    new = schema.ModelT()
    new.version, new.description = model.version, model.description
    tmap = {t: i for i, t in enumerate(seg.tensors)}
    bmap: dict[int, int] = {0: 0}
    buffers = [schema.BufferT()]
    codes: dict[int, int] = {}
    op_codes = []
    tensors = []
    for t in seg.tensors:
        tt = copy.copy(sg.tensors[t])
        if tt.buffer > 0:
            if tt.buffer not in bmap:
                bmap[tt.buffer] = len(buffers)
                buffers.append(model.buffers[tt.buffer])
            tt.buffer = bmap[tt.buffer]
        tensors.append(tt)
    ops = []
    for i in seg.ops:
        op = copy.copy(sg.operators[i])
        if op.opcodeIndex not in codes:
            codes[op.opcodeIndex] = len(op_codes)
            op_codes.append(model.operatorCodes[op.opcodeIndex])
        op.opcodeIndex = codes[op.opcodeIndex]
        op.inputs = np.array([tmap[int(t)] if t >= 0 else -1 for t in op.inputs], np.int32)
        op.outputs = np.array([tmap[int(t)] for t in op.outputs], np.int32)
        if op.intermediates is not None and len(op.intermediates):
            op.intermediates = np.array([tmap[int(t)] for t in op.intermediates], np.int32)
        ops.append(op)
    sub = schema.SubGraphT()
    sub.tensors, sub.operators, sub.name = tensors, ops, f"{seg.name}".encode()
    sub.inputs = np.array([tmap[seg.input]], np.int32)
    sub.outputs = np.array([tmap[seg.output]], np.int32)
    new.subgraphs, new.buffers, new.operatorCodes = [sub], buffers, op_codes
    return pack_tflite(new)


def with_outputs(model, tensors: list[int]) -> bytes:
    """The whole model with ``tensors`` as its outputs (in that order), for reading block
    boundaries out of one invoke with the same kernels."""
    import copy

    from .tflite_int8 import pack_tflite

    m = copy.copy(model)
    sub = copy.copy(model.subgraphs[0])
    sub.outputs = np.array(tensors, np.int32)
    m.subgraphs = [sub]
    m.signatureDefs = None
    return pack_tflite(m)


def tensor_info(model, t: int) -> dict:
    """Shape, dtype name and (scale, zero point) of tensor ``t`` of the main subgraph."""
    schema = _schema()
    tt = model.subgraphs[0].tensors[t]
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    q = tt.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    return {"shape": [int(d) for d in tt.shape], "dtype": types.get(tt.type, "?").lower(),
            "scale": scale, "zero_point": zero}
