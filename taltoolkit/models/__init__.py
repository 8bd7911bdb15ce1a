"""Backbones, heads and branches. Importing the package registers them."""
from taltoolkit.models.wtal import TwoStreamWTAL

__all__ = ["TwoStreamWTAL"]
