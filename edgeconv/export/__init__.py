"""Exporters, one module per format. Each writes its artifact atomically."""

FORMATS = ("onnx", "tflite", "openvino")
PRECISIONS = {"onnx": ("fp32",), "tflite": ("fp32", "fp16", "dynamic", "int8"),
              "openvino": ("fp32", "fp16", "int8")}
ALL_PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
