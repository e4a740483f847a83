"""The timm functions maedet needs that timm keeps private: imported here, and nowhere else in maedet.

timm exports no public name for these (checked against timm 1.0.31: ``timm.models`` re-exports
``resolve_pretrained_cfg``, which we take from there, but not these two). They have kept their names and
signatures through the 1.0 series, and pyproject bounds timm below 1.1 so that a release which moves them is not
installed unseen; tests/test_layers.py checks that no other module imports a private timm name. When timm makes
one public, import it from there and drop it here.

* ``feature_take_indices``: the index rule of ``forward_intermediates`` (an int means the last n, negatives count
  from the end) that timm's own models share (its resnet imports it from the same place); MaeDet follows it so
  that it answers like any timm model.
* ``load_model_config_from_path``: how ``timm.create_model('local-dir:FOLDER')`` reads a folder's config.json;
  the exporter reads a converted folder the same way so that it builds what timm would build.
"""

from __future__ import annotations

from timm.models._features import feature_take_indices
from timm.models._hub import load_model_config_from_path

__all__ = ["feature_take_indices", "load_model_config_from_path"]
