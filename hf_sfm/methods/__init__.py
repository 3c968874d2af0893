"""Distillation methods, by name. Adding a method = one new module + one line in `METHODS`: the one list of names."""

from .base import DistillationMethod, MethodConfig, MethodContext
from .lgm import LGMConfig, LinearGradientMatching
from .sfm import (
    ClassMeanMatching,
    SFMConfig,
    StatisticalFlowMatching,
    class_means,
    flow_matching_loss,
    statistical_flow,
)

METHODS: dict[str, type[DistillationMethod]] = {
    StatisticalFlowMatching.name: StatisticalFlowMatching,
    ClassMeanMatching.name: ClassMeanMatching,
    LinearGradientMatching.name: LinearGradientMatching,
}


def get_method(name: str) -> type[DistillationMethod]:
    if name not in METHODS:
        raise ValueError(f"Unknown distillation method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = [
    "METHODS",
    "ClassMeanMatching",
    "DistillationMethod",
    "LGMConfig",
    "LinearGradientMatching",
    "MethodConfig",
    "MethodContext",
    "SFMConfig",
    "StatisticalFlowMatching",
    "class_means",
    "flow_matching_loss",
    "get_method",
    "statistical_flow",
]
