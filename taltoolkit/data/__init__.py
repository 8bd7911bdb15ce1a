"""Data layer: annotations, layout readers/writers, label views, samplers and ``TALDataset``.

Kept light: the registry imports ``taltoolkit.data`` to collect the dataset components, so
only the modules that register something are imported here.
"""
from taltoolkit.data.errors import DataError
from taltoolkit.data import dataset as _dataset  # noqa: F401,E402  registers dataset "tal"
from taltoolkit.data import synthetic as _synthetic  # noqa: F401,E402  registers dataset "synthetic"

__all__ = ["DataError"]
