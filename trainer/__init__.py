"""A compact transfer-learning image classifier: python -m trainer --help."""

__version__ = "0.1.0"
