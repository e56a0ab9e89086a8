"""xinfd: a model-serving supervisor daemon."""

__version__ = "0.1.0"
