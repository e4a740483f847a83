"""maedet: MAE-DET detection backbones as timm models, with search, export and benchmarks.

``import maedet`` is light (it loads neither torch nor timm): it is the base layer, the errors, file writes and
runtimes every wing uses. ``import maedet.zoo`` registers ``maedet_s``, ``maedet_m``, ``maedet_l`` and ``maedet``
with timm. The zoo's main names are reachable from here too (``maedet.create_detector('maedet_m_gfl')`` builds the
authors' whole GFocalV2 detector): the first use imports the zoo (PEP 562), which registers the models.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .errors import MaeDetError, MissingDependencyError

try:
    __version__ = version("maedet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_ZOO_NAMES = ("GFocalV2", "MaeDet", "Structure", "create_detector", "fuse_bn", "load_structure")

__all__ = ["MaeDetError", "MissingDependencyError", "__version__", *_ZOO_NAMES]


def __getattr__(name: str) -> Any:
    """The zoo's public names, imported on first use so that ``import maedet`` stays free of torch and timm."""
    if name in _ZOO_NAMES:
        from . import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_ZOO_NAMES})
