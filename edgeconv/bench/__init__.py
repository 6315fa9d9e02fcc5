"""Benchmarking: latency statistics (``stats``) and the per-device harnesses (``host``, ``adb``)."""
