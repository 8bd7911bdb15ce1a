"""Methods: one module per paper. Importing the package registers them."""
from taltoolkit.methods.case import CASE

__all__ = ["CASE"]
