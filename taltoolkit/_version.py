"""The package version, in a leaf module so that what records it (checkpoints) does not import
the package root, whose ``run`` reaches the whole engine."""

__version__ = "0.1.0"
