"""Exporters, one module per format. Each writes its artifact atomically. Which formats and
precisions exist is :mod:`edgeconv.formats`."""
