"""Backbones, heads and branches. Importing the package registers them."""
from taltoolkit.models.acmnet import ACMNet
from taltoolkit.models.actionformer import ActionFormer
from taltoolkit.models.iocnet import IOCNet
from taltoolkit.models.memory import MemoryBranch
from taltoolkit.models.wtal import TwoStreamWTAL

__all__ = ["ACMNet", "ActionFormer", "IOCNet", "MemoryBranch", "TwoStreamWTAL"]
