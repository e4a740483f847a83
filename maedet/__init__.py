"""maedet: MAE-DET detection backbones as timm models, with search, export and benchmarks.

Importing this package registers ``maedet_s``, ``maedet_m``, ``maedet_l`` and ``maedet`` with timm;
``maedet.create_detector('maedet_m_gfl')`` builds the authors' whole GFocalV2 detector.
"""

from importlib.metadata import PackageNotFoundError, version

from . import zoo  # noqa: F401  (registers the models with timm)
from .errors import MaeDetError, MissingDependencyError
from .zoo import GFocalV2, MaeDet, Structure, create_detector, fuse_bn, load_structure

try:
    __version__ = version("maedet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "GFocalV2",
    "MaeDet",
    "MaeDetError",
    "MissingDependencyError",
    "Structure",
    "__version__",
    "create_detector",
    "fuse_bn",
    "load_structure",
]
