"""edgeconv: small image classifiers from recipe to phone."""

__version__ = "0.1.0"
