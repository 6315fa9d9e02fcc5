"""Model builders: the PyTorch source of truth and its NHWC Keras twin."""
