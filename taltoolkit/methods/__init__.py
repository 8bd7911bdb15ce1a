"""Methods: one module per paper. Importing the package registers them."""
from taltoolkit.methods.actionformer import ActionFormerMethod
from taltoolkit.methods.apl import APL
from taltoolkit.methods.case import CASE
from taltoolkit.methods.copl import COPL
from taltoolkit.methods.rmgcl import RMGCL

__all__ = ["ActionFormerMethod", "APL", "CASE", "COPL", "RMGCL"]
