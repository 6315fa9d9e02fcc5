"""edgeconv's own TFLite int8 calibration (edgeconv.export.tflite_int8) against independent
computations: every activation read with the reference interpreter, the quantizer's own stored
weights, and TensorFlow's public converter."""
from __future__ import annotations

import numpy as np
import pytest

from edgeconv.data import calibration_set
from edgeconv.export import tflite_int8 as T8
from edgeconv.models.weights import load_model
from edgeconv.recipe import load_recipe


@pytest.fixture(scope="module")
def tiny():
    """tinynet-e (random weights, BN statistics from real photos), its Keras twin frozen, a
    calibration structure and 24 real photos (the bundled calibration set), NHWC."""
    from edgeconv.export.tflite import FrozenTwin, _captured_output, _configure, _import_tf, calibrate_only
    from edgeconv.models.keras_model import keras_from_torch

    recipe = load_recipe("tinynet-e")
    model, _ = load_model(recipe, None)
    x = calibration_set(None, recipe.resolution, recipe.preprocess, size=24).inputs.transpose(0, 2, 3, 1).copy()
    kmodel = keras_from_torch(model)
    twin = FrozenTwin(kmodel)
    conv = twin.converter()
    _configure(conv, _import_tf(), "int8", x[:1], False)
    with _captured_output():
        structure = calibrate_only(conv)
    fp32 = twin.converter().convert()
    yield {"twin": twin, "keras": kmodel, "x": x, "structure": structure, "fp32": fp32}
    twin.close()


def all_activations(model: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of ``model`` for every image, from the reference kernels with all tensors kept."""
    from ai_edge_litert import interpreter as litert

    it = litert.Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    out: dict[str, list[np.ndarray]] = {}
    for img in x:
        it.set_tensor(inp, img[None])
        it.invoke()
        for d in it.get_tensor_details():
            try:
                v = it.get_tensor(d["index"])
            except ValueError:  # no data (e.g. optional inputs)
                continue
            if v.dtype == np.float32 and v.ndim >= 2 and v.shape[0] == 1:
                out.setdefault(d["name"], []).append(v.copy())
    return {k: np.concatenate(v) for k, v in out.items()}


def graph_io_names(model: bytes) -> tuple[str, str]:
    from edgeconv.export.tflite import _Graph

    g = _Graph(model)
    return g.name(next(iter(g.inputs))), g.name(next(iter(g.outputs)))


def test_keeping_every_value_gives_the_exact_histogram_ranges(tiny, monkeypatch):
    monkeypatch.setattr(T8, "SAMPLES_PER_TENSOR", 1 << 40)  # no sampling: every value is kept
    x = tiny["x"][:6]
    cal = T8.calibrate_tflite(tiny["structure"], x)
    acts = all_activations(tiny["structure"], x)
    name_in, name_out = graph_io_names(tiny["structure"])
    checked = 0
    for name, (lo, hi) in cal.ranges.items():
        v = x if name == name_in else acts[name]
        mn, mx = float(v.min()), float(v.max())
        if name in (name_in, name_out):  # graph I/O: exact min/max, never clipped
            exp_lo, exp_hi = mn, mx
        else:
            counts = np.histogram(v, T8.HIST_BINS, (mn, mx))[0]
            exp_lo, exp_hi = T8.mse_range(counts, mn, mx)
        # XNNPACK and the reference kernels round differently: allow two histogram bins
        tol = 2 * (mx - mn) / T8.HIST_BINS + 1e-6
        assert abs(lo - exp_lo) <= tol and abs(hi - exp_hi) <= tol, (name, (lo, hi), (exp_lo, exp_hi))
        checked += 1
    assert checked == len(acts) - sum(1 for k in acts if k not in cal.ranges) and checked > 100


def test_sampled_ranges_are_deterministic_and_near_optimal(tiny):
    x = tiny["x"]  # 24 images: 10923 values per image of a tensor of up to 360 k are kept
    a = T8.calibrate_tflite(tiny["structure"], x)
    b = T8.calibrate_tflite(tiny["structure"], x)
    other = T8.calibrate_tflite(tiny["structure"], x, seed=1)
    assert a.model == b.model and a.ranges == b.ranges
    assert a.ranges != other.ranges
    acts = all_activations(tiny["structure"], x)
    name_in, name_out = graph_io_names(tiny["structure"])

    def qerr(v, lo, hi):  # mean squared error of 8-bit quantization to [lo, hi], simulated
        step = (hi - lo) / 255
        return float(np.mean((np.clip(np.round((v - lo) / step), 0, 255) * step + lo - v) ** 2))

    ratios = []
    for name, (lo, hi) in a.ranges.items():
        if name in (name_in, name_out) or name not in acts:
            continue
        v = acts[name].ravel()
        eps = 1e-5 * float(np.abs(v).max()) + 1e-6  # XNNPACK vs reference kernels
        assert v.min() - eps <= lo <= hi <= v.max() + eps  # a sample never widens the range
        mn, mx = float(v.min()), float(v.max())
        full = T8.mse_range(np.histogram(v, T8.HIST_BINS, (mn, mx))[0], mn, mx)
        ratios.append(qerr(v, lo, hi) / max(qerr(v, *full), 1e-20))
    ratios = np.array(ratios)
    # the sample's range costs little against the range chosen from every value
    assert len(ratios) > 100 and np.median(ratios) < 1.1 and np.quantile(ratios, 0.95) < 2.0, np.sort(ratios)[-5:]


def test_int8_weights_are_what_the_quantizer_stores(tiny):
    """The bias correction assumes the MLIR quantizer's weight rounding: check it on every conv,
    depthwise conv and the classifier of the int8 model."""
    from edgeconv.export.tflite import quantize_calibrated

    schema = T8.tflite_schema()
    cal = T8.calibrate_tflite(tiny["structure"], tiny["x"][:4])
    fmodel = schema.ModelT.InitFromPackedBuf(cal.model, 0)
    qdata = quantize_calibrated(cal.model)  # plain bytes: no bias correction
    qmodel = schema.ModelT.InitFromPackedBuf(qdata, 0)
    fsg, qsg = fmodel.subgraphs[0], qmodel.subgraphs[0]
    fcodes = T8._op_names(fmodel)
    fops = {fsg.tensors[op.inputs[1]].name: (fcodes[op.opcodeIndex], op.inputs[1])  # by weight name
            for op in fsg.operators if fcodes[op.opcodeIndex] in T8.WEIGHT_OPS}
    qcodes = T8._op_names(qmodel)
    kinds = {}
    for op in qsg.operators:
        kind = qcodes[op.opcodeIndex]
        name = qsg.tensors[op.inputs[1]].name if len(op.inputs) > 1 else None
        if kind not in T8.WEIGHT_OPS or name not in fops:
            continue
        wq = qsg.tensors[op.inputs[1]]
        q = np.frombuffer(np.asarray(qmodel.buffers[wq.buffer].data, np.uint8).tobytes(), np.int8).reshape(wq.shape)
        axis = T8.WEIGHT_OPS[kind]
        assert wq.quantization.quantizedDimension == axis
        shape = [1] * q.ndim
        shape[axis] = -1
        stored = q.astype(np.float64) * np.asarray(wq.quantization.scale, np.float64).reshape(shape)
        w = T8._const(fmodel, fsg.tensors[fops[name][1]])
        mine = T8.int8_weights(w, axis)
        np.testing.assert_allclose(mine, stored, rtol=1e-6, atol=1e-9)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds == {"CONV_2D": 41, "DEPTHWISE_CONV_2D": 10, "FULLY_CONNECTED": 1}, kinds


def outputs_of(model: bytes, x: np.ndarray, tensors: list[int]) -> list[np.ndarray]:
    """The given tensors of ``model`` (made graph outputs) for the batch ``x``."""
    from ai_edge_litert import interpreter as litert

    m = T8.tflite_schema().ModelT.InitFromPackedBuf(model, 0)
    m.subgraphs[0].outputs = np.array(tensors, np.int32)
    it = litert.Interpreter(model_content=T8.pack_tflite(m), num_threads=2)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp, x)
    it.invoke()
    return [it.get_tensor(t).copy() for t in tensors]


def test_bias_correction_cancels_the_mean_shift_of_int8_weights(tiny):
    """Give one op at a time its int8 weights: its output channels' means move by dW . E[x]; with
    the corrected bias they stay where the float model has them (on the images the means were
    taken on; convs that pad with SAME see zeros at the border that the input mean does not, so
    only most of their shift goes)."""
    schema = T8.tflite_schema()
    x = tiny["x"][:16]  # <= MEAN_IMAGES: the means are exactly these images'
    cal = T8.calibrate_tflite(tiny["structure"], x)
    corrected = schema.ModelT.InitFromPackedBuf(cal.model, 0)
    ops = T8._weight_ops(corrected)
    picks = {"stem (explicit pad)": 0, "depthwise stride 1 (SAME)": 1, "se reduce": 2, "pointwise": 4,
             "depthwise stride 2 (explicit pad)": 6, "conv_head": len(ops) - 1}

    def swapped(model: bytes, k: int) -> bytes:
        m = schema.ModelT.InitFromPackedBuf(model, 0)
        kind, _, w_i, _, _ = ops[k]
        t = m.subgraphs[0].tensors[w_i]
        w = T8.int8_weights(T8._const(m, t), T8.WEIGHT_OPS[kind]).astype(np.float32)
        buf = schema.BufferT()
        buf.data = np.frombuffer(w.tobytes(), np.uint8)
        m.buffers.append(buf)
        t.buffer = len(m.buffers) - 1
        return T8.pack_tflite(m)

    names = [corrected.subgraphs[0].tensors[o].name.decode() for *_, o in ops]
    for label, k in picks.items():
        out = ops[k][4]
        only_k = T8.bias_corrected(cal, float_nodes=names[:k] + names[k + 1:])  # the others stay float
        ref, plain, fixed = (outputs_of(mdl, x, [out])[0] for mdl in
                             (cal.model, swapped(cal.model, k), swapped(only_k, k)))
        c = ref.shape[-1]
        shift_plain = np.abs((plain - ref).reshape(-1, c).mean(0)).mean()
        shift_fixed = np.abs((fixed - ref).reshape(-1, c).mean(0)).mean()
        assert shift_plain > 0, label
        # 1x1 convs: gone up to float rounding; a k x k conv's border taps see padding zeros, and a
        # stride-2 conv weighs the input's rows unevenly, so their input mean is not exactly E[x]
        limit = 1e-3 if label in ("se reduce", "pointwise", "conv_head") else 0.1
        assert shift_fixed <= limit * shift_plain, (label, shift_plain, shift_fixed)


def test_bias_correction_skips_ops_kept_in_float(tiny):
    cal = T8.calibrate_tflite(tiny["structure"], tiny["x"][:4])
    schema = T8.tflite_schema()
    m = schema.ModelT.InitFromPackedBuf(cal.model, 0)
    ops = T8._weight_ops(m)
    names = [m.subgraphs[0].tensors[out].name.decode() for *_, out in ops]

    def biases(data: bytes) -> list[np.ndarray]:
        mm = schema.ModelT.InitFromPackedBuf(data, 0)
        return [T8._const(mm, mm.subgraphs[0].tensors[b]) for _, _, _, b, _ in ops]

    plain, all_int8, one_float = biases(cal.model), biases(T8.bias_corrected(cal)), \
        biases(T8.bias_corrected(cal, [names[3]]))
    changed = [not np.array_equal(p, c) for p, c in zip(plain, all_int8, strict=True)]
    assert sum(changed) >= len(ops) - 2  # (a bias whose shift rounds to 0 stays)
    assert np.array_equal(one_float[3], plain[3]) and changed[3]
    assert all(np.array_equal(a, b) for i, (a, b) in enumerate(zip(all_int8, one_float, strict=True)) if i != 3)


def test_frozen_twin_converts_like_tensorflows_public_keras_converter(tiny):
    """FrozenTwin traces and freezes the twin once instead of exporting a SavedModel (what
    ``from_keras_model`` does on every call): the converted model must have the public
    converter's ops, weights and outputs; only the tensor names and the signature differ (ours
    is ``serving_default`` with ``input`` -> ``logits``, the ONNX names)."""
    from ai_edge_litert import interpreter as litert

    from edgeconv.export.tflite import _captured_output, _Graph, _import_tf, tflite_bytes

    with _captured_output():
        public = _import_tf().lite.TFLiteConverter.from_keras_model(tiny["keras"]).convert()
    ours, _ = tflite_bytes(tiny["twin"], "fp32")
    assert [op for op, _, _ in _Graph(public).ops] == [op for op, _, _ in _Graph(ours).ops]
    schema = T8.tflite_schema()

    def weights(data):  # the constant inputs of every op, in op order
        m = schema.ModelT.InitFromPackedBuf(data, 0)
        sub = m.subgraphs[0]
        return [[bytes(np.asarray(m.buffers[sub.tensors[t].buffer].data, np.uint8)) for t in op.inputs
                 if t >= 0 and m.buffers[sub.tensors[t].buffer].data is not None] for op in sub.operators]
    wa, wb = weights(public), weights(ours)
    assert wa == wb and sum(map(len, wa)) > 50
    runs = {}
    for label, data in (("public", public), ("ours", ours)):
        it = litert.Interpreter(model_content=data)
        it.allocate_tensors()
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
        outs = []
        for img in tiny["x"][:4]:
            it.set_tensor(i, img[None])
            it.invoke()
            outs.append(it.get_tensor(o).copy())
        runs[label] = np.concatenate(outs)
    assert np.array_equal(runs["public"], runs["ours"])
    sig = litert.Interpreter(model_content=ours).get_signature_list()
    assert sig == {"serving_default": {"inputs": ["input"], "outputs": ["logits"]}}
    runner = litert.Interpreter(model_content=ours).get_signature_runner("serving_default")
    assert np.array_equal(runner(input=tiny["x"][:1])["logits"], runs["ours"][:1])


def test_structure_from_the_fp32_model_quantizes_like_the_converters(tiny):
    """calibration_structure(fp32) stands in for the converter's own calibrate-only conversion:
    after the same calibration the int8 models are the same bytes."""
    from edgeconv.export.tflite import quantize_calibrated

    x = tiny["x"][:8]
    ours = quantize_calibrated(T8.calibrate_tflite(T8.calibration_structure(tiny["fp32"]), x))
    theirs = quantize_calibrated(T8.calibrate_tflite(tiny["structure"], x))
    assert ours == theirs
